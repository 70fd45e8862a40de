"""Platforms (``linux/arm64/v8``): parsing, normalisation and matching as containerd's platforms package.

A matcher answers two questions: does an image for platform P run here (``match``), and of two
that do, which is better (``less``). ``only(host)`` is what a pull or an unpack uses by default:
the host first, then what it can also run (amd64 runs 386, arm64 runs arm/v8 and below, arm/v7
runs v6 and v5).
"""

from __future__ import annotations

import functools
import re
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol, TypeVar, runtime_checkable

from corral.kernel import InvalidArgument
from corral.kernel import Platform as _HostPlatform

_SPECIFIER = re.compile(r"[A-Za-z0-9_.-]+\Z")
_OS = re.compile(r"([A-Za-z0-9_-]+)(?:\(([A-Za-z0-9_.%-]*)((?:\+[A-Za-z0-9_.%-]+)*)\))?\Z")

_KNOWN_OS = frozenset(
    {
        "aix",
        "android",
        "darwin",
        "dragonfly",
        "freebsd",
        "hurd",
        "illumos",
        "ios",
        "js",
        "linux",
        "nacl",
        "netbsd",
        "openbsd",
        "plan9",
        "solaris",
        "windows",
        "zos",
    }
)
_KNOWN_ARCH = frozenset(
    {
        "386",
        "amd64",
        "amd64p32",
        "arm",
        "armbe",
        "arm64",
        "arm64be",
        "ppc64",
        "ppc64le",
        "loong64",
        "mips",
        "mipsle",
        "mips64",
        "mips64le",
        "mips64p32",
        "mips64p32le",
        "ppc",
        "riscv",
        "riscv64",
        "s390",
        "s390x",
        "sparc",
        "sparc64",
        "wasm",
    }
)

# arm64 variant -> (majors, highest minor of each) it runs; v9.x also runs v8.(x+5).
_ARM64_VERSIONS: dict[str, tuple[tuple[int, int], ...]] = {
    **{f"v8.{minor}": ((8, minor),) for minor in range(10)},
    "v8": ((8, 0),),
    "v9": ((9, 0), (8, 5)),
    **{f"v9.{minor}": ((9, minor), (8, min(minor + 5, 9))) for minor in range(8)},
}


@dataclass(frozen=True)
class Platform:
    """What an image is built for, as the OCI image index's ``platform`` object."""

    os: str
    architecture: str
    variant: str = ""
    os_version: str = ""
    os_features: tuple[str, ...] = ()

    def __str__(self) -> str:
        """``os/architecture[/variant]``, as containerd's ``platforms.Format``."""
        if not self.os:
            return "unknown"
        return "/".join(part for part in (self.os, self.architecture, self.variant) if part)

    def format_all(self) -> str:
        """``os(version+feature…)/architecture[/variant]``; ``parse`` reads it back."""
        if not self.os:
            return "unknown"
        head = self.os
        version = _encode_option(self.os_version)
        features = "+".join(_encode_option(f) for f in sorted(set(self.os_features)) if f)
        if version or features:
            head += "(" + version + ("+" + features if features else "") + ")"
        return "/".join(part for part in (head, self.architecture, self.variant) if part)

    @classmethod
    def host(cls) -> Platform:
        """This machine, as containerd's ``platforms.DefaultSpec`` names it."""
        host = _HostPlatform.host()
        return cls(host.os, host.architecture, host.variant)

    @classmethod
    def parse(cls, specifier: str) -> Platform:
        """``linux``, ``arm64``, ``linux/amd64``, ``linux/arm/v7``, ``windows(10.0.17763)/amd64`` …

        Normalised; InvalidArgument for anything containerd's ``platforms.Parse`` refuses.
        """
        if "*" in specifier:
            raise InvalidArgument(f"platform {specifier!r}: wildcards are not supported")
        parts = specifier.split("/", 3)
        found = _OS.match(parts[0])
        if found is None:
            raise InvalidArgument(f"platform {specifier!r}: {parts[0]!r} is not a valid OS component")
        os_name = _normalize_os(found.group(1))
        os_version = _decode_option(found.group(2) or "", specifier)
        features = tuple(
            f for f in (_decode_option(raw, specifier) for raw in (found.group(3) or "").split("+")[1:]) if f
        )
        for part in parts[1:]:
            if not _SPECIFIER.match(part):
                raise InvalidArgument(f"platform {specifier!r}: {part!r} is not a valid component")
        if len(parts) == 1:
            if os_name in _KNOWN_OS:
                host = cls.host()
                variant = host.variant if host.architecture == "arm" and host.variant != "v7" else ""
                return cls(os_name, host.architecture, variant, os_version, features)
            architecture, variant = _normalize_arch(parts[0], "")
            if architecture == "arm" and variant == "v7":
                variant = ""
            if architecture in _KNOWN_ARCH:
                return cls(cls.host().os, architecture, variant)
            raise InvalidArgument(f"platform {specifier!r}: unknown operating system or architecture")
        if len(parts) == 2:
            architecture, variant = _normalize_arch(parts[1], "")
            if architecture == "arm" and variant == "v7":
                variant = ""
            return cls(os_name, architecture, variant, os_version, features)
        if len(parts) == 3:
            architecture, variant = _normalize_arch(parts[1], parts[2])
            if architecture == "arm64" and not variant:
                variant = "v8"
            return cls(os_name, architecture, variant, os_version, features)
        raise InvalidArgument(f"platform {specifier!r}: too many components")

    def normalized(self) -> Platform:
        """Canonical names: ``x86_64`` is ``amd64``, ``aarch64`` is ``arm64`` (v8 implied), ``arm``
        is ``arm/v7``, ``macos`` is ``darwin``; features sorted and unique."""
        architecture, variant = _normalize_arch(self.architecture, self.variant)
        return replace(
            self,
            os=_normalize_os(self.os),
            architecture=architecture,
            variant=variant,
            os_features=tuple(sorted(set(self.os_features))),
        )


