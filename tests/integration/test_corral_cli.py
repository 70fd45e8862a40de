"""The corral command against a real corrald, as an operator uses it."""

from __future__ import annotations

import json
import subprocess
import time

from harness import BIN, Daemon


def test_content_active_shows_bytes_as_a_slow_writer_sends_them(daemon: Daemon) -> None:
    writer = subprocess.Popen(
        [str(BIN / "corral"), "-a", daemon.socket, "content", "ingest", "slow"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert writer.stdin is not None
    try:
        writer.stdin.write(b"x" * 100_000)
        writer.stdin.flush()
        offset = 0
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and offset == 0:
            active = json.loads(daemon.corral("content", "active", "--format", "json").stdout)
            offset = next((a["offset"] for a in active if a["ref"] == "slow"), 0)
            time.sleep(0.1)
        # Well short of a whole MiB, and still sent: a pipe's bytes reach the daemon as they come.
        assert offset == 100_000
    finally:
        writer.stdin.close()
        assert writer.wait(timeout=30) == 0, writer.stderr.read() if writer.stderr else ""


def test_a_malformed_digest_is_refused_before_any_call_with_one_line(daemon: Daemon) -> None:
    result = daemon.corral("content", "get", "sha256:0000", check=False)
    assert result.returncode == 2
    assert result.stderr == "corral: invalid digest 'sha256:0000': invalid checksum digest length\n"
