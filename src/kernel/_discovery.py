"""Finding plugins: the entry-point group ``corral.plugins``, listed without importing anything.

A root daemon must not run code just because a package in its environment declares an entry
point, so third-party plugins are imported only once the config enables them. The listing itself
comes from ``importlib.metadata``, or from what it found at an earlier start when nothing installed
has changed since (``_entry_points``).
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from corral.kernel._entry_points import EntryPointLike, installed
from corral.kernel._records import Origin, split_uri
from corral.kernel._registration import Registration

GROUP = "corral.plugins"
CONFIG_GROUP = "corral.config_plugins"
"""Entry points named by a top-level config key (``proxy_plugins``): each is a callable that turns
the table the config sets under that key into plugins, ``provide(table) -> Sequence[Candidate]``.
Called only when the config sets the key; a bad entry raises ConfigError naming its TOML key."""
BUILTIN_DISTRIBUTION = "corral"
WILDCARD = "*"


@dataclass(frozen=True)
class Candidate:
    """An installed plugin, known by its entry point only."""

    uri: str
    type: str
    id: str
    origin: Origin
    entry_point: EntryPointLike | None = None
    registration: Registration | None = None
    """Set for plugins handed to the kernel directly (tests, embedding) instead of by entry point."""


class PluginLoadError(Exception):
    """An enabled plugin whose entry point could not be imported or is not a Registration."""


def _normalise(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def discover(group: str = GROUP) -> list[Candidate]:
    """Every plugin entry point, built-ins first, each group sorted, so the order is stable."""
    found: dict[str, Candidate] = {}
    for listed in installed(group, (GROUP, CONFIG_GROUP)):
        ep, dist, version = listed.entry_point, listed.distribution, listed.version
        builtin = _normalise(dist) == BUILTIN_DISTRIBUTION
        plugin_type, plugin_id = split_uri(ep.name)
        origin = Origin(dist, version, ep.name, ep.value, builtin)
        cand = Candidate(ep.name, plugin_type, plugin_id, origin, ep)
        # The same distribution can be visible twice (e.g. an editable install and a copy on
        # sys.path); the first on sys.path wins, as importlib would import it.
        found.setdefault(f"{ep.name}\0{dist}", cand)
    return sorted(
        found.values(), key=lambda c: (not c.origin.builtin, _normalise(c.origin.distribution), c.uri)
    )


ConfigProvider = Callable[[Mapping[str, Any]], Sequence[Candidate]]


@dataclass(frozen=True)
class ConfigSource:
    """An installed provider of plugins defined in config, known by its entry point only."""

    key: str
    origin: Origin
    entry_point: EntryPointLike | None = None
    provider: ConfigProvider | None = None
    """Set for providers handed to the kernel directly (tests, embedding) instead of by entry point."""


def discover_config_sources(group: str = CONFIG_GROUP) -> list[ConfigSource]:
    """Every provider of config-defined plugins, built-ins first, then by distribution."""
    found: dict[str, ConfigSource] = {}
    for listed in installed(group, (GROUP, CONFIG_GROUP)):
        ep, dist, version = listed.entry_point, listed.distribution, listed.version
        origin = Origin(dist, version, ep.name, ep.value, _normalise(dist) == BUILTIN_DISTRIBUTION)
        found.setdefault(f"{ep.name}\0{dist}", ConfigSource(ep.name, origin, ep))
    return sorted(found.values(), key=lambda s: (not s.origin.builtin, _normalise(s.origin.distribution)))


def load_config_source(source: ConfigSource) -> ConfigProvider:
    """Import a provider's entry point; a broken one is reported like a broken plugin."""
    if source.provider is not None:
        return source.provider
    assert source.entry_point is not None
    try:
        obj = source.entry_point.load()
    except Exception as exc:
        raise PluginLoadError(
            f"importing {source.origin.value} from distribution {source.origin.distribution or '?'} "
            f"(reads config key {source.key}): {type(exc).__name__}: {exc}"
        ) from exc
    if not callable(obj):
        raise PluginLoadError(f"config entry point {source.key} = {source.origin.value} is not callable")
    return cast(ConfigProvider, obj)


def builtin_candidate(reg: Registration, distribution: str = "(embedded)") -> Candidate:
    """Wrap a registration made in code (tests, embedding) as a candidate."""
    origin = Origin(distribution, "", reg.uri, repr(reg.init), builtin=True)
    return Candidate(reg.uri, reg.type, reg.id, origin, registration=reg)


def is_enabled(cand: Candidate, enabled_plugins: Iterable[str], enabled_distributions: Iterable[str]) -> bool:
    """Built-ins are on; a third-party plugin only when config names it or its distribution."""
    if cand.origin.builtin:
        return True
    plugins = set(enabled_plugins)
    if WILDCARD in plugins or cand.uri in plugins:
        return True
    dists = {_normalise(d) for d in enabled_distributions}
    return WILDCARD in dists or _normalise(cand.origin.distribution) in dists


def load(cand: Candidate) -> Registration:
    """Import the candidate's entry point and check it is the registration it claims to be."""
    if cand.registration is not None:
        return cand.registration
    assert cand.entry_point is not None
    try:
        obj = cand.entry_point.load()
    except BaseException as exc:  # a broken third-party import must not take the daemon down
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
        at = f" ({where.filename}:{where.lineno})" if where else ""
        raise PluginLoadError(
            f"importing {cand.origin.value} from distribution {cand.origin.distribution or '?'} "
            f"{cand.origin.version}: {type(exc).__name__}: {exc}{at}"
        ) from exc
    if not isinstance(obj, Registration):
        raise PluginLoadError(
            f"entry point {cand.uri} = {cand.origin.value} in {cand.origin.distribution}: "
            f"expected a corral.kernel.Registration, got {type(obj).__name__}"
        )
    if obj.uri != cand.uri:
        raise PluginLoadError(
            f"entry point {cand.uri} in {cand.origin.distribution} points at plugin {obj.uri}; "
            "the entry point's name must be the plugin URI"
        )
    return obj


def duplicates(cands: Sequence[Candidate]) -> dict[str, list[Candidate]]:
    """URIs declared by more than one distribution."""
    by_uri: dict[str, list[Candidate]] = {}
    for c in cands:
        by_uri.setdefault(c.uri, []).append(c)
    return {uri: cs for uri, cs in by_uri.items() if len(cs) > 1}
