"""The optional TorchRec runtime (the ``[torchrec]`` extra), checked before use.

TorchRec's modules run on FBGEMM's operators, which are compiled against one
torch release: a torchrec/fbgemm pair that does not belong together fails
when its operators load, or later, inside a forward pass. `require` checks
the installed pair against the pairs known to load together and imports it,
or raises `TorchRecUnavailable` saying what to install. Nothing here is
imported unless a TorchRec model is exported or served: the base install
has no TorchRec.
"""
from __future__ import annotations

import importlib
import importlib.metadata as metadata
from typing import Any

# torchrec release -> the fbgemm release its operators come from. The CPU
# wheel is fbgemm-gpu-cpu, the CUDA one fbgemm-gpu; both install the
# ``fbgemm_gpu`` package. torchrec 1.8 loads with torch 2.13 (CPU, checked);
# the 1.9 pair needs a newer torch and fails to load its operators there.
PAIRS = {"1.8.0": "1.8.0"}
FBGEMM_DISTS = ("fbgemm-gpu-cpu", "fbgemm-gpu")
INSTALL_HINT = ("install the extra: pip install 'feature-trimmer[torchrec]' (torchrec==1.8.0 with "
                "fbgemm-gpu-cpu==1.8.0 on a CPU torch; with a CUDA torch, fbgemm-gpu==1.8.0 "
                "for its CUDA build instead); `make install` does it on a CPU machine")


class TorchRecUnavailable(ImportError):
    """The TorchRec runtime is missing or not a pair known to load together."""


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _release(version: str) -> str:
    return version.split("+", 1)[0]


def check_pair() -> tuple[str, str]:
    """(torchrec version, fbgemm version), or TorchRecUnavailable saying what is wrong."""
    torchrec = _version("torchrec")
    if torchrec is None:
        raise TorchRecUnavailable(f"TorchRec models need torchrec, which is not installed: "
                                  f"{INSTALL_HINT}")
    fbgemm = {d: v for d in FBGEMM_DISTS if (v := _version(d)) is not None}
    if not fbgemm:
        raise TorchRecUnavailable(f"torchrec {torchrec} is installed without fbgemm-gpu(-cpu), "
                                  f"whose operators it runs on: {INSTALL_HINT}")
    if len(fbgemm) > 1:
        both = ", ".join(f"{d}=={v}" for d, v in fbgemm.items())
        raise TorchRecUnavailable(f"both {both} are installed: they are one package "
                                  "(fbgemm_gpu) built for CPU and for CUDA; keep the one for "
                                  "this torch")
    (dist, version), = fbgemm.items()
    want = PAIRS.get(_release(torchrec))
    if want is None or _release(version) != want:
        known = ", ".join(f"torchrec=={t} with fbgemm=={f}" for t, f in PAIRS.items())
        raise TorchRecUnavailable(f"torchrec {torchrec} with {dist} {version} is not a pair "
                                  f"known to load together (known: {known}): {INSTALL_HINT}")
    return torchrec, version


_loaded: Any = None


def require() -> Any:
    """The ``torchrec`` module, its FBGEMM operators registered (TorchScript
    files of TorchRec models call them); TorchRecUnavailable if the pair is
    missing, mismatched or fails to load."""
    global _loaded
    if _loaded is not None:
        return _loaded
    torchrec_version, fbgemm_version = check_pair()
    try:
        importlib.import_module("fbgemm_gpu")
        module = importlib.import_module("torchrec")
    except Exception as exc:  # an operator library that does not load raises OSError, RuntimeError...
        raise TorchRecUnavailable(f"torchrec {torchrec_version} with fbgemm {fbgemm_version} "
                                  f"failed to load ({type(exc).__name__}: {exc}); the pair "
                                  f"must match this torch: {INSTALL_HINT}") from exc
    _loaded = module
    return module


__all__ = ["PAIRS", "TorchRecUnavailable", "check_pair", "require"]
