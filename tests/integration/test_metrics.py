"""Prometheus metrics at [metrics] address, with containerd's gRPC metric names."""

from __future__ import annotations

import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from harness import Daemon
from tooling import require_tool


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sample(text: str, name: str, **labels: str) -> float:
    """The value of the sample ``name{labels}`` in an exposition (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_request_counters_move_with_calls_and_codes(tmp_path: Path, ctr: str) -> None:
    port = free_port()
    config = f'version = 3\n[metrics]\naddress = "127.0.0.1:{port}"\ngrpc_histogram = true\n'
    d = Daemon(tmp_path / "corral", config=config).start()
    url = f"http://127.0.0.1:{port}/v1/metrics"
    try:

        def scrape() -> str:
            with urllib.request.urlopen(url, timeout=10) as response:
                assert response.headers["Content-Type"].startswith("text/plain")
                return str(response.read().decode())

        before = scrape()
        for _ in range(3):
            d.ctr("version")
        d.ctr("snapshots", "rm", "nonexistent", check=False)
        after = scrape()
        labels = {"grpc_service": "containerd.services.version.v1.Version", "grpc_method": "Version"}
        ok = sample(after, "grpc_server_handled_total", grpc_code="OK", grpc_type="unary", **labels)
        assert ok - sample(before, "grpc_server_handled_total", grpc_code="OK", **labels) == 3
        assert sample(after, "grpc_server_started_total", **labels) >= 3
        assert sample(after, "grpc_server_msg_received_total", **labels) >= 3
        assert sample(
            after, "grpc_server_handled_total", grpc_code="NotFound", grpc_method="Remove",
            grpc_service="containerd.services.snapshots.v1.Snapshots",
        ) == 1  # fmt: skip
        assert sample(after, "grpc_server_handling_seconds_count", **labels) >= 3
        assert (
            sample(after, "corral_plugin_status", plugin="io.containerd.metadata.v1.sqlite", status="ok") == 1
        )
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/elsewhere", timeout=10)
        assert missing.value.code == 404
    finally:
        d.stop()


def test_metrics_on_a_unix_socket(tmp_path: Path, ctr: str) -> None:
    curl = require_tool("curl")
    sock = tmp_path / "metrics.sock"
    d = Daemon(tmp_path / "corral", config=f'version = 3\n[metrics]\naddress = "unix://{sock}"\n').start()
    try:
        d.ctr("version")
        out = subprocess.run(
            [curl, "-sf", "--unix-socket", str(sock), "http://localhost/v1/metrics"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        assert sample(out, "grpc_server_handled_total", grpc_method="Version", grpc_code="OK") >= 1
        # Without grpc_histogram, as in containerd, no latency histogram is kept.
        assert "grpc_server_handling_seconds" not in out
    finally:
        d.stop()


def test_no_address_means_no_listener_and_the_plugin_says_why(daemon: Daemon) -> None:
    rows = [line.split() for line in daemon.ctr("plugins", "ls").stdout.splitlines()]
    assert ["io.corral.metrics.v1", "prometheus", "-", "skip"] in rows
