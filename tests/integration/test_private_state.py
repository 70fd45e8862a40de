"""A user on the host who is not the daemon's reads nothing under corral's root or state."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from harness import Daemon
from tooling import require_root

PROBE = """
for p in "$@"; do
    if [ -d "$p" ]; then ls "$p" >/dev/null 2>&1 && echo "listed $p"
    else head -c 1 "$p" >/dev/null 2>&1 && echo "read $p"
    fi
done
true
"""


def drop_to_nobody() -> None:
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)


def readable_by_nobody(paths: list[Path]) -> list[str]:
    """What user ``nobody`` (uid 65534) can list or read among ``paths`` (with /bin/sh, no Python)."""
    out = subprocess.run(
        ["/bin/sh", "-c", PROBE, "probe", *map(str, paths)],
        preexec_fn=drop_to_nobody, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return out.stdout.splitlines()


def test_a_non_root_user_reads_nothing_under_root_or_state(daemon: Daemon) -> None:
    require_root()
    subprocess.run(["ctr", "-a", daemon.socket, "content", "ingest", "r"], input=b"secret bytes", check=True)
    daemon.ctr("snapshots", "prepare", "k")
    root, state = daemon.base / "root", daemon.base / "state"
    assert oct(root.stat().st_mode & 0o777) == "0o700"
    assert oct(state.stat().st_mode & 0o777) == "0o711"
    # What the daemon made is private too, should the root ever be opened up.
    for path in (root / "io.containerd.metadata.v1.sqlite" / "meta.db",):
        assert path.stat().st_mode & 0o077 == 0, path
    blobs = list((root / "io.containerd.content.v1.content" / "blobs" / "sha256").iterdir())
    assert blobs and all(b.stat().st_mode & 0o777 == 0o400 for b in blobs)
    everything = [Path(p) / n for top in (root, state) for p, ds, fs in os.walk(top) for n in [*ds, *fs]]
    assert len(everything) > 20
    assert readable_by_nobody([root, state, *everything]) == []


def test_an_existing_root_that_grants_too_much_is_repaired_at_start(tmp_path: Path, ctr: str) -> None:
    require_root()
    base = tmp_path / "corral"
    (base / "root").mkdir(parents=True, mode=0o755)
    (base / "root").chmod(0o755)
    d = Daemon(base).start()
    try:
        assert oct((base / "root").stat().st_mode & 0o777) == "0o700"
        assert "directory_mode_repaired" in d.log()
    finally:
        d.stop()


def test_socket_connect_as_another_user_is_refused(daemon: Daemon) -> None:
    require_root()
    result = subprocess.run(
        ["ctr", "-a", daemon.socket, "--connect-timeout", "2s", "version"],
        preexec_fn=drop_to_nobody, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode != 0 and "permission denied" in result.stderr
