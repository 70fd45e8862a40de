"""The metadata keys corral's ttrpc edge reads, kept in one place."""

from __future__ import annotations

from collections.abc import Mapping

NAMESPACE_TTRPC_HEADER = "containerd-namespace-ttrpc"
"""What containerd's ttrpc clients (the shims' event Forward calls) send the namespace in."""

NAMESPACE_HEADER = "containerd-namespace"
"""The gRPC key, also honoured over ttrpc for clients that send the one key everywhere."""


def request_namespace(metadata: Mapping[str, str]) -> str | None:
    """The namespace a request names: the ttrpc key first, then the gRPC one."""
    return metadata.get(NAMESPACE_TTRPC_HEADER) or metadata.get(NAMESPACE_HEADER) or None
