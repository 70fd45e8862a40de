"""The daemon's config.toml: schema, typed decoding, and containerd's load/merge/import rules.

Every plugin's own config class is decoded by the same ``decode``, so errors read alike everywhere:
they name the full TOML key path (``plugins."io.containerd.gc.v1.scheduler".pause_threshold``).
"""

from __future__ import annotations

import collections.abc
import copy
import dataclasses
import functools
import glob
import json
import logging
import os
import re
import tomllib
import types
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from pathlib import Path, PurePath
from typing import Any, Literal, TypeVar, Union, cast, get_args, get_origin, get_type_hints

from corral.kernel._errors import ConfigError

CONFIG_VERSION = 3
T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GRPCConfig:
    """The ``[grpc]`` section: the socket corrald serves containerd's API on."""

    address: str = ""
    tcp_address: str = ""
    tcp_tls_ca: str = ""
    tcp_tls_cert: str = ""
    tcp_tls_key: str = ""
    tcp_tls_common_name: str = ""
    uid: int = 0
    gid: int = 0
    mode: int = field(default=0o660, metadata={"octal": True})
    """corral's own: the socket's mode (containerd's is fixed at 0660); written in octal."""
    max_recv_message_size: int = 16 << 20
    max_send_message_size: int = 16 << 20


@dataclass(frozen=True)
class TTRPCConfig:
    """The ``[ttrpc]`` section: the socket shims reach the daemon on."""

    address: str = ""
    uid: int = 0
    gid: int = 0


@dataclass(frozen=True)
class DebugConfig:
    """The ``[debug]`` section: the log level and format."""

    address: str = ""
    uid: int = 0
    gid: int = 0
    level: str = "info"
    """As containerd: an empty level (what ``containerd config default`` writes) means info."""
    format: str = ""
    log_trace_id: bool = False


@dataclass(frozen=True)
class MetricsConfig:
    """The ``[metrics]`` section: where Prometheus metrics are served (none when empty)."""

    address: str = ""
    grpc_histogram: bool = False


@dataclass(frozen=True)
class CgroupConfig:
    """The ``[cgroup]`` section: containerd's ``path`` of the daemon's own cgroup."""

    path: str = ""


