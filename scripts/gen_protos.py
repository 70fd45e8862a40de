#!/usr/bin/env python3
"""Generate corral's wire types (``src/api/types/``) from the ``.proto`` sources in ``src/api/proto/``.

This is the ONE way the generated code is produced::

    .venv/bin/python scripts/gen_protos.py          # regenerate src/api/types/
    .venv/bin/python scripts/gen_protos.py --check  # exit 1 if src/api/types/ drifted

Generation runs ``grpc_tools.protoc`` with the betterproto2 compiler plugin (async clients, async
server bases) into a temporary directory; the default mode then replaces ``src/api/types/`` with it,
``--check`` compares it with the committed tree byte for byte instead.

The plugin formats its output by running ``ruff`` (found on PATH, so the venv's bin dir is put first).
Ruff reads its configuration from the working directory, so protoc runs in a scratch directory that
holds a fixed ``ruff.toml``: the output does not depend on the caller's cwd or user-level ruff config.
(The plugin also decides which package ``__init__.py`` files to emit by checking paths relative to its
cwd, another reason to run it in an empty directory.)

One post-processing step (see ``strip_descriptor_import``): the plugin's header always imports
``google.protobuf.descriptor.Descriptor`` and relies on ruff to drop it when unused; in a package that
defines its own ``Descriptor`` message (``containerd.types``) the import survives, which would make the
generated code need the ``protobuf`` runtime (only a dev dependency, via grpcio-tools).
"""

from __future__ import annotations

import argparse
import filecmp
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = REPO_ROOT / "src" / "api" / "proto"
TYPES_DIR = REPO_ROOT / "src" / "api" / "types"

PLUGIN_OPTIONS = ("client_generation=async", "server_generation=async")

# Formatting settings for the plugin's `ruff check --fix` / `ruff format` passes (see module docstring).
RUFF_TOML = 'line-length = 110\ntarget-version = "py311"\n'

# Byproducts of importing the generated package; never part of the generated tree.
IGNORED_NAMES = frozenset({"__pycache__"})
IGNORED_SUFFIXES = (".pyc", ".pyo")

# Emitted by the plugin's header template for its `google_protobuf_descriptors` option, which is not used.
DESCRIPTOR_IMPORT_PREFIX = "from google.protobuf.descriptor import "


def well_known_include_dir() -> Path:
    """grpc_tools' bundled include dir holding google/protobuf/*.proto."""
    spec = importlib.util.find_spec("grpc_tools")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("grpc_tools is not installed in this interpreter (pip install grpcio-tools)")
    include = Path(next(iter(spec.submodule_search_locations))) / "_proto"
    if not (include / "google" / "protobuf" / "any.proto").is_file():
        raise SystemExit(f"grpc_tools include dir {include} lacks google/protobuf/any.proto")
    return include


def proto_sources() -> list[Path]:
    sources = sorted(PROTO_DIR.rglob("*.proto"), key=lambda p: p.relative_to(PROTO_DIR).as_posix())
    if not sources:
        raise SystemExit(f"no .proto files under {PROTO_DIR}")
    return sources


def generate(out_dir: Path) -> None:
    """Run protoc + the betterproto2 plugin, writing the generated package into ``out_dir``."""
    bin_dir = Path(sys.executable).parent  # not resolved: a venv's python is a symlink
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(bin_dir), env.get("PATH", "")])
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"-I{well_known_include_dir()}",
        f"--python_betterproto2_out={out_dir}",
        *(f"--python_betterproto2_opt={opt}" for opt in PLUGIN_OPTIONS),
        *(str(p) for p in proto_sources()),
    ]
    with tempfile.TemporaryDirectory(prefix="gen_protos_cwd_") as cwd:
        (Path(cwd) / "ruff.toml").write_text(RUFF_TOML)
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout)
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"protoc failed with exit code {proc.returncode}")
    strip_descriptor_import(out_dir)
    defer_dateutil_import(out_dir)


