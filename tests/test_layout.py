"""The package's layout: the pure cores import neither Ray nor torch.distributed, and Ray
is reached only through the ``ray_*`` modules, the pipeline, Tune and the CLI."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "acl_dist"

#: Modules that must work without Ray (the package docstring's pure cores and their leaves).
PURE = ["config", "plan", "store", "synth", "model", "losses", "sampling", "clustering",
        "localize", "evaluate", "train", "infer", "artifacts", "fsutil", "timegrid",
        "annotations", "errors", "progress", "ingest", "graphed_step", "resources", "results",
        "plots", "tune_space", "tune_results", "collectives", "global_batch", "tiou", "locks"]
#: Modules allowed to import Ray.
RAY_ROOMS = {"ray_start", "ray_data", "ray_train", "ray_clustering", "pipeline", "tune",
             "tune_space", "tune_results", "cli"}


def _imports(path: Path) -> set[str]:
    """Top-level module names imported anywhere in a file (functions included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_only_the_ray_rooms_import_ray():
    for path in sorted(PACKAGE.rglob("*.py")):
        mod = path.relative_to(PACKAGE).with_suffix("").as_posix().replace("/", ".")
        uses = {n for n in _imports(path) if n == "ray" or n.startswith("ray.")}
        if mod.split(".")[0] not in RAY_ROOMS:
            assert not uses, f"acl_dist.{mod} imports {sorted(uses)}"
        dist = {n for n in _imports(path) if n.startswith("torch.distributed")}
        if mod not in ("ray_train", "collectives"):  # DDP; the workers' exchanges
            assert not dist, f"acl_dist.{mod} imports {sorted(dist)} (Ray Train owns DDP, " \
                "acl_dist.collectives the workers' exchanges)"


def test_pure_cores_import_without_ray():
    """Importing every pure module leaves Ray unloaded (a fresh interpreter)."""
    code = ("import sys\n" + "".join(f"import acl_dist.{m}\n" for m in PURE)
            + "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]", out


def _package_imports() -> dict[str, set[str]]:
    """``acl_dist`` module -> the package modules it imports, anywhere in the file
    (function-level imports included: a lazy import is still a dependency)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        modules[".".join(p for p in parts if p != "__init__")] = path
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package.split(".") if package else []
                base = base[:len(base) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
                targets = [f"{stem}.{a.name}".strip(".") for a in node.names] + [stem]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                    "acl_dist."):
                stem = node.module.removeprefix("acl_dist.")
                targets = [f"{stem}.{a.name}" for a in node.names] + [stem]
            elif isinstance(node, ast.Import):
                targets = [a.name.removeprefix("acl_dist.") for a in node.names
                           if a.name.startswith("acl_dist.")]
            else:
                continue
            found = next((t for t in targets if t in modules), None)
            if found and found != mod:
                graph[mod].add(found)
    return graph


def test_no_import_cycle():
    """The package's import graph, function-level imports included, has no cycle: each
    module can be read (and changed) knowing only what lies below it. Control: the walk
    finds a planted cycle."""
    def cycle(graph: dict[str, set[str]]) -> list[str] | None:
        state: dict[str, int] = {}
        path: list[str] = []

        def visit(m: str) -> list[str] | None:
            state[m] = 1
            path.append(m)
            for n in sorted(graph.get(m, ())):
                if state.get(n) == 1:
                    return path[path.index(n):] + [n]
                if n not in state and (found := visit(n)):
                    return found
            state[m] = 2
            path.pop()
            return None
        return next((c for m in sorted(graph) if m not in state and (c := visit(m))), None)

    graph = _package_imports()
    assert graph["evaluate"] >= {"config", "tiou"} and "tiou" in graph["config"]
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle(graph) is None, " -> ".join(cycle(graph))


#: The files of a run directory and of Ray Train's checkpoints (acl_dist/artifacts.py).
RUN_FILES = {"config.yaml", "run.json", "plan.json", "state.json", "clusters.json", "eval.json",
             "val.json", "metrics.json", "outputs.parquet", "descriptors.parquet", "model.pt",
             "train_state.pt", "detections.json", "detections_"}


def test_every_run_artifact_has_one_reader_and_writer():
    """Only acl_dist/artifacts.py names a run's files: every other module reads and writes
    them through its RunDir (a file name as a string literal anywhere else fails)."""
    owners: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in RUN_FILES:
                owners.setdefault(node.value, set()).add(path.name)
    assert set(owners) == RUN_FILES   # the test sees them where they are named
    assert {name: files for name, files in owners.items() if files != {"artifacts.py"}} == {}


def test_long_functions_say_why():
    """A function over 60 lines says in its docstring why it is long ("Long because")."""
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and \
                    node.end_lineno - node.lineno + 1 > 60 and \
                    "Long because" not in (ast.get_docstring(node) or ""):
                long.append(f"{path.name}:{node.lineno} {node.name}")
    assert not long, long


def test_the_run_stays_a_schedule():
    """pipeline.Run holds the steps and their order, nothing else (~150 lines);
    planning is plan.py, scoring results.py, files artifacts.py. A class that grows past
    160 lines has taken on one of their jobs again."""
    tree = ast.parse((PACKAGE / "pipeline.py").read_text())
    run = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Run")
    assert run.end_lineno - run.lineno + 1 <= 160
