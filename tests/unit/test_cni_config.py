"""The CNI library's pure parts: conflists as libcni reads them, what a plugin gets on stdin and in
its environment, and the addresses a result gives the pod."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from corral.kernel import InvalidArgument, NotFound
from corral.plugins.cni import (
    Attachment,
    Invocation,
    PortMapping,
    SetupResult,
    load_networks,
    parse_conflist,
    plugin_stdin,
    pod_args,
    result_ips,
)

BRIDGE_LIST = {
    "cniVersion": "1.0.0",
    "name": "pods",
    "plugins": [
        {"type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local"}},
        {"type": "portmap", "capabilities": {"portMappings": True, "other": False}},
    ],
}


def test_a_conflist_and_a_single_plugin_conf_both_parse() -> None:
    net = parse_conflist(json.dumps(BRIDGE_LIST))
    assert (net.name, net.cni_version, [p.type for p in net.plugins]) == (
        "pods",
        "1.0.0",
        ["bridge", "portmap"],
    )
    assert net.plugins[1].capabilities == frozenset({"portMappings"})
    single = parse_conflist(json.dumps({"cniVersion": "0.4.0", "name": "one", "type": "bridge"}))
    assert [p.type for p in single.plugins] == ["bridge"]


@pytest.mark.parametrize(
    ("doc", "why"),
    [
        ("{", "invalid JSON"),
        ("[]", "not a JSON object"),
        ('{"plugins": [{"type": "bridge"}]}', "no network name"),
        ('{"name": "n", "plugins": []}', "no plugins in list"),
        ('{"name": "n", "plugins": [{"bridge": "x"}]}', "a plugin has no type"),
    ],
)
def test_a_bad_configuration_is_refused_with_the_reason(doc: str, why: str) -> None:
    with pytest.raises(InvalidArgument, match=why):
        parse_conflist(doc, "10-x.conflist")


def test_networks_are_read_in_name_order_and_a_broken_one_fails_the_load(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="no network config found"):
        load_networks(tmp_path)
    (tmp_path / "README").write_text("not a config")
    (tmp_path / "20-b.conf").write_text(json.dumps({"cniVersion": "0.4.0", "name": "b", "type": "bridge"}))
    (tmp_path / "10-a.conflist").write_text(json.dumps(BRIDGE_LIST))
    assert [n.name for n in load_networks(tmp_path)] == ["pods"]
    assert [n.name for n in load_networks(tmp_path, max_conf_num=0)] == ["pods", "b"]
    # As go-cni: a file among those chosen that does not parse fails the load, naming it.
    (tmp_path / "05-broken.conflist").write_text("{")
    with pytest.raises(InvalidArgument, match=r"05-broken\.conflist"):
        load_networks(tmp_path)


def test_a_plugin_gets_the_lists_name_version_prev_result_and_only_its_capabilities() -> None:
    net = parse_conflist(json.dumps(BRIDGE_LIST))
    runtime = {"portMappings": [PortMapping(8080, 80).runtime_config()], "bandwidth": {"x": 1}}
    bridge = json.loads(plugin_stdin(net, net.plugins[0], None, runtime))
    assert bridge["name"] == "pods" and bridge["cniVersion"] == "1.0.0"
    assert "prevResult" not in bridge and "runtimeConfig" not in bridge
    prev = {"cniVersion": "1.0.0", "ips": [{"address": "10.1.0.2/24"}]}
    portmap = json.loads(plugin_stdin(net, net.plugins[1], prev, runtime))
    assert portmap["prevResult"] == prev
    assert portmap["runtimeConfig"] == {
        "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]
    }


def test_the_environment_is_the_cni_contract() -> None:
    env = Invocation(
        "ADD", "sb1", "/run/netns/x", "eth0", pod_args("ns", "pod", "uid", "sb1"), ["/a", "/b"]
    ).environ()
    assert env["CNI_COMMAND"] == "ADD" and env["CNI_CONTAINERID"] == "sb1"
    assert env["CNI_NETNS"] == "/run/netns/x" and env["CNI_IFNAME"] == "eth0" and env["CNI_PATH"] == "/a:/b"
    assert env["CNI_ARGS"] == (
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=pod;K8S_POD_INFRA_CONTAINER_ID=sb1;K8S_POD_UID=uid"
    )


def test_the_pod_ip_is_the_first_non_loopback_interfaces_v4_address() -> None:
    result = {
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "cni0"}, {"name": "veth1"}, {"name": "eth0", "sandbox": "/run/netns/x"}],
        "ips": [
            {"address": "fd00::5/64", "interface": 2},
            {"address": "10.88.0.5/16", "gateway": "10.88.0.1", "interface": 2},
            {"address": "192.168.1.1/24", "interface": 0},
        ],
    }
    assert [c.address for c in result_ips(result, "eth0")] == ["fd00::5/64", "10.88.0.5/16"]
    setup = SetupResult(
        (
            Attachment("cni-loopback", "lo", {"ips": [{"address": "127.0.0.1/8"}]}),
            Attachment("pods", "eth0", result),
        )
    )
    assert setup.pod_ip == "10.88.0.5"
    assert [c.ip for c in setup.ips] == ["10.88.0.5", "fd00::5"]
    legacy = {"cniVersion": "0.2.0", "ip4": {"ip": "10.0.0.9/24", "gateway": "10.0.0.1"}}
    assert [c.ip for c in result_ips(legacy, "eth0")] == ["10.0.0.9"]
