"""The sdist builds a wheel that holds corral.kernel, corral.plugins, corral.api and py.typed."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_wheel_built_from_the_sdist_holds_the_whole_package(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--sdist", "--outdir", str(tmp_path), str(REPO)],
        check=True, capture_output=True,
    )  # fmt: skip
    (sdist,) = tmp_path.glob("corral-*.tar.gz")
    with tarfile.open(sdist) as tar:
        # Extraction filters came with 3.11.4 (and are the default from 3.14 on).
        if hasattr(tarfile, "data_filter"):
            tar.extractall(tmp_path / "unpacked", filter="data")
        else:
            tar.extractall(tmp_path / "unpacked")  # our own sdist
    (source,) = (tmp_path / "unpacked").iterdir()
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--wheel", "--outdir", str(tmp_path / "wheel"), str(source)],
        check=True, capture_output=True,
    )  # fmt: skip
    (wheel,) = (tmp_path / "wheel").glob("corral-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in (
        "corral/__init__.py",
        "corral/py.typed",
        "corral/kernel/__init__.py",
        "corral/plugins/metadata/sqlite.py",
        "corral/api/grpc/server.py",
        "corral/api/types/containerd/services/introspection/v1/__init__.py",
    ):
        assert required in names, f"{required} missing from {wheel.name}"
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[corral.plugins]" in text
    assert "io.containerd.metadata.v1.sqlite = corral.plugins.metadata.sqlite:registration" in text
