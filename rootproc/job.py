"""A score request from `Scorer.start` (rootproc/scoring.py) until the router
parks it: what the scorer's steps hand each other, across the worker thread
that builds its batch and the loop that sends its models."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rootproc.intake import ScoreRequest
    from rootproc.open_request import OpenRequest
    from rootproc.preprocess.preprocessor import Preprocessor


@dataclass(eq=False)
class Job:
    """One score request from `Scorer.start` until the router parks it."""

    envelope: list
    req: ScoreRequest
    wanted: list            # (model, known) in the order the request named them
    pre: Preprocessor       # the one chosen for it
    gaps: list
    t0: float               # time.perf_counter() on arrival
    deadline: float         # time.monotonic()
    reserved: int = 0       # bytes of the memory budget it holds until the router has it
    records_nbytes: int = 0   # of them, the records' (estimated)
    build_nbytes: int = 0     # the records' and the batch's (estimated)
    batch: Any = None
    t_fetch: float = 0.0
    t_pre: float = 0.0
    missing: int = 0        # entities the store lacked
    error: BaseException | None = None
    # Sending, on the loop: the router's request, the next model to send.
    request: OpenRequest | None = None
    next_model: int = 0
    # Every-feature size (`Untrimmed`, None: the batch has them all), its ragged counts.
    counterfactual: Any = None
    ragged_counts: dict = field(default_factory=dict)
    untrimmed: int = 0
    nbytes: dict = field(default_factory=dict)   # model -> its message's bytes
    trace: Any = None   # RequestTrace (rootproc/request_trace.py) when tracing is on


__all__ = ["Job"]