@dataclass(frozen=True)
class DaemonConfig:
    """The top-level config.toml; ``plugins`` stays raw (per URI) until each plugin decodes its section."""

    version: int = CONFIG_VERSION
    root: str = ""
    state: str = ""
    temp: str = ""
    plugin_dir: str = ""
    """containerd 1.x to 2.0's directory of Go plugins; corral loads plugins through entry points."""
    disabled_plugins: tuple[str, ...] = ()
    required_plugins: tuple[str, ...] = ()
    # corral's own: third-party plugins are imported only when named here (URI or distribution, "*" = all)
    enabled_plugins: tuple[str, ...] = ()
    enabled_distributions: tuple[str, ...] = ()
    oom_score: int = 0
    imports: tuple[str, ...] = ()
    grpc: GRPCConfig = field(default_factory=GRPCConfig)
    ttrpc: TTRPCConfig = field(default_factory=TTRPCConfig)
    debug: DebugConfig = field(default_factory=DebugConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    cgroup: CgroupConfig = field(default_factory=CgroupConfig)
    plugins: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    proxy_plugins: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    timeouts: Mapping[str, str] = field(default_factory=dict)
    stream_processors: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class LoadedConfig:
    """What ``load_config`` returns: merged config, files read in load order, oldest version declared."""

    config: DaemonConfig
    files: tuple[Path, ...]
    migrated_from: int
    origins: Mapping[str, Path] = field(default_factory=dict, compare=False)
    """Which file last set each key under ``plugins`` and ``proxy_plugins`` (TOML key paths, as
    errors name them)."""

    def attribute(self, error: ConfigError) -> ConfigError:
        """``error`` (from decoding a plugin section after loading) naming the file that set its key:
        the imported file, not the one that imported it. Without a key, the main file."""
        if not self.files:
            return error
        source = self.files[0]
        best = ""
        for path, file in self.origins.items():
            if len(path) > len(best) and (
                error.key == path or error.key.startswith((path + ".", path + "["))
            ):
                best, source = path, file
        return ConfigError(f"{source}: {error.detail}", key=error.key)


# --- Go durations -------------------------------------------------------------------------------

_NANOS_PER_UNIT = {
    "ns": 1,
    "us": 1000,
    "\u00b5s": 1000,  # micro sign, what Go prints
    "\u03bcs": 1000,  # Greek mu, also accepted by Go
    "ms": 10**6,
    "s": 10**9,
    "m": 60 * 10**9,
    "h": 3600 * 10**9,
}
_DURATION_TERM = re.compile(r"([0-9]*(?:\.[0-9]*)?)([^0-9.]*)")


def parse_duration(text: str) -> timedelta:
    """Parse a Go duration ("10s", "1h30m", "-1.5ms"); precision below a microsecond is rounded away."""
    rest = text[1:] if text[:1] in ("+", "-") else text
    if rest == "0":
        return timedelta(0)
    if not rest:
        raise ValueError(f'invalid duration "{text}"')
    total: Any = 0  # whole nanoseconds, or a Fraction once a term has decimals
    pos = 0
    while pos < len(rest):
        match = _DURATION_TERM.match(rest, pos)
        assert match is not None  # the pattern can match the empty string, so it always matches
        number, unit = match.group(1), match.group(2)
        if number in ("", "."):
            raise ValueError(f'invalid duration "{text}"')
        if not unit:
            raise ValueError(f'missing unit in duration "{text}"')
        if unit not in _NANOS_PER_UNIT:
            raise ValueError(f'unknown unit "{unit}" in duration "{text}"')
        if "." in number:
            from fractions import Fraction  # (with decimal: for a duration with decimals only)

            total += Fraction(number) * _NANOS_PER_UNIT[unit]
        else:
            total += int(number) * _NANOS_PER_UNIT[unit]
        pos = match.end()
    micros = round(total / 1000) if not isinstance(total, int) else round(total, -3) // 1000
    try:
        return timedelta(microseconds=-micros if text.startswith("-") else micros)
    except OverflowError:
        raise ValueError(f'invalid duration "{text}"') from None


def _fraction(value: int, digits: int) -> str:
    whole, frac = divmod(value, 10**digits)
    return f"{whole}.{frac:0{digits}d}".rstrip("0") if frac else str(whole)


def format_duration(td: timedelta) -> str:
    """Format like Go's Duration.String(): "0s", "1.5µs", "100ms", "1m30s", "4h0m0s"."""
    nanos = (td // timedelta(microseconds=1)) * 1000
    sign, u = ("-" if nanos < 0 else ""), abs(nanos)
    if u == 0:
        return "0s"
    if u < 10**6:
        return f"{sign}{_fraction(u, 3)}\u00b5s"
    if u < 10**9:
        return f"{sign}{_fraction(u, 6)}ms"
    seconds = u // 10**9
    text = f"{_fraction(seconds % 60 * 10**9 + u % 10**9, 9)}s"
    minutes = seconds // 60
    if minutes:
        text = f"{minutes % 60}m{text}"
        if minutes >= 60:
            text = f"{minutes // 60}h{text}"
    return sign + text


# --- typed decoding -----------------------------------------------------------------------------

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def toml_path(*keys: str) -> str:
    """Join keys into a dotted TOML key path, quoting those that are not bare keys."""
    return ".".join(k if _BARE_KEY.fullmatch(k) else json.dumps(k, ensure_ascii=False) for k in keys)


def _join(path: str, key: str) -> str:
    return f"{path}.{toml_path(key)}" if path else toml_path(key)


def _describe(value: object) -> str:
    """Name a value's TOML type, with the value itself when it is a scalar."""
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"float {value}"
    if isinstance(value, str):
        return f"string {value!r}"
    if isinstance(value, Mapping):
        return "table"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, datetime | date | time):
        return f"{type(value).__name__} {value.isoformat()}"
    return type(value).__name__


_SCALAR_NAMES: dict[object, str] = {
    str: "string",
    int: "integer",
    float: "float",
    bool: "boolean",
    timedelta: "duration string",
}
_SEQUENCES = (tuple, list, collections.abc.Sequence)
_MAPPINGS = (dict, collections.abc.Mapping, collections.abc.MutableMapping)


def _expected(tp: Any) -> str:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_expected(a) for a in get_args(tp) if a is not type(None))
    if origin is Literal:
        return "one of " + ", ".join(json.dumps(a) if isinstance(a, str) else repr(a) for a in get_args(tp))
    if tp in _SEQUENCES or origin in _SEQUENCES:
        return "array"
    if tp in _MAPPINGS or origin in _MAPPINGS or dataclasses.is_dataclass(tp):
        return "table"
    return _SCALAR_NAMES.get(tp, getattr(tp, "__name__", str(tp)))


