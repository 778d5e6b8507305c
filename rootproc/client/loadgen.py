"""``trimmer score``: drive scoring load against one or more roots.

Closed loop (``--concurrency C``: C requests always in flight) or open loop
(``--rate R`` requests per second, at most ``--concurrency`` in flight).
Prints throughput, p50/p90/p99 latency, bytes sent to leaves (as the roots
report them) and failed requests and failed model results by kind;
``--json`` prints one JSON object instead (``model_results``: ``{"ok",
"failed"}``). Exit status 0 when every request was answered with every
model scored, 1 when a request or a model result failed.
``--output FILE`` writes what was scored: one JSON line per request sent, in
the order the replies came, ``{"id", "user", "candidates", "scores": {model:
[float, ...]}, "errors": {model: error}}``, or ``{"id", "user",
"candidates", "error"}`` for a request that failed whole (``timeout`` or
``abandoned`` when no reply came). Scores are written as the shortest
decimal that reads back as the same float32; NaN and infinities as null.
SIGINT (Ctrl-C), SIGTERM or SIGHUP, whatever dispositions it inherited, stop
it early: no new requests, the ones in flight are waited for (up to
``--timeout-ms``), and the report covers what was sent (``stopped_by`` names
the signal). A second signal stops at once; the requests still in flight are
counted as ``abandoned`` errors.

    trimmer score --endpoint ipc:///run/trimmer/root-0.sock --requests 2000 \\
        --concurrency 16 --candidates 256 --feature-store /var/lib/trimmer/features
"""
from __future__ import annotations

import argparse
import collections
import json
import signal
import sys
import time

import numpy as np
import orjson
import zmq

from rootproc.client.scoring_client import ScoringClient, add_curve_arguments
from signatures.runtime.exit_codes import EXIT_FAILED
from signatures.runtime.stop_signals import Stopped, StopSignals, say


def id_space(args) -> tuple[tuple[int, int], tuple[int, int]]:
    """(user id range, candidate id range), inclusive, from the store or flags."""
    if args.feature_store:
        from rootproc.featurestore import open_feature_store
        with open_feature_store(args.feature_store) as store:
            users, cands = store.id_range("user"), store.id_range("candidate")
        if users is None or cands is None:
            raise ValueError(f"feature store {args.feature_store} is empty")
        return users, cands
    return (0, args.users - 1), (0, args.candidate_ids - 1)


class ScoresFile:
    """``--output``: one JSON line per request sent, once its fate is known."""

    def __init__(self, path: str):
        self.file = open(path, "wb")
        self.asked: dict[str, tuple[int, np.ndarray]] = {}

    def sent(self, rid: str, user: int, candidates: np.ndarray) -> None:
        self.asked[rid] = (user, candidates)

    def answered(self, res) -> None:
        user, candidates = self.asked.pop(res.id, (None, None))
        if candidates is None:
            return   # not one of ours
        line = {"id": res.id, "user": user, "candidates": candidates}
        if res.ok:
            line.update(scores=res.scores, errors=res.errors)
        else:
            line["error"] = res.error
        self._write(line)

    def close(self, unanswered: str) -> None:
        """Write the requests no reply came for, as ``unanswered`` errors."""
        for rid, (user, candidates) in list(self.asked.items()):
            self._write({"id": rid, "user": user, "candidates": candidates,
                         "error": {"kind": unanswered, "message": "no reply came"}})
        self.asked.clear()
        self.file.close()

    def _write(self, line: dict) -> None:
        # orjson writes a float32 as the shortest decimal of that float32, NaN as null.
        self.file.write(orjson.dumps(line, option=orjson.OPT_SERIALIZE_NUMPY
                                     | orjson.OPT_APPEND_NEWLINE))


def percentile(values, q) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


