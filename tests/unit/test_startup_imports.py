"""What corrald's start-up does not pay for: modules that only some later call needs, processes it
would spawn to ask a question, and the entry-point scan when nothing installed has changed."""

from __future__ import annotations

import importlib.metadata as md
import json
import subprocess
import sys
from pathlib import Path

import pytest

from corral.kernel import CONFIG_GROUP, GROUP
from corral.kernel import _entry_points as entry_points

NOT_AT_START = (
    "httpx",
    "yaml",
    "rich",
    "pygments",
    "importlib.metadata",
    "zipfile",
    "email",
    "dateutil",
    "click",
    "tomli_w",
    "fractions",
    "decimal",
    "corral.api.types.nri.pkg.api.v1alpha1",
    "corral.api.types.containerd.events",
    "corral.api.types.containerd.task.v2",
    "corral.plugins.differs.archive",
    "corral.plugins.images.archive",
    "corral.plugins.images.build",
    "corral.plugins.transfer._stream",
    "zstandard",
    "isal",
    "corral.plugins.images._documents",
    "corral.plugins.differs.apply",
    "corral.plugins.differs.compare",
    "grpclib.server",  # corrald serves with its own HTTP/2 transport
    "grpclib.protocol",
    "h2",
    "hyperframe",
)
"""A registry's HTTP client, PyYAML (CDI specs), rich and pygments (brought by httpx's CLI), and
``importlib.metadata`` with what it imports: needed by a pull, a spec file or a changed install;
click, for corrald's help, version and command-line errors; tomli-w (``config default``); fractions and
decimal (a duration with decimals).
Then what corrald's plugins need only at a later call: NRI's messages (the first NRI plugin),
containerd's event messages (the first event published or received), the shim's Task API
messages (the first task), the checkpoint archiver (the first checkpoint or restore), the image
archive reader and writer (the first import or export), the image builder (the first pod's pause
image), the decompressors and compressors (zstandard, ISA-L: the first import, unpack or diff), the
parser of image documents (the first image read), the layer applier and the change walker (the
first apply or diff)."""

CRI = ("io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images", "io.containerd.cri.v1.runtime")
NOT_AT_START_WITHOUT_CRI = (
    *NOT_AT_START,
    "corral.plugins.remotes",
    "corral.plugins.runtimes.spec",
    "corral.plugins.sandbox.userns",
    "corral.plugins.images._reference",
    "corral.api.types.containerd.runc.v1",
)
"""With the CRI off (as the benchmarks start corrald, and containerd): also the registry client (the
first pull or push), the OCI spec generator and user namespaces (the first pod or container) and
the image reference grammar and runc's options (the first task created or checkpointed with
options), which CRI's own modules import."""


def _rows(found: list[entry_points.Installed]) -> list[tuple[str, str, str, str]]:
    return [(i.entry_point.name, i.entry_point.value, i.distribution, i.version) for i in found]


def _fake_distribution(site: Path, version: str, plugins: dict[str, str]) -> None:
    info = site / f"corral_startup_example-{version}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: corral-startup-example\nVersion: {version}\n\n"
    )
    lines = "".join(f"{uri} = {value}\n" for uri, value in plugins.items())
    (info / "entry_points.txt").write_text(f"[{GROUP}]\n{lines}")


@pytest.fixture
def writable(monkeypatch: pytest.MonkeyPatch) -> None:
    """As a start after an install: the cache may be written (the tests run without bytecode)."""
    monkeypatch.setattr(sys, "dont_write_bytecode", False)


@pytest.mark.usefixtures("writable")
def test_a_second_listing_comes_from_the_cache_and_is_what_importlib_metadata_lists(tmp_path: Path) -> None:
    cache = tmp_path / "entry-points.json"
    scanned = entry_points.installed(GROUP, (CONFIG_GROUP,), path=cache)
    assert cache.exists()
    cached = entry_points.installed(GROUP, (CONFIG_GROUP,), path=cache)
    assert all(type(i.entry_point) is entry_points.EntryPoint for i in cached)
    assert _rows(cached) == _rows(scanned) == _rows(entry_points.scan([GROUP])[GROUP])
    assert _rows(entry_points.installed(CONFIG_GROUP, (GROUP,), path=cache)) == _rows(
        entry_points.scan([CONFIG_GROUP])[CONFIG_GROUP]
    )
    sqlite = next(i for i in cached if i.entry_point.name == "io.containerd.metadata.v1.sqlite")
    real = next(ep for ep in md.entry_points(group=GROUP) if ep.name == sqlite.entry_point.name)
    assert sqlite.entry_point.load() is real.load()
    assert sqlite.distribution == "corral"


