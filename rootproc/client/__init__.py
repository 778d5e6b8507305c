"""Talking to roots from outside: the scoring client library, health checks
and the `trimmer score` load generator.

    from rootproc.client import ScoringClient
    client = ScoringClient(["ipc:///run/trimmer/root-0.sock"])
    result = client.score(user=42, candidates=ids, models=["ctr@3"])

The library (`scoring_client`) and `health` import only the transport layer
(pyzmq, numpy, orjson): no torch, no store drivers, no kernel
(tests/test_layering.py checks it). `loadgen` is the `trimmer score`
command; it reads ids from a feature store only when asked to.
"""
from rootproc.client.async_client import AsyncScoringClient
from rootproc.client.scoring_client import ScoreResult, ScoringClient, ScoringError

__all__ = ["AsyncScoringClient", "ScoreResult", "ScoringClient", "ScoringError"]