DATEUTIL_IMPORT = "import dateutil.parser\n"
DATEUTIL_USE = "            dt = dateutil.parser.isoparse(value)\n"


def defer_dateutil_import(out_dir: Path) -> None:
    """Import ``dateutil.parser`` where a Timestamp is parsed from a JSON string, not with the module.

    betterproto2's Timestamp imports it at the top of ``google/protobuf``, which every service's
    types import; dateutil (with ``ctypes``, ``decimal`` and its time zone modules) is then part of
    every daemon's start-up for a conversion that only ``from_dict`` of a string needs.
    """
    for path in sorted(out_dir.rglob("*.py")):
        text = path.read_text()
        if DATEUTIL_IMPORT not in text:
            continue
        if text.count(DATEUTIL_IMPORT) != 1 or text.count("dateutil.") != 2 or DATEUTIL_USE not in text:
            raise SystemExit(f"{path}: dateutil is used in a way defer_dateutil_import does not know")
        text = text.replace(DATEUTIL_IMPORT, "", 1)
        text = text.replace(DATEUTIL_USE, "            import dateutil.parser\n\n" + DATEUTIL_USE, 1)
        path.write_text(text)


def strip_descriptor_import(out_dir: Path) -> None:
    """Drop the header's leftover ``from google.protobuf.descriptor import ...`` lines.

    Without the ``google_protobuf_descriptors`` option nothing generated uses google.protobuf's
    descriptors; the import only survives ruff's unused-import fix when a generated message shares
    the imported name (containerd.types.Descriptor), which then shadows it anyway.
    """
    for path in sorted(out_dir.rglob("*.py")):
        text = path.read_text()
        if "google.protobuf.descriptor" not in text:
            continue
        lines = text.splitlines(keepends=True)
        kept = [line for line in lines if not line.startswith(DESCRIPTOR_IMPORT_PREFIX)]
        new_text = "".join(kept)
        if "google.protobuf.descriptor" in new_text:
            raise SystemExit(f"{path}: a google.protobuf.descriptor reference is left after stripping")
        path.write_text(new_text)


def tree_files(root: Path) -> dict[str, Path]:
    """Relative POSIX path -> file, for every generated file under ``root``."""
    files: dict[str, Path] = {}
    if not root.is_dir():
        return files
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if any(part in IGNORED_NAMES for part in rel.parts) or path.suffix in IGNORED_SUFFIXES:
            continue
        if path.is_file():
            files[rel.as_posix()] = path
    return files


def diff_trees(generated: Path, committed: Path) -> list[str]:
    """Human-readable lines for every file that differs between the two trees (empty when identical)."""
    gen = tree_files(generated)
    com = tree_files(committed)
    problems: list[str] = []
    for rel in sorted(gen.keys() | com.keys()):
        if rel not in com:
            problems.append(f"missing (would be generated): {rel}")
        elif rel not in gen:
            problems.append(f"stale (no longer generated): {rel}")
        elif not filecmp.cmp(gen[rel], com[rel], shallow=False):
            problems.append(f"differs: {rel}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="generate into a temp dir and compare with src/api/types/; exit 1 on drift",
    )
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="gen_protos_out_") as tmp:
        out_dir = Path(tmp) / "types"
        out_dir.mkdir()
        generate(out_dir)

        if args.check:
            problems = diff_trees(out_dir, TYPES_DIR)
            rel_types = TYPES_DIR.relative_to(REPO_ROOT)
            if problems:
                print(f"{rel_types} is out of date with src/api/proto; run scripts/gen_protos.py:")
                for line in problems:
                    print(f"  {line}")
                return 1
            print(f"{rel_types} is up to date ({len(tree_files(out_dir))} files)")
            return 0

        if TYPES_DIR.exists():
            shutil.rmtree(TYPES_DIR)
        shutil.copytree(out_dir, TYPES_DIR)
        print(f"wrote {len(tree_files(TYPES_DIR))} files to {TYPES_DIR.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
