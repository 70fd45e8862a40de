"""The CNI library against Debian's plugins, in a network namespace of its own (run under
``unshare --net``, so nothing it makes reaches the machine's): ADD gives the pod an address on the
bridge, CHECK passes while it is there and fails once the interface is gone, DEL releases the
allocation, and a setup whose last plugin fails rolls back what the earlier ones made."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from tooling import require_root, require_tool

CNI_BIN = "/usr/lib/cni"

SCRIPT = textwrap.dedent(
    """
    import json, subprocess, sys
    from pathlib import Path
    import anyio
    from corral.kernel import FailedPrecondition
    from corral.plugins.cni import CNI, CNISettings, create_netns, remove_netns, pod_args

    base = Path(sys.argv[1])
    report = {}

    def links(ns=None):
        argv = ["ip", "-o", "link"] if ns is None else ["nsenter", f"--net={ns}", "ip", "-o", "addr"]
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout

    def allocations():
        d = base / "ipam" / "checked"
        return sorted(p.name for p in d.iterdir() if p.name[0].isdigit()) if d.exists() else []

    async def main():
        cni = CNI(CNISettings(conf_dir=base / "good", bin_dirs=(sys.argv[2],), cache_dir=base / "cache"))
        ns = await create_netns(base / "netns")
        result = await cni.setup("sb1", str(ns), args=pod_args("default", "p", "u", "sb1"))
        report["ip"] = result.pod_ip
        report["in_netns"] = result.pod_ip in links(str(ns))
        report["allocated"] = allocations()
        await cni.check("sb1", str(ns))
        report["cached"] = sorted(p.name for p in (base / "cache").iterdir())
        subprocess.run(["nsenter", f"--net={ns}", "ip", "link", "del", "eth0"], check=True)
        try:
            await cni.check("sb1", str(ns))
            report["check_after_removal"] = "passed"
        except FailedPrecondition as exc:
            report["check_after_removal"] = str(exc)
        await cni.teardown("sb1", str(ns))
        report["after_teardown"] = allocations()
        report["cache_after"] = sorted(p.name for p in (base / "cache").iterdir())
        # A list whose last plugin fails: the bridge's veth and address go again.
        bad = CNI(CNISettings(conf_dir=base / "bad", bin_dirs=(sys.argv[2],), cache_dir=base / "cache"))
        try:
            await bad.setup("sb2", str(ns))
            report["bad"] = "succeeded"
        except Exception as exc:
            report["bad"] = str(exc)
        report["bad_allocated"] = allocations()
        report["veths"] = links().count("veth")
        report["bad_cache"] = sorted(p.name for p in (base / "cache").iterdir())
        remove_netns(ns)
        report["netns_gone"] = not ns.exists()

    anyio.run(main)
    print(json.dumps(report))
    """
)


def conflist(name: str, base: Path, extra: list[dict[str, object]]) -> str:
    return json.dumps(
        {
            "cniVersion": "1.0.0",
            "name": name,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": "cnitest0",
                    "isGateway": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": "10.251.3.0/24"}]],
                        "dataDir": str(base / "ipam"),
                    },
                },
                *extra,
            ],
        }
    )


def test_add_check_del_and_a_rolled_back_setup_with_the_real_plugins(tmp_path: Path) -> None:
    require_root()
    require_tool("unshare")
    require_tool("nsenter")
    for name, extra in (("good", []), ("bad", [{"type": "no-such-plugin"}])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "10-net.conflist").write_text(conflist("checked", tmp_path, extra))
    done = subprocess.run(
        ["unshare", "--net", sys.executable, "-c", SCRIPT, str(tmp_path), CNI_BIN],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["ip"].startswith("10.251.3.") and report["in_netns"]
    assert report["allocated"] == [report["ip"]]
    assert report["cached"] == ["checked-sb1-eth0.json", "cni-loopback-sb1-lo.json"]
    assert 'plugin type="bridge" name="checked" failed (check)' in report["check_after_removal"]
    assert report["after_teardown"] == [] and report["cache_after"] == []
    assert 'failed to find plugin "no-such-plugin"' in report["bad"]
    assert report["bad_allocated"] == [] and report["veths"] == 0 and report["bad_cache"] == []
    assert report["netns_gone"]