def _normalize_os(os_name: str) -> str:
    if not os_name:
        return Platform.host().os
    os_name = os_name.lower()
    return "darwin" if os_name == "macos" else os_name


def _normalize_arch(architecture: str, variant: str) -> tuple[str, str]:
    architecture, variant = architecture.lower(), variant.lower()
    if architecture == "i386":
        return "386", ""
    if architecture in ("x86_64", "x86-64", "amd64"):
        return "amd64", "" if variant == "v1" else variant
    if architecture in ("aarch64", "arm64"):
        if variant in ("8", "v8", "v8.0"):
            variant = ""
        elif variant in ("9", "9.0", "v9.0"):
            variant = "v9"
        return "arm64", variant
    if architecture == "armhf":
        return "arm", "v7"
    if architecture == "armel":
        return "arm", "v6"
    if architecture == "arm":
        if variant in ("", "7"):
            variant = "v7"
        elif variant in ("5", "6", "8"):
            variant = "v" + variant
    return architecture, variant


def _encode_option(value: str) -> str:
    for char, code in (("%", "%25"), ("+", "%2B"), ("(", "%28"), (")", "%29"), ("/", "%2F")):
        value = value.replace(char, code)
    return value


def _decode_option(value: str, specifier: str) -> str:
    if "%" not in value:
        return value
    if re.search(r"%(?![0-9A-Fa-f]{2})", value):
        raise InvalidArgument(f"platform {specifier!r}: malformed escape in {value!r}")
    return urllib.parse.unquote(value)


# --- matching ------------------------------------------------------------------------------


@runtime_checkable
class PlatformMatcher(Protocol):
    """Which platforms are acceptable, and which of two acceptable ones is preferred."""

    def match(self, platform: Platform) -> bool: ...

    def less(self, a: Platform, b: Platform) -> bool:
        """True when ``a`` is preferred to ``b``."""
        ...


def _windows_version(value: str) -> tuple[int, int, int] | None:
    parts = value.split(".")
    if len(parts) < 3:
        return None
    try:
        major, minor, build = int(parts[0]), int(parts[1]), int(parts[2])
    except ValueError:
        return None
    if not (0 <= major < 256 and 0 <= minor < 256 and 0 <= build < 65536):
        return None
    return major, minor, build


_LTSC2022, _LTSC2025 = 20348, 26100


def _windows_compatible(host: tuple[int, int, int], image: tuple[int, int, int] | None) -> bool:
    """Windows runs an image of the same major.minor and build, or since Server 2022 any build
    from the last long-term release up to its own."""
    image = image or (0, 0, 0)
    if host[:2] != image[:2]:
        return False
    if host[2] < _LTSC2022:
        return host[2] == image[2]
    supported = _LTSC2022
    for release in (_LTSC2025, _LTSC2022):
        if host[2] > release:
            supported = release
            break
    return supported <= image[2] <= host[2]


def _features_subset(wanted: Sequence[str], offered: Sequence[str]) -> bool:
    return set(wanted) <= set(offered)


@dataclass(frozen=True)
class _Exact:
    """One platform after normalisation; Windows also compares OS versions."""

    platform: Platform

    @classmethod
    def of(cls, platform: Platform) -> _Exact:
        return cls(platform.normalized())

    def match(self, platform: Platform) -> bool:
        if self.platform.os == "windows":
            platform = replace(platform, os_features=tuple(f for f in platform.os_features if f != "win32k"))
        other = platform.normalized()
        mine = self.platform
        if (mine.os, mine.architecture, mine.variant) != (other.os, other.architecture, other.variant):
            return False
        if mine.os == "windows":
            host = _windows_version(mine.os_version)
            constrained = host is not None and host != (0, 0, 0) and other.os_version
            if constrained and not _windows_compatible(host or (0, 0, 0), _windows_version(other.os_version)):
                return False
        return _features_subset(other.os_features, mine.os_features)


