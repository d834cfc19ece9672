"""Imports point down (docs/CONVENTIONS.md, "Layers"): no import cycle inside the package, each
module imports only its own layer and the layers below, and the config loads without any
experiment module.

The import graph is read from the source (``ast``): every ``import`` and ``from ... import``
statement, wherever it stands (module level, inside a function, under ``TYPE_CHECKING``), resolved
to the package module it names.
"""

from __future__ import annotations

import ast
import fnmatch
import subprocess
import sys
import textwrap
from pathlib import Path

import context_research

PACKAGE = context_research.__name__
PACKAGE_DIR = Path(context_research.__file__).resolve().parent

# Bottom to top: a module may import modules of its own layer and of the layers below it. Names are
# relative to the package; a module named exactly here takes this layer before any "pkg.*" pattern.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("core", ("", "errors", "hashing", "io", "watchdog", "tables", "records", "prompts", "metadata", "models",
              "gpu_stats", "engine_log", "traces", "device_lock", "device_lock.*", "warmup", "evidence", "provenance",
              "input_checks", "columns", "dummy_model", "embedded_tokenizer", "embedded_model", "config", "variants")),
    ("analysis", ("analysis", "analysis.*", "engine_metrics", "workload", "workload.*", "result_tables")),
    ("backends", ("backends", "backends.*")),
    ("domain", ("datasets", "datasets.*", "quality", "quality.*", "disagg", "disagg.*", "memory_probe",
                "report", "compare_report")),
    ("experiments", ("experiments", "experiments.*")),
    # Entry points: the command line and the scripts run with ``python -m`` that load the suite's config.
    ("entry points", ("cli", "recheck", "analysis.capacity_evidence", "analysis.calibration_report",
                      "result_tables.__main__")),
)

def package_modules() -> dict[str, tuple[Path, bool]]:
    """{module name relative to the package ("" for the package itself): (file, is a package)}."""
    out = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE_DIR).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return out


def _absolute(name: str) -> str:
    return f"{PACKAGE}.{name}" if name else PACKAGE


def _relative(dotted: str | None, modules: dict) -> str | None:
    """The package module ``dotted`` (absolute) names, or None if it is outside the package."""
    if not dotted or not (dotted == PACKAGE or dotted.startswith(PACKAGE + ".")):
        return None
    name = dotted[len(PACKAGE) + 1:]
    while name not in modules:  # an attribute of a module: the module
        name = name.rpartition(".")[0]
    return name


def imports_of(name: str, modules: dict) -> dict[str, int]:
    """{package module imported by ``name``: line of its first import statement}."""
    path, is_package = modules[name]
    here = _absolute(name).split(".") if is_package else _absolute(name).split(".")[:-1]
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(here[:len(here) - node.level + 1] + [node.module or ""]) if node.level else node.module
            base = base.rstrip(".")
            # ``from pkg import name``: the submodule pkg.name if there is one, else pkg itself
            targets = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            resolved = _relative(target, modules)
            if resolved is not None and resolved != name:
                found.setdefault(resolved, node.lineno)
    return found


def import_graph() -> tuple[dict[str, dict[str, int]], dict]:
    modules = package_modules()
    return {name: imports_of(name, modules) for name in modules}, modules


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def describe(component: list[str], graph: dict[str, dict[str, int]], modules: dict) -> str:
    inside = set(component)
    lines = [f"  {_absolute(a)} -> {_absolute(b)}  ({modules[a][0].relative_to(PACKAGE_DIR.parent)}:{line})"
             for a in component for b, line in sorted(graph[a].items()) if b in inside]
    return f"cycle of {len(component)} modules:\n" + "\n".join(lines)


def layer_of(name: str) -> int | None:
    for rank, (_, patterns) in enumerate(LAYERS):
        if name in patterns:
            return rank
    for rank, (_, patterns) in enumerate(LAYERS):
        if any("*" in p and fnmatch.fnmatchcase(name, p) for p in patterns):
            return rank
    return None


def test_no_import_cycle_inside_the_package():
    graph, modules = import_graph()
    found = cycles(graph)
    assert not found, "import cycles inside the package (fix: pass what the lower module needs as an " \
                      "argument, or move the shared piece down):\n" + \
                      "\n".join(describe(c, graph, modules) for c in found)


def test_every_module_imports_only_its_own_layer_or_lower():
    graph, modules = import_graph()
    unplaced = sorted(_absolute(m) for m in modules if layer_of(m) is None)
    assert not unplaced, f"modules in no layer of LAYERS (place them, and in docs/CONVENTIONS.md): {unplaced}"
    upward = [f"  {_absolute(a)} ({LAYERS[layer_of(a)][0]}) imports {_absolute(b)} ({LAYERS[layer_of(b)][0]}) "
              f"at {modules[a][0].relative_to(PACKAGE_DIR.parent)}:{line}"
              for a, targets in sorted(graph.items())
              for b, line in sorted(targets.items()) if layer_of(b) > layer_of(a)]
    assert not upward, "imports pointing up a layer:\n" + "\n".join(upward)


def test_no_package_init_imports_its_own_modules():
    """Importing ``pkg.mod`` runs ``pkg/__init__.py`` first: an ``__init__`` that imported ``pkg.mod``
    (or anything that does) would close a cycle at run time that no import statement shows."""
    graph, modules = import_graph()
    inits = {name for name, (_, is_package) in modules.items() if is_package}
    inward = sorted(f"{_absolute(p)} imports {_absolute(m)}" for p in inits for m in graph[p]
                    if p == "" or m.startswith(p + "."))
    assert not inward, inward


def test_the_graph_sees_function_level_and_relative_imports():
    """The reader itself: a function-level ``from .. import`` and a ``TYPE_CHECKING`` import count."""
    graph, _ = import_graph()
    assert "experiments.catalog" in graph["cli"]             # inside cmd_run
    assert "backends.session" in graph["memory_probe"]        # under TYPE_CHECKING
    assert "backends.vllm_server" in graph["backends.factory"]  # inside make_backend
    assert cycles({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}}) == [["a", "b", "c"]]


# Loads and validates the shipped config with stand-in declarations (one per experiment schema file),
# then prints every experiment or dataset module that got imported.
CONFIG_ALONE = textwrap.dedent("""
    import sys, types
    from context_research import config

    root = config.REPO_ROOT
    names = sorted(p.name.split(".")[0] for p in (root / "workflow/schemas/experiments").glob("*.schema.yaml"))
    declared = {n: types.SimpleNamespace(name=n, analysis_keys=(), config_problems=None) for n in names}
    loaded = config.load_config(root / "config/config.yaml", experiments=declared)
    for n in names:
        config.experiment_view(loaded, declared[n])
        config.analysis_config(loaded, declared[n])
    print("\\n".join(sorted(m for m in sys.modules
                            if m.startswith(("context_research.experiments", "context_research.datasets")))))
""")


def test_the_config_loads_without_importing_any_experiment():
    done = subprocess.run([sys.executable, "-c", CONFIG_ALONE], capture_output=True, text=True, timeout=300,
                          cwd=PACKAGE_DIR.parents[1])
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == [], f"config imported: {done.stdout.split()}"


LIBRARIES = ("context_research.report", "context_research.backends.session", "context_research.disagg.phases",
             "context_research.memory_probe", "context_research.quality.verdicts", "context_research.datasets.specs")


def test_the_libraries_below_the_experiments_import_none():
    done = subprocess.run([sys.executable, "-c", f"import sys, {', '.join(LIBRARIES)}; "
                           "print(' '.join(m for m in sys.modules if m.startswith('context_research.experiments')))"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == [], f"imported: {done.stdout.split()}"
