"""corral's microkernel: plugin registry, discovery, ordering, config and lifecycle.

It knows nothing about containers. Everything here is public API for plugin authors and for
corral's own plugins alike; the implementation lives in private modules.
"""

from corral.kernel._config import (
    DaemonConfig,
    LoadedConfig,
    decode,
    encode,
    format_duration,
    load_config,
    parse_duration,
    render_toml,
)
from corral.kernel._context import (
    PROPERTY_GRPC_ADDRESS,
    PROPERTY_ROOT,
    PROPERTY_STATE,
    PROPERTY_TTRPC_ADDRESS,
    InitContext,
    PluginSet,
    PluginUnavailable,
    UndeclaredDependency,
)
from corral.kernel._discovery import GROUP, Candidate, builtin_candidate, discover
from corral.kernel._errors import (
    Aborted,
    AlreadyExists,
    Canceled,
    ConfigError,
    CorralError,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
    Unimplemented,
)
from corral.kernel._filters import Filter, FilterSyntaxError, adapt_mapping, parse_filter, parse_filters
from corral.kernel._graph import DependencyCycleError, PluginGraph, resolve_order
from corral.kernel._hookspecs import hookimpl
from corral.kernel._kernel import Kernel, StartupError
from corral.kernel._logging import configure_logging
from corral.kernel._namespaces import (
    bound_namespace,
    current_namespace,
    namespace,
    namespace_required,
    validate_identifier,
    validate_labels,
    validate_namespace,
)
from corral.kernel._records import Origin, PluginMeta, PluginRecord, SkipPlugin, Status, split_uri
from corral.kernel._registration import ALL_TYPES, Platform, Registration, RegistrationError

__all__ = [
    "ALL_TYPES",
    "GROUP",
    "PROPERTY_GRPC_ADDRESS",
    "PROPERTY_ROOT",
    "PROPERTY_STATE",
    "PROPERTY_TTRPC_ADDRESS",
    "Aborted",
    "AlreadyExists",
    "Canceled",
    "Candidate",
    "ConfigError",
    "CorralError",
    "DaemonConfig",
    "DataLoss",
    "DeadlineExceeded",
    "DependencyCycleError",
    "FailedPrecondition",
    "Filter",
    "FilterSyntaxError",
    "InitContext",
    "Internal",
    "InvalidArgument",
    "Kernel",
    "LoadedConfig",
    "NotFound",
    "Origin",
    "OutOfRange",
    "PermissionDenied",
    "Platform",
    "PluginGraph",
    "PluginMeta",
    "PluginRecord",
    "PluginSet",
    "PluginUnavailable",
    "Registration",
    "RegistrationError",
    "ResourceExhausted",
    "SkipPlugin",
    "StartupError",
    "Status",
    "Unavailable",
    "UndeclaredDependency",
    "Unimplemented",
    "adapt_mapping",
    "bound_namespace",
    "builtin_candidate",
    "configure_logging",
    "current_namespace",
    "decode",
    "discover",
    "encode",
    "format_duration",
    "hookimpl",
    "load_config",
    "namespace",
    "namespace_required",
    "parse_duration",
    "parse_filter",
    "parse_filters",
    "render_toml",
    "resolve_order",
    "split_uri",
    "validate_identifier",
    "validate_labels",
    "validate_namespace",
]