def _mismatch(tp: Any, value: object, where: str) -> ConfigError:
    return _key_error(where, f"expected {_expected(tp)}, got {_describe(value)}")


def _key_error(where: str, text: str) -> ConfigError:
    return ConfigError(f"{where}: {text}", key=where)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def decode(cls: type[T], raw: Mapping[str, Any], path: str = "", *, base: T | None = None) -> T:
    """Build dataclass ``cls`` from a raw TOML table; keys not in ``raw`` keep ``base``'s or the defaults.

    ``path`` is the TOML key path of ``raw`` (see ``toml_path``); errors are ConfigError naming the full path.
    """
    if not isinstance(raw, Mapping):
        raise _mismatch(cls, raw, path or "(root)")
    fields = {f.name: f for f in dataclasses.fields(cast(Any, cls)) if f.init}
    hints = _hints(cast(type, cls))
    values: dict[str, Any] = {}
    for key, value in raw.items():
        where = _join(path, key)
        if key not in fields:
            raise _key_error(where, "unknown key")
        current = getattr(base, key) if base is not None else _default_of(fields[key])
        values[key] = _convert(hints[key], value, where, current)
    if base is None:
        for name, f in fields.items():
            if name not in values and _default_of(f) is dataclasses.MISSING:
                raise _key_error(_join(path, name), "missing key")
    try:
        return cast(T, dataclasses.replace(cast(Any, base), **values)) if base is not None else cls(**values)
    except ValueError as e:  # a __post_init__ rejecting the combination of values
        raise ConfigError(f"{path or cls.__name__}: {e}", key=path) from None