def run_load(args, progress=None, stop: StopSignals | None = None) -> dict:
    """Drive the load ``args`` describe and report it. With ``stop``, its
    first signal ends the sending (the requests in flight are still waited
    for) and its second (`Stopped`) the waiting."""
    users, cands = id_space(args)
    rng = np.random.default_rng(args.seed)
    output = ScoresFile(args.output) if getattr(args, "output", None) else None
    client = ScoringClient(args.endpoint, timeout_ms=args.timeout_ms,
                           curve_server_public_key=getattr(args, "curve_server_public_key", None),
                           curve_client_secret_key=getattr(args, "curve_client_secret_key", None))
    latencies: list[float] = []
    errors: collections.Counter[str] = collections.Counter()
    model_errors: collections.Counter[str] = collections.Counter()
    bytes_sent = wire_bytes = 0
    n_ok = models_ok = 0
    sent = 0
    interval = 1.0 / args.rate if args.rate else 0.0
    timeout_s = args.timeout_ms / 1000
    t0 = time.perf_counter()
    next_send = t0
    last_heard = t0   # the last send or reply: the timeout counts silence from there
    poller = zmq.Poller()
    poller.register(client.socket, zmq.POLLIN)
    for sock in client.watched:   # its connection's events: a drop answers what it lost
        poller.register(sock, zmq.POLLIN)
    if stop is not None and stop.wakeup is not None:
        poller.register(stop.wakeup, zmq.POLLIN)

    def account(res):
        nonlocal bytes_sent, wire_bytes, n_ok, models_ok
        if res.ok:
            latencies.append(res.latency_s)
            n_ok += 1
            models_ok += len(res.results) - len(res.errors)
            for r in res.results:
                bytes_sent += r.get("bytes_sent", 0)
                wire_bytes += r.get("wire_bytes", r.get("bytes_sent", 0))
            for err in res.errors.values():
                model_errors[err.get("kind", "?")] += 1
        else:
            errors[res.error.get("kind", "?")] += 1
        if output is not None:
            output.answered(res)
        if progress is not None:
            progress.update(1)

    def more() -> bool:
        return sent < args.requests and not (stop is not None and stop.requested)

    unanswered = "abandoned"   # what a request still in flight at the end is written as
    try:
        while more() or client.in_flight:
            now = time.perf_counter()
            can_send = more() and client.in_flight < args.concurrency
            if can_send and now >= next_send:
                user = int(rng.integers(users[0], users[1] + 1))
                ids = rng.integers(cands[0], cands[1] + 1, size=args.candidates)
                rid = client.submit(user, ids, args.models, args.deadline_ms)
                if output is not None:
                    output.sent(rid, user, ids)
                sent += 1
                last_heard = now
                next_send = max(next_send + interval, now) if interval else now
                continue
            until = next_send if can_send else last_heard + timeout_s
            # Woken early by a reply, or by a stop signal (the loop looks again).
            wait_ms = 0 if client.answered_here else max(0, int((until - now) * 1000) + 1)
            ready = dict(poller.poll(wait_ms))
            if not client.answered_here and not any(ready.get(s) for s in
                                                    (client.socket, *client.watched)):
                if stop is not None:
                    stop.drain_wakeup()
                if not can_send and time.perf_counter() - last_heard >= timeout_s:
                    errors["timeout"] += client.in_flight  # nothing came back in time
                    break
                continue
            last_heard = time.perf_counter()
            while (res := client.receive(0)) is not None:
                account(res)
        unanswered = "timeout"
    except Stopped:
        if stop is None:  # someone else's (the demo's): theirs to handle
            raise
        errors["abandoned"] += client.in_flight
    finally:
        client.close()
        if output is not None:
            output.close(unanswered)
    elapsed = time.perf_counter() - t0
    lat_ms = np.array(latencies) * 1000
    stopped = {"stopped_by": stop.first} if stop is not None and stop.requested else {}
    return {**stopped, "requests": sent, "ok": n_ok, "elapsed_s": round(elapsed, 3),
            "throughput_rps": round(n_ok / elapsed, 1) if elapsed else 0.0,
            "latency_ms": {"p50": round(percentile(lat_ms, 50), 3),
                           "p90": round(percentile(lat_ms, 90), 3),
                           "p99": round(percentile(lat_ms, 99), 3),
                           "max": round(float(lat_ms.max()), 3) if len(lat_ms) else float("nan")},
            "bytes_sent": bytes_sent, "wire_bytes": wire_bytes,
            "bytes_per_request": round(bytes_sent / n_ok) if n_ok else 0,
            "errors": dict(errors), "model_errors": dict(model_errors),
            "model_results": {"ok": models_ok, "failed": sum(model_errors.values())}}


