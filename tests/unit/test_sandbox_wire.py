"""The sandbox API's wire: a CRI PodSandboxConfig as the pod sandbox controller's record, and
sandbox records to and from containerd.types.Sandbox."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from corral.api.sandbox_wire import (
    pod_spec_from_any,
    pod_spec_from_config,
    sandbox_from_wire,
    sandbox_to_wire,
)
from corral.api.types.runtime import v1 as cri
from corral.kernel import InvalidArgument
from corral.plugins.metadata import AnyValue, Sandbox, SandboxRuntime
from corral.plugins.sandbox import PodPortMapping, PodSandboxSpec


def test_a_pod_sandbox_config_becomes_the_controllers_record() -> None:
    config = cri.PodSandboxConfig(
        metadata=cri.PodSandboxMetadata(name="web", uid="u1", namespace="prod", attempt=2),
        hostname="web-0",
        log_directory="/var/log/pods/x",
        dns_config=cri.DnsConfig(servers=["10.0.0.10"], searches=["svc"], options=["ndots:2"]),
        port_mappings=[
            cri.PortMapping(protocol=cri.Protocol.UDP, container_port=53, host_port=5353, host_ip="127.0.0.1")
        ],
        labels={"app": "web"},
        annotations={"a": "b"},
        linux=cri.LinuxPodSandboxConfig(
            cgroup_parent="/kubepods/pod1",
            sysctls={"net.core.somaxconn": "1024"},
            security_context=cri.LinuxSandboxSecurityContext(
                namespace_options=cri.NamespaceOption(
                    network=cri.NamespaceMode.NODE, ipc=cri.NamespaceMode.NODE
                ),
                run_as_user=cri.Int64Value(value=1000),
                supplemental_groups=[5, 6],
                privileged=True,
            ),
        ),
    )
    spec = pod_spec_from_config(config)
    assert (spec.name, spec.uid, spec.namespace, spec.attempt) == ("web", "u1", "prod", 2)
    assert spec.port_mappings == (PodPortMapping(53, 5353, "UDP", "127.0.0.1"),)
    assert spec.host_network and spec.ipc_mode == "NODE" and spec.pid_mode == "POD"
    assert (spec.run_as_user, spec.run_as_group, spec.supplemental_groups) == (1000, None, (5, 6))
    assert spec.has_dns_config and spec.dns_servers == ("10.0.0.10",)
    assert spec.privileged and spec.cgroup_parent == "/kubepods/pod1"
    assert PodSandboxSpec.from_json(spec.to_json()) == spec
    # An empty config is a pod on its own network with nothing set.
    empty = pod_spec_from_config(cri.PodSandboxConfig())
    assert not empty.host_network and not empty.has_dns_config and empty.run_as_user is None


def test_options_are_a_pod_sandbox_config_only_by_their_type_url() -> None:
    data = bytes(cri.PodSandboxConfig(hostname="h"))
    for url in ("runtime.v1.PodSandboxConfig", "type.googleapis.com/runtime.v1.PodSandboxConfig"):
        found = pod_spec_from_any(AnyValue(url, data))
        assert found is not None and found.hostname == "h"
    assert pod_spec_from_any(AnyValue("other.Type", data)) is None
    assert pod_spec_from_any(None) is None
    with pytest.raises(InvalidArgument, match="failed to unmarshal PodSandboxConfig"):
        pod_spec_from_any(
            AnyValue("runtime.v1.PodSandboxConfig", b"\x12\x02\xff\xfe")
        )  # a hostname not UTF-8


def test_a_sandbox_round_trips_through_the_wire() -> None:
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    sandbox = Sandbox(
        "s", SandboxRuntime("io.containerd.runc.v2", AnyValue("o", b"1")), {"a": "b"}, AnyValue("spec", b"{}"),
        "podsandbox", {"e": AnyValue("x", b"y")}, now, now,
    )  # fmt: skip
    assert sandbox_from_wire(sandbox_to_wire(sandbox)) == sandbox
    with pytest.raises(InvalidArgument):
        sandbox_from_wire(None)
