"""[proxy_plugins] as containerd registers them: one plugin per entry, listed with its exports,
platform and capabilities, connected lazily; bad entries are config errors naming file and key."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata as md
import os
import tempfile
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import anyio
import pytest
from click.testing import CliRunner
from lazy_snapshotter import REF, LazyLayers

from corral.api.cli import cli
from corral.api.proxy import ORIGIN, ProxyContentStore, ProxySnapshotter, proxy_candidates, serve_snapshotter
from corral.kernel import (
    CONFIG_GROUP,
    AlreadyExists,
    Candidate,
    ConfigError,
    ConfigSource,
    CorralError,
    DaemonConfig,
    Kernel,
    NotFound,
    Origin,
    Platform,
    Status,
    Unavailable,
    discover,
    load_config,
)
from corral.plugins.core import namespace
from corral.plugins.metadata import NamespacedSnapshots
from corral.plugins.metadata.sqlite import open_metadata
from corral.plugins.snapshots import Kind
from corral.plugins.snapshots.native import NativeSnapshotter

SNAPSHOTTER = "io.containerd.snapshotter.v1"


def kernel_for(tmp_path: Path, proxies: Mapping[str, Mapping[str, object]], **extra: object) -> Kernel:
    config = DaemonConfig(
        root=str(tmp_path / "root"), state=str(tmp_path / "state"), proxy_plugins=proxies, **extra
    )  # type: ignore[arg-type]
    return Kernel(config, candidates=discover())


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# -- registration ----------------------------------------------------------------------------------


def test_each_entry_becomes_a_plugin_of_its_type_named_by_the_entry(tmp_path: Path) -> None:
    kernel = kernel_for(
        tmp_path,
        {
            "stargz": {"type": "snapshot", "address": "/run/stargz.sock"},
            "remote-diff": {"type": "io.containerd.differ.v1", "address": "/run/diff.sock"},
        },
    )
    ordered, _ = kernel.prepare()
    uris = [r.uri for r in ordered]
    assert f"{SNAPSHOTTER}.stargz" in uris
    assert "io.containerd.differ.v1.remote-diff" in uris
    # pulled in before the metadata store, which takes every snapshotter
    assert uris.index(f"{SNAPSHOTTER}.stargz") < uris.index("io.containerd.metadata.v1.sqlite")
    record = kernel.get(f"{SNAPSHOTTER}.stargz")
    assert record is not None and record.origin is not None
    assert (record.origin.distribution, record.origin.builtin) == (ORIGIN, False)
    assert record.origin.entry_point == "proxy_plugins.stargz"


def test_a_proxy_plugin_is_ok_before_its_process_exists_and_lists_what_containerd_lists(
    tmp_path: Path,
) -> None:
    kernel = kernel_for(
        tmp_path,
        {
            "lazy": {
                "type": "snapshot",
                "address": str(tmp_path / "nobody-listens.sock"),
                "platform": "linux/arm64/v8",
                "capabilities": ["remote", "rebase"],
                "exports": {"root": "/var/lib/lazy"},
            }
        },
    )

    async def main() -> None:
        async with kernel.running():
            record = kernel.get(f"{SNAPSHOTTER}.lazy")
            assert record is not None and record.status is Status.OK, record
            assert record.meta.exports == {
                "root": "/var/lib/lazy",
                "address": str(tmp_path / "nobody-listens.sock"),
            }
            assert record.meta.platforms == [Platform("linux", "arm64", "v8")]
            assert record.meta.capabilities == ["remote", "rebase"]
            assert isinstance(record.instance, ProxySnapshotter)
            with pytest.raises(
                Unavailable, match=r"connection error.*dial unix://.*nobody-listens.sock: timeout"
            ):
                await record.instance.stat("anything")
            assert "unreachable" in await record.instance.condition()

    anyio.run(main)


def test_without_a_platform_the_host_platform_is_listed(tmp_path: Path) -> None:
    kernel = kernel_for(tmp_path, {"p": {"type": "snapshot", "address": "/x.sock"}})

    async def main() -> None:
        async with kernel.running():
            record = kernel.get(f"{SNAPSHOTTER}.p")
            assert record is not None and record.meta.platforms == [Platform.host()]

    anyio.run(main)


def test_a_proxy_plugin_is_disabled_like_any_other(tmp_path: Path) -> None:
    kernel = kernel_for(
        tmp_path,
        {"p": {"type": "snapshot", "address": "/x.sock"}},
        disabled_plugins=(f"{SNAPSHOTTER}.p",),
    )
    ordered, _ = kernel.prepare()
    assert f"{SNAPSHOTTER}.p" not in [r.uri for r in ordered]
    record = kernel.get(f"{SNAPSHOTTER}.p")
    assert record is not None and record.status is Status.DISABLED


def test_proxy_plugins_are_no_longer_reported_as_inert(tmp_path: Path) -> None:
    kernel = kernel_for(tmp_path, {"p": {"type": "snapshot", "address": "/x.sock"}})
    kernel.prepare()
    assert not [n for n in kernel.config_notes() if "proxy_plugins" in n]


# -- bad entries -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "key", "says"),
    [
        (
            {"type": "bogus", "address": "/x.sock"},
            "proxy_plugins.p.type",
            'unknown proxy plugin type "bogus"',
        ),
        ({"address": "/x.sock"}, "proxy_plugins.p.type", "missing key"),
        ({"type": "sandbox", "address": "/x.sock"}, "proxy_plugins.p.type", "not supported by corral"),
        ({"type": "snapshot"}, "proxy_plugins.p.address", "missing key"),
        (
            {"type": "snapshot", "address": "/x.sock", "platform": "linux/x/y/z"},
            "proxy_plugins.p.platform",
            "",
        ),
        ({"type": "snapshot", "address": "/x.sock", "adress": "/y"}, "proxy_plugins.p.adress", "unknown key"),
        (
            {"type": "snapshot", "address": "/x.sock", "capabilities": "remote"},
            "proxy_plugins.p.capabilities",
            "array",
        ),
    ],
)
def test_a_bad_entry_is_a_config_error_naming_its_key(entry: dict[str, object], key: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        proxy_candidates({"p": entry})
    assert caught.value.key == key
    assert caught.value.detail.startswith(f"{key}: ")
    assert says in caught.value.detail


def test_a_proxy_named_like_an_installed_plugin_of_its_type_is_refused(tmp_path: Path) -> None:
    kernel = kernel_for(tmp_path, {"native": {"type": "snapshot", "address": "/x.sock"}})
    with pytest.raises(
        ConfigError,
        match=r"proxy_plugins.native: plugin io.containerd.snapshotter.v1.native is already provided by corral",
    ):
        kernel.prepare()


def test_the_error_names_the_imported_file_that_defined_the_entry(tmp_path: Path) -> None:
    write(
        tmp_path / "proxies.toml", 'version = 3\n[proxy_plugins.p]\ntype = "snapshott"\naddress = "/x.sock"\n'
    )
    main = write(tmp_path / "config.toml", 'version = 3\nimports = ["proxies.toml"]\n')
    loaded = load_config(main, defaults=DaemonConfig(root=str(tmp_path / "r"), state=str(tmp_path / "s")))
    kernel = Kernel(loaded.config, candidates=discover())
    with pytest.raises(ConfigError) as caught:
        kernel.prepare()
    message = loaded.attribute(caught.value).detail
    assert message == (
        f'{tmp_path / "proxies.toml"}: proxy_plugins.p.type: unknown proxy plugin type "snapshott"'
        " (expected snapshot, content or diff)"
    )


def test_a_later_file_replaces_the_whole_entry_and_is_the_one_named(tmp_path: Path) -> None:
    write(tmp_path / "later.toml", 'version = 3\n[proxy_plugins.p]\ntype = "snapshot"\n')
    main = write(
        tmp_path / "config.toml",
        'version = 3\nimports = ["later.toml"]\n[proxy_plugins.p]\ntype = "snapshot"\naddress = "/x.sock"\n',
    )
    loaded = load_config(main, defaults=DaemonConfig(root=str(tmp_path / "r"), state=str(tmp_path / "s")))
    with pytest.raises(ConfigError) as caught:
        Kernel(loaded.config, candidates=discover()).prepare()
    assert loaded.attribute(caught.value).detail.startswith(
        f"{tmp_path / 'later.toml'}: proxy_plugins.p.address"
    )


# -- the wire and the handshake ---------------------------------------------------------------------


@contextlib.asynccontextmanager
async def served_lazy(tmp_path: Path) -> AsyncIterator[tuple[LazyLayers, str]]:
    layers = {"sha256:layer-one": {"lazy.txt": b"fetched on demand\n"}}
    remote = await anyio.to_thread.run_sync(LazyLayers, tmp_path / "remote", layers)
    sockets = Path(tempfile.mkdtemp(prefix="corral-proxy-test-"))
    address = str(sockets / "lazy.sock")
    try:
        async with serve_snapshotter(remote, address):
            yield remote, address
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(sockets)


def test_the_handshake_records_a_layer_the_remote_already_has(tmp_path: Path) -> None:
    async def main() -> None:
        async with served_lazy(tmp_path) as (remote, address):
            proxy = ProxySnapshotter(address, "lazy")
            store = open_metadata(tmp_path / "meta.db", snapshotters={"lazy": proxy})
            snapshots = store.view(NamespacedSnapshots).get("lazy")
            labels = {
                REF: "sha256:layer-one",
                "containerd.io/snapshot/cri.layer-digest": "sha256:blob",
                "containerd.io/snapshot/cri.image-ref": "registry.test/app:1",
                "not-for-the-backend": "kept here",
            }
            with namespace("default"):
                with pytest.raises(AlreadyExists, match="target snapshot"):
                    await snapshots.prepare("extract-1 sha256:layer-one", "", labels)
                # the unpacker's next step: the chain ID is there, committed, with the request's labels
                info = await snapshots.stat("sha256:layer-one")
                assert info.kind is Kind.COMMITTED
                assert info.labels["not-for-the-backend"] == "kept here"
                assert info.labels["containerd.io/snapshot/cri.layer-digest"] == "sha256:blob"
                # asking again is answered from the records, without the remote
                with pytest.raises(AlreadyExists, match='target snapshot "sha256:layer-one"'):
                    await snapshots.prepare("extract-2 sha256:layer-one", "", labels)
                assert len(remote.seen_labels) == 1
                # and a container's snapshot on it sees the lazily provided files
                mounts = await snapshots.prepare("container", "sha256:layer-one")
                assert (Path(mounts[0].source) / "lazy.txt").read_bytes() == b"fetched on demand\n"
                await snapshots.remove("container")
                await snapshots.remove("sha256:layer-one")
            assert remote.seen_labels[0] == {k: v for k, v in labels.items() if k != "not-for-the-backend"}
            assert [i.name async for i in remote.walk()] == []
            store.close()
            proxy.close()

    anyio.run(main)


def test_a_prepare_without_a_ref_is_not_taken_for_a_remote_layer(tmp_path: Path) -> None:
    async def main() -> None:
        async with served_lazy(tmp_path) as (remote, address):
            proxy = ProxySnapshotter(address, "lazy")
            store = open_metadata(tmp_path / "meta.db", snapshotters={"lazy": proxy})
            snapshots = store.view(NamespacedSnapshots).get("lazy")
            with namespace("default"):
                await snapshots.prepare("plain", "", {"containerd.io/snapshot/x": "1"})
                assert (await snapshots.stat("plain")).kind is Kind.ACTIVE
            backend = [i async for i in remote.walk()]
            assert [(i.name, dict(i.labels)) for i in backend] == [
                ("default/1/plain", {"containerd.io/snapshot/x": "1"})
            ]
            proxy.close()

    anyio.run(main)


def test_errors_from_the_remote_keep_their_kind_and_message(tmp_path: Path) -> None:
    async def outcomes(sn: object) -> list[tuple[str, str]]:
        calls = [
            ("stat", ("missing",)),
            ("prepare", ("a",)),
            ("prepare", ("a",)),
            ("commit", ("a-c", "a")),
            ("mounts", ("a-c",)),
            ("prepare", ("b", "nope")),
            ("prepare", ("b", "a-c")),
            ("prepare", ("c", "b")),
            ("remove", ("a-c",)),
            ("commit", ("x", "missing")),
        ]
        seen = []
        for name, args in calls:
            try:
                await getattr(sn, name)(*args)
                seen.append((name, "ok"))
            except CorralError as exc:
                seen.append((type(exc).__name__, str(exc)))
        return seen

    async def main() -> None:
        direct = await anyio.to_thread.run_sync(NativeSnapshotter, tmp_path / "direct")
        expected = await outcomes(direct)
        async with served_lazy(tmp_path) as (_, address):
            proxy = ProxySnapshotter(address, "lazy")
            assert await outcomes(proxy) == expected
            assert {kind for kind, _ in expected} >= {"NotFound", "AlreadyExists", "FailedPrecondition"}
            info = await proxy.stat("b")
            assert (info.name, info.kind, info.parent) == ("b", Kind.ACTIVE, "a-c")
            assert info.created_at is not None and info.updated_at is not None
            proxy.close()

    anyio.run(main)


# -- corral config validate ----------------------------------------------------------------------------


def test_config_validate_refuses_a_bad_entry_in_one_line_naming_file_and_key(tmp_path: Path) -> None:
    path = write(tmp_path / "config.toml", 'version = 3\n[proxy_plugins.p]\ntype = "snapshot"\n')
    result = CliRunner().invoke(cli, ["config", "validate", "--config", str(path)], catch_exceptions=False)
    assert result.exit_code == 2
    assert (
        result.stderr
        == f"corral: config error: {path}: proxy_plugins.p.address: missing key (the proxy's unix socket)\n"
    )


def test_config_validate_counts_a_good_entry_as_a_plugin_and_warns_of_nothing(tmp_path: Path) -> None:
    path = write(
        tmp_path / "config.toml", 'version = 3\n[proxy_plugins.p]\ntype = "snapshot"\naddress = "/x.sock"\n'
    )
    result = CliRunner().invoke(cli, ["config", "validate", "--config", str(path)], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == f"config ok: {len(discover()) + 1} plugins configured\n"
    assert "proxy_plugins" not in result.stderr


# -- the kernel's hook for plugins defined in config -------------------------------------------------------


def test_the_kernel_asks_a_config_source_only_when_the_config_sets_its_key(tmp_path: Path) -> None:
    asked: list[Mapping[str, Any]] = []

    def provide(table: Mapping[str, Any]) -> list[Candidate]:
        asked.append(table)
        return []

    origin = Origin("corral", "", "proxy_plugins", "test:provide", builtin=True)
    source = ConfigSource("proxy_plugins", origin, provider=provide)
    config = DaemonConfig(root=str(tmp_path / "r"), state=str(tmp_path / "s"))
    Kernel(config, candidates=[], config_sources=[source]).prepare()
    assert asked == []
    table = {"p": {"type": "snapshot", "address": "/x.sock"}}
    Kernel(dataclasses.replace(config, proxy_plugins=table), candidates=[], config_sources=[source]).prepare()
    assert asked == [table]


def test_a_third_party_config_source_is_not_run_until_enabled(tmp_path: Path) -> None:
    def provide(table: Mapping[str, Any]) -> list[Candidate]:
        raise AssertionError("a root daemon must not run code a package merely declares")

    entry_point = md.EntryPoint(name="proxy_plugins", value="elsewhere:provide", group=CONFIG_GROUP)
    origin = Origin("someone-else", "1.0", "proxy_plugins", "elsewhere:provide", builtin=False)
    source = ConfigSource("proxy_plugins", origin, entry_point=entry_point)
    config = DaemonConfig(
        root=str(tmp_path / "r"), state=str(tmp_path / "s"), proxy_plugins={"p": {"type": "snapshot"}}
    )
    kernel = Kernel(config, candidates=[], config_sources=[source])
    ordered, _ = kernel.prepare()
    assert ordered == []
    assert kernel.config_notes() == [
        "proxy_plugins: read only by someone-else, which is not enabled;"
        ' enable it with enabled_distributions = ["someone-else"]'
    ]


# -- a commit whose reply is lost ----------------------------------------------------------------------------


class LosesReplies(NativeSnapshotter):
    """Commits, then fails as a connection lost before the reply would (``commit_first``), or fails
    before committing."""

    commit_first = True

    async def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> None:
        if self.commit_first:
            await super().commit(name, key, labels)
        raise Unavailable("connection reset before the reply")


@pytest.mark.parametrize("commit_first", [True, False], ids=["committed", "not-committed"])
def test_a_commit_whose_reply_is_lost_is_settled_by_asking_the_remote(
    tmp_path: Path, commit_first: bool
) -> None:
    async def main() -> None:
        remote = await anyio.to_thread.run_sync(LosesReplies, tmp_path / "remote")
        remote.commit_first = commit_first
        sockets = Path(tempfile.mkdtemp(prefix="corral-proxy-test-"))
        address = str(sockets / "sn.sock")
        async with serve_snapshotter(remote, address):
            proxy = ProxySnapshotter(address, "remote")
            store = open_metadata(tmp_path / "meta.db", snapshotters={"remote": proxy})
            snapshots = store.view(NamespacedSnapshots).get("remote")
            with namespace("default"):
                await snapshots.prepare("work")
                if commit_first:
                    await snapshots.commit("layer", "work")  # the remote has it: that is success
                    assert (await snapshots.stat("layer")).kind is Kind.COMMITTED
                    with pytest.raises(NotFound):
                        await snapshots.stat("work")
                    await snapshots.prepare("child", "layer")
                else:
                    with pytest.raises(Unavailable):
                        await snapshots.commit("layer", "work")
                    assert (await snapshots.stat("work")).kind is Kind.ACTIVE
                    await snapshots.mounts("work")  # still usable: nothing half-made
                    with pytest.raises(NotFound):
                        await snapshots.stat("layer")
            store.close()
            proxy.close()
        with contextlib.suppress(OSError):
            os.rmdir(sockets)

    anyio.run(main)


def test_entries_on_one_address_share_one_connection_as_in_containerd(tmp_path: Path) -> None:
    sock = str(tmp_path / "both.sock")
    kernel = kernel_for(
        tmp_path,
        {
            "snaps": {"type": "snapshot", "address": sock},
            "layers": {"type": "diff", "address": sock},
            "apart": {"type": "diff", "address": str(tmp_path / "other.sock")},
        },
    )

    async def main() -> None:
        async with kernel.running():
            instances = {
                uri: kernel.get(uri).instance  # type: ignore[union-attr]
                for uri in (
                    f"{SNAPSHOTTER}.snaps",
                    "io.containerd.differ.v1.layers",
                    "io.containerd.differ.v1.apart",
                )
            }
            snaps, layers, apart = instances.values()
            assert snaps.connection is layers.connection
            assert apart.connection is not snaps.connection

    anyio.run(main)


def test_a_content_proxy_that_is_down_does_not_stop_the_sweep_of_snapshots(tmp_path: Path) -> None:
    async def main() -> None:
        native = await anyio.to_thread.run_sync(NativeSnapshotter, tmp_path / "native")
        content = ProxyContentStore(str(tmp_path / "nobody.sock"))
        store = open_metadata(tmp_path / "meta.db", content=content, snapshotters={"native": native})
        await native.prepare("left-by-a-crash")
        result = await store.garbage_collect()
        assert [i.name async for i in native.walk()] == []
        assert result.failed["content"][0].startswith("sweep: connection error")
        store.close()
        content.close()

    anyio.run(main)
