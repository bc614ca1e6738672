"""The dependency rule of ``unlearn_core``: a stage imports only the stages below it (README, "Architecture").

Every ``import``/``from ... import`` of ``unlearn_core`` is checked, including the lazy ones inside functions,
and ``app_support``/``pages`` may use the library but the library never imports them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CORE = REPO / "unlearn_core"

LAYERS: tuple[tuple[str, ...], ...] = (
    ("cli",),
    ("experiments", "training"),
    ("selection", "explain"),
    ("scoring",),
    ("forget_set",),
    ("ablation",),
    ("saes",),
    ("models",),
    ("data",),
    ("errors", "files"),
)
"""Top to bottom. Stages on one row are siblings: neither imports the other."""

RANK = {stage: rank for rank, row in enumerate(LAYERS) for stage in row}


def stage_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "unlearn_core" or len(parts) < 2 or parts[1] == "__main__":
        return None
    return parts[1]


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) for every import in a file, relative imports resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            # ``from unlearn_core import scoring`` imports the stage itself
            found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names if target == "unlearn_core"]
    return found


def violations(root: Path = CORE) -> list[str]:
    out = []
    for path in sorted(root.rglob("*.py")):
        own = stage_of(module_name(path))
        for line, target in imported_modules(path):
            if target.split(".")[0] in ("app_support", "pages", "streamlit"):
                out.append(f"{path.relative_to(REPO)}:{line} imports {target} (UI code) into the library")
                continue
            other = stage_of(target)
            if own in (None, "__init__", "__main__") or other is None or other == own:
                continue  # the package root and __main__ may import any stage
            if other not in RANK:
                out.append(f"{path.relative_to(REPO)}:{line} imports {target}: stage {other!r} is not in LAYERS")
            elif RANK[other] <= RANK[own]:
                out.append(f"{path.relative_to(REPO)}:{line}: {own} may not import {other} ({target})")
    return out


def test_every_stage_is_listed():
    stages = {p.name for p in CORE.iterdir() if (p.is_dir() and (p / "__init__.py").exists()) or p.suffix == ".py"}
    stages = {s.removesuffix(".py") for s in stages} - {"__init__", "__main__"}
    assert stages == set(RANK), f"stages on disk {sorted(stages)} vs LAYERS {sorted(RANK)}"


def test_imports_point_down_only():
    assert violations() == []


def test_an_upward_import_is_caught(tmp_path, monkeypatch):
    """The rule is not vacuous: a scoring module importing the CLI, or models importing scoring, fails."""
    fake = tmp_path / "unlearn_core"
    (fake / "scoring").mkdir(parents=True)
    (fake / "models").mkdir()
    (fake / "scoring" / "__init__.py").write_text("")
    (fake / "models" / "__init__.py").write_text("")
    (fake / "scoring" / "bad.py").write_text("def f():\n    from unlearn_core.cli import main\n")
    (fake / "models" / "bad.py").write_text("from ..scoring import bad\n")
    (fake / "models" / "fine.py").write_text("from unlearn_core.errors import InputError\n")
    monkeypatch.setattr(__import__(__name__), "REPO", tmp_path)
    found = violations(fake)
    assert len(found) == 2, found
    assert any("scoring may not import cli" in v for v in found)
    assert any("models may not import scoring" in v for v in found)


@pytest.mark.parametrize("size_limit", [400])
def test_no_module_is_huge(size_limit):
    big = {str(p.relative_to(REPO)): n for p in CORE.rglob("*.py") if (n := len(p.read_text().splitlines())) > size_limit}
    assert big == {}, f"modules over {size_limit} lines: {big}"
