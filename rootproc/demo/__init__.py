"""``trimmer demo``: the whole idea on one machine, with real processes.

Generates a scenario (schema, models with derived signatures, bundle, staged
config, LMDB store), runs leaves and one root per comparison mode under
supervisord, drives the same scoring load through each mode, and prints the
table the seed article reports for LZ4 (network, CPU, p90), for every mode.
Everything it writes stays in the run directory; everything it starts is
stopped on exit: SIGINT (Ctrl-C), SIGTERM and SIGHUP each stop the node in
order, whatever dispositions the demo inherited, and a demo killed outright
takes its node down with it (rootproc/demo/supervise.py). Exit status 0 when
the results were written (stopping a ``--keep-running`` node with a signal
included), 1 when the run failed or was interrupted before them.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import json
import select
import signal
import socket
import sys
import time
from argparse import Namespace
from pathlib import Path
from typing import TYPE_CHECKING

from rootproc.demo.modes import MODES, Mode
from rootproc.demo.netns import RemoteHost, parse_rate, unavailable_reason
from rootproc.demo.node import STOP_WAIT_S, Node, Program, cpu_seconds, ipc_endpoint
from rootproc.demo.render import describe_failures, render_chart, render_table
from signatures.runtime.exit_codes import EXIT_FAILED
from signatures.runtime.stop_signals import Stopped, StopSignals, say

if TYPE_CHECKING:  # the scenario needs torch: imported when a run builds one
    from rootproc.demo.scenario import Scenario


def models_arg(value: str) -> int | str:
    if value in ("realistic", "reads"):
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count, 'realistic' or 'reads', "
                                         f"not {value!r}") from None


def parse_args(argv):
    p = argparse.ArgumentParser(prog="trimmer demo", description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", type=Path, help="default: runs/demo-<timestamp>")
    p.add_argument("--requests", type=int, default=120, help="scoring requests per mode")
    p.add_argument("--candidates", type=int, default=256, help="candidates per request")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    p.add_argument("--leaves", type=int, default=2, help="leaf processes")
    p.add_argument("--roots", type=int, default=1, help="root processes per mode")
    p.add_argument("--users", type=int, default=5000, help="users in the feature store")
    p.add_argument("--items", type=int, default=20000, help="candidates in the feature store")
    p.add_argument("--scale", type=float, default=1.0, help="schema size (1.0: about 1,500 features)")
    p.add_argument("--models", type=models_arg, default=4,
                   help="model versions, spread over the leaves, each reading 15-60%% of the schema; "
                        "or 'realistic': a production-sized TorchRec DLRM and DCN (needs the "
                        "[torchrec] extra; rootproc/demo/realistic.py); or 'reads': a "
                        "Matryoshka model (a 64-dim prefix of a 256-dim embedding) and a bf16 "
                        "one, whose reads trim below the feature (mode trimmed-whole compares)")
    p.add_argument("--modes", nargs="+", choices=[m.name for m in MODES], help="default: all")
    p.add_argument("--deadline-ms", type=int, default=10_000,
                   help="each request's deadline at the roots (a closed loop of requests that "
                        "take the node seconds each needs more: the scale bench gives 60000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--metrics", action="store_true", help="expose Prometheus metrics on free ports")
    p.add_argument("--keep-running", action="store_true",
                   help="leave the node up for exploring with `trimmer score`, until Ctrl-C, "
                        "SIGTERM or SIGHUP stops it (exit 0)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--remote-leaf-bandwidth", metavar="RATE",
                   help="run the leaves in their own network namespace behind a veth link shaped "
                        "to RATE (e.g. 200mbit, 1gbit), reached over tcp, so that the table shows "
                        "the network cost trimming saves (needs root and iproute2). At the default "
                        "scale every feature is ~41 MB a request: try --scale 0.5 --candidates 64")
    args = p.parse_args(argv)
    count = 2 if args.models in ("realistic", "reads") else args.models
    if min(args.requests, args.candidates, args.concurrency, args.leaves, args.roots, count,
           args.deadline_ms) < 1:
        p.error("--requests, --candidates, --concurrency, --leaves, --roots, --models and "
                "--deadline-ms must be >= 1")
    if args.remote_leaf_bandwidth:
        try:
            parse_rate(args.remote_leaf_bandwidth)
        except ValueError as exc:
            p.error(f"--remote-leaf-bandwidth: {exc}")
        reason = unavailable_reason()
        if reason:
            p.error(f"--remote-leaf-bandwidth: {reason}")
        local = [m.name for m in MODES if m.local_only and args.modes and m.name in args.modes]
        if local:
            p.error(f"--remote-leaf-bandwidth: mode {', '.join(local)} needs leaves on this node")
    return args


def models_ready(n: int, pong: dict) -> bool:
    """A leaf's pong says ``n`` models are ready."""
    return sum(m.get("ready", False) for m in pong.get("models", [])) >= n


