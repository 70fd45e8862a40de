"""Dependencies point one way (api -> plugins -> kernel) and the public surface is deliberate."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
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


def module_name(path: Path) -> str:
    parts = ["corral", *path.relative_to(SRC).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> list[Path]:
    return [p for p in sorted(SRC.rglob("*.py")) if "types" not in p.relative_to(SRC).parts[:2]]


@pytest.mark.parametrize("path", all_modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_no_module_imports_another_packages_private_module(path: Path) -> None:
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    for imported in imported_modules(path):
        parts = imported.split(".")
        private = next(
            (i for i, part in enumerate(parts) if part.startswith("_") and part != "__future__"), None
        )
        if private is None or not imported.startswith("corral."):
            continue
        owner = ".".join(parts[:private])
        assert package == owner or package.startswith(owner + "."), (
            f"{here} imports {imported}, private to {owner}"
        )


VOCABULARY = ("namespace", "snapshot", "lease", "mount", "digest", "image", "container")


@pytest.mark.parametrize("path", modules_under("kernel"), ids=lambda p: str(p.relative_to(SRC)))
def test_the_kernel_defines_no_container_vocabulary(path: Path) -> None:
    """The kernel may name containerd's plugin types (config migration does) but defines nothing of them."""
    tree = ast.parse(path.read_text(), str(path))
    names = [
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
    ] + [
        t.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign)
        for t in node.targets
        if isinstance(t, ast.Name)
    ]
    found = [n for n in names if any(word in n.lower() for word in VOCABULARY)]
    assert not found, f"{path} defines {found}"


def test_every_builtin_registration_has_its_entry_point_and_every_entry_point_a_registration() -> None:
    import importlib

    pyproject = tomllib.loads((SRC.parent / "pyproject.toml").read_text())
    declared = pyproject["project"]["entry-points"]["corral.plugins"]
    for name, target in declared.items():
        module, _, attr = target.partition(":")
        registration = getattr(importlib.import_module(module), attr)
        assert isinstance(registration, corral.kernel.Registration), target
        assert registration.uri == name, f"entry point {name} names {registration.uri}"
    modules_with_registrations = {
        module_name(path)
        for path in all_modules()
        if any(
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "registration" for t in node.targets)
            for node in ast.parse(path.read_text()).body
        )
    }
    declared_modules = {target.partition(":")[0] for target in declared.values()}
    assert modules_with_registrations == declared_modules


def test_the_client_imports_neither_the_server_nor_the_kernel_machinery_nor_sqlite() -> None:
    code = (
        "import sys, corral.api.client\n"
        "bad = [m for m in sys.modules if m in ('sqlite3', 'corral.api.grpc.server', 'corral.kernel._kernel',"
        " 'corral.kernel._config', 'corral.kernel._discovery') or m.startswith('corral.plugins.metadata')]\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""
