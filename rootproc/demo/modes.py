"""The comparison modes: the seed's "before" (every feature to every leaf),
its first fix (LZ4), and trimming, alone and combined with LZ4 or with
shared-memory links to the (local) leaves."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Mode:
    name: str
    label: str
    trim: str
    compression: str
    root_options: dict = field(default_factory=dict)
    local_only: bool = False   # meaningless with remote leaves (--remote-leaf-bandwidth)
    reads_only: bool = False   # run by default only with --models reads


MODES = [
    Mode("all", "all features", "off", "none"),
    Mode("all-lz4", "all features + LZ4", "off", "lz4"),
    Mode("trimmed", "trimmed", "on", "none"),
    Mode("trimmed-lz4", "trimmed + LZ4", "on", "lz4"),
    # The leaves are local (ipc): batches go through shared-memory slots.
    Mode("trimmed-shm", "trimmed + shared memory", "on", "none",
         root_options={"shm": {"enabled": True}},   # the default ring (rootproc/defaults.py)
         local_only=True),
    # Feature-level trimming alone: the models' reads are not used (--models reads).
    Mode("trimmed-whole", "trimmed, read features whole", "on", "none",
         root_options={"sub_feature": False}, reads_only=True),
]
BASELINE = "all"
