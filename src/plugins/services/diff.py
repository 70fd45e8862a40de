"""io.containerd.service.v1.diff-service — applies and creates layers with the configured differs."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import anyio.to_thread

from corral.kernel import InitContext, InvalidArgument, Registration, Unimplemented
from corral.plugins import types
from corral.plugins.core import Descriptor, Mount
from corral.plugins.core.tracing import span
from corral.plugins.differs import Differ


@dataclass(frozen=True)
class DiffServiceConfig:
    """The ``io.containerd.service.v1.diff-service`` section."""

    default: tuple[str, ...] = ("walking",)
    """Differ ids, tried in order: the first that supports the layer or mounts wins."""
    sync_fs: bool = False
    """Flush applied layers to disk before Apply returns (containerd 2.1's option): slower, and a
    layer reported applied survives a power loss."""


class DiffService:
    def __init__(self, differs: Sequence[Differ], *, sync_fs: bool = False) -> None:
        self._differs = list(differs)
        self._sync_fs = sync_fs

    async def apply(self, desc: Descriptor, mounts: Sequence[Mount], *, sync_fs: bool = False) -> Descriptor:
        """``sync_fs`` (ApplyRequest.sync_fs, containerd 2) flushes this layer as the config's does all."""
        layer = {
            "layer.media.type": desc.media_type,
            "layer.media.digest": desc.digest,
            "layer.media.size": desc.size,
        }
        with span("diff.Apply", layer) as current:
            applied = await self._apply(desc, mounts, sync_fs)
            current.set_attributes({"layer.diff_id": applied.digest})
            return applied

    async def _apply(self, desc: Descriptor, mounts: Sequence[Mount], sync_fs: bool) -> Descriptor:
        check_mounts(mounts)
        error: Exception = Unimplemented("no differ could apply the layer")
        for differ in self._differs:
            try:
                applied = await differ.apply(desc, mounts)
            except Unimplemented as exc:
                error = exc
                continue
            if self._sync_fs or sync_fs:
                with span("diff.sync_fs"):
                    await anyio.to_thread.run_sync(os.sync)
            return applied
        raise error

    async def compare(
        self,
        lower: Sequence[Mount],
        upper: Sequence[Mount],
        *,
        media_type: str,
        ref: str,
        labels: Mapping[str, str],
        source_date_epoch: datetime | None = None,
    ) -> Descriptor:
        check_mounts(lower)
        check_mounts(upper)
        error: Exception = Unimplemented("no differ could compare the mounts")
        with span("diff.Compare", {"layer.media.type": media_type, "content.ref": ref}) as current:
            for differ in self._differs:
                try:
                    epoch = {"source_date_epoch": source_date_epoch} if source_date_epoch is not None else {}
                    made = await differ.compare(
                        lower, upper, media_type=media_type, ref=ref, labels=labels, **epoch
                    )
                except Unimplemented as exc:
                    error = exc
                    continue
                current.set_attributes({"layer.media.digest": made.digest, "layer.media.size": made.size})
                return made
            raise error


def check_mounts(mounts: Sequence[Mount]) -> None:
    """A NUL byte cannot reach mount(2): such a mount is a bad request, refused before anything is mounted."""
    for m in mounts:
        for what, value in (("type", m.type), ("source", m.source), ("target", m.target)):
            if "\x00" in value:
                raise InvalidArgument(f"mount {what} {value!r} contains a NUL byte")
        if any("\x00" in option for option in m.options):
            raise InvalidArgument(f"mount options of {m.source!r} contain a NUL byte")


async def init(ic: InitContext) -> DiffService:
    config: DiffServiceConfig = ic.config
    loaded: dict[str, Any] = ic.get_by_type(types.DIFFER)
    missing = [name for name in config.default if name not in loaded]
    if missing:
        raise RuntimeError(f"needed differ not loaded: {', '.join(missing)}")
    return DiffService([loaded[name] for name in config.default], sync_fs=config.sync_fs)


registration = Registration(
    type=types.SERVICE,
    id="diff-service",
    init=init,
    requires=(types.DIFFER,),
    config=DiffServiceConfig,
    description="layers applied to and created from snapshots",
)
