"""Guard rails for the layout in docs/architecture.md: who may import whom.

The tree is cut into *units*: a package's top-level modules form one unit
(``rootproc``: the request path), each subpackage another
(``rootproc.leaves``, ``signatures.configstore.zookeeper``, ...).
``ALLOWED`` says, per unit, which other units it may import; an import is
any ``import`` statement anywhere in a module, also inside a function (a
lazy import is still a dependency). On top of the table: no import circle
between modules anywhere, the scoring client imports nothing heavy, the
transport needs no compiled kernel, and no package grows past what a
newcomer can scan.
"""
from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("_trim", "signatures", "rootproc", "leafproc")

# unit -> the units it may import (besides itself). Read top to bottom: the
# compiled core, the control plane's layers, the two processes.
ALLOWED: dict[str, set[str]] = {
    # The core. Transport imports only the error tree (no kernel, no numpy batch).
    "_trim.transport": {"_trim.errors"},
    "_trim": {"_trim.transport"},
    "_trim.records": {"_trim"},
    # The control plane, bottom up. Process runtime (settings, signals, files,
    # exit codes) needs nothing of the rest; the model repository needs only
    # that; schema/bundle/savings sit on the repository; signature derivation
    # on all three; the config store on the bundle and runtime (its
    # ZooKeeper backend below it, reached only through the factory).
    "signatures.runtime": {"_trim"},
    "signatures.repository": {"_trim", "_trim.transport", "signatures.runtime"},
    "signatures": {"_trim", "_trim.transport", "signatures.repository", "signatures.runtime"},
    "signatures.derive": {"_trim", "signatures", "signatures.repository", "signatures.runtime"},
    "signatures.configstore": {"_trim", "_trim.transport", "signatures", "signatures.runtime",
                               "signatures.configstore.zookeeper"},
    "signatures.configstore.zookeeper": {"_trim", "signatures", "signatures.configstore",
                                         "signatures.runtime"},
    "signatures.cli": {"_trim", "_trim.transport", "signatures", "signatures.runtime",
                       "signatures.repository", "signatures.derive", "signatures.configstore"},
    # The root. Its parts never reach up into the request path that composes them.
    "rootproc.settings": {"_trim", "_trim.transport", "signatures.runtime", "signatures.configstore",
                          "signatures.configstore.zookeeper"},
    "rootproc.client": {"_trim.transport", "signatures.runtime", "rootproc.settings",
                        "rootproc.featurestore"},
    "rootproc.featurestore": {"_trim", "_trim.records", "signatures", "signatures.runtime",
                              "rootproc.settings"},
    "rootproc.preprocess": {"rootproc.settings", "_trim", "_trim.records", "signatures"},
    "rootproc.leaves": {"rootproc.settings", "_trim", "_trim.transport", "signatures.configstore",
                        "signatures.repository"},
    "rootproc.rollout": {"_trim", "_trim.transport", "signatures", "signatures.configstore",
                         "signatures.runtime", "rootproc.settings", "rootproc.preprocess"},
    "rootproc": {"_trim", "_trim.transport", "_trim.records", "signatures", "signatures.runtime",
                 "rootproc.settings",
                 "signatures.configstore", "signatures.configstore.zookeeper",
                 "rootproc.featurestore", "rootproc.preprocess", "rootproc.leaves",
                 "rootproc.rollout"},
    # The demo drives everything, as a user would.
    "rootproc.demo": {"rootproc.settings", "_trim", "_trim.transport", "signatures", "signatures.runtime",
                      "signatures.repository", "signatures.derive", "signatures.configstore",
                      "rootproc.client", "rootproc.featurestore"},
    # The leaf: models from the repository, its stage from the config store.
    "leafproc": {"_trim", "_trim.transport", "signatures.runtime", "signatures.repository",
                 "signatures.configstore", "signatures.configstore.zookeeper"},
}
# The root's settings and defaults are a layer of their own under every part
# of the root: each part takes its settings dataclass from there.
ROOT_SETTINGS = {"rootproc.settings", "rootproc.defaults"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit_of(module: str) -> str:
    """The package a module sits at the top of; ``_trim.errors`` is its own
    unit so that the transport may import it and nothing else of ``_trim``."""
    if module == "_trim.errors":
        return module
    if module in ROOT_SETTINGS:
        return "rootproc.settings"
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if (ROOT.joinpath(*parts[:n])).is_dir():
            return ".".join(parts[:n])
    return parts[0]


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def imported(path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules ``path`` imports, anywhere in it. ``from a import b``
    names the module ``a.b`` when there is one, else ``a``."""
    tree = ast.parse(path.read_text(), str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
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
            subs = [f"{name}.{a.name}" for a in node.names if f"{name}.{a.name}" in known]
            out.update(subs or [name])
    out.discard(module_name(path))  # `from . import _kernel` in a package: the compiled part
    return {n for n in out if n.split(".")[0] in PACKAGES}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    known = project_modules()
    return {name: imported(path, known) for name, path in known.items()}


def test_every_unit_has_a_rule(graph):
    assert sorted({unit_of(m) for m in graph} - set(ALLOWED) - {"_trim.errors"}) == []


def test_units_import_only_what_their_rule_allows(graph):
    wrong = []
    for module, names in sorted(graph.items()):
        unit = unit_of(module)
        allowed = ALLOWED.get(unit, set()) | {unit}
        if unit == "_trim.errors":
            allowed = {unit}
        for name in sorted(names):
            target = unit_of(name)
            # A unit may import its own subpackages' package module only
            # through the rule, but ``_trim`` includes its error tree.
            if target == "_trim.errors" and "_trim" in allowed:
                continue
            if target not in allowed:
                wrong.append(f"{module} ({unit}) imports {name} ({target})")
    assert wrong == []


def test_no_import_circle_between_modules(graph):
    """Tarjan's strongly connected components over every import, lazy ones
    included: a factory lives above its backends, never inside their base."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            # Importing a.b.c runs the package modules a and a.b first; those
            # are edges of their own only where a module imports them.
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                circles.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert circles == []


def test_units_depend_on_each_other_one_way(graph):
    """No circle between packages either: the layers of docs/architecture.md."""
    edges = defaultdict(set)
    for module, names in graph.items():
        for name in names:
            # A package's __init__ may open its own backends (the factory of
            # `signatures.configstore`): a facade over its children, not a layer.
            if name.startswith(module + ".") and (ROOT / module.replace(".", "/")).is_dir():
                continue
            a, b = unit_of(module), unit_of(name)
            if a != b:
                edges[a].add(b)

    def reaches(src: str, dst: str) -> bool:
        seen, todo = set(), [src]
        while todo:
            for nxt in edges[todo.pop()]:
                if nxt == dst:
                    return True
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return False

    assert sorted(f"{a} <-> {b}" for a in list(edges) for b in edges[a] if reaches(b, a)) == []


def offenders(graph, package: str, forbidden) -> list[str]:
    return [f"{m} imports {n}" for m, names in sorted(graph.items())
            if m == package or m.startswith(package + ".") for n in sorted(names) if forbidden(n)]


def top(name: str) -> str:
    return name.split(".")[0]


def test_rootproc_and_leafproc_never_import_each_other(graph):
    assert offenders(graph, "rootproc", lambda n: top(n) == "leafproc") == []
    assert offenders(graph, "leafproc", lambda n: top(n) == "rootproc") == []


def test_trim_imports_nothing_above_it(graph):
    assert offenders(graph, "_trim", lambda n: top(n) != "_trim") == []


def test_signatures_does_not_import_the_data_plane(graph):
    # The `trimmer` dispatcher names rootproc/leafproc commands by string and
    # imports them only when run; the control plane itself never does.
    assert offenders(graph, "signatures", lambda n: top(n) in ("rootproc", "leafproc")) == []


def test_transport_imports_no_kernel(graph):
    allowed = ("_trim.errors", "_trim.transport")
    assert offenders(graph, "_trim.transport",
                     lambda n: not any(n == a or n.startswith(a + ".") for a in allowed)) == []


def run_probe(code: str, cwd: Path, pythonpath: Path) -> str:
    """What ``code`` prints in a fresh interpreter that imports from ``pythonpath``."""
    env = {k: v for k, v in os.environ.items() if k != "TRIMMER_IMPL"}
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True,
                          env={**env, "PYTHONPATH": str(pythonpath)}, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_scoring_client_is_light():
    """A service that only calls roots imports the client without torch, the
    stores' drivers or the kernel: ``pip install`` of the client alone is a
    matter of pyzmq, numpy and orjson."""
    probe = ("import sys\n"
             "import rootproc.client, rootproc.client.health\n"
             "from rootproc.client import ScoringClient, AsyncScoringClient\n"
             "heavy = {'torch', 'lmdb', 'redis', 'kazoo', '_trim._kernel', 'signatures',"
             " 'leafproc', 'rootproc.featurestore', 'rootproc.server'}\n"
             "print(sorted(heavy & set(sys.modules)))\n")
    assert run_probe(probe, ROOT, ROOT).strip() == "[]"


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
    assert "kernel needed: the _trim gather kernel is not built" in run_probe(probe, tmp_path, tmp_path)
    assert {"protocol", "envelope", "frames", "curve", "shm"} <= set(names)


@pytest.mark.parametrize("package", PACKAGES)
def test_no_module_is_a_house_of_its_own(package):
    """Small modules: a newcomer reads one in a sitting."""
    long = [f"{p.relative_to(ROOT)}: {n} lines" for p in sorted((ROOT / package).rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > 420]
    assert long == []


@pytest.mark.parametrize("package", PACKAGES)
def test_no_package_is_a_flat_heap(package):
    """A folder a newcomer scans at a glance: at most 20 modules at one level."""
    crowded = [f"{d.relative_to(ROOT)}: {n} modules" for d in [ROOT / package, *(ROOT / package).rglob("*")]
               if d.is_dir() and d.name != "__pycache__"
               and (n := len([p for p in d.glob("*.py") if p.name != "__init__.py"])) > 20]
    assert crowded == []