@pytest.mark.usefixtures("writable")
def test_a_distribution_installed_or_edited_after_the_cache_was_written_is_listed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache, site = tmp_path / "entry-points.json", tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    entry_points.installed(GROUP, path=cache)
    _fake_distribution(site, "1.0", {"x.v1.example": "corral_startup_example:registration"})
    found = {i.entry_point.name: i for i in entry_points.installed(GROUP, path=cache)}
    assert found["x.v1.example"].version == "1.0"
    assert found["x.v1.example"].distribution == "corral-startup-example"
    # Rewritten in place (an editable reinstall): a different size is a different fingerprint.
    _fake_distribution(site, "1.0", {"x.v1.example": "corral_startup_example.other:registration"})
    found = {i.entry_point.name: i for i in entry_points.installed(GROUP, path=cache)}
    assert found["x.v1.example"].entry_point.value == "corral_startup_example.other:registration"


def test_nothing_is_cached_while_another_finder_could_supply_distributions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Finder:
        @staticmethod
        def find_distributions(*args: object, **kwargs: object) -> list[object]:
            return []

    monkeypatch.setattr(sys, "meta_path", [*sys.meta_path, Finder()])
    assert entry_points.fingerprint() is None


def test_a_cached_entry_point_loads_dotted_attributes_and_ignores_extras() -> None:
    ep = entry_points.EntryPoint("x", "corral.kernel._entry_points : EntryPoint.load [extra]", GROUP)
    assert ep.load() is entry_points.EntryPoint.load


def _start(
    tmp_path: Path, cache: Path, disabled: tuple[str, ...] = (), not_at_start: tuple[str, ...] = NOT_AT_START
) -> tuple[list[str], list[str], str]:
    """A whole kernel started in a fresh interpreter as corrald starts it (its imports first), its
    gRPC mapping built: which of NOT_AT_START it imported, which processes it spawned, the plugin
    statuses."""
    code = (
        "import sys, subprocess, anyio\n"
        "import corral.api.daemon\n"
        "from pathlib import Path\n"
        "from corral.kernel import _entry_points\n"
        f"_entry_points.cache_path = lambda: Path({str(cache)!r})\n"
        "sys.dont_write_bytecode = False\n"
        "spawned = []\n"
        "_init = subprocess.Popen.__init__\n"
        "def _record(self, args, *a, **k):\n"
        "    spawned.append(str(args if isinstance(args, str) else args[0]))\n"
        "    _init(self, args, *a, **k)\n"
        "subprocess.Popen.__init__ = _record\n"
        "from corral.kernel import Kernel, DaemonConfig, discover\n"
        "from corral.api.grpc.server import build_mapping\n"
        f"config = DaemonConfig(root={str(tmp_path / 'r')!r}, state={str(tmp_path / 's')!r}, "
        f"disabled_plugins={disabled!r})\n"
        "statuses = []\n"
        "async def main():\n"
        "    kernel = Kernel(config, candidates=discover())\n"
        "    async with kernel.running():\n"
        "        build_mapping(kernel.records())\n"
        "        statuses.extend(f'{r.uri}={r.status.value}' for r in kernel.records())\n"
        "anyio.run(main)\n"
        f"print(json.dumps([[m for m in {not_at_start!r} if m in sys.modules], spawned, statuses]))\n"
    ).replace("import sys,", "import json, sys,")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    imported, spawned, statuses = json.loads(out.stdout.splitlines()[-1])
    return imported, spawned, "\n".join(statuses)


def test_start_up_imports_no_registry_client_yaml_or_importlib_metadata_and_spawns_nothing(
    tmp_path: Path,
) -> None:
    cache = tmp_path / "entry-points.json"
    _, _, first_statuses = _start(tmp_path / "first", cache)  # lists the entry points, writes the cache
    assert cache.exists()
    imported, spawned, statuses = _start(tmp_path / "second", cache)
    assert imported == [], f"imported at start-up: {imported}"
    assert spawned == [], f"processes spawned at start-up: {spawned}"
    assert statuses == first_statuses


def test_start_up_with_the_cri_off_imports_no_registry_client_spec_generator_or_user_namespaces(
    tmp_path: Path,
) -> None:
    cache = tmp_path / "entry-points.json"
    _start(tmp_path / "first", cache, CRI)
    imported, spawned, _ = _start(tmp_path / "second", cache, CRI, NOT_AT_START_WITHOUT_CRI)
    assert imported == [], f"imported at start-up: {imported}"
    assert spawned == [], f"processes spawned at start-up: {spawned}"
