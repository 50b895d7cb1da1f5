"""Imports run one way (ARCHITECTURE.md): a module imports its own floor and the floors below, never above,
and no stage imports another stage (the ladder, stages/pipeline.py and stages/cloud.py, composes them)."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Top to bottom. A module belongs to the floor of the longest prefix listed.
FLOORS = (
    ("faces", ("app", "hopsmith.cli", "benchmarks")),
    ("the ladder", ("stages.pipeline", "stages.cloud")),
    ("stages", ("stages",)),
    ("library", ("hopsmith.agent", "hopsmith.traces", "hopsmith.judge", "hopsmith.enterprise_judge", "hopsmith.ceiling",
                 "hopsmith.leakage", "hopsmith.training", "hopsmith.evaluation", "hopsmith.report", "hopsmith.cost", "hopsmith.fanout",
                 "hopsmith.browser", "hopsmith.guard", "hopsmith.baselines")),
    ("environments", ("hopsmith.envs",)),
    ("scoring", ("hopsmith.metrics", "hopsmith.collapse")),
    ("engines, tools, data", ("hopsmith.backends", "hopsmith.tools", "hopsmith.data")),
    ("ground", ("hopsmith", "hopsmith.records", "hopsmith.io", "hopsmith.config", "hopsmith.models", "hopsmith.chat",
                "hopsmith.volumes")),
)


def floor_of(module: str) -> int:
    """The floor's height (0 = ground); every module of ours is on exactly one floor."""
    best = max(((len(p), len(FLOORS) - 1 - i) for i, (_, ps) in enumerate(FLOORS) for p in ps
                if module == p or module.startswith(p + ".")), default=None)
    assert best is not None, f"{module} is on no floor: add it to FLOORS"
    return best[1]


def our_modules() -> dict[str, Path]:
    files = [*ROOT.glob("hopsmith/**/*.py"), *ROOT.glob("stages/*.py"), *ROOT.glob("benchmarks/*.py"), ROOT / "app.py"]
    out = {}
    for f in files:
        parts = list(f.relative_to(ROOT).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def imports_of(module: str, path: Path) -> set[str]:
    """Every module of ours that `module` imports, at the top or inside a function."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            # `from pkg import mod` imports the submodule when there is one
            found |= {f"{base}.{a.name}" for a in node.names} | {base}
    mods = our_modules()
    return {m for m in found if m in mods and m != module}


def test_no_import_runs_upward_or_between_stages():
    wrong = []
    for module, path in our_modules().items():
        for target in imports_of(module, path):
            if floor_of(target) > floor_of(module):
                wrong.append(f"{module} imports {target}, a floor above it")
            both_stages = floor_of(module) == floor_of(target) == floor_of("stages.x")
            if both_stages and module != "stages" and target != "stages":
                wrong.append(f"stage {module} imports stage {target}: share it through the library")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_circle():
    mods = our_modules()
    graph = {m: imports_of(m, p) for m, p in mods.items()}
    # A package's __init__ re-exporting its own modules is not a circle of ours.
    graph = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in graph.items()}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> list[str] | None:
        state[m] = 1
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                return path + [m, t]
            if t not in state and (found := visit(t, path + [m])):
                return found
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            circle = visit(m, [])
            assert circle is None, " -> ".join(circle)
