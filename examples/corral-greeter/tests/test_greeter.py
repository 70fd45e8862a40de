"""The greeter and the audit in a real corral kernel, next to corral's built-in sqlite metadata store."""

from __future__ import annotations

import dataclasses
import importlib
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from corral.kernel import (
    ConfigError,
    DaemonConfig,
    Kernel,
    PluginRecord,
    Registration,
    Status,
    builtin_candidate,
)
from corral.plugins.metadata import NamespaceStore
from corral.plugins.metadata.sqlite import registration as sqlite_metadata
from corral_greeter import audit, greeter

GREETER = "io.corral.greeter.v1.greeter"
AUDIT = "io.corral.audit.v1.plugins"
METADATA = "io.containerd.metadata.v1.sqlite"
PYPROJECT = Path(__file__).parents[1] / "pyproject.toml"

pytestmark = pytest.mark.anyio


def make_kernel(tmp_path: Path, greeter_config: Mapping[str, Any], *, with_metadata: bool = True) -> Kernel:
    """A kernel given its plugins directly (no entry points), with a fresh audit counter each time."""
    config = DaemonConfig(
        root=str(tmp_path / "root"),
        state=str(tmp_path / "state"),
        plugins={GREETER: dict(greeter_config)},
    )
    fresh_audit = dataclasses.replace(audit.registration, hooks=audit.PluginAudit())
    candidates = [builtin_candidate(sqlite_metadata, distribution="corral")] if with_metadata else []
    candidates += [
        builtin_candidate(r, distribution="corral-greeter") for r in (greeter.registration, fresh_audit)
    ]
    return Kernel(config, candidates=candidates)


def record(kernel: Kernel, uri: str) -> PluginRecord:
    rec = kernel.get(uri)
    assert rec is not None, f"{uri} unknown to the kernel"
    return rec


async def test_greeter_uses_the_configured_greeting_and_exports_it(tmp_path: Path) -> None:
    async with make_kernel(tmp_path, {"greeting": "hi"}).running() as kernel:
        rec = record(kernel, GREETER)
        assert rec.status is Status.OK, rec.reason
        assert rec.meta.exports == {"greeting": "hi"}
        assert await rec.instance.greet("x") == "hi, x"


async def test_shout_upper_cases_the_greeting(tmp_path: Path) -> None:
    async with make_kernel(tmp_path, {"greeting": "hi", "shout": True}).running() as kernel:
        assert await record(kernel, GREETER).instance.greet("x") == "HI, X"


async def test_greets_namespaces_from_the_metadata_store_up_to_max_names(tmp_path: Path) -> None:
    async with make_kernel(tmp_path, {"greeting": "hi", "max_names": 2}).running() as kernel:
        store = record(kernel, METADATA).instance.view(NamespaceStore)
        for name in ("c", "a", "b"):
            await store.create(name, {})
        assert await record(kernel, GREETER).instance.greet_namespaces() == ["hi, a", "hi, b"]


async def test_empty_greeting_skips_the_greeter_with_its_reason(tmp_path: Path) -> None:
    async with make_kernel(tmp_path, {"greeting": ""}).running() as kernel:
        rec = record(kernel, GREETER)
        assert rec.status is Status.SKIP
        assert rec.reason == "no greeting configured"
        assert rec.instance is None


async def test_greeter_is_skipped_without_a_metadata_store(tmp_path: Path) -> None:
    kernel = make_kernel(tmp_path, {}, with_metadata=False)
    async with kernel.running():
        rec = record(kernel, GREETER)
        assert rec.status is Status.SKIP
        assert "requires io.containerd.metadata.v1" in rec.reason


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"greeting": "hi", "volume": 11}, 'plugins."io.corral.greeter.v1.greeter".volume: unknown key'),
        ({"max_names": "many"}, 'plugins."io.corral.greeter.v1.greeter".max_names'),
        ({"max_names": 0}, 'plugins."io.corral.greeter.v1.greeter": max_names must be at least 1'),
    ],
)
async def test_bad_config_is_an_error_naming_its_toml_path(
    tmp_path: Path, section: Mapping[str, Any], message: str
) -> None:
    kernel = make_kernel(tmp_path, section)
    with pytest.raises(ConfigError, match=re.escape(message)):
        async with kernel.running():
            pass


async def test_audit_sees_every_plugin_loaded_including_earlier_ones(tmp_path: Path) -> None:
    async with make_kernel(tmp_path, {"greeting": "hi"}).running() as kernel:
        rec = record(kernel, AUDIT)
        assert rec.status is Status.OK, rec.reason
        assert rec.instance.loaded == {METADATA: Status.OK, GREETER: Status.OK, AUDIT: Status.OK}
        assert rec.instance.count == 3
        assert rec.meta.exports == {"greeters": "greeter"}


async def test_audit_starts_without_an_ok_greeter_and_counts_the_skip(tmp_path: Path) -> None:
    async with make_kernel(tmp_path, {"greeting": ""}).running() as kernel:
        rec = record(kernel, AUDIT)
        assert rec.status is Status.OK, rec.reason
        assert rec.instance.loaded[GREETER] is Status.SKIP
        assert rec.meta.exports == {"greeters": ""}


def test_every_entry_point_is_named_by_the_uri_of_the_registration_it_points_at() -> None:
    entry_points = tomllib.loads(PYPROJECT.read_text())["project"]["entry-points"]["corral.plugins"]
    assert entry_points, "no plugins declared"
    for name, value in entry_points.items():
        module, _, attr = value.partition(":")
        reg = getattr(importlib.import_module(module), attr)
        assert isinstance(reg, Registration), value
        assert reg.uri == name
