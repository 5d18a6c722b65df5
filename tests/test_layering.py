"""The layering contract, checked on the import graph of the production folders (ast, no imports run).

Rules, strongest that hold today; each exception is listed with its reason:
  1. no import cycle between modules (module-level imports: what runs at import time);
  2. no cycle between reverie's subpackages (every import, function-level ones too);
  3. production code never imports tests or benchmarks;
  4. the deploy runtime (runtime/, and everything it may import) imports no torch, world_model, policy,
     sim or export (the exporter sits above the runtime: it writes what the runtime reads);
  5. the virtual robot (robot_io/virtual/) imports no sim and, of robot_io, only the servo-family
     interface, the families and the camera frame type;
  6. the client bus, the arm config and the virtual robot name no servo protocol;
  7. the workflows (reverie/workflows/: pipeline, improve) sit above every package: none imports them.
"""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# pyproject.toml's package-dir: folder -> import name.
FOLDERS = {folder: name for name, folder in
           tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"].items()}

# Rule 2 exceptions: (importer module, imported subpackage) -> why it may close a loop for now.
SUBPACKAGE_CYCLE_EXCEPTIONS: dict[str, str] = {}
# Rule 4 exceptions: imports (importer, imported) the runtime makes only on a path that needs more.
RUNTIME_EXCEPTIONS = {
    ("reverie.runtime.targets", "reverie.sim.arm_env"): "robot=sim deploys to the simulator itself (train extra)",
    ("reverie.normalize", "torch"): "function-level, reached only when handed a tensor (torch already loaded)",
}
FORBIDDEN_FOR_RUNTIME = ("torch", "reverie.world_model", "reverie.policy", "reverie.sim", "reverie.export")
VIRTUAL_MAY_USE = ("reverie.robot_io.servo_family", "reverie.robot_io.servo_families", "reverie.robot_io.framing",
                   "reverie.robot_io.camera_frame", "reverie.robot_io.feetech", "reverie.robot_io.dynamixel",
                   "reverie.robot_io.virtual")


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO)
    parts = [FOLDERS[rel.parts[0]], *rel.parts[1:]]
    parts[-1] = parts[-1][:-3]
    name = ".".join(parts)
    return name[: -len(".__init__")] if name.endswith(".__init__") else name


def _modules() -> dict[str, Path]:
    return {module_name(p): p for folder in FOLDERS for p in (REPO / folder).rglob("*.py")}


MODULES = _modules()


def _resolve(name: str) -> str:
    """The module an imported dotted name lives in (`from a.b import c` may name module a.b.c)."""
    while name and name not in MODULES and "." in name:
        name = name.rpartition(".")[0]
    return name


def imports(module: str, top_level_only: bool = False) -> set[str]:
    """Dotted names `module` imports: reverie modules resolved, others by their top-level name."""
    path = MODULES[module]
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    nodes = tree.body if top_level_only else ast.walk(tree)
    out = set()
    for node in nodes:
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names] if base.startswith("reverie") else [base]
        for name in names:
            out.add(_resolve(name) if name.startswith("reverie") else name.partition(".")[0])
    out.discard(module)
    return out


# reverie/ folders that are layers of their own, not the core (errors, specs, config, cli)
OWN_LAYERS = {"workflows"}


def subpackage(module: str) -> str:
    parts = module.split(".")
    own = {v.split(".")[-1] for v in FOLDERS.values()} | OWN_LAYERS
    return ".".join(parts[:2]) if len(parts) > 1 and parts[1] in own else "reverie"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_between_modules():
    graph = {m: {i for i in imports(m, top_level_only=True) if i in MODULES} for m in MODULES}
    assert _cycles(graph) == []


def test_no_cycle_between_subpackages():
    graph: dict[str, set[str]] = {}
    for m in MODULES:
        if m in SUBPACKAGE_CYCLE_EXCEPTIONS:
            continue
        for i in imports(m):
            if i in MODULES and subpackage(i) != subpackage(m):
                graph.setdefault(subpackage(m), set()).add(subpackage(i))
    assert _cycles(graph) == [], f"subpackage import graph: {graph}"


def test_workflows_sit_above_every_package():
    """pipeline and improve drive the packages; no package imports them back (the cli names them as text)."""
    offenders = {m: sorted(i for i in imports(m) if i.startswith("reverie.workflows"))
                 for m in MODULES if not m.startswith("reverie.workflows")}
    assert {m: i for m, i in offenders.items() if i} == {}
    assert {"reverie.workflows.pipeline", "reverie.workflows.improve"} <= set(MODULES)


def test_production_code_never_imports_tests_or_benchmarks():
    offenders = {m: sorted(i for i in imports(m) if i.partition(".")[0] in ("tests", "benchmarks")
                           or i.startswith(("reverie.tests", "reverie.benchmarks")))
                 for m in MODULES}
    assert {m: i for m, i in offenders.items() if i} == {}


def reachable(start: str, skip: dict) -> set[str]:
    """Every module `start` may import, directly or not, leaving out the `skip` edges."""
    seen, todo = set(), [start]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        if m in MODULES:
            todo.extend(i for i in imports(m) if (m, i) not in skip)
    return seen


def test_the_deploy_runtime_imports_no_torch_model_policy_sim_or_export():
    runtime = sorted(m for m in MODULES if m.startswith("reverie.runtime"))
    assert "reverie.runtime.deploy" in runtime
    bad = {m: sorted(r for r in reachable(m, RUNTIME_EXCEPTIONS) if r.startswith(FORBIDDEN_FOR_RUNTIME))
           for m in runtime}
    assert {m: r for m, r in bad.items() if r} == {}, "reachable from runtime/"


def test_runtime_exceptions_are_still_needed():
    """An exception that no longer reaches anything forbidden should be dropped from the list."""
    for module, imported in RUNTIME_EXCEPTIONS:
        assert imported in imports(module), (module, imported)


def test_the_virtual_robot_imports_no_sim_and_only_robot_ios_interfaces():
    bad = {}
    for m in MODULES:
        if m.startswith("reverie.robot_io.virtual"):
            wrong = sorted(i for i in imports(m) if i.startswith("reverie.sim")
                           or (i.startswith("reverie.robot_io") and not i.startswith(VIRTUAL_MAY_USE)))
            if wrong:
                bad[m] = wrong
    assert bad == {}


# A comparison with a protocol name, or a hand-kept list of them.
PROTOCOL_BRANCH = r"""(==|!=)\s*["'](feetech|dynamixel)["']|["'](feetech|dynamixel)["']\s*,\s*["'](feetech|dynamixel)["']"""


def test_bus_config_and_virtual_robot_name_no_protocol():
    """Protocol names live in the families (robot_io/<family>/) and the family table only."""
    files = [REPO / "robot_io/bus.py", REPO / "robot_io/config.py", REPO / "robot_io/arm_bus.py",
             *(REPO / "robot_io/virtual").glob("*.py")]
    named = {str(f.relative_to(REPO)): line for f in files for line in f.read_text().splitlines()
             if re.search(PROTOCOL_BRANCH, line.split("#")[0])}
    assert named == {}
