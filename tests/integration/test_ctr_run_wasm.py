"""`ctr run --runtime io.containerd.wasmtime.v1` against corrald: a WASI module in an image the test
builds, run in-process by the wasm runtime (no shim process), through the real ctr and the tasks service."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from harness import Daemon
from tooling import require_root

from corral.plugins.images.build import build_image, layer_from_directory

wasmtime = pytest.importorskip("wasmtime")

pytestmark = pytest.mark.root

IMAGE = "docker.io/library/wasm-hello:1"
RUNTIME = "io.containerd.wasmtime.v1"

WAT = """(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get" (func $args_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 1024) "hello from wasm\\n")
  (func (export "_start")
    (local $argc i32)
    ;; with an argument, loop forever (a task to kill); without, greet and exit 7
    (drop (call $args_sizes_get (i32.const 0) (i32.const 4)))
    (local.set $argc (i32.load (i32.const 0)))
    (if (i32.gt_u (local.get $argc) (i32.const 1)) (then (loop $l (br $l))))
    (i32.store (i32.const 16) (i32.const 1024))
    (i32.store (i32.const 20) (i32.const 16))
    (drop (call $fd_write (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 32)))
    (call $proc_exit (i32.const 7))))
"""


@pytest.fixture
def daemon_with_image(tmp_path: Path, ctr: str) -> Daemon:
    require_root()
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "app.wasm").write_bytes(bytes(wasmtime.wat2wasm(WAT)))
    image = build_image([layer_from_directory(tree)], entrypoint=["/app.wasm"])
    archive = tmp_path / "wasm.tar"
    image.write_oci_archive(archive, [IMAGE])
    d = Daemon(tmp_path / "corral").start()
    d.ctr("images", "import", str(archive))
    return d


def shims() -> list[str]:
    out = subprocess.run(["pgrep", "-f", "containerd-shim"], capture_output=True, text=True).stdout
    return out.split()


def test_ctr_run_prints_the_modules_output_and_exits_with_its_code(daemon_with_image: Daemon) -> None:
    d = daemon_with_image
    before = shims()
    try:
        result = d.ctr("run", "--rm", "--runtime", RUNTIME, IMAGE, "w1", check=False)
        assert result.stdout == "hello from wasm\n", result.stderr
        assert result.returncode == 7
        assert shims() == before  # no process per task
        assert d.ctr("containers", "ls", "-q").stdout.split() == []  # --rm removed it
        assert d.ctr("snapshots", "ls").stdout.count("Active") == 0
    finally:
        d.stop()


def test_a_detached_wasm_task_is_listed_killed_and_deleted(daemon_with_image: Daemon) -> None:
    d = daemon_with_image
    try:
        d.ctr("run", "-d", "--runtime", RUNTIME, IMAGE, "w2", "/app.wasm", "spin")
        deadline = time.monotonic() + 10
        while "RUNNING" not in d.ctr("tasks", "ls").stdout:
            assert time.monotonic() < deadline, d.ctr("tasks", "ls").stdout
            time.sleep(0.1)
        d.ctr("tasks", "kill", "w2")  # SIGTERM: a guest has no handler, it ends
        deadline = time.monotonic() + 10
        while "STOPPED" not in d.ctr("tasks", "ls").stdout:
            assert time.monotonic() < deadline, d.ctr("tasks", "ls").stdout
            time.sleep(0.1)
        refused = d.ctr("tasks", "kill", "-s", "SIGUSR1", "w2", check=False)
        assert refused.returncode != 0
        d.ctr("tasks", "delete", "w2")
        assert d.ctr("tasks", "ls", "-q").stdout.split() == []
        d.ctr("containers", "rm", "w2")
        mounts = Path("/proc/self/mountinfo").read_text()
        assert str(d.base) not in mounts
    finally:
        d.stop()


def test_ctr_run_log_uri_file_gets_the_modules_output_and_binary_is_refused(
    daemon_with_image: Daemon, tmp_path: Path
) -> None:
    d = daemon_with_image
    log = tmp_path / "logs" / "w3.log"
    try:
        result = d.ctr(
            "run", "--rm", "--log-uri", f"file://{log}", "--runtime", RUNTIME, IMAGE, "w3", check=False
        )
        assert (result.returncode, result.stdout) == (7, ""), result.stderr
        assert log.read_text() == "hello from wasm\n"
        refused = d.ctr(
            "run", "--rm", "--log-uri", "binary:///bin/logger", "--runtime", RUNTIME, IMAGE, "w4", check=False
        )
        assert refused.returncode != 0
        assert "InvalidArgument" in refused.stderr or "invalid argument" in refused.stderr, refused.stderr
        assert "binary://" in refused.stderr
        assert d.ctr("tasks", "ls", "-q").stdout.split() == []
        assert d.ctr("containers", "ls", "-q").stdout.split() == []
    finally:
        d.stop()
