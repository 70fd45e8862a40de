"""The CRI container spec without a daemon: containerd's default seccomp profile, the choice of
profile, the user string, the wire's decoding and the record's round trip, and the spec options
that need no runtime (capabilities with ALL, privileged refusals, mount checks)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from corral.api.grpc.cri import container_spec_from_config
from corral.api.types.runtime import v1 as pb
from corral.kernel import InvalidArgument
from corral.plugins.cri import spec as cri_spec
from corral.plugins.cri.sandboxes import CRISandbox
from corral.plugins.cri.seccomp import (
    SecurityProfile,
    apparmor_spec_opt,
    default_seccomp_profile,
    profile_from_path,
    seccomp_spec_opt,
)
from corral.plugins.cri.spec import ContainerSpec, HostMount, oci_spec
from corral.plugins.runtimes import spec as specs
from corral.plugins.sandbox import PodSandboxSpec

IMAGE = {"config": {"Cmd": ["sh"], "Env": ["PATH=/bin"]}}


def _rules(profile: dict[str, object], name: str) -> list[dict[str, object]]:
    return [r for r in profile["syscalls"] if name in r["names"]]  # type: ignore[attr-defined, union-attr]


def test_the_default_seccomp_profile_confines_clone_unless_cap_sys_admin_is_bounding() -> None:
    plain = default_seccomp_profile(["CAP_CHOWN"], machine="x86_64", kernel_release="6.1.0")
    assert plain["defaultAction"] == "SCMP_ACT_ERRNO"
    assert plain["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    [clone] = _rules(plain, "clone")
    assert clone["args"] == [{"index": 0, "value": 0x7E020000, "op": "SCMP_CMP_MASKED_EQ"}]
    assert _rules(plain, "clone3") == [{"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}]
    assert _rules(plain, "mount") == [] and _rules(plain, "arch_prctl")
    assert [r["args"] for r in _rules(plain, "socket")] == [
        [{"index": 0, "value": 38, "op": "SCMP_CMP_LT"}],
        [{"index": 0, "value": 39, "op": "SCMP_CMP_EQ"}],
        [{"index": 0, "value": 40, "op": "SCMP_CMP_GT"}],
    ]
    admin = default_seccomp_profile(["CAP_SYS_ADMIN"], machine="x86_64", kernel_release="6.1.0")
    assert [r.get("args") for r in _rules(admin, "clone")] == [None]
    assert _rules(admin, "mount") and all(r["action"] == "SCMP_ACT_ALLOW" for r in _rules(admin, "clone3"))
    arm = default_seccomp_profile([], machine="aarch64", kernel_release="4.4.0")
    assert arm["architectures"] == ["SCMP_ARCH_ARM", "SCMP_ARCH_AARCH64"]
    assert _rules(arm, "ptrace") == [] and _rules(arm, "set_tls")  # ptrace only from 4.8


def test_profiles_are_chosen_as_containerd_chooses_them() -> None:
    assert profile_from_path("runtime/default") == SecurityProfile("RuntimeDefault")
    assert profile_from_path("unconfined") == SecurityProfile("Unconfined")
    assert profile_from_path("localhost/etc/p.json") == SecurityProfile("Localhost", "etc/p.json")
    with pytest.raises(ValueError, match='invalid profile "bogus"'):
        profile_from_path("bogus")
    default = SecurityProfile("RuntimeDefault")
    assert seccomp_spec_opt(default, privileged=True, enabled=True) is None
    assert seccomp_spec_opt(None, privileged=False, enabled=True) is None
    assert seccomp_spec_opt(SecurityProfile("Unconfined"), privileged=False, enabled=False) is None
    with pytest.raises(ValueError, match="seccomp is not supported"):
        seccomp_spec_opt(default, privileged=False, enabled=False)
    with pytest.raises(ValueError, match="LocalhostRef must only be set if ProfileType is Localhost"):
        seccomp_spec_opt(SecurityProfile("Unconfined", "x"), privileged=False, enabled=True)
    apparmor_spec_opt(None)
    apparmor_spec_opt(SecurityProfile("Unconfined"))
    with pytest.raises(ValueError, match="apparmor is not supported"):
        apparmor_spec_opt(SecurityProfile("Localhost", "p"))


def test_a_localhost_profile_is_read_from_its_file(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text('{"defaultAction": "SCMP_ACT_LOG"}')
    opt = seccomp_spec_opt(SecurityProfile("Localhost", str(path)), privileged=False, enabled=True)
    assert opt is not None
    spec: specs.Spec = {"linux": {}}
    opt(spec)
    assert spec["linux"]["seccomp"] == {"defaultAction": "SCMP_ACT_LOG"}
    path.write_text("[1, 2")
    with pytest.raises(ValueError, match=f'decoding seccomp profile failed "{path}"'):
        opt(spec)


def test_the_wire_config_decodes_and_the_record_round_trips() -> None:
    config = pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name="c", attempt=1),
        image=pb.ImageSpec(image="busybox"),
        mounts=[pb.Mount(container_path="/m", host_path="/h", readonly=True, recursive_read_only=True)],
        devices=[pb.Device(container_path="/dev/x", host_path="/dev/null", permissions="r")],
        linux=pb.LinuxContainerConfig(
            resources=pb.LinuxContainerResources(
                oom_score_adj=-5,
                hugepage_limits=[pb.HugepageLimit(page_size="2MB", limit=4)],
                unified={"a": "b"},
            ),
            security_context=pb.LinuxContainerSecurityContext(
                seccomp=pb.SecurityProfile(
                    profile_type=pb.SecurityProfileProfileType.Localhost, localhost_ref="/p"
                ),
                masked_paths=["/proc/kcore"],
                supplemental_groups=[7, 8],
                run_as_username="app",
                namespace_options=pb.NamespaceOption(pid=pb.NamespaceMode.CONTAINER),
            ),
        ),
    )
    spec = container_spec_from_config(config)
    assert spec.seccomp == SecurityProfile("Localhost", "/p") and spec.apparmor is None
    assert spec.mounts[0].recursive_read_only and spec.devices[0].permissions == "r"
    assert (spec.has_resources, spec.oom_score_adj, spec.hugepage_limits) == (True, -5, (("2MB", 4),))
    assert spec.pid_mode == "CONTAINER" and spec.supplemental_groups == (7, 8)
    assert ContainerSpec.from_json(spec.to_json()) == spec
    bare = container_spec_from_config(pb.ContainerConfig(metadata=pb.ContainerMetadata(name="c")))
    assert (bare.has_resources, bare.seccomp, bare.pid_mode) == (False, None, "POD")
    # A record written before these fields existed still loads.
    assert ContainerSpec.from_json(
        {"name": "old", "mounts": [{"container_path": "/a", "host_path": "/b"}]}
    ) == (ContainerSpec("old", mounts=(HostMount("/a", "/b"),)))


def _pod(privileged: bool = False) -> CRISandbox:
    return CRISandbox(
        "p" * 64, "pod", PodSandboxSpec(name="pod", uid="u", namespace="ns", privileged=privileged), "", "podsandbox",
        datetime.now(UTC), pid=42,
    )  # fmt: skip


def test_capabilities_all_comes_first_and_privileged_needs_a_privileged_pod(tmp_path: Path) -> None:
    spec = oci_spec(
        "c" * 64,
        _pod(),
        ContainerSpec("c", add_capabilities=("all",), drop_capabilities=("chown",)),
        IMAGE,
        "img",
        "",
    )
    expected = [c for c in specs.current_capabilities() if c != "CAP_CHOWN"]
    assert spec["process"]["capabilities"]["bounding"] == expected
    assert {"type": "pid", "path": "/proc/42/ns/pid"} in spec["linux"]["namespaces"]
    assert "maskedPaths" not in spec["linux"] and "rlimits" not in spec["process"]
    none = oci_spec("c" * 64, _pod(), ContainerSpec("c", drop_capabilities=("ALL",)), IMAGE, "img", "")
    assert none["process"]["capabilities"] == {}
    with pytest.raises(InvalidArgument) as err:
        oci_spec("c" * 64, _pod(), ContainerSpec("c", privileged=True), IMAGE, "img", "")
    assert str(err.value) == (
        f'failed to generate container "{"c" * 64}" spec: failed to generate spec opts: '
        "no privileged container allowed in sandbox"
    )
    with pytest.raises(InvalidArgument, match=r"no command specified"):
        oci_spec("c" * 64, _pod(), ContainerSpec("c"), {"config": {}}, "img", "")
    conflict = ContainerSpec("c", mounts=(HostMount("/m", str(tmp_path), recursive_read_only=True),))
    with pytest.raises(InvalidArgument, match="recursive read-only mount conflicts with RW mount"):
        oci_spec("c" * 64, _pod(), conflict, IMAGE, "img", "")
    missing = tmp_path / "made"
    made = oci_spec(
        "c" * 64, _pod(), ContainerSpec("c", mounts=(HostMount("/m", str(missing)),)), IMAGE, "img", ""
    )
    assert missing.is_dir()
    assert made["mounts"][-1] == {
        "destination": "/m", "type": "bind", "source": str(missing), "options": ["rbind", "rprivate", "rw"]
    }  # fmt: skip


def test_hugepage_limits_follow_the_hugetlb_config_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    request = ContainerSpec("c", has_resources=True, hugepage_limits=(("2MB", 1 << 21),), cpuset_cpus="0-1")
    dropped = oci_spec("c" * 64, _pod(), request, IMAGE, "img", "")  # containerd's default: disabled
    assert "hugepageLimits" not in dropped["linux"]["resources"]
    assert dropped["linux"]["resources"]["cpu"] == {"cpus": "0-1"}
    enabled = cri_spec.HandlerOptions(disable_hugetlb_controller=False)
    monkeypatch.setattr(cri_spec, "hugetlb_controller_present", lambda: True)
    applied = oci_spec("c" * 64, _pod(), request, IMAGE, "img", "", enabled)
    assert applied["linux"]["resources"]["hugepageLimits"] == [{"pageSize": "2MB", "limit": 1 << 21}]
    monkeypatch.setattr(cri_spec, "hugetlb_controller_present", lambda: False)
    tolerated = oci_spec("c" * 64, _pod(), request, IMAGE, "img", "", enabled)
    assert "hugepageLimits" not in tolerated["linux"]["resources"]
    strict = cri_spec.HandlerOptions(
        disable_hugetlb_controller=False, tolerate_missing_hugetlb_controller=False
    )
    with pytest.raises(InvalidArgument, match="hugetlb cgroup controller is missing"):
        oci_spec("c" * 64, _pod(), request, IMAGE, "img", "", strict)


def test_passthrough_annotations_match_as_gos_path_match() -> None:
    given = {"io.x/a": "1", "io.x/a/b": "2", "io.y": "3", "io.x/[z]": "4"}
    assert cri_spec.passthrough_annotations(given, ["io.x/*"]) == {"io.x/a": "1", "io.x/[z]": "4"}
    assert cri_spec.passthrough_annotations(given, ["io.?", "io.x/a/*"]) == {"io.y": "3", "io.x/a/b": "2"}
    assert cri_spec.passthrough_annotations(given, ["io.[xy]*"]) == {"io.y": "3"}
    assert cri_spec.passthrough_annotations(given, ["[", ""]) == {}
    spec = oci_spec("c" * 64, _pod(), ContainerSpec("c", annotations={"a": "b"}), IMAGE, "img", "")
    assert "a" not in spec["annotations"] and spec["annotations"]["io.kubernetes.cri.container-name"] == "c"


def test_restrict_oom_score_adj_keeps_a_container_at_or_above_the_daemons_score() -> None:
    ours = int(Path("/proc/self/oom_score_adj").read_text())
    request = ContainerSpec("c", has_resources=True, oom_score_adj=ours - 1)
    assert oci_spec("c" * 64, _pod(), request, IMAGE, "img", "")["process"]["oomScoreAdj"] == ours - 1
    restricted = cri_spec.HandlerOptions(restrict_oom_score_adj=True)
    assert oci_spec("c" * 64, _pod(), request, IMAGE, "img", "", restricted)["process"]["oomScoreAdj"] == ours
    higher = ContainerSpec("c", has_resources=True, oom_score_adj=ours + 1)
    assert (
        oci_spec("c" * 64, _pod(), higher, IMAGE, "img", "", restricted)["process"]["oomScoreAdj"] == ours + 1
    )
    assert "oomScoreAdj" not in oci_spec("c" * 64, _pod(), ContainerSpec("c"), IMAGE, "img", "")["process"]
