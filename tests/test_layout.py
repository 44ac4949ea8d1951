"""The house rules of the package layout (docs/contributing.md, "Layout"), read from the code's
own imports: one folder per stage of the data flow, a small top level, short modules, no import
circles, and no stage importing a later one."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mmlora"
STAGES = {"config", "data", "models", "training", "evaluation", "inference"}
TOP_LEVEL_MAX = 7
MODULE_MAX_LINES = 400
# A stage may use earlier ones; these later ones it must not import (inside functions neither).
LATER_STAGES = {
    "config": {"training", "inference"},
    "data": {"training", "evaluation", "inference"},
    "models": {"training", "evaluation", "inference"},
    "evaluation": {"training", "inference"},
    "inference": {"training"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The mmlora modules a file imports anywhere in it (a function-level import counts too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            submodules = {f"{node.module}.{alias.name}" for alias in node.names} & known  # `from mmlora.data import check`
            found |= submodules or ({node.module} & known)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in known)
    return found


def import_graph() -> dict[str, set[str]]:
    table = modules()
    known = set(table)
    return {name: imports_of(path, known) - {name} for name, path in table.items()}


def test_top_level_holds_at_most_seven_modules_and_the_stage_folders():
    files = sorted(path.name for path in PACKAGE.glob("*.py"))
    folders = {path.name for path in PACKAGE.iterdir() if (path / "__init__.py").is_file()}
    assert len(files) <= TOP_LEVEL_MAX, f"mmlora/ has {len(files)} modules: {files}; put new ones in a stage folder"
    assert folders == STAGES, f"mmlora/ folders {sorted(folders)}: expected the stages {sorted(STAGES)}"


def test_no_module_is_longer_than_400_lines():
    long = {name: lines for name, path in modules().items()
            if (lines := len(path.read_text().splitlines())) > MODULE_MAX_LINES}
    assert not long, f"modules over {MODULE_MAX_LINES} lines (split them by job): {long}"


def test_no_import_circles():
    graph = import_graph()
    circles, state = [], {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = "open"
        for target in sorted(graph[name]):
            if state.get(target) == "open":
                circles.append(" -> ".join(trail[trail.index(target):] + [target]))
            elif target not in state:
                visit(target, trail + [target])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_no_stage_imports_a_later_one_or_the_command_line():
    wrong = []
    for name, targets in import_graph().items():
        parts = name.split(".")
        stage = parts[1] if len(parts) > 1 and parts[1] in STAGES else None
        for target in targets:
            target_parts = target.split(".")
            target_top = target_parts[1] if len(target_parts) > 1 else ""
            if target_top in LATER_STAGES.get(stage, set()):
                wrong.append(f"{name} imports {target}")
            if target_top in ("cli", "demo") and name not in ("mmlora.__main__", "mmlora.cli"):
                wrong.append(f"{name} imports {target} (only the command line sits on top)")
    assert not wrong, "\n".join(sorted(wrong))


def test_the_checks_see_real_imports():
    """The graph the checks above read is the code's: known edges are found."""
    graph = import_graph()
    assert "mmlora.data.collate" in graph["mmlora.training.batches"]
    assert "mmlora.models.processor" in graph["mmlora.data.collate"]
    assert "mmlora.config.schema" in graph["mmlora.models.lora"]
    assert "mmlora.training.train" in graph["mmlora.cli"]  # a function-level import
