"""Every rule of docs/protocol.md has a check, and every check a rule there.

A rule is marked in the doc by ``(rule `ID`)`` (or ``(rules `A`, `B`)``).
Its checks are the cases of the tables in this package (`Case.rule`), the
tests marked `covers(ID)`, and, for a few, the tests elsewhere.py names."""
from __future__ import annotations

import ast
import importlib
import pkgutil
import re
from pathlib import Path

from . import harness
from .elsewhere import ELSEWHERE

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "protocol.md"


def documented() -> list[str]:
    text = DOC.read_text()
    ids = []
    for group in re.findall(r"\(rules?\s+((?:`[^`]+`(?:,\s*)?)+)\)", text):
        ids += re.findall(r"`([^`]+)`", group)
    return ids


def checked() -> dict[str, list[str]]:
    """rule id -> where it is checked."""
    out: dict[str, list[str]] = {}
    package = importlib.import_module(__package__)
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{__package__}.{info.name}")
        for name, value in vars(module).items():
            if isinstance(value, list) and value and all(isinstance(c, harness.Case) for c in value):
                for case in value:
                    out.setdefault(case.rule, []).append(f"{info.name}.{name}: {case.name}")
    for rule, tests in harness.COVERS.items():
        out.setdefault(rule, []).extend(tests)
    for rule, tests in ELSEWHERE.items():
        out.setdefault(rule, []).extend(tests)
    return out


def test_rule_ids_are_unique_and_well_formed():
    ids = documented()
    assert len(ids) > 50, "the rule markers were not found"
    assert all(re.fullmatch(r"[a-z]+(-[a-z]+)*\.[a-z0-9]+(-[a-z0-9]+)*", i) for i in ids), ids
    # A rule is stated once; the sentence that states it carries its id.
    assert sorted(i for i in set(ids) if ids.count(i) > 1) == []


def test_every_rule_has_a_check_and_every_check_a_rule():
    doc, checks = set(documented()), checked()
    assert sorted(doc - set(checks)) == [], "rules of docs/protocol.md without a check"
    assert sorted(set(checks) - doc) == [], "checks of rules docs/protocol.md does not state"


def test_the_tests_named_elsewhere_exist():
    for rule, tests in ELSEWHERE.items():
        for test in tests:
            path, _, name = test.partition("::")
            tree = ast.parse((ROOT / path).read_text())
            names = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
            assert name in names, f"{rule}: {test} does not exist"
