"""The bindir image verifier, as containerd's: every entry in name order, all must pass."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import anyio
import pytest

from corral.plugins.core import Descriptor
from corral.plugins.verifiers import ImageVerifier, Judgement
from corral.plugins.verifiers.bindir import OUTPUT_LIMIT, BindirVerifier, VerifierFailed

DESC = Descriptor(
    "application/vnd.oci.image.manifest.v1+json",
    "sha256:" + "ab" * 32,
    405,
    {"org.opencontainers.image.ref.name": "latest"},
)


def script(bin_dir: Path, name: str, body: str) -> Path:
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def verify(verifier: BindirVerifier, name: str = "docker.io/library/busybox:latest") -> Judgement:
    async def run() -> Judgement:
        return await verifier.verify_image(name, DESC)

    return anyio.run(run)


def test_the_bindir_verifier_is_an_image_verifier(tmp_path: Path) -> None:
    assert isinstance(BindirVerifier(tmp_path), ImageVerifier)


def test_a_missing_directory_lets_every_image_in(tmp_path: Path) -> None:
    judgement = verify(BindirVerifier(tmp_path / "absent"))
    assert judgement == Judgement(True, f"image verifier directory {tmp_path / 'absent'} does not exist")


def test_an_empty_directory_lets_every_image_in(tmp_path: Path) -> None:
    assert verify(BindirVerifier(tmp_path)) == Judgement(
        True, f"no image verifier binaries found in {tmp_path}"
    )


def test_each_verifier_gets_containerds_arguments_and_the_descriptor_on_stdin(tmp_path: Path) -> None:
    script(tmp_path, "check", 'echo "$@" > "$0.args"; cat > "$0.stdin"; echo looks fine\n')
    judgement = verify(BindirVerifier(tmp_path))
    assert judgement == Judgement(True, "check => looks fine")
    args = (tmp_path / "check.args").read_text().split()
    assert args == [
        "-name",
        "docker.io/library/busybox:latest",
        "-digest",
        DESC.digest,
        "-stdin-media-type",
        "application/vnd.oci.descriptor.v1+json",
    ]
    stdin = (tmp_path / "check.stdin").read_bytes()
    assert stdin.endswith(b"\n") and stdin.count(b"\n") == 1
    assert json.loads(stdin) == {
        "mediaType": DESC.media_type,
        "digest": DESC.digest,
        "size": 405,
        "annotations": {"org.opencontainers.image.ref.name": "latest"},
    }


def test_verifiers_run_in_name_order_and_all_must_pass(tmp_path: Path) -> None:
    log = tmp_path.parent / f"{tmp_path.name}.order"
    script(tmp_path, "b-second", f'echo b >> "{log}"; echo two\n')
    script(tmp_path, "a-first", f'echo a >> "{log}"; echo one\n')
    assert verify(BindirVerifier(tmp_path)) == Judgement(True, "a-first => one, b-second => two")
    assert log.read_text().split() == ["a", "b"]


def test_the_first_rejection_wins_with_the_exit_code_and_stdout(tmp_path: Path) -> None:
    marker = tmp_path.parent / f"{tmp_path.name}.ran"
    script(tmp_path, "1-deny", 'case "$2" in *:bad) echo "  no :bad here  "; exit 7;; esac; echo ok\n')
    script(tmp_path, "2-never", f'touch "{marker}"\n')
    judgement = verify(BindirVerifier(tmp_path), "docker.io/library/busybox:bad")
    assert judgement == Judgement(False, "verifier 1-deny rejected image (exit code 7): no :bad here")
    assert not marker.exists()
    assert verify(BindirVerifier(tmp_path)).ok


def test_stdout_past_32_kib_is_cut_and_marked(tmp_path: Path) -> None:
    script(tmp_path, "chatty", f"head -c {OUTPUT_LIMIT + 100} /dev/zero | tr '\\0' x\n")
    judgement = verify(BindirVerifier(tmp_path))
    assert judgement.reason == "chatty => " + "x" * OUTPUT_LIMIT + "(stdout truncated)"


def test_a_verifier_past_its_timeout_is_killed_with_its_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path.parent / f"{tmp_path.name}.pid"
    script(tmp_path, "slow", f'sleep 30 & echo $! > "{pidfile}"; wait\n')
    started = time.monotonic()
    with pytest.raises(
        VerifierFailed, match=r"failed to call verifier slow \(runtime 0\.\d+s\): timed out, killed"
    ):
        verify(BindirVerifier(tmp_path, timeout=0.5))
    assert time.monotonic() - started < 5
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and Path(f"/proc/{child}").exists():
        if Path(f"/proc/{child}/stat").read_text().split()[2] == "Z":
            break
        time.sleep(0.05)
    alive = Path(f"/proc/{child}").exists() and Path(f"/proc/{child}/stat").read_text().split()[2] != "Z"
    assert not alive, "the verifier's child outlived the timeout"


def test_an_entry_that_cannot_run_is_an_error_not_a_judgement(tmp_path: Path) -> None:
    (tmp_path / "not-executable").write_text("echo hi\n")
    with pytest.raises(VerifierFailed, match="failed to call verifier not-executable"):
        verify(BindirVerifier(tmp_path))


def test_a_verifier_killed_by_a_signal_is_an_error(tmp_path: Path) -> None:
    script(tmp_path, "crash", "kill -9 $$\n")
    with pytest.raises(VerifierFailed, match=r"failed to call verifier crash .*signal: kill"):
        verify(BindirVerifier(tmp_path))


def test_only_max_verifiers_entries_run(tmp_path: Path) -> None:
    script(tmp_path, "a", "echo first\n")
    script(tmp_path, "b", "exit 1\n")
    assert verify(BindirVerifier(tmp_path, max_verifiers=1)) == Judgement(True, "a => first")
    assert verify(BindirVerifier(tmp_path, max_verifiers=0)) == Judgement(True, "")
    assert not verify(BindirVerifier(tmp_path, max_verifiers=-1)).ok


def test_the_verifier_inherits_the_daemons_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CORRAL_VERIFIER_PROBE", "seen")
    script(tmp_path, "env", 'echo "$CORRAL_VERIFIER_PROBE"\n')
    assert verify(BindirVerifier(tmp_path)).reason == "env => seen"
    assert os.environ["CORRAL_VERIFIER_PROBE"] == "seen"
