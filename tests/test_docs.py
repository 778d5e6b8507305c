"""The documentation says what the code does: tables in docs/ checked against
the definitions they describe (one definition each, in the code)."""
from __future__ import annotations

import re
from pathlib import Path

from _trim import format as fmt
from _trim.transport import protocol

DOCS = Path(__file__).resolve().parents[1] / "docs"


def table_after(text: str, heading: str) -> list[list[str]]:
    """The rows (cells stripped, header and rule dropped) of the first
    Markdown table after the line containing ``heading``."""
    lines = text[text.index(heading):].splitlines()
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("|"))
    rows = []
    for line in lines[start:]:
        if not line.lstrip().startswith("|"):
            break
        rows.append([c.strip().strip("`") for c in line.strip().strip("|").split("|")])
    return [r for r in rows[2:]]


def test_dtype_codes_in_the_protocol_are_the_formats():
    rows = table_after((DOCS / "protocol.md").read_text(), "dtype codes (never renumbered)")
    documented = {name: (int(code), int(nbytes.split()[0])) for code, name, nbytes in rows}
    defined = {name: (code, fmt.WIRE_ITEMSIZES[name]) for name, code in fmt.WIRE_CODES.items()}
    assert documented == defined


def test_header_and_column_tables_are_the_formats():
    text = (DOCS / "protocol.md").read_text()
    for heading, dtype in (("### Header (32 bytes)", fmt.HEADER_DTYPE),
                           ("### Column table entry (40 bytes)", fmt.COLUMN_DTYPE)):
        rows = table_after(text, heading)
        documented = [(int(offset), name) for offset, _, name, *_ in rows]
        assert documented == [(dtype.fields[n][1], n) for n in dtype.names]
    magic = next(r for r in table_after(text, "### Header (32 bytes)") if r[2] == "magic")
    assert magic[3] == fmt.MAGIC.decode()
    assert f"# Wire protocol (version {protocol.PROTOCOL_VERSION})" in text
    assert f"({fmt.HEADER_NBYTES} bytes)" in text and f"({fmt.COLUMN_NBYTES} bytes)" in text


def test_every_error_kind_is_documented_and_only_those():
    text = (DOCS / "protocol.md").read_text()
    listed = re.search(r"`kind` is one of (.*?)\.", text, re.S).group(1)
    assert re.findall(r"`(\w+)`", listed) == list(protocol.ERROR_KINDS)


def test_settings_tables_are_the_settings():
    """Each ``<!-- settings MODULE.CLASS -->`` block of docs/operations.md is
    that class's table, as `signatures.runtime.settings.markdown` renders it."""
    import importlib

    from signatures.runtime.settings import markdown
    text = (DOCS / "operations.md").read_text()
    blocks = re.findall(r"<!-- settings ([\w.]+) -->\n(.*?)\n<!-- /settings -->", text, re.S)
    assert {name for name, _ in blocks} == {"rootproc.settings.RootSettings",
                                            "rootproc.settings.LeafSpec",
                                            "leafproc.settings.LeafSettings"}
    for name, table in blocks:
        module, _, cls = name.rpartition(".")
        klass = getattr(importlib.import_module(module), cls)
        expected = markdown(klass, with_flags=cls != "LeafSpec")
        assert table == expected, f"docs/operations.md, {name}: replace the table with\n{expected}"


def documented_metrics(heading: str) -> set[str]:
    """The metric names (first column, each in backticks) of the table after ``heading``."""
    text = (DOCS / "operations.md").read_text()
    lines = text[text.index(heading):].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    names: set[str] = set()
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        names |= set(re.findall(r"`(\w+)`", line.split("|")[1]))
    return names


def test_metric_tables_are_what_the_processes_export():
    """Every family a root or a leaf exports is in its table of docs/operations.md,
    and every name there is exported, as a scrape shows it."""
    from tests.support.metric_names import leaf_families, root_families
    for heading, prefix, exported in (("### Root (`trimmer_root_*`)", "trimmer_root_", root_families()),
                                      ("### Leaf (`trimmer_leaf_*`)", "trimmer_leaf_", leaf_families())):
        assert documented_metrics(heading) == {n[len(prefix):] for n in exported}, heading


def test_metric_renames_name_no_metric_that_exists_and_only_ones_that_do():
    from tests.support.metric_names import leaf_families, root_families
    exported = {**root_families(), **leaf_families()}
    rows = table_after((DOCS / "operations.md").read_text(), "### Metric renames")
    assert rows
    for old, new in rows:
        assert old not in exported, old
        assert new.startswith("removed") or new.split("`")[0] in exported, new