def _default_of(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _convert(tp: Any, value: Any, where: str, current: Any = None) -> Any:
    if tp is Any or tp is object:
        return copy.deepcopy(value)
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        if value is None and len(options) < len(args):
            return None
        if len(options) == 1:
            return _convert(options[0], value, where, current)
        for option in options:
            try:
                return _convert(option, value, where, current)
            except ConfigError:
                continue
        raise _mismatch(tp, value, where)
    if origin is Literal:
        # type() check too, because True == 1 and a Literal[1] must not accept true
        if any(type(a) is type(value) and a == value for a in args):
            return value
        raise _mismatch(tp, value, where)
    if tp in _SEQUENCES or origin in _SEQUENCES:
        if not isinstance(value, list | tuple):
            raise _mismatch(tp, value, where)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise _key_error(where, f"expected array of {len(args)} items, got {len(value)}")
            return tuple(
                _convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True))
            )
        item = args[0] if args else Any
        items = [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if (origin or tp) is list else tuple(items)
    if tp in _MAPPINGS or origin in _MAPPINGS:
        if not isinstance(value, Mapping):
            raise _mismatch(tp, value, where)
        item = args[1] if len(args) == 2 else Any
        return {k: _convert(item, v, _join(where, k)) for k, v in value.items()}
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return value
        return decode(tp, value, where, base=current if isinstance(current, tp) else None)
    if tp is timedelta:
        if isinstance(value, timedelta):
            return value
        if not isinstance(value, str):
            raise _mismatch(tp, value, where)
        try:
            return parse_duration(value)
        except ValueError as e:
            raise _key_error(where, str(e)) from None
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise _mismatch(tp, value, where)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _mismatch(tp, value, where)
    if isinstance(tp, type) and isinstance(value, tp):  # str, bool, and e.g. datetime fields
        return value
    raise _mismatch(tp, value, where)


def encode(obj: Any) -> dict[str, Any]:
    """Turn a dataclass into plain TOML data: tuples to lists, durations to Go strings, None dropped."""
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        raise TypeError(f"encode() needs a dataclass instance, got {type(obj).__name__}")
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = _encode_value(getattr(obj, f.name))
        if f.init and value is not None:
            out[f.name] = Octal(value) if f.metadata.get("octal") and isinstance(value, int) else value
    return out


class Octal(int):
    """An int that TOML output writes in octal (``0o660``), as file modes read."""


def _encode_value(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return encode(value)
    if isinstance(value, timedelta):
        return format_duration(value)
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, Mapping):
        pairs = ((str(k), _encode_value(v)) for k, v in value.items())
        return {k: v for k, v in pairs if v is not None}
    if isinstance(value, list | tuple):
        return [e for e in map(_encode_value, value) if e is not None]
    return value


def render_toml(data: Mapping[str, Any]) -> str:
    """Render encoded config as TOML: ``version`` first (3 if absent), then scalars and lists, then tables."""
    ordered = {"version": data.get("version", CONFIG_VERSION)}
    ordered.update((k, v) for k, v in data.items() if k != "version")
    import tomli_w  # (``config default`` and ``config dump``, not the daemon)

    # tomli-w writes every int in decimal: octal values go through a placeholder it quotes.
    text = tomli_w.dumps(_mark_octal(ordered))
    return _OCTAL_PLACEHOLDER.sub(lambda m: m.group(1), text)


_OCTAL_PLACEHOLDER = re.compile(r'"__corral_octal__(0o[0-7]+)"')


def _mark_octal(value: Any) -> Any:
    if isinstance(value, Octal):
        return f"__corral_octal__{oct(value)}"
    if isinstance(value, Mapping):
        return {k: _mark_octal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mark_octal(v) for v in value]
    return value


# --- loading ------------------------------------------------------------------------------------

_UNION_LISTS = frozenset(
    {"disabled_plugins", "required_plugins", "imports", "enabled_plugins", "enabled_distributions"}
)
_REPLACED_ENTRIES = frozenset({"proxy_plugins", "timeouts", "stream_processors"})
_LOG_LEVELS = ("trace", "debug", "info", "warn", "warning", "error", "fatal", "panic")
_LOG_FORMATS = ("", "text", "json")
_V1_CORE_PLUGINS = {
    "cri": "io.containerd.grpc.v1.cri",
    "cgroups": "io.containerd.monitor.v1.cgroups",
    "linux": "io.containerd.runtime.v1.linux",
    "scheduler": "io.containerd.gc.v1.scheduler",
    "bolt": "io.containerd.metadata.v1.bolt",
    "task": "io.containerd.runtime.v2.task",
    "opt": "io.containerd.internal.v1.opt",
    "restart": "io.containerd.internal.v1.restart",
    "tracing": "io.containerd.internal.v1.tracing",
    "otlp": "io.containerd.tracing.processor.v1.otlp",
    **{
        n: f"io.containerd.snapshotter.v1.{n}"
        for n in ("aufs", "btrfs", "devmapper", "native", "overlayfs", "zfs")
    },
}
_TOML_POSITION = re.compile(r"(?s)(.*) \(at line (\d+), column (\d+)\)")
_TOML_AT_END = re.compile(r"(?s)(.*) \(at end of document\)")


def load_config(path: Path | None, *, defaults: DaemonConfig) -> LoadedConfig:
    """Load ``path`` and its imports breadth-first over ``defaults``, as containerd's LoadConfig does."""
    if path is None:
        return LoadedConfig(defaults, (), defaults.version)
    main = Path(os.path.abspath(path))
    origins: dict[str, Path] = {}
    merged, loaded, oldest = _merge_files(main, encode(defaults), origins)
    if not merged.get("debug", {}).get("level"):
        merged.setdefault("debug", {})["level"] = defaults.debug.level or "info"
    try:
        config = decode(DaemonConfig, merged)
        _validate(config, whole=True)
    except ConfigError as e:
        raise ConfigError(f"{main}: {e.detail}") from None
    return LoadedConfig(config, tuple(loaded), oldest, origins)


def load_written(path: Path) -> tuple[dict[str, Any], int]:
    """What the operator wrote: ``path`` and its imports merged, no defaults added, version-1 plugin
    names rewritten; and the oldest version any of the files declared. (``corral config migrate``.)"""
    merged, _, oldest = _merge_files(Path(os.path.abspath(path)), {})
    merged.pop("imports", None)  # merged in
    return merged, oldest


def _merge_files(
    main: Path, merged: dict[str, Any], origins: dict[str, Path] | None = None
) -> tuple[dict[str, Any], list[Path], int]:
    pending: deque[Path] = deque([main])
    loaded: list[Path] = []
    oldest: int | None = None
    while pending:
        file = pending.popleft()
        if file in loaded:  # circular or repeated import
            continue
        raw = _read_toml(file)
        try:
            _validate(decode(DaemonConfig, raw), whole=False)
        except ConfigError as e:
            raise ConfigError(f"{file}: {e.detail}") from None
        version = raw.pop("version", 0)
        oldest = min(oldest or CONFIG_VERSION, version or 1)
        if version in (0, 1):  # an unversioned file takes the version already in effect once migrated
            _migrate_v1(raw)
        elif version:
            merged["version"] = version
        _merge(merged, raw)
        if origins is not None:
            _record_origins(origins, "plugins", raw.get("plugins", {}), file)
            for name, entry in raw.get("proxy_plugins", {}).items():
                # a later file's entry replaces the whole entry, so only its keys count
                entry_path = _join("proxy_plugins", name)
                for stale in [k for k in origins if k.startswith(entry_path + ".")]:
                    del origins[stale]
                origins[entry_path] = file
                _record_origins(origins, entry_path, entry, file)
        pending.extend(_resolve_imports(file, raw.get("imports", ())))
        loaded.append(file)
    return merged, loaded, oldest if oldest is not None else CONFIG_VERSION


def _record_origins(origins: dict[str, Path], path: str, table: Any, file: Path) -> None:
    """Every key below ``path`` in ``table`` was (last) set by ``file``."""
    if isinstance(table, Mapping):
        for key, value in table.items():
            origins[_join(path, key)] = file
            _record_origins(origins, _join(path, key), value, file)


def _read_toml(file: Path) -> dict[str, Any]:
    try:
        text = file.read_bytes().decode("utf-8")
    except OSError as e:
        raise ConfigError(f"{file}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{file}: not valid UTF-8 at byte {e.start}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        message = str(e)
        if m := _TOML_POSITION.fullmatch(message):
            message = f"line {m.group(2)}, column {m.group(3)}: {m.group(1)}"
        elif m := _TOML_AT_END.fullmatch(message):
            line, column = text.count("\n") + 1, len(text) - text.rfind("\n")
            message = f"line {line}, column {column}: {m.group(1)}"
        raise ConfigError(f"{file}: {message}") from None


def _resolve_imports(importer: Path, entries: Sequence[str]) -> list[Path]:
    out: list[Path] = []
    for entry in entries:
        # os.path.join keeps absolute entries as they are
        target = os.path.normpath(os.path.join(importer.parent, entry))
        if "*" in target:
            # include_hidden: Go's filepath.Glob lets "*" match a leading dot
            out.extend(Path(p) for p in sorted(glob.glob(target, include_hidden=True)))
        elif os.path.exists(target):
            out.append(Path(target))
        else:
            raise ConfigError(f"{importer}: imports: {json.dumps(entry)}: no such file ({target})")
    return out


def _v1_plugin_uri(name: str) -> str:
    if "." in name:
        return name
    if name in _V1_CORE_PLUGINS:
        return _V1_CORE_PLUGINS[name]
    if name.endswith("-service"):
        return f"io.containerd.service.v1.{name}"
    # runtime, differ and snapshotter plugins had no v1 config, so the rest is a guess, as in containerd
    uri = f"io.containerd.{'snapshotter' if name in ('windows', 'windows-lcow') else 'grpc'}.v1.{name}"
    log.warning("Ambiguous %s plugin in v1 config, treating as %s", name, uri)
    return uri


def _migrate_v1(raw: dict[str, Any]) -> None:
    """Rewrite version-1 short plugin names to full URIs; proxy plugins are untouched."""
    if "plugins" in raw:
        raw["plugins"] = {_v1_plugin_uri(k): v for k, v in raw["plugins"].items()}
    for key in ("disabled_plugins", "required_plugins"):
        if key in raw:
            raw[key] = [_v1_plugin_uri(name) for name in raw[key]]


def _merge(into: dict[str, Any], raw: Mapping[str, Any]) -> None:
    for key, value in raw.items():
        if key in _UNION_LISTS:
            items = into.setdefault(key, [])
            for item in value:
                if item not in items:
                    items.append(item)
        elif key in _REPLACED_ENTRIES:
            into.setdefault(key, {}).update(copy.deepcopy(value))
        elif key == "plugins":
            _deep_merge(into.setdefault(key, {}), value)
        else:
            _merge_non_zero(into, key, value)


def _merge_non_zero(into: dict[str, Any], key: str, value: Any) -> None:
    # Go merges zero-valued structs: a later "", 0 or false cannot tell "unset" apart, so never overrides
    if isinstance(value, Mapping) and isinstance(into.get(key), dict):
        for k, v in value.items():
            _merge_non_zero(into[key], k, v)
    elif value:
        into[key] = copy.deepcopy(value)


def _deep_merge(into: dict[str, Any], raw: Mapping[str, Any]) -> None:
    # inside [plugins] every written leaf counts (false included) and arrays are replaced, not appended
    for key, value in raw.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)


def _validate(config: DaemonConfig, *, whole: bool) -> None:
    if config.debug.level and config.debug.level not in _LOG_LEVELS:
        raise ConfigError(f"debug.level: invalid log level {json.dumps(config.debug.level)}")
    if config.debug.format not in _LOG_FORMATS:
        raise ConfigError(f'debug.format: {json.dumps(config.debug.format)} is not "text" or "json"')
    if not -1000 <= config.oom_score <= 1000:
        raise ConfigError(f"oom_score: {config.oom_score} is outside -1000..1000")
    if not whole:
        return
    if config.version > CONFIG_VERSION:
        raise ConfigError(
            f"expected config version equal to or less than {CONFIG_VERSION}, got {config.version}"
        )
    for kind, uris in (("disabled", config.disabled_plugins), ("required", config.required_plugins)):
        for uri in uris:
            if "." not in uri:
                raise ConfigError(f"invalid {kind} plugin URI {json.dumps(uri)} expect io.containerd.x.vx")


# Keys corral reads but does not act on (yet), and why: listed by `corral config validate` and logged
# by corrald at start whenever a config sets one, so an operator's setting is never ignored silently.
INERT_KEYS: dict[str, str] = {
    "plugin_dir": "corral loads plugins from Python distributions (entry points), not a directory of Go plugins",
    "grpc.tcp_address": "no TCP listener: corrald serves its unix socket only",
    "grpc.tcp_tls_ca": "no TCP listener",
    "grpc.tcp_tls_cert": "no TCP listener",
    "grpc.tcp_tls_key": "no TCP listener",
    "grpc.tcp_tls_common_name": "no TCP listener",
    "debug.address": "no debug (pprof) socket",
    "debug.uid": "no debug (pprof) socket",
    "debug.gid": "no debug (pprof) socket",
    "stream_processors": "no stream processors",
    "timeouts": "no plugin reads these timeouts yet",
}


def inert_settings(config: DaemonConfig) -> list[tuple[str, str]]:
    """The keys ``config`` sets (away from their defaults) that corral does not act on, with why."""
    data, default = encode(config), encode(DaemonConfig())
    found = []
    for key, reason in INERT_KEYS.items():
        section, _, name = key.rpartition(".")
        value = data.get(section, {}).get(name) if section else data.get(name)
        base = default.get(section, {}).get(name) if section else default.get(name)
        if value and value != base:
            found.append((key, reason))
    return found


def inert(reason: str) -> dict[str, str]:
    """Field metadata for a plugin config key accepted (so containerd configs load) but without
    effect: ``slow_chown: bool = field(default=False, metadata=inert("…"))``. Setting it is reported."""
    return {"inert": reason}


def inert_fields(config: Any, prefix: str = "") -> list[tuple[str, str]]:
    """The fields of a decoded plugin config marked ``inert`` that are set away from their default,
    nested tables and tables of tables included (named by their TOML key path below the section)."""
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        return []
    found = []
    for f in dataclasses.fields(config):
        value, name = getattr(config, f.name), _join(prefix, f.name)
        reason = f.metadata.get("inert")
        if reason:
            if value != _default_of(f):
                found.append((name, reason))
        elif dataclasses.is_dataclass(value):
            found.extend(inert_fields(value, name))
        elif isinstance(value, Mapping):
            for key, entry in value.items():
                found.extend(inert_fields(entry, _join(name, str(key))))
    return found


def migrate_plugins(
    from_version: int,
    plugins: Mapping[str, Any],
    migrations: Sequence[Callable[[int, dict[str, Any]], None]],
) -> dict[str, Any]:
    """Run every plugin migration, in the given (graph) order, once per version step up to 3, on a copy."""
    result: dict[str, Any] = copy.deepcopy(dict(plugins))
    for version in range(from_version, CONFIG_VERSION):
        for migrate in migrations:
            migrate(version, result)
    return result
