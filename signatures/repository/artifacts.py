"""Loading a model version's artifact, whatever its kind, as a callable on
the features dict; and what this torch can build and load.

Used by the leaf (leafproc/worker.py) and by `trimmer export`'s dry run, so
the export checks the artifact exactly as a leaf will load it. A leaf that
cannot load a kind refuses it in `check_loadable`, before touching the file,
with a message that says what would load it.
"""
from __future__ import annotations

import contextlib
import importlib
import re
import threading
from collections.abc import Callable
from typing import Any

import torch

from _trim.errors import Refused
from signatures.repository.module_info import Artifact

Model = Callable[[dict], torch.Tensor]

# Pointer alignment Triton kernels are specialised for; leaf columns are
# 8-byte aligned views on the message (docs/protocol.md).
CUDA_INPUT_ALIGN = 16


def torch_release(version: str | None = None) -> str:
    """``2.11.0`` of ``2.11.0+cu126``: the local part names the wheel, not the ABI."""
    v = torch.__version__ if version is None else version
    return re.split(r"[+]", str(v), maxsplit=1)[0]


def _export_missing() -> str | None:
    import torch.export as te
    if not hasattr(te, "Dim") or not hasattr(te.Dim, "DYNAMIC"):
        return "torch.export.Dim.DYNAMIC"
    import torch.fx.experimental._config as fx_config
    config: Any = fx_config   # torch's config module: its API is set up at import
    if "backed_size_oblivious" not in config.get_config_copy():
        return "backed_size_oblivious (programs valid for 0 and 1 rows)"
    return None


def unsupported(kind: str) -> str | None:
    """Why this torch cannot build or load ``kind``, or None."""
    if kind == "torchscript":
        return None
    missing = _export_missing()
    if missing is None and kind == "aoti":
        inductor = getattr(torch, "_inductor", None)
        if not (hasattr(inductor, "aoti_compile_and_package")
                and hasattr(inductor, "aoti_load_package")):
            missing = "torch._inductor.aoti_compile_and_package / aoti_load_package"
    if missing is None:
        return None
    return (f"the {kind} format needs a newer torch than {torch.__version__} (it lacks "
            f"{missing}; torch 2.8 and later have it): use --format torchscript")


def check_loadable(artifact: Artifact, device: torch.device) -> None:
    """Refused, saying why and what would load, unless this process can load ``artifact``
    on ``device``."""
    reason = unsupported(artifact.kind)
    if reason:
        raise Refused(f"this leaf cannot load an {artifact.describe()}: {reason}")
    if artifact.runtime == "torchrec":
        from signatures.repository.torchrec_runtime import TorchRecUnavailable, require
        try:
            require()   # registers the FBGEMM operators the file calls
        except TorchRecUnavailable as exc:
            raise Refused(f"this leaf cannot load a TorchRec {artifact.describe()}: {exc}") from exc
    if artifact.kind != "aoti":
        return
    device = torch.device(device)
    if artifact.device != device.type:
        raise Refused(f"the AOTInductor package was compiled for {artifact.device} and this "
                      f"leaf runs on {device}: serve a package compiled for {device.type} "
                      f"(trimmer export --format aoti --device {device.type}), or the "
                      "export/torchscript format")
    built, here = torch_release(artifact.torch), torch_release()
    if built != here:
        raise Refused(f"the AOTInductor package was compiled with torch {artifact.torch} and "
                      f"this leaf runs torch {torch.__version__}: AOTInductor packages load "
                      f"only on the torch release that built them; recompile it with torch "
                      f"{here}, or serve the export/torchscript format")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise Refused("the AOTInductor package is for cuda and this leaf has no CUDA device")


# torch imports torch.export's and inductor's machinery lazily, when a
# program is loaded and when it first runs, and importing it from two threads
# at once fails (one sees a module the other has half imported). A leaf loads
# each version on a thread of its own: loading and warming up such a version
# is done under this lock, and the machinery imported up front.
_LOAD_LOCK = threading.RLock()


@contextlib.contextmanager
def loading(artifact: Artifact):
    """Hold while loading ``artifact`` and running it the first times."""
    if artifact.kind == "torchscript":
        yield
        return
    with _LOAD_LOCK:
        for machinery in ("torch._dynamo", "torch._inductor", "torch.export"):
            importlib.import_module(machinery)
        yield


def load(path: str, artifact: Artifact, device: torch.device) -> Model:
    """The artifact at ``path`` as a callable on the features dict, on ``device``."""
    check_loadable(artifact, device)
    device = torch.device(device)
    with loading(artifact):
        if artifact.kind == "torchscript":
            module = torch.jit.load(path, map_location=device)
            module.eval()
            return module
        if artifact.kind == "export":
            return _load_program(path, device)
        return AotiModel(path, device)


def _load_program(path: str, device: torch.device) -> Model:
    program = torch.export.load(path)
    if device.type != "cpu":
        # Constants and device arguments were traced on the CPU.
        from torch.export.passes import move_to_device_pass
        program = move_to_device_pass(program, device)
    return program.module()


class AotiModel:
    """A loaded AOTInductor package, called with the features dict.

    The compiled kernels index inputs with the strides they were traced with
    (contiguous): a per-request column arrives as a stride-0 view, so inputs
    are made contiguous first (a no-op for the others), on the device. The
    input order is read once from the package's call spec rather than parsed
    again on every call as the stock wrapper does.
    """

    def __init__(self, path: str, device: torch.device):
        from torch.utils import _pytree as pytree
        self._pytree = pytree
        if device.type == "cpu" or device.index is None:
            compiled = torch._inductor.aoti_load_package(path)
        else:
            compiled = torch._inductor.aoti_load_package(path, device_index=device.index)
        self.device = device
        loader = compiled.loader
        in_spec, self._out_spec = (pytree.treespec_loads(s) for s in loader.get_call_spec()[:2])
        args, kwargs = pytree.tree_unflatten(list(range(in_spec.num_leaves)), in_spec)
        if kwargs or len(args) != 1 or not isinstance(args[0], dict):
            raise Refused(f"{path}: the package does not take one features dict")
        self.keys = [k for k, _ in sorted(args[0].items(), key=lambda kv: kv[1])]
        self._run = loader.run
        self._align = CUDA_INPUT_ALIGN if device.type == "cuda" else 1

    def __call__(self, features: dict) -> torch.Tensor:
        inputs = []
        for key in self.keys:
            t = features[key].contiguous()
            if t.data_ptr() % self._align:
                t = t.clone()
            inputs.append(t)
        return self._pytree.tree_unflatten(self._run(inputs), self._out_spec)


__all__ = ["AotiModel", "Model", "Refused", "check_loadable", "load", "loading", "torch_release",
           "unsupported"]
