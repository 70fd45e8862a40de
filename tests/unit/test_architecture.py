"""Dependencies point one way (api -> plugins -> kernel) and the public surface is deliberate."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import corral.kernel

SRC = Path(__file__).resolve().parents[2] / "src"


def imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def modules_under(folder: str) -> list[Path]:
    return sorted((SRC / folder).rglob("*.py"))


@pytest.mark.parametrize("path", modules_under("kernel"), ids=lambda p: str(p.relative_to(SRC)))
def test_kernel_imports_nothing_from_plugins_or_api(path: Path) -> None:
    bad = {m for m in imported_modules(path) if m.startswith(("corral.plugins", "corral.api"))}
    assert not bad, f"{path} imports {bad}"


@pytest.mark.parametrize("path", modules_under("plugins"), ids=lambda p: str(p.relative_to(SRC)))
def test_plugins_never_import_the_api(path: Path) -> None:
    bad = {m for m in imported_modules(path) if m.startswith("corral.api")}
    assert not bad, f"{path} imports {bad}"


def test_the_kernel_facade_exports_exactly_its_all() -> None:
    public = {name for name in dir(corral.kernel) if not name.startswith("_")}
    modules = {name for name in public if type(getattr(corral.kernel, name)).__name__ == "module"}
    assert public - modules == set(corral.kernel.__all__)
    for name in corral.kernel.__all__:
        assert getattr(corral.kernel, name) is not None
