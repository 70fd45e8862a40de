"""corral's microkernel: plugin registry, discovery, ordering, config and lifecycle.

It knows nothing about containers. Everything here is public API for plugin authors and for
corral's own plugins alike; the implementation lives in private modules.

Names load on first use (PEP 562), so importing one error kind does not import the whole kernel.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from corral.kernel._imports import names_on_first_use as names_on_first_use

if TYPE_CHECKING:
    from corral.kernel._config import (
        INERT_KEYS as INERT_KEYS,
    )
    from corral.kernel._config import (
        DaemonConfig as DaemonConfig,
    )
    from corral.kernel._config import (
        LoadedConfig as LoadedConfig,
    )
    from corral.kernel._config import (
        decode as decode,
    )
    from corral.kernel._config import (
        encode as encode,
    )
    from corral.kernel._config import (
        format_duration as format_duration,
    )
    from corral.kernel._config import (
        inert as inert,
    )
    from corral.kernel._config import (
        inert_fields as inert_fields,
    )
    from corral.kernel._config import (
        inert_settings as inert_settings,
    )
    from corral.kernel._config import (
        load_config as load_config,
    )
    from corral.kernel._config import (
        load_written as load_written,
    )
    from corral.kernel._config import (
        parse_duration as parse_duration,
    )
    from corral.kernel._config import (
        render_toml as render_toml,
    )
    from corral.kernel._context import (
        PROPERTY_GRPC_ADDRESS as PROPERTY_GRPC_ADDRESS,
    )
    from corral.kernel._context import (
        PROPERTY_LOG_TRACE_ID as PROPERTY_LOG_TRACE_ID,
    )
    from corral.kernel._context import (
        PROPERTY_METRICS_ADDRESS as PROPERTY_METRICS_ADDRESS,
    )
    from corral.kernel._context import (
        PROPERTY_METRICS_HISTOGRAM as PROPERTY_METRICS_HISTOGRAM,
    )
    from corral.kernel._context import (
        PROPERTY_ROOT as PROPERTY_ROOT,
    )
    from corral.kernel._context import (
        PROPERTY_STATE as PROPERTY_STATE,
    )
    from corral.kernel._context import (
        PROPERTY_TTRPC_ADDRESS as PROPERTY_TTRPC_ADDRESS,
    )
    from corral.kernel._context import (
        InitContext as InitContext,
    )
    from corral.kernel._context import (
        PluginSet as PluginSet,
    )
    from corral.kernel._context import (
        PluginUnavailable as PluginUnavailable,
    )
    from corral.kernel._context import (
        UndeclaredDependency as UndeclaredDependency,
    )
    from corral.kernel._discovery import (
        CONFIG_GROUP as CONFIG_GROUP,
    )
    from corral.kernel._discovery import (
        GROUP as GROUP,
    )
    from corral.kernel._discovery import (
        Candidate as Candidate,
    )
    from corral.kernel._discovery import (
        ConfigSource as ConfigSource,
    )
    from corral.kernel._discovery import (
        builtin_candidate as builtin_candidate,
    )
    from corral.kernel._discovery import (
        discover as discover,
    )
    from corral.kernel._errors import (
        Aborted as Aborted,
    )
    from corral.kernel._errors import (
        AlreadyExists as AlreadyExists,
    )
    from corral.kernel._errors import (
        Canceled as Canceled,
    )
    from corral.kernel._errors import (
        ConfigError as ConfigError,
    )
    from corral.kernel._errors import (
        CorralError as CorralError,
    )
    from corral.kernel._errors import (
        DataLoss as DataLoss,
    )
    from corral.kernel._errors import (
        DeadlineExceeded as DeadlineExceeded,
    )
    from corral.kernel._errors import (
        FailedPrecondition as FailedPrecondition,
    )
    from corral.kernel._errors import (
        Internal as Internal,
    )
    from corral.kernel._errors import (
        InvalidArgument as InvalidArgument,
    )
    from corral.kernel._errors import (
        NotFound as NotFound,
    )
    from corral.kernel._errors import (
        OutOfRange as OutOfRange,
    )
    from corral.kernel._errors import (
        PermissionDenied as PermissionDenied,
    )
    from corral.kernel._errors import (
        ResourceExhausted as ResourceExhausted,
    )
    from corral.kernel._errors import (
        Unavailable as Unavailable,
    )
    from corral.kernel._errors import (
        Unimplemented as Unimplemented,
    )
    from corral.kernel._filters import (
        Filter as Filter,
    )
    from corral.kernel._filters import (
        FilterSyntaxError as FilterSyntaxError,
    )
    from corral.kernel._filters import (
        adapt_mapping as adapt_mapping,
    )
    from corral.kernel._filters import (
        parse_filter as parse_filter,
    )
    from corral.kernel._filters import (
        parse_filters as parse_filters,
    )
    from corral.kernel._graph import (
        DependencyCycleError as DependencyCycleError,
    )
    from corral.kernel._graph import (
        PluginGraph as PluginGraph,
    )
    from corral.kernel._graph import (
        resolve_order as resolve_order,
    )
    from corral.kernel._hookspecs import (
        hookimpl as hookimpl,
    )
    from corral.kernel._imports import (
        OnFirstUse as OnFirstUse,
    )
    from corral.kernel._kernel import (
        Kernel as Kernel,
    )
    from corral.kernel._kernel import (
        StartupError as StartupError,
    )
    from corral.kernel._logging import (
        configure_logging as configure_logging,
    )
    from corral.kernel._records import (
        Origin as Origin,
    )
    from corral.kernel._records import (
        PluginMeta as PluginMeta,
    )
    from corral.kernel._records import (
        PluginRecord as PluginRecord,
    )
    from corral.kernel._records import (
        SkipPlugin as SkipPlugin,
    )
    from corral.kernel._records import (
        Status as Status,
    )
    from corral.kernel._records import (
        split_uri as split_uri,
    )
    from corral.kernel._registration import (
        ALL_TYPES as ALL_TYPES,
    )
    from corral.kernel._registration import (
        Platform as Platform,
    )
    from corral.kernel._registration import (
        Registration as Registration,
    )
    from corral.kernel._registration import (
        RegistrationError as RegistrationError,
    )

_SOURCES: dict[str, str] = {
    "Aborted": "corral.kernel._errors",
    "adapt_mapping": "corral.kernel._filters",
    "ALL_TYPES": "corral.kernel._registration",
    "AlreadyExists": "corral.kernel._errors",
    "builtin_candidate": "corral.kernel._discovery",
    "Canceled": "corral.kernel._errors",
    "Candidate": "corral.kernel._discovery",
    "CONFIG_GROUP": "corral.kernel._discovery",
    "ConfigError": "corral.kernel._errors",
    "ConfigSource": "corral.kernel._discovery",
    "configure_logging": "corral.kernel._logging",
    "CorralError": "corral.kernel._errors",
    "DaemonConfig": "corral.kernel._config",
    "INERT_KEYS": "corral.kernel._config",
    "inert": "corral.kernel._config",
    "inert_fields": "corral.kernel._config",
    "inert_settings": "corral.kernel._config",
    "DataLoss": "corral.kernel._errors",
    "DeadlineExceeded": "corral.kernel._errors",
    "decode": "corral.kernel._config",
    "DependencyCycleError": "corral.kernel._graph",
    "discover": "corral.kernel._discovery",
    "encode": "corral.kernel._config",
    "FailedPrecondition": "corral.kernel._errors",
    "Filter": "corral.kernel._filters",
    "FilterSyntaxError": "corral.kernel._filters",
    "format_duration": "corral.kernel._config",
    "GROUP": "corral.kernel._discovery",
    "hookimpl": "corral.kernel._hookspecs",
    "InitContext": "corral.kernel._context",
    "Internal": "corral.kernel._errors",
    "InvalidArgument": "corral.kernel._errors",
    "Kernel": "corral.kernel._kernel",
    "load_config": "corral.kernel._config",
    "load_written": "corral.kernel._config",
    "LoadedConfig": "corral.kernel._config",
    "NotFound": "corral.kernel._errors",
    "OnFirstUse": "corral.kernel._imports",
    "names_on_first_use": "corral.kernel._imports",
    "Origin": "corral.kernel._records",
    "OutOfRange": "corral.kernel._errors",
    "parse_duration": "corral.kernel._config",
    "parse_filter": "corral.kernel._filters",
    "parse_filters": "corral.kernel._filters",
    "PermissionDenied": "corral.kernel._errors",
    "Platform": "corral.kernel._registration",
    "PluginGraph": "corral.kernel._graph",
    "PluginMeta": "corral.kernel._records",
    "PluginRecord": "corral.kernel._records",
    "PluginSet": "corral.kernel._context",
    "PluginUnavailable": "corral.kernel._context",
    "PROPERTY_GRPC_ADDRESS": "corral.kernel._context",
    "PROPERTY_LOG_TRACE_ID": "corral.kernel._context",
    "PROPERTY_METRICS_ADDRESS": "corral.kernel._context",
    "PROPERTY_METRICS_HISTOGRAM": "corral.kernel._context",
    "PROPERTY_ROOT": "corral.kernel._context",
    "PROPERTY_STATE": "corral.kernel._context",
    "PROPERTY_TTRPC_ADDRESS": "corral.kernel._context",
    "Registration": "corral.kernel._registration",
    "RegistrationError": "corral.kernel._registration",
    "render_toml": "corral.kernel._config",
    "resolve_order": "corral.kernel._graph",
    "ResourceExhausted": "corral.kernel._errors",
    "SkipPlugin": "corral.kernel._records",
    "split_uri": "corral.kernel._records",
    "StartupError": "corral.kernel._kernel",
    "Status": "corral.kernel._records",
    "Unavailable": "corral.kernel._errors",
    "UndeclaredDependency": "corral.kernel._context",
    "Unimplemented": "corral.kernel._errors",
}

__all__ = sorted(_SOURCES)


__getattr__ = names_on_first_use(__name__, _SOURCES)


def __dir__() -> list[str]:
    return list(__all__)
