"""The pure parts of the CRI's stats, resource updates, stop signals and log reopening: cgroup v1
and v2 files as a tree under a temp root, the spec's JSON, the log file."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from corral.kernel import FailedPrecondition
from corral.plugins.cri.cgroups import cgroup_paths_of, parse_net_dev, read_cgroup
from corral.plugins.cri.container_log import ContainerLog
from corral.plugins.cri.resources import HugepageLimit, ResourceUpdate, resources_of, with_resources
from corral.plugins.cri.signals import cri_signal_name, oci_stop_signal, parse_signal


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_a_v2_cgroup_reads_usage_usec_as_nanoseconds_and_working_set_as_usage_less_inactive_file(
    tmp_path: Path,
) -> None:
    write(tmp_path, {
        "cgroup.controllers": "cpu memory pids\n",
        "pod/c1/cpu.stat": "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n",
        "pod/c1/memory.current": "10000\n",
        "pod/c1/memory.max": "max\n",
        "pod/c1/memory.stat": "anon 4000\nfile 6000\ninactive_file 2500\npgfault 17\npgmajfault 2\n",
        "pod/c1/pids.current": "3\n",
    })  # fmt: skip
    stats = read_cgroup({"": "/pod/c1"}, tmp_path)
    assert stats is not None
    assert (stats.cpu_usage_ns, stats.memory_usage, stats.rss, stats.pids) == (1_500_000, 10000, 4000, 3)
    assert (stats.page_faults, stats.major_page_faults) == (17, 2)
    assert stats.working_set == 7500 and stats.available == 0  # no limit: nothing "available"
    (tmp_path / "pod/c1/memory.max").write_text("20000\n")
    limited = read_cgroup("/pod/c1", tmp_path)
    assert limited is not None and limited.available == 20000 - 7500
    assert read_cgroup("/pod/gone", tmp_path) is None


def test_a_v1_cgroup_reads_each_controllers_own_path_and_the_total_counters(tmp_path: Path) -> None:
    write(tmp_path, {
        "cpuacct/k8s/a/cpuacct.usage": "123456789\n",
        "memory/k8s/b/memory.usage_in_bytes": "5000\n",
        "memory/k8s/b/memory.limit_in_bytes": "9223372036854771712\n",
        "memory/k8s/b/memory.stat": "rss 1\ntotal_rss 3000\ntotal_inactive_file 6000\ntotal_pgfault 9\n",
        "pids/k8s/c/pids.current": "2\n",
    })  # fmt: skip
    stats = read_cgroup({"cpuacct": "/k8s/a", "memory": "/k8s/b", "pids": "/k8s/c"}, tmp_path)
    assert stats is not None
    assert (stats.cpu_usage_ns, stats.memory_usage, stats.rss, stats.page_faults, stats.pids) == (
        123456789, 5000, 3000, 9, 2,
    )  # fmt: skip
    assert stats.working_set == 0  # inactive_file above usage: none, never negative
    assert stats.available == 0  # the v1 "no limit" value


def test_proc_cgroup_lines_map_every_controller_and_the_unified_hierarchy(tmp_path: Path) -> None:
    write(tmp_path, {"42/cgroup": "4:memory:/k8s/x\n2:cpu,cpuacct:/k8s/y\n1:name=systemd:/s\n0::/u\n"})
    assert cgroup_paths_of(42, tmp_path) == {
        "memory": "/k8s/x", "cpu": "/k8s/y", "cpuacct": "/k8s/y", "systemd": "/s", "": "/u",
    }  # fmt: skip
    assert cgroup_paths_of(43, tmp_path) == {}


def test_proc_net_dev_gives_each_interface_but_lo_with_rx_and_tx_bytes_and_errors() -> None:
    text = (
        "Inter-|   Receive                            |  Transmit\n"
        " face |bytes packets errs drop fifo frame compressed multicast|bytes packets errs drop\n"
        "    lo:  100 1 0 0 0 0 0 0  100 1 0 0 0 0 0 0\n"
        "  eth0: 5000 40 3 0 0 0 0 0 7000 50 4 0 0 0 0 0\n"
    )
    [eth0] = parse_net_dev(text)
    assert (eth0.name, eth0.rx_bytes, eth0.rx_errors, eth0.tx_bytes, eth0.tx_errors) == (
        "eth0",
        5000,
        3,
        7000,
        4,
    )


def test_with_resources_sets_only_the_fields_asked_and_copies_the_spec() -> None:
    spec = {
        "process": {"oomScoreAdj": -5},
        "linux": {"resources": {"cpu": {"shares": 2}, "unified": {"a": "1"}}},
    }
    new = with_resources(
        spec,
        ResourceUpdate(
            cpu_quota=5000, memory_limit=1 << 20, cpuset_cpus="0", unified={"b": "2"},
            hugepage_limits=(HugepageLimit("2MB", 4096),),
        ),
        disable_hugetlb=False, hugetlb=True,
    )  # fmt: skip
    assert spec["linux"]["resources"]["cpu"] == {"shares": 2}  # the old spec is untouched
    resources = new["linux"]["resources"]
    assert resources["cpu"] == {"shares": 2, "quota": 5000, "cpus": "0"}
    assert resources["memory"] == {"limit": 1 << 20, "swap": 1 << 20}  # swap follows the limit
    assert resources["unified"] == {"a": "1", "b": "2"}
    assert resources["hugepageLimits"] == [{"pageSize": "2MB", "limit": 4096}]
    assert resources_of(new) == {
        "oomScoreAdj": -5, "cpuShares": 2, "cpuQuota": 5000, "cpusetCpus": "0", "cpusetMems": "",
        "memoryLimitInBytes": 1 << 20, "memorySwapLimitInBytes": 1 << 20,
        "hugepageLimits": [{"pageSize": "2MB", "limit": 4096}], "unified": {"a": "1", "b": "2"},
    }  # fmt: skip
    no_swap = with_resources({}, ResourceUpdate(memory_limit=100, memory_swap_limit=300), swap=False)
    assert no_swap["linux"]["resources"]["memory"] == {"limit": 100}


def test_hugepage_limits_without_the_controller_are_refused_unless_tolerated_or_disabled() -> None:
    asked = ResourceUpdate(hugepage_limits=(HugepageLimit("2MB", 1),))
    with pytest.raises(FailedPrecondition, match="hugetlb cgroup controller is missing"):
        with_resources({}, asked, disable_hugetlb=False, tolerate_missing_hugetlb=False, hugetlb=False)
    tolerated = with_resources({}, asked, disable_hugetlb=False, tolerate_missing_hugetlb=True, hugetlb=False)
    assert "hugepageLimits" not in tolerated["linux"]["resources"]
    assert "hugepageLimits" not in with_resources({}, asked, disable_hugetlb=True)["linux"]["resources"]


def test_stop_signals_parse_as_moby_does() -> None:
    assert parse_signal("SIGQUIT") == parse_signal("quit") == parse_signal("3") == signal.SIGQUIT
    assert (
        parse_signal("RTMIN+3") == signal.SIGRTMIN + 3 and parse_signal("SIGRTMAX-1") == signal.SIGRTMAX - 1
    )
    for bad in ("0", "SIGNOPE", ""):
        with pytest.raises(ValueError, match="invalid signal"):
            parse_signal(bad)
    assert oci_stop_signal("SIGRTMINPLUS3") == "SIGRTMIN+3" and oci_stop_signal("RUNTIME_DEFAULT") == ""
    assert cri_signal_name("SIGRTMAX-2") == "SIGRTMAXMINUS2"
    with pytest.raises(ValueError, match="unknown CRI stop signal 99"):
        oci_stop_signal("99")


def test_a_reopened_log_sends_later_records_to_the_new_file_at_the_same_path(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "c.log"
    log = ContainerLog(str(path))
    log.acquire()
    log.acquire()  # stdout's and stderr's pumps
    log.write(b"one\n")
    path.rename(tmp_path / "logs" / "c.log.1")
    log.reopen()
    log.write(b"two\n")
    log.release()
    log.write(b"three\n")  # the other pump still writes
    log.release()
    log.write(b"lost\n")  # no pump: nothing open
    assert (tmp_path / "logs" / "c.log.1").read_bytes() == b"one\n"
    assert path.read_bytes() == b"two\nthree\n"
    path.unlink()
    log.reopen()  # with no writer it only creates the file
    assert path.read_bytes() == b""
