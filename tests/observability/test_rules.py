"""deploy/observability: the alert rules pass `promtool check rules`, the
dashboard's queries parse, every metric either names is one the processes
export, and every alert is explained in docs/operations.md."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from tests.support.metric_names import leaf_families, root_families, series_names

from .prometheus_server import PROMTOOL, require_prometheus

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "observability"
RULES = DEPLOY / "trimmer-alerts.yml"
DASHBOARD = DEPLOY / "trimmer-dashboard.json"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
# Grafana's variables, as a query sees them once Grafana has put them in.
GRAFANA_VARS = {"$__rate_interval": "5m", "$root_job": "trimmer-root",
                "$leaf_job": "trimmer-leaf", "$instance": ".*"}


def dashboard_exprs() -> list[str]:
    out = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        out += [t["expr"] for t in panel.get("targets", ())]
    for var in json.loads(DASHBOARD.read_text())["templating"]["list"]:
        if var["type"] == "query":
            out.append(re.sub(r"^label_values\((.*), \w+\)$", r"\1", var["query"]))
    return out


def grafana(expr: str) -> str:
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    return expr


def promtool(*args) -> subprocess.CompletedProcess:
    require_prometheus()
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60)


def test_promtool_checks_the_rules():
    r = promtool("check", "rules", str(RULES))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout, r.stdout


def test_the_dashboards_queries_parse(tmp_path):
    """Each panel query, Grafana's variables filled in, as a recording rule
    promtool checks (a rule file in JSON is YAML too)."""
    exprs = dashboard_exprs()
    assert len(exprs) >= 20
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": grafana(e)} for i, e in enumerate(exprs)]}]}
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(json.dumps(rules))
    r = promtool("check", "rules", str(path))
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_metric_the_rules_and_dashboard_use_is_exported():
    exported = series_names(root_families()) | series_names(leaf_families())
    used = {"rules": set(re.findall(r"\btrimmer_\w+", RULES.read_text())),
            "dashboard": set(re.findall(r"\btrimmer_\w+", " ".join(dashboard_exprs())))}
    for where, names in used.items():
        assert names, where
        assert names <= exported, f"{where}: not exported: {sorted(names - exported)}"
    # What the issue asks them to cover: trim gaps, bytes saved, errors by
    # kind, rotation, store errors, latency by stage.
    for name in ("trimmer_root_trim_gaps_total", "trimmer_root_sent_bytes_total",
                 "trimmer_root_untrimmed_bytes_total", "trimmer_root_errors_total",
                 "trimmer_root_leaf_up", "trimmer_root_leaf_rotation_exits_total",
                 "trimmer_root_store_errors_total", "trimmer_root_latency_seconds_bucket"):
        assert name in used["rules"] and name in used["dashboard"], name


def test_every_alert_is_explained_in_the_operations_guide():
    alerts = re.findall(r"^\s*- alert: (\w+)$", RULES.read_text(), re.M)
    assert len(alerts) == len(set(alerts)) >= 10
    text = DOCS.read_text()
    section = text[text.index("## Observability"):]
    section = section[:section.find("\n## ", 1)]
    documented = set(re.findall(r"^\| `(Trimmer\w+)` \|", section, re.M))
    assert documented == set(alerts)
