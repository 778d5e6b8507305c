"""The demo's results as a Markdown table and a chart."""
from __future__ import annotations

from pathlib import Path

from rootproc.demo.modes import BASELINE, MODES

LABELS = {m.name: m.label for m in MODES}
FORMAT_LABELS = {"torchscript": "TorchScript", "export": "torch.export programs",
                 "aoti": "AOTInductor packages"}


NOT_COMPARED = "n/a†"


def _change(value: float, base: float) -> str:
    if not base:
        return "—"
    return f"{100 * (value - base) / base:+.0f}%"


def _kinds(counts: dict) -> str:
    return ", ".join(f"{kind} {n}" for kind, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def describe_failures(result: dict) -> str | None:
    """What failed in one mode's run (requests, then model results, by kind),
    or None when nothing did."""
    parts = [f"{sum(counts.values())} failed {what} ({_kinds(counts)})"
             for what, counts in (("requests", result["errors"]),
                                  ("model results", result["model_errors"]))
             if sum(counts.values())]
    return ", ".join(parts) or None


def render_table(results: list[dict], args, scenario) -> str:
    base = next((r for r in results if r["mode"] == BASELINE), results[0])

    def per_request(r):
        return r["wire_bytes"] / max(1, r["ok"])

    lines = [
        f"Feature Trimmer demo: {len(scenario.schema)} features, {len(scenario.models)} models "
        f"on {len(scenario.placement)} leaves, {args.candidates} candidates/request, "
        f"{args.requests} requests/mode, concurrency {args.concurrency}.",
        *([f"Leaves in their own network namespace, reached over tcp through a link shaped to "
           f"{args.remote_leaf_bandwidth}."] if getattr(args, "remote_leaf_bandwidth", None) else []),
        "",
        "| mode | MB/request root→leaves | network vs all | req/s | p50 ms | p90 ms | p99 ms "
        "| root CPU ms/request | CPU vs all | p90 vs all | leaf CPU ms/batch | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    # A mode whose requests or models failed did less work than it was asked
    # to: a ratio against it (or of it) would flatter whichever side failed.
    failed = {r["mode"]: why for r in results if (why := describe_failures(r))}
    for r in results:
        lat = r["latency_ms"]
        errors = sum(r["errors"].values()) + sum(r["model_errors"].values())
        compared = r is base or not ({r["mode"], base["mode"]} & set(failed))

        def change(value, of_base, compared=compared):
            return _change(value, of_base) if compared else NOT_COMPARED

        lines.append(
            f"| {LABELS.get(r['mode'], r['mode'])} | {per_request(r) / 1e6:.2f} "
            f"| {change(per_request(r), per_request(base))} | {r['throughput_rps']:.1f} "
            f"| {lat['p50']:.1f} | {lat['p90']:.1f} | {lat['p99']:.1f} "
            f"| {r['root_cpu_ms_per_request']:.1f} "
            f"| {change(r['root_cpu_ms_per_request'], base['root_cpu_ms_per_request'])} "
            f"| {change(lat['p90'], base['latency_ms']['p90'])} "
            f"| {r.get('leaf_cpu_ms_per_batch', float('nan')):.1f} | {errors} |")
    if failed:
        lines.append("")
        lines += [f"† no comparison: {LABELS.get(mode, mode)} had {why}" for mode, why in failed.items()]
    if any("shm" in r["mode"] for r in results):
        lines += ["", "With shared memory the batch bytes are written into the leaf's slots; "
                      "only a descriptor crosses the ipc socket."]
    served = FORMAT_LABELS[scenario.model_format]
    lines += ["", f"Models, served as {served} (share of the schema each reads): "
              + ", ".join(f"{k} {v:.0%}" for k, v in scenario.models.items()), ""]
    return "\n".join(lines)


def render_chart(results: list[dict], path: Path) -> Path | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    labels = [LABELS.get(r["mode"], r["mode"]) for r in results]
    mb = [r["wire_bytes"] / max(1, r["ok"]) / 1e6 for r in results]
    p90 = [r["latency_ms"]["p90"] for r in results]
    cpu = [r["root_cpu_ms_per_request"] for r in results]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, values, title in zip(axes, (mb, cpu, p90),
                                 ("MB per request, root → leaves", "root CPU ms per request",
                                  "p90 latency (ms)")):
        bars = ax.bar(range(len(values)), values, color=["#999999" if "all" in r["mode"] else "#2a7ab9"
                                                          for r in results])
        ax.set_xticks(range(len(values)), labels, rotation=25, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    fig.suptitle("Feature Trimmer: send what you use")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
