"""From decoded batches to the ``Dict[str, Tensor]`` a model takes.

Two builders share one assembly routine; they differ only in how a numpy
view on a received message becomes a tensor:

- `HostTensors` (CPU): ``torch.from_numpy`` on the view, so the tensor
  aliases the zmq frame's memory. Frames are writable buffers, so no copy
  and no read-only warning.
- `StagedTensors` (CUDA): every message of a forward pass is copied into one
  pinned staging buffer, which goes to the device in ONE host-to-device copy;
  columns are then views on the device buffer at the same byte offsets they
  had in the message.

Per-request dense columns are broadcast with ``expand`` after that copy (a
stride-0 view), so they are never materialised per row on the host. When
several requests are merged into one forward, dense columns are concatenated
along rows and ragged offsets are rebased; per-request ragged columns are
only merged between requests whose lists are identical (see `merge_key`),
because the model convention gives them as a single row.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from _trim import Decoded
from signatures.repository.module_info import TensorSpec

TORCH_DTYPES = {
    np.dtype("float32"): torch.float32, np.dtype("float16"): torch.float16,
    np.dtype("float64"): torch.float64, np.dtype("int64"): torch.int64,
    np.dtype("int32"): torch.int32, np.dtype("int8"): torch.int8,
    np.dtype("uint8"): torch.uint8, np.dtype("bool"): torch.bool,
    # A bfloat16 column's raw bits (numpy has no bfloat16); `widened` views them.
    np.dtype("uint16"): torch.uint16,
}
# Beyond this many ranges, a sliced column is placed by one index_copy_, not a copy per range.
MAX_RANGE_COPIES = 8
# Messages are laid out in the staging buffer at this alignment, so that every
# column view keeps the 8-byte alignment it had in its message.
STAGE_ALIGN = 64


@dataclass(eq=False)
class Part:
    """One validated request: its decoded columns and the message bytes they live in."""

    decoded: Decoded
    raw: np.ndarray  # uint8 view of the message (total_nbytes, no transport tail)
    rows: int
    pinned: bool = False  # raw lies in page-locked memory: the device can DMA from it


def merge_key(decoded: Decoded, inputs: list[TensorSpec]) -> tuple:
    """Requests with equal keys can share a forward pass: equal per-request
    lists (a grouped message: the same groups, their per-request lists equal)."""
    if decoded.groups:
        key: list = ["grouped"]
        for name in sorted(decoded.groups):
            g = decoded.groups[name]
            key.append(name)
            if g.kind == "jagged" and g.per_request:
                values, offsets = decoded[name]
                tail = offsets[len(offsets) - 1 - g.per_request:]
                key += [np.diff(tail).tobytes(), values[int(tail[0]):].tobytes()]
        return tuple(key)
    key = []
    for spec in inputs:
        if spec.ragged and spec.per_request:
            values, offsets = decoded[spec.name]
            key.append(values.tobytes())
    return tuple(key)


Mapper = Callable[[np.ndarray], torch.Tensor]


def assemble(parts: list[Part], mappers: list[Mapper], inputs: list[TensorSpec],
             groups=()) -> dict:
    features: dict[str, torch.Tensor] = {}
    single = len(parts) == 1
    covered: set[str] = set()
    if not single and parts[0].decoded.groups:
        covered = merged_groups(parts, mappers, groups, features)
    elif parts[0].decoded.groups:
        # The model's groups, as views on the message: a jagged group's values and
        # offsets (its KeyedJaggedTensor's), a dense group's [rows, D] tensor.
        decoded = parts[0].decoded
        for g in groups:
            if decoded.group_of(g.name) is None:
                continue
            col = decoded[g.name]
            if g.kind == "jagged":
                features[g.name + ".values"] = mappers[0](col.values)
                features[g.name + ".offsets"] = mappers[0](col.offsets)
            else:
                features[g.name] = mappers[0](col)
            covered.update(g.members)
    for spec in inputs:
        name = spec.name
        if name in covered:
            continue
        if spec.ragged:
            cols = [p.decoded[name] for p in parts]
            if single or spec.per_request:
                features[name + ".values"] = mappers[0](cols[0].values)
                features[name + ".offsets"] = mappers[0](cols[0].offsets)
                continue
            values, offsets, base = [], [], 0
            for i, (col, m) in enumerate(zip(cols, mappers)):
                values.append(m(col.values))
                off = m(col.offsets)
                offsets.append(off if i == 0 else off[1:] + base)
                base += len(col.values)
            features[name + ".values"] = torch.cat(values)
            features[name + ".offsets"] = torch.cat(offsets)
        else:
            tensors = []
            for p, m in zip(parts, mappers):
                t = m(p.decoded[name])
                wire_dtype = p.decoded.spec(name)[0]
                sliced = p.decoded.slice_of(name)
                if sliced is not None or wire_dtype != spec.dtype:
                    t = widened(t, spec, wire_dtype, sliced)
                if p.decoded.is_per_request(name):
                    t = t.expand((p.rows,) + tuple(t.shape[1:]))
                tensors.append(t)
            features[name] = tensors[0] if single else torch.cat(tensors)
    return features


def merged_groups(parts: list[Part], mappers: list[Mapper], groups, features: dict) -> set[str]:
    """Several requests' groups as one forward's (merge_key made them share
    their per-request lists): a dense group's rows concatenated, a jagged
    group rebuilt key-major, each per-row member's lists of every request in
    turn, then the per-request lists once (a copy, as any merge). Returns the
    members covered."""
    covered: set[str] = set()
    for g in groups:
        if parts[0].decoded.group_of(g.name) is None:
            continue
        cols = [p.decoded[g.name] for p in parts]
        if g.kind == "dense":
            features[g.name] = torch.cat([m(c) for c, m in zip(cols, mappers)])
            covered.update(g.members)
            continue
        n_rows = len(g.members) - g.per_request
        values, lengths = [], []
        mapped = [(m(c.values), m(c.offsets), c.offsets, p.rows)
                  for c, m, p in zip(cols, mappers, parts)]
        for k in range(n_rows):
            for v, o, host, rows in mapped:
                a, b = int(host[k * rows]), int(host[(k + 1) * rows])
                values.append(v[a:b])
                lengths.append(o[k * rows + 1:(k + 1) * rows + 1] - o[k * rows:(k + 1) * rows])
        v, o, host, rows = mapped[0]
        values.append(v[int(host[n_rows * rows]):])
        lengths.append(o[n_rows * rows + 1:] - o[n_rows * rows:-1])
        flat = torch.cat(lengths)
        features[g.name + ".values"] = torch.cat(values)
        features[g.name + ".offsets"] = torch.cat([flat.new_zeros(1), torch.cumsum(flat, 0)])
        covered.update(g.members)
    return covered


def widened(t: torch.Tensor, spec: TensorSpec, wire_dtype: str, sliced) -> torch.Tensor:
    """A column sent as ``spec``'s read, as the feature the model declares:
    narrowed values widened back (exact), read positions placed at their
    place in a ``[rows, width]`` tensor of zeros (positions the model never
    reads). Runs where ``t`` is: on the device, after its one copy there.
    The model's own cast then gives the bits it would have given the whole
    feature (docs/signatures.md, "Sub-feature reads")."""
    if wire_dtype == "bfloat16":
        t = t.view(torch.bfloat16)
    declared = TORCH_DTYPES[np.dtype(spec.dtype)]
    if sliced is None:
        return t.to(declared)
    full, ranges = sliced
    out = torch.zeros((t.shape[0], full), dtype=declared, device=t.device)
    if len(ranges) > MAX_RANGE_COPIES:
        positions = [p for a, b in ranges for p in range(a, b)]
        index = torch.tensor(positions, dtype=torch.int64).to(t.device, non_blocking=True)
        return out.index_copy_(1, index, t.to(declared))
    at = 0
    for a, b in ranges:
        out[:, a:b].copy_(t[:, at:at + b - a])
        at += b - a
    return out


def _private_copy(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(arr.copy())


class HostTensors:
    device = torch.device("cpu")

    def build(self, parts: list[Part], inputs: list[TensorSpec], private: bool = False,
              groups=()) -> dict:
        """``private``: the model writes to its inputs, so columns on memory
        the leaf may only read (a root's shared-memory slot) are copied; a
        received frame is the leaf's own and is used in place."""
        mappers: list[Mapper] = [
            _private_copy if private and not p.raw.flags.writeable else torch.from_numpy
            for p in parts]
        return assemble(parts, mappers, inputs, groups)


def written_inputs(model, features: dict[str, torch.Tensor], rows: int) -> list[str]:
    """The inputs one forward of ``model`` (its output checked as `to_scores`
    does) writes to in place: torch counts every in-place write in a tensor's
    version, kept by ``features`` made outside inference mode."""
    before = {name: t._version for name, t in features.items()}
    with torch.inference_mode():
        to_scores(model(features), rows)
    return sorted(name for name, t in features.items() if t._version != before[name])


class StagedTensors:
    """One host-to-device copy per forward pass, from a reused staging buffer.

    Also runs on CPU (unpinned), which lets the test suite check the offset
    arithmetic on machines without a GPU.
    """

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self._pin = self.device.type == "cuda"
        self._staging = torch.empty(0, dtype=torch.uint8)
        self._staging_np = self._staging.numpy()
        # CUDA event: the last copy out of the staging buffer is done
        self._copied: torch.cuda.Event | None = None

    def _reserve(self, nbytes: int) -> None:
        if nbytes <= len(self._staging):
            return
        size = max(nbytes, 2 * len(self._staging), 1 << 20)
        self._staging = torch.empty(size, dtype=torch.uint8, pin_memory=self._pin)
        self._staging_np = self._staging.numpy()

    def build(self, parts: list[Part], inputs: list[TensorSpec], private: bool = False,
              groups=()) -> dict:
        # Always private: the model sees the staging buffer or the device's copy.
        bases, total = [], 0
        for p in parts:
            bases.append(total)
            total += -(-p.raw.nbytes // STAGE_ALIGN) * STAGE_ALIGN
        if self._pin and all(p.pinned for p in parts):
            # Shared-memory slots registered as pinned memory: DMA straight from
            # them. The scores are read back before the reply, which waits for
            # these copies, so the root gets its slot back only after them.
            on_device = torch.empty(total, dtype=torch.uint8, device=self.device)
            for p, base in zip(parts, bases):
                on_device[base:base + p.raw.nbytes].copy_(torch.from_numpy(p.raw), non_blocking=True)
            mappers = [self._mapper(on_device, base, p.raw) for p, base in zip(parts, bases)]
            return assemble(parts, mappers, inputs, groups)
        # Reading scores back normally synchronises, but a forward that raised
        # may not have: never overwrite pinned memory a DMA is still reading.
        if self._copied is not None:
            self._copied.synchronize()
        self._reserve(total)
        for p, base in zip(parts, bases):
            self._staging_np[base:base + p.raw.nbytes] = p.raw
        staged = self._staging[:total]
        if self._pin:
            on_device = staged.to(self.device, non_blocking=True)
            self._copied = torch.cuda.Event()
            self._copied.record()
        else:
            on_device = staged.clone()
        mappers = [self._mapper(on_device, base, p.raw) for p, base in zip(parts, bases)]
        return assemble(parts, mappers, inputs, groups)

    @staticmethod
    def _mapper(buf: torch.Tensor, base: int, raw: np.ndarray) -> Mapper:
        origin = raw.ctypes.data

        def view(arr: np.ndarray) -> torch.Tensor:
            start = base + arr.ctypes.data - origin
            flat = buf[start:start + arr.nbytes].view(TORCH_DTYPES[arr.dtype])
            return flat.reshape(arr.shape)
        return view


def builder_for(device: torch.device, staged: bool | None = None):
    """The builder for ``device``; ``staged`` forces the staging path (tests)."""
    if staged is None:
        staged = torch.device(device).type != "cpu"
    return StagedTensors(device) if staged else HostTensors()


class ModelOutputError(ValueError):
    pass


def to_scores(out, rows: int) -> np.ndarray:
    """The model's output as ``rows`` float32 scores on the host."""
    if not isinstance(out, torch.Tensor):
        raise ModelOutputError(f"model returned {type(out).__name__}, expected a Tensor")
    if out.dim() == 2 and out.shape[1] == 1:
        out = out[:, 0]
    if tuple(out.shape) != (rows,):
        raise ModelOutputError(f"model returned shape {list(out.shape)}, expected [{rows}] "
                               f"or [{rows}, 1]")
    return np.ascontiguousarray(out.detach().to("cpu", torch.float32).numpy())
