"""What ``ctr images export`` asks of corrald, call by call, and what each call costs the metadata
store: the shape its speed depends on (thousands of 32 KiB reads), pinned without timing it."""

from __future__ import annotations

import collections
import shutil
import tarfile
from pathlib import Path
from typing import Any

import anyio
import pytest

from corral.api.grpc.server import build_mapping, serve_unix
from corral.kernel import DaemonConfig, InitContext, Kernel, Registration, builtin_candidate, discover
from corral.plugins.images.build import build_busybox_image
from corral.plugins.metadata import database

CTR = shutil.which("ctr")
NAME = "docker.io/library/busybox:latest"
READ = "/containerd.services.content.v1.Content/Read"
INFO = "/containerd.services.content.v1.Content/Info"
CHUNK = 32 * 1024
"""What ctr's io.Copy asks for at a time (containerd 1.6's remote ReaderAt: one Read per ReadAt)."""

pytestmark = pytest.mark.skipif(CTR is None, reason="needs Debian's ctr (containerd package)")


class Calls:
    """A request observer (the metrics plugin's hook): every call, and the metadata store's
    statements and transactions made while it ran (ctr's export makes one call at a time)."""

    def __init__(self) -> None:
        self.calls: collections.Counter[str] = collections.Counter()
        self.store: collections.Counter[tuple[str, str]] = collections.Counter()
        self.current = ""

    def request_started(self, method: str, kind: str) -> None:
        self.calls[method] += 1
        self.current = method

    def request_finished(
        self, method: str, kind: str, code: int, seconds: float, received: int, sent: int
    ) -> None:
        self.current = ""

    def reset(self) -> None:
        self.calls.clear()
        self.store.clear()


@pytest.fixture
def counting_store(monkeypatch: pytest.MonkeyPatch) -> Calls:
    calls = Calls()
    for name in ("read_one", "read", "run"):
        real = getattr(database.Database, name)

        def counted(self: Any, *args: Any, _real: Any = real, _name: str = name, **kwargs: Any) -> Any:
            calls.store[(calls.current, _name)] += 1
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(database.Database, name, counted)
    return calls


def _blob_sizes(archive: Path) -> dict[str, int]:
    with tarfile.open(archive) as tar:
        return {
            "sha256:" + m.name.rsplit("/", 1)[1]: m.size
            for m in tar.getmembers()
            if m.isfile() and m.name.startswith("blobs/")
        }


def test_ctr_images_export_reads_each_blob_once_in_32_kib_calls_of_one_lookup_each(
    tmp_path: Path, counting_store: Calls
) -> None:
    archive = tmp_path / "busybox.tar"
    build_busybox_image(archive)
    observer = counting_store
    config = DaemonConfig(root=str(tmp_path / "root"), state=str(tmp_path / "state"))

    async def init(ic: InitContext) -> Calls:
        return observer

    calls = Registration(type="io.corral.test.v1", id="calls", init=init)
    socket = str(tmp_path / "corral.sock")
    out = tmp_path / "out.tar"
    assert CTR is not None

    async def main() -> None:
        kernel = Kernel(config, candidates=[*discover(), builtin_candidate(calls)])
        async with kernel.running(), serve_unix(build_mapping(kernel.records()), socket):
            ctr = [CTR, "-a", socket, "--connect-timeout", "5s"]
            await anyio.run_process([*ctr, "images", "import", "--no-unpack", str(archive)])
            observer.reset()
            await anyio.run_process([*ctr, "images", "export", str(out), NAME])

    anyio.run(main)

    exported = _blob_sizes(out)
    assert exported == _blob_sizes(archive)
    sizes = sorted(exported.values())
    layer = sizes[-1]
    assert layer > 30 * CHUNK  # the busybox layer (1.1 MB): dozens of reads
    reads = observer.calls[READ]
    chunks = sum(-(-size // CHUNK) for size in sizes)
    # The image once, then every blob once in 32 KiB reads (one Info each), and two more whole
    # reads of the manifest (with their Info): as ctr walks the image and for the manifest.json it
    # writes. Never a second pass over the layer, nothing else.
    assert len(sizes) == 3  # manifest, config, layer
    assert dict(observer.calls) == {
        "/containerd.services.images.v1.Images/Get": 1,
        INFO: len(sizes) + 2,
        READ: chunks + 2,
    }
    # Each Read costs the metadata store one statement and no transaction.
    assert observer.store[(READ, "read_one")] == reads, dict(observer.store)
    assert observer.store[(READ, "read")] == observer.store[(READ, "run")] == 0, dict(observer.store)
