"""Tiny TorchScript models and a model repository to serve them from.

``write_model(repo, "ctr", "3", inputs)`` scripts a `GenericScorer` over the
inputs (or a module you pass), saves ``<repo>/ctr/3/model.pt`` and writes its
``module_info.json``. `direct_scores` calls a saved model in-process on numpy
columns, following the leaf's input convention, which is what leaf scores are
compared against.
"""
import os
import time

import numpy as np
import torch
from torch import Tensor

from signatures.repository.module_info import MODEL_NAME, ModuleInfo, TensorSpec, sha256_file


class GenericScorer(torch.nn.Module):
    """A deterministic score from every input, so that a wrong column shows.

    score = sum_i (i+1) * x_i (vectors summed across width) + sum_j 0.5*(j+1) *
    (per-row sum of ragged j). ``fail_on``: raise when that dense feature holds
    a negative value. ``spin``: extra matmul rounds, to make forward slow.
    """

    dense: list[str]
    ragged: list[str]
    fail_on: str
    spin: int

    def __init__(self, dense: list[str], ragged: list[str], fail_on: str = "", spin: int = 0):
        super().__init__()
        self.dense = list(dense)
        self.ragged = list(ragged)
        self.fail_on = fail_on
        self.spin = spin
        self.w = torch.nn.Parameter(torch.eye(64) * 0.5, requires_grad=False)

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        out = self.score(features)
        if self.fail_on != "":
            if bool((features[self.fail_on] < 0).any()):
                raise RuntimeError("negative values in " + self.fail_on)
        if self.spin > 0:
            h = torch.ones(out.shape[0], 64, device=out.device)
            for _ in range(self.spin):
                h = torch.tanh(h @ self.w)
            out = out + h.sum(1) * 0.0
        return out

    def score(self, features: dict[str, Tensor]) -> Tensor:
        first = features[self.dense[0]]
        rows, device = first.shape[0], first.device
        out = torch.zeros(rows, dtype=torch.float32, device=device)
        i = 0
        for name in self.dense:
            x = features[name].to(torch.float32)
            if x.dim() == 2:
                x = x.sum(1)
            out = out + x * float(i + 1)
            i += 1
        j = 0
        for name in self.ragged:
            values = features[name + ".values"].to(torch.float32)
            offsets = features[name + ".offsets"]
            n = offsets.shape[0] - 1
            row_ids = torch.repeat_interleave(torch.arange(n, device=device),
                                              offsets[1:] - offsets[:-1])
            sums = torch.zeros(n, dtype=torch.float32, device=device).index_add_(0, row_ids, values)
            out = out + sums * (0.5 * float(j + 1))  # a per-request list (n == 1) broadcasts
            j += 1
        return out


class ExportableScorer(GenericScorer):
    """`GenericScorer`'s score without its test switches, as a model an author
    hands `trimmer export`: export counts a read in any branch, and
    ``features[self.fail_on]`` reads the key ``""`` even while ``fail_on`` is
    off. Scores equal a `GenericScorer`'s over the same inputs."""

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        return self.score(features)


def script_for_export(path, inputs: list[TensorSpec]) -> str:
    """An `ExportableScorer` over ``inputs`` (dense first, in their order)
    saved as a TorchScript file at ``path``: a source for `trimmer export`."""
    module = ExportableScorer([s.name for s in inputs if not s.ragged],
                              [s.name for s in inputs if s.ragged])
    torch.jit.script(module).save(os.fspath(path))
    return os.fspath(path)


def spec(name: str, dtype: str = "float32", shape=(), ragged: bool = False,
         per_request: bool = False) -> TensorSpec:
    return TensorSpec(name, dtype, tuple(shape), "ragged" if ragged else "dense", per_request)


_SPIN_CALIBRATION: dict = {}


