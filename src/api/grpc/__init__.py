"""gRPC service plugins (io.containerd.grpc.v1): thin adapters from the wire to local services."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class GRPCServices:
    """A gRPC plugin's instance: the grpclib service objects it serves (see api.server)."""

    services: tuple[Any, ...]

    def grpc_services(self) -> Iterable[Any]:
        return self.services
