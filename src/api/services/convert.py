"""Kernel records to wire messages, shared by the introspection services."""

from __future__ import annotations

from corral.api.errors import status_for
from corral.api.types.containerd import types as ctypes
from corral.api.types.containerd.services.introspection import v1 as introspection
from corral.api.types.google import rpc
from corral.kernel import PluginRecord, Status


def platforms(rec: PluginRecord) -> list[ctypes.Platform]:
    return [
        ctypes.Platform(os=p.os, architecture=p.architecture, variant=p.variant) for p in rec.meta.platforms
    ]


def init_error(rec: PluginRecord) -> rpc.Status | None:
    """containerd's init_err: set iff the plugin is not ok; skips say "skip plugin"."""
    if rec.status is Status.OK:
        return None
    code = status_for(rec.error) if rec.error is not None else None
    message = str(rec.error) if rec.error is not None else rec.reason
    if rec.status is Status.SKIP and "skip plugin" not in message:
        message = f"{rec.reason}: skip plugin"
    return rpc.Status(code=int(code.value) if code is not None else 2, message=message)


def plugin(rec: PluginRecord) -> introspection.Plugin:
    return introspection.Plugin(
        type=rec.type,
        id=rec.id,
        requires=list(rec.requires + tuple(t for t in rec.after if t not in rec.requires)),
        platforms=platforms(rec),
        exports=dict(rec.meta.exports),
        capabilities=list(rec.meta.capabilities),
        init_err=init_error(rec),
    )