def by_kind(counts: dict) -> str:
    """``{"timeout": 2, "unavailable": 1}`` as ``timeout 2, unavailable 1``."""
    return ", ".join(f"{kind} {n}" for kind, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def report_text(report: dict, asked: int) -> list[str]:
    """The report as lines of text."""
    lat, models = report["latency_ms"], report["model_results"]
    lines = [f"{report['ok']}/{report['requests']} requests answered in {report['elapsed_s']} s "
             f"({report['throughput_rps']} req/s)"
             + (f"; {report['requests'] - report['ok']} failed: {by_kind(report['errors'])}"
                if report["errors"] else ""),
             f"model results: {models['ok']} ok"
             + (f", {models['failed']} failed: {by_kind(report['model_errors'])}"
                if models["failed"] else ""),
             f"latency ms: p50 {lat['p50']}  p90 {lat['p90']}  p99 {lat['p99']}  max {lat['max']}",
             f"bytes sent to leaves: {report['bytes_sent']} ({report['bytes_per_request']} per "
             f"request), on the wire {report['wire_bytes']}"]
    if "stopped_by" in report:
        lines.append(f"stopped by {report['stopped_by']} after {report['requests']} of {asked} "
                     "requests")
    return lines


def exit_status(report: dict) -> int:
    """0: every request answered with every model scored; 1 (EXIT_FAILED):
    a request failed, or a model result in a reply did."""
    return EXIT_FAILED if report["errors"] or report["model_results"]["failed"] else 0


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="trimmer score", description=__doc__.splitlines()[0],
        epilog="exit status: 0 when every request was answered with every model scored; 1 when "
               "a request failed (timeout, unavailable, ...) or a model result in a reply did "
               "(the report counts each by kind); 2 for a wrong command line",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--endpoint", action="append", required=True,
                   help="root endpoint (repeatable: requests spread across roots)")
    p.add_argument("--requests", "-n", type=int, default=1000)
    p.add_argument("--concurrency", "-c", type=int, default=8)
    p.add_argument("--rate", type=float, default=0.0, help="requests per second (0: closed loop)")
    p.add_argument("--candidates", type=int, default=256, help="candidates per request")
    p.add_argument("--feature-store", metavar="ADDRESS", help="feature store to draw existing ids "
                   "from: an LMDB directory or a redis[s]:// address")
    p.add_argument("--users", type=int, default=1000, help="user id space without --feature-store")
    p.add_argument("--candidate-ids", type=int, default=100_000,
                   help="candidate id space without --feature-store")
    p.add_argument("--models", nargs="+", help="model versions (default: the root's active set)")
    p.add_argument("--deadline-ms", type=int)
    p.add_argument("--timeout-ms", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--output", metavar="FILE", help="write each request's id, user, candidate "
                   "ids and per-model scores or error to FILE, one JSON line per request")
    p.add_argument("--no-progress", action="store_true")
    add_curve_arguments(p)
    args = p.parse_args(argv)
    if args.requests < 0 or args.concurrency < 1 or args.candidates < 0:
        p.error("--requests >= 0, --concurrency >= 1 and --candidates >= 0")
    progress = None
    if not args.no_progress and not args.json:
        from tqdm import tqdm
        progress = tqdm(total=args.requests, unit="req", file=sys.stderr)
    try:
        with StopSignals(raise_on=2, on_signal=stopping_notice) as stop:
            report = run_load(args, progress, stop)
    except ValueError as exc:
        print(f"trimmer score: {exc}", file=sys.stderr)
        return 2
    except Stopped as exc:  # before any request was sent
        print(f"trimmer score: stopped by {exc.name}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        if progress is not None:
            progress.close()
    if args.json:
        print(json.dumps(report))
    else:
        print("\n".join(report_text(report, args.requests)))
    return exit_status(report)


def stopping_notice(signum: int, count: int) -> None:
    name = signal.Signals(signum).name
    say(f"\ntrimmer score: {name}: no new requests; waiting for those in flight (again to stop "
        f"now)" if count == 1 else f"\ntrimmer score: {name}: stopping now")


__all__ = ["main", "run_load"]
