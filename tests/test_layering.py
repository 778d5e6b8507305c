"""Guard rails for the layering in docs/architecture.md: imports go one way.

    signatures  ->  rootproc, leafproc  ->  _trim  ->  _trim.transport

``rootproc`` and ``leafproc`` never import each other; ``_trim`` imports
nothing above it; ``_trim.transport`` needs no compiled kernel, so the
scoring client and ``trimmer keys`` work on an unbuilt checkout.
"""
from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("_trim", "signatures", "rootproc", "leafproc")


def modules(package: str):
    yield from sorted((ROOT / package).rglob("*.py"))


def imported(path: Path) -> set[str]:
    """Absolute names of the project modules ``path`` imports, anywhere in it
    (also inside functions: a lazy import is still a dependency)."""
    tree = ast.parse(path.read_text(), str(path))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            out.add(name)
            out.update(f"{name}.{alias.name}" for alias in node.names)
    return {n for n in out if n.split(".")[0] in PACKAGES}


def offenders(package: str, forbidden) -> list[str]:
    return [f"{path.relative_to(ROOT)} imports {name}"
            for path in modules(package) for name in sorted(imported(path))
            if forbidden(name)]


def top(name: str) -> str:
    return name.split(".")[0]


def test_rootproc_and_leafproc_never_import_each_other():
    assert offenders("rootproc", lambda n: top(n) == "leafproc") == []
    assert offenders("leafproc", lambda n: top(n) == "rootproc") == []


def test_trim_imports_nothing_above_it():
    assert offenders("_trim", lambda n: top(n) != "_trim") == []


def test_signatures_does_not_import_the_data_plane():
    # The `trimmer` dispatcher names rootproc/leafproc commands by string and
    # imports them only when run; the control plane itself never does.
    assert offenders("signatures", lambda n: top(n) in ("rootproc", "leafproc")) == []


def test_transport_imports_no_kernel():
    allowed = ("_trim.errors", "_trim.transport")
    assert offenders("_trim/transport",
                     lambda n: not any(n == a or n.startswith(a + ".") for a in allowed)) == []


def test_transport_imports_on_an_unbuilt_checkout(tmp_path):
    """Under another name, so that the installed (editable) _trim cannot answer."""
    pkg = tmp_path / "_trim_unbuilt"
    shutil.copytree(ROOT / "_trim", pkg,
                    ignore=shutil.ignore_patterns("*.so", "*.c", "__pycache__"))
    names = sorted(p.stem for p in (pkg / "transport").glob("*.py") if p.stem != "__init__")
    probe = ("import importlib, sys\n"
             f"for name in {names!r}:\n"
             "    importlib.import_module('_trim_unbuilt.transport.' + name)\n"
             "import _trim_unbuilt\n"
             "assert not any('_kernel' in m for m in sys.modules), sorted(sys.modules)\n"
             "try:\n"
             "    _trim_unbuilt.decode\n"
             "except ImportError as exc:\n"
             "    print('kernel needed:', exc)\n")
    env = {k: v for k, v in os.environ.items() if k != "TRIMMER_IMPL"}
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True,
                          text=True, env={**env, "PYTHONPATH": str(tmp_path)}, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "kernel needed: the _trim gather kernel is not built" in done.stdout
    assert {"protocol", "envelope", "frames", "curve", "shm"} <= set(names)


@pytest.mark.parametrize("package", PACKAGES)
def test_no_module_is_a_house_of_its_own(package):
    """Small modules: a newcomer reads one in a sitting."""
    long = [f"{p.relative_to(ROOT)}: {n} lines" for p in modules(package)
            if (n := len(p.read_text().splitlines())) > 420]
    assert long == []