def leaves_healthy(pong: dict) -> bool:
    """A root's pong says every leaf link is healthy and routes every model
    version it scores by default (a root routes a version only once a leaf's
    pong lists it ready)."""
    links = pong.get("leaves", [])
    routed = {key for link in links for key in link.get("models", [])}
    return all(link.get("healthy") for link in links) and set(pong.get("models", [])) <= routed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def leaf_message_limit(args) -> int:
    """The demo's leaves accept its largest message, every feature of every
    candidate (twice the estimate, for ragged lists), and never less than
    the leaf's default (256 MiB): at the largest scales a model's message
    passes that default, which a deployment would raise the same way."""
    from rootproc.demo.schema_gen import ROW_NBYTES_AT_SCALE_1
    return max(256 << 20, int(2 * ROW_NBYTES_AT_SCALE_1 * args.scale * args.candidates))


REMOTE_LEAF_PORT = 5555  # + the leaf's index, inside the leaves' own namespace


def programs_for(scenario: Scenario, modes: list[Mode], args,
                 remote: RemoteHost | None = None) -> tuple[list[Program], dict]:
    from rootproc.demo.scenario import STAGE
    sock = scenario.run_dir.resolve() / "sock"
    sock.mkdir(exist_ok=True)
    programs: list[Program] = []
    roots: dict[str, list[str]] = {}
    leaf_endpoints = {}
    for i, (leaf, models) in enumerate(scenario.placement.items()):
        endpoint = remote.endpoint(REMOTE_LEAF_PORT + i) if remote else ipc_endpoint(sock, leaf)
        leaf_endpoints[leaf] = endpoint
        # Leaves follow the stage like the roots do: the bundle's placement
        # says which of the stage's model versions each one serves.
        argv = [sys.executable, "-m", "leafproc", "--name", leaf, "--repo", str(scenario.repo.resolve()),
                "--bind", endpoint, "--metrics-port", str(free_port() if args.metrics else 0),
                "--config-store", str(scenario.config_store.resolve()), "--stage", STAGE,
                "--max-message-bytes", str(leaf_message_limit(args))]
        if remote:
            # Plain tcp in a namespace of its own, which only this host reaches.
            argv = remote.exec_argv(argv + ["--insecure"])
        programs.append(Program(leaf, argv, endpoint, ready=functools.partial(models_ready, len(models))))
    configs = scenario.run_dir / "roots"
    configs.mkdir(exist_ok=True)
    for mode in modes:
        roots[mode.name] = []
        for i in range(args.roots):
            name = f"root-{mode.name}-{i}"
            endpoint = ipc_endpoint(sock, name)
            config = {
                "name": name, "bind": [endpoint],
                "schema": str(scenario.schema_path.resolve()),
                "config_store": str(scenario.config_store.resolve()), "stage": STAGE,
                "feature_store": str(scenario.feature_store.resolve()),
                "leaves": [{"name": leaf, "endpoints": [leaf_endpoints[leaf]], "models": models}
                           for leaf, models in scenario.placement.items()],
                "trim": mode.trim, "compression": mode.compression,
                "deadline_ms": args.deadline_ms,
                "max_deadline_ms": max(10_000, args.deadline_ms),
                "max_candidates": max(2048, args.candidates),
                "metrics_port": free_port() if args.metrics else None,
                **mode.root_options,
            }
            path = configs / f"{name}.json"
            path.write_text(json.dumps(config, indent=1))
            programs.append(Program(name, [sys.executable, "-m", "rootproc", "--config",
                                           str(path.resolve())], endpoint, ready=leaves_healthy))
            roots[mode.name].append(endpoint)
    return programs, roots


def drive(mode: Mode, endpoints: list[str], leaf_endpoints: list[str], scenario: Scenario,
          args, log) -> dict:
    from rootproc.client.health import ping
    from rootproc.client.loadgen import run_load
    pids = [ping(e)["pid"] for e in endpoints]
    leaf_pids = [ping(e)["pid"] for e in leaf_endpoints]
    load = Namespace(endpoint=endpoints, requests=args.requests, concurrency=args.concurrency,
                     rate=0.0, candidates=args.candidates, feature_store=str(scenario.feature_store),
                     users=0, candidate_ids=0, models=None, deadline_ms=None,
                     timeout_ms=args.deadline_ms + 20_000,
                     seed=args.seed)
    warm = Namespace(**{**vars(load), "requests": min(10, args.requests)})
    run_load(warm)  # caches and allocators warm before anything is measured
    cpu0 = sum(cpu_seconds(p) for p in pids)
    leaf_cpu0 = sum(cpu_seconds(p) for p in leaf_pids)
    progress = None
    if not args.no_progress:
        from tqdm import tqdm
        progress = tqdm(total=args.requests, unit="req", desc=f"{mode.name:<14}", file=sys.stderr,
                        leave=False)
    try:
        stats = run_load(load, progress)
    finally:
        if progress is not None:
            progress.close()
    cpu = sum(cpu_seconds(p) for p in pids) - cpu0
    leaf_cpu = sum(cpu_seconds(p) for p in leaf_pids) - leaf_cpu0
    stats["root_cpu_ms_per_request"] = round(1000 * cpu / max(1, stats["ok"]), 2)
    # Every model version scores every request: one batch each (before the
    # leaf's dynamic batching merges some).
    stats["leaf_cpu_ms_per_batch"] = round(1000 * leaf_cpu / max(1, stats["ok"] * len(scenario.models)), 2)
    stats["mode"] = mode.name
    mb = stats["wire_bytes"] / max(1, stats["ok"]) / 1e6
    log(f"{mode.name:<14} {stats['ok']}/{stats['requests']} ok, {stats['throughput_rps']} req/s, "
        f"p90 {stats['latency_ms']['p90']} ms, {mb:.2f} MB/request")
    return stats


