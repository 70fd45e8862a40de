"""NRI, the Node Resource Interface, as containerd 2.0 enables it: plugins — external processes on
the NRI socket, pre-installed ones launched from the plugin path, and (a corral extension) Python
objects with ``corral.nri`` hooks — are told of pod and container lifecycle events and may adjust a
container being created, update others' resources and evict them.

``NRI`` is the runtime side that CRI and the tasks service call; ``TaskLifecycle`` sends the
container events of the tasks service's containers (``ctr run``, ``corral run``), which containerd
does only for CRI. Messages are NRI's own (``corral.api.types.nri.pkg.api.v1alpha1``).
"""

from __future__ import annotations

from corral.api.nri._adaptation import (
    DEFAULT_PLUGIN_CONFIG_PATH,
    DEFAULT_PLUGIN_PATH,
    DEFAULT_SOCKET_PATH,
    NRI,
    Domain,
    Settings,
)
from corral.api.nri._events import Events
from corral.api.nri._mux import (
    PLUGIN_SERVICE_CONN,
    RUNTIME_SERVICE_CONN,
    Mux,
    MuxDecoder,
    MuxError,
    encode_frames,
)
from corral.api.nri._oci import (
    CDIInjector,
    apply_adjustment,
    container_from_spec,
    resources_from_oci,
    resources_to_oci,
)
from corral.api.nri._plugins import (
    PLUGIN_SERVICE,
    RUNTIME_SERVICE,
    VALID_EVENTS,
    Plugin,
    Timeouts,
    mask_of,
    parse_plugin_name,
)
from corral.api.nri._result import Conflict, CreateResult, UpdateResult
from corral.api.nri._tasks import TaskLifecycle
from corral.api.nri.hookspecs import PROJECT, NRIHookSpecs, hookimpl
from corral.api.types.nri.pkg.api import v1alpha1 as api

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
