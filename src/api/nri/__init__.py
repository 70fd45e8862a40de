"""NRI, the Node Resource Interface, as containerd 2.0 enables it: plugins — external processes on
the NRI socket, pre-installed ones launched from the plugin path, and (a corral extension) Python
objects with ``corral.nri`` hooks — are told of pod and container lifecycle events and may adjust a
container being created, update others' resources and evict them.

``NRI`` is the runtime side that CRI and the tasks service call; ``TaskLifecycle`` sends the
container events of the tasks service's containers (``ctr run``, ``corral run``), which containerd
does only for CRI. Messages are NRI's own (``corral.api.types.nri.pkg.api.v1alpha1``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from corral.api.nri._adaptation import DEFAULT_PLUGIN_CONFIG_PATH as DEFAULT_PLUGIN_CONFIG_PATH
    from corral.api.nri._adaptation import DEFAULT_PLUGIN_PATH as DEFAULT_PLUGIN_PATH
    from corral.api.nri._adaptation import DEFAULT_SOCKET_PATH as DEFAULT_SOCKET_PATH
    from corral.api.nri._adaptation import NRI as NRI
    from corral.api.nri._adaptation import Domain as Domain
    from corral.api.nri._adaptation import Settings as Settings
    from corral.api.nri._events import Events as Events
    from corral.api.nri._mux import PLUGIN_SERVICE_CONN as PLUGIN_SERVICE_CONN
    from corral.api.nri._mux import RUNTIME_SERVICE_CONN as RUNTIME_SERVICE_CONN
    from corral.api.nri._mux import Mux as Mux
    from corral.api.nri._mux import MuxDecoder as MuxDecoder
    from corral.api.nri._mux import MuxError as MuxError
    from corral.api.nri._mux import encode_frames as encode_frames
    from corral.api.nri._oci import CDIInjector as CDIInjector
    from corral.api.nri._oci import apply_adjustment as apply_adjustment
    from corral.api.nri._oci import container_from_spec as container_from_spec
    from corral.api.nri._oci import resources_from_oci as resources_from_oci
    from corral.api.nri._oci import resources_to_oci as resources_to_oci
    from corral.api.nri._plugins import PLUGIN_SERVICE as PLUGIN_SERVICE
    from corral.api.nri._plugins import RUNTIME_SERVICE as RUNTIME_SERVICE
    from corral.api.nri._plugins import Plugin as Plugin
    from corral.api.nri._plugins import Timeouts as Timeouts
    from corral.api.nri._plugins import mask_of as mask_of
    from corral.api.nri._plugins import parse_plugin_name as parse_plugin_name
    from corral.api.nri._result import Conflict as Conflict
    from corral.api.nri._result import CreateResult as CreateResult
    from corral.api.nri._result import UpdateResult as UpdateResult
    from corral.api.nri._tasks import TaskLifecycle as TaskLifecycle
    from corral.api.nri.hookspecs import PROJECT as PROJECT
    from corral.api.nri.hookspecs import NRIHookSpecs as NRIHookSpecs
    from corral.api.nri.hookspecs import hookimpl as hookimpl
    from corral.api.types.nri.pkg.api import v1alpha1 as api

    VALID_EVENTS: int

# Names load on first use (PEP 562): corrald's NRI plugin imports the runtime, and NRI's messages
# (``api``) are imported when a plugin first connects.
_SOURCES = {
    "CDIInjector": "corral.api.nri._oci",
    "Conflict": "corral.api.nri._result",
    "CreateResult": "corral.api.nri._result",
    "DEFAULT_PLUGIN_CONFIG_PATH": "corral.api.nri._adaptation",
    "DEFAULT_PLUGIN_PATH": "corral.api.nri._adaptation",
    "DEFAULT_SOCKET_PATH": "corral.api.nri._adaptation",
    "Domain": "corral.api.nri._adaptation",
    "Events": "corral.api.nri._events",
    "Mux": "corral.api.nri._mux",
    "MuxDecoder": "corral.api.nri._mux",
    "MuxError": "corral.api.nri._mux",
    "NRI": "corral.api.nri._adaptation",
    "NRIHookSpecs": "corral.api.nri.hookspecs",
    "PLUGIN_SERVICE": "corral.api.nri._plugins",
    "PLUGIN_SERVICE_CONN": "corral.api.nri._mux",
    "PROJECT": "corral.api.nri.hookspecs",
    "Plugin": "corral.api.nri._plugins",
    "RUNTIME_SERVICE": "corral.api.nri._plugins",
    "RUNTIME_SERVICE_CONN": "corral.api.nri._mux",
    "Settings": "corral.api.nri._adaptation",
    "TaskLifecycle": "corral.api.nri._tasks",
    "Timeouts": "corral.api.nri._plugins",
    "UpdateResult": "corral.api.nri._result",
    "apply_adjustment": "corral.api.nri._oci",
    "container_from_spec": "corral.api.nri._oci",
    "encode_frames": "corral.api.nri._mux",
    "hookimpl": "corral.api.nri.hookspecs",
    "mask_of": "corral.api.nri._plugins",
    "parse_plugin_name": "corral.api.nri._plugins",
    "resources_from_oci": "corral.api.nri._oci",
    "resources_to_oci": "corral.api.nri._oci",
    "api": "corral.api.types.nri.pkg.api.v1alpha1",
}

__all__ = [
    "DEFAULT_PLUGIN_CONFIG_PATH",
    "DEFAULT_PLUGIN_PATH",
    "DEFAULT_SOCKET_PATH",
    "NRI",
    "PLUGIN_SERVICE",
    "PLUGIN_SERVICE_CONN",
    "PROJECT",
    "RUNTIME_SERVICE",
    "RUNTIME_SERVICE_CONN",
    "VALID_EVENTS",
    "CDIInjector",
    "Conflict",
    "CreateResult",
    "Domain",
    "Events",
    "Mux",
    "MuxDecoder",
    "MuxError",
    "NRIHookSpecs",
    "Plugin",
    "Settings",
    "TaskLifecycle",
    "Timeouts",
    "UpdateResult",
    "api",
    "apply_adjustment",
    "container_from_spec",
    "encode_frames",
    "hookimpl",
    "mask_of",
    "parse_plugin_name",
    "resources_from_oci",
    "resources_to_oci",
]


def __getattr__(name: str) -> Any:
    if name == "VALID_EVENTS":
        value: Any = importlib.import_module("corral.api.nri._plugins").valid_events()
    elif name == "api":
        value = importlib.import_module(_SOURCES[name])
    elif name in _SOURCES:
        value = getattr(importlib.import_module(_SOURCES[name]), name)
    else:
        raise AttributeError(f"module 'corral.api.nri' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return list(__all__)