def failures(results: list[dict]) -> list[str]:
    """One line per mode whose requests or model results failed: such a run
    measured less than it was asked to, and the demo says so and fails."""
    return [f"{r['mode']}: {why}" for r in results if (why := describe_failures(r))]


def stopping_notice(signum: int, count: int) -> None:
    name = signal.Signals(signum).name
    say(f"trimmer demo: {name}: stopping the node" if count == 1 else
        f"trimmer demo: {name}: already stopping (the node drains for up to {STOP_WAIT_S} s)")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    run_dir = args.run_dir or Path("runs") / datetime.datetime.now().strftime("demo-%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    modes = [m for m in MODES if (m.name in args.modes if args.modes else
                                  not m.reads_only or args.models == "reads")
             and not (args.remote_leaf_bandwidth and m.local_only)]

    def log(msg):
        print(f"[{time.monotonic() - started:6.1f}s] {msg}", flush=True)

    log(f"run directory: {run_dir}")
    results: list[dict] = []
    with StopSignals(raise_on=1, on_signal=stopping_notice) as signals:
        try:
            run(args, run_dir, modes, signals, results, log)
        except Stopped as stop:
            if not results:
                cause = stop.__context__
                log(f"interrupted by {stop.name} before the results were written"
                    + (f" (while stopping after: {cause!r})" if isinstance(cause, Exception) else "")
                    + "; everything started has been stopped")
                return EXIT_FAILED
            log(f"{stop.name}: everything started has been stopped")
    log("stopped cleanly")
    failed = failures(results)
    for line in failed:
        log(f"FAILED RESULTS in {line}; the root and leaf logs in {run_dir / 'logs'} say why")
    return EXIT_FAILED if failed else 0


def run(args, run_dir: Path, modes: list[Mode], signals: StopSignals, results: list[dict],
        log) -> None:
    """Build the scenario, start the node, measure every mode, write the
    results into ``results`` and the run directory; with ``--keep-running``,
    wait for a stop signal. The node is down when this returns or raises."""
    from rootproc.demo.scenario import build_scenario
    scenario = build_scenario(run_dir, leaves=args.leaves, users=args.users, candidates=args.items,
                              seed=args.seed, scale=args.scale, log=log, models=args.models)
    with contextlib.ExitStack() as stack:
        remote = None
        if args.remote_leaf_bandwidth:
            remote = RemoteHost(args.remote_leaf_bandwidth)
            stack.callback(signals.finish, remote.down)  # down() is safe on a part-made host
            remote.up()
            log(f"leaves in network namespace {remote.name} at {remote.address}, "
                f"behind a link shaped to {args.remote_leaf_bandwidth}")
        programs, roots = programs_for(scenario, modes, args, remote)
        node = Node(run_dir, programs)
        stack.callback(signals.finish, node.stop)
        node.start(log=log)
        leaves = [p.endpoint for p in programs if p.name in scenario.placement]
        measured = [drive(mode, roots[mode.name], leaves, scenario, args, log) for mode in modes]
        table = render_table(measured, args, scenario)
        (run_dir / "results.md").write_text(table)
        (run_dir / "results.json").write_text(json.dumps(measured, indent=1))
        results.extend(measured)
        chart = render_chart(measured, run_dir / "results.png")
        print()
        print(table)
        log(f"wrote {run_dir / 'results.md'}, {run_dir / 'results.json'}"
            + (f", {chart}" if chart else ""))
        if args.keep_running:
            endpoints = " ".join(f"--endpoint {e}" for e in roots[modes[-1].name])
            print(f"\nThe node is up. Try:\n  trimmer score {endpoints} "
                  f"--feature-store {scenario.feature_store} --requests 200\n"
                  f"  trimmer status --config-store {scenario.config_store}\n"
                  f"Ctrl-C (or SIGTERM, SIGHUP) stops everything.", flush=True)
            wakeup = signals.wakeup
            assert wakeup is not None, "signals in use"
            while True:  # until the handler raises Stopped, as this thread wakes
                select.select([wakeup], [], [])
                signals.drain_wakeup()