def spin_for(seconds: float, rows: int = 256) -> int:
    """The ``spin`` that makes a `GenericScorer` forward of ``rows`` rows take
    about ``seconds`` on this machine, at one torch thread (a leaf's share of
    a 2-core machine). Timing tests need a model that is slow here, whatever
    the host's speed; a fixed spin count was slow only on the machine it was
    chosen on."""
    if rows not in _SPIN_CALIBRATION:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            w = torch.eye(64) * 0.5
            h = torch.ones(rows, 64)
            rounds, took = 50, 0.0
            while took < 0.05:
                rounds *= 2
                t0 = time.perf_counter()
                for _ in range(rounds):
                    h = torch.tanh(h @ w)
                took = time.perf_counter() - t0
            _SPIN_CALIBRATION[rows] = took / rounds
        finally:
            torch.set_num_threads(threads)
    return max(1, round(seconds / _SPIN_CALIBRATION[rows]))


def write_model(repo, model: str, version: str, inputs: list[TensorSpec],
                module: torch.nn.Module | None = None, **scorer_kwargs) -> tuple:
    """Save a scripted model and its module_info.json; returns (model.pt path, info).
    Without ``module``, a `GenericScorer` over ``inputs`` (dense first in the
    order given, which must start with a per-row dense input)."""
    if module is None:
        dense = [s.name for s in inputs if not s.ragged]
        ragged = [s.name for s in inputs if s.ragged]
        module = GenericScorer(dense, ragged, **scorer_kwargs)
    version_dir = os.path.join(os.fspath(repo), model, version)
    os.makedirs(version_dir, exist_ok=True)
    path = os.path.join(version_dir, MODEL_NAME)
    torch.jit.script(module).save(path)
    info = ModuleInfo(model=model, version=version, inputs=list(inputs),
                      artifact_sha256=sha256_file(path),
                      provenance={"torch": torch.__version__, "source": "tests.support.models"})
    info.write(version_dir)
    return path, info


def random_columns(inputs: list[TensorSpec], rows: int, rng: np.random.Generator) -> dict:
    """Numpy data for ``inputs``: dense arrays, ``(values, offsets)`` for ragged;
    per-request columns have one row."""
    out = {}
    for s in inputs:
        n = 1 if s.per_request else rows
        if s.ragged:
            lengths = rng.integers(0, 4, size=n)
            offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
            out[s.name] = (rng.integers(0, 100, size=int(offsets[-1])).astype(s.dtype), offsets)
        elif s.dtype == "bool":
            out[s.name] = rng.integers(0, 2, size=(n,) + tuple(s.shape)).astype(bool)
        elif np.dtype(s.dtype).kind in "iu":
            out[s.name] = rng.integers(0, 50, size=(n,) + tuple(s.shape)).astype(s.dtype)
        else:
            out[s.name] = rng.random((n,) + tuple(s.shape)).astype(s.dtype)
    return out


def encode_columns(inputs: list[TensorSpec], columns: dict, rows: int) -> np.ndarray:
    """The batch message holding ``columns`` as laid out by ``inputs``."""
    from _trim import Batch, Layout
    layout = Layout(s.column_spec() for s in inputs)
    return Batch.from_arrays(layout, columns, rows).buffer


def direct_scores(model_path: str, inputs: list[TensorSpec], columns: dict, rows: int) -> np.ndarray:
    """Scores from calling the TorchScript model in this process."""
    model = torch.jit.load(model_path, map_location="cpu")
    feats = {}
    for s in inputs:
        col = columns[s.name]
        if s.ragged:
            feats[s.name + ".values"] = torch.from_numpy(np.ascontiguousarray(col[0]))
            feats[s.name + ".offsets"] = torch.from_numpy(np.ascontiguousarray(col[1]))
        else:
            t = torch.from_numpy(np.ascontiguousarray(col))
            feats[s.name] = t.expand((rows,) + tuple(t.shape[1:])) if s.per_request else t
    with torch.inference_mode():
        out = model(feats)
    return out.reshape(-1).to(torch.float32).numpy()