@dataclass(frozen=True)
class Ordered:
    """Matches any of ``platforms``, preferring them in the order given (``platforms.Ordered``)."""

    matchers: tuple[_Exact, ...]

    def match(self, platform: Platform) -> bool:
        return any(m.match(platform) for m in self.matchers)

    def less(self, a: Platform, b: Platform) -> bool:
        for m in self.matchers:
            am, bm = m.match(a), m.match(b)
            if am and not bm:
                return True
            if am or bm:
                if am and bm and len(a.os_features) != len(b.os_features):
                    return len(a.os_features) > len(b.os_features)
                return False
        if a.os_features or b.os_features:
            return self.less(replace(a, os_features=()), replace(b, os_features=()))
        return False


@dataclass(frozen=True)
class AnyOf:
    """Matches any of ``platforms`` with no preference among them (``platforms.Any``)."""

    matchers: tuple[_Exact, ...]

    def match(self, platform: Platform) -> bool:
        return any(m.match(platform) for m in self.matchers)

    def less(self, a: Platform, b: Platform) -> bool:
        am, bm = self.match(a), self.match(b)
        if am and bm:
            return len(a.os_features) > len(b.os_features)
        if not am and not bm and (a.os_features or b.os_features):
            return self.less(replace(a, os_features=()), replace(b, os_features=()))
        return am and not bm


@dataclass(frozen=True)
class _All:
    def match(self, platform: Platform) -> bool:
        return True

    def less(self, a: Platform, b: Platform) -> bool:
        return False


ALL: PlatformMatcher = _All()
"""Every platform, none preferred."""


def ordered(*platforms: Platform) -> Ordered:
    return Ordered(tuple(_Exact.of(p) for p in platforms))


def any_of(*platforms: Platform) -> AnyOf:
    return AnyOf(tuple(_Exact.of(p) for p in platforms))


def compatible(platform: Platform) -> list[Platform]:
    """What ``platform`` runs, best first (containerd's platform vector)."""
    vector = [platform]
    arch, variant = platform.architecture, platform.variant
    if arch == "amd64":
        level = _version_number(variant)
        if level is not None and level > 1:
            vector += [replace(platform, variant=f"v{v}") for v in range(level - 1, 0, -1)]
        vector.append(replace(platform, architecture="386", variant=""))
    elif arch == "arm":
        level = _version_number(variant)
        if level is not None and level > 5:
            vector += [replace(platform, variant=f"v{v}") for v in range(level - 1, 4, -1)]
    elif arch == "arm64":
        variant = variant or "v8"
        if variant not in _ARM64_VERSIONS:
            return []
        vector = []
        for major, top in _ARM64_VERSIONS[variant]:
            for minor in range(top, -1, -1):
                vector.append(replace(platform, variant=f"v{major}" if minor == 0 else f"v{major}.{minor}"))
        if variant.startswith(("v8", "v9")):
            variant = "v8"
        vector += compatible(replace(platform, architecture="arm", variant=variant))
    return vector


def _version_number(variant: str) -> int | None:
    digits = variant.removeprefix("v")
    return int(digits) if digits.isdigit() else None


def only(platform: Platform) -> Ordered:
    """``platform`` and what it can also run, best first (``platforms.Only``)."""
    return ordered(*compatible(platform.normalized()))


def only_strict(platform: Platform) -> Ordered:
    """``platform`` alone: arm/v7 does not take arm/v6, amd64 does not take 386 (``OnlyStrict``)."""
    return ordered(platform.normalized())


def default_matcher() -> Ordered:
    """What this host runs, best first (``platforms.Default``)."""
    return only(Platform.host())


def default_strict_matcher() -> Ordered:
    return only_strict(Platform.host())


T = TypeVar("T")


def by_preference(
    items: Iterable[T], matcher: PlatformMatcher, platform_of: Callable[[T], Platform | None]
) -> list[T]:
    """``items`` that match, best first; a stable sort, items without a platform last."""

    def compare(a: T, b: T) -> int:
        pa, pb = platform_of(a), platform_of(b)
        if pa is None or pb is None:
            return (pa is None) - (pb is None)
        if matcher.less(pa, pb):
            return -1
        if matcher.less(pb, pa):
            return 1
        return 0

    kept = [item for item in items if (p := platform_of(item)) is None or matcher.match(p)]
    return sorted(kept, key=functools.cmp_to_key(compare))
