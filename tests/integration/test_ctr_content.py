"""The content store through the real ctr: ingest, read, labels, locks, crashes, leases and GC."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
from pathlib import Path

import anyio
import pytest
from harness import Daemon

from corral.api.client import connect
from corral.api.types.containerd.services.leases import v1 as leases_pb
from corral.kernel import InvalidArgument

MiB = 1 << 20


def blob(size: int, seed: int) -> bytes:
    block = hashlib.sha512(seed.to_bytes(8, "big")).digest() * 1024
    return (block * (size // len(block) + 1))[:size]


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def ingest(
    d: Daemon, ref: str, data: bytes, *args: str, namespace: str = "default"
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ctr", "-a", d.socket, "-n", namespace, "content", "ingest", *args, ref],
        input=data, capture_output=True, timeout=120,
    )  # type: ignore[call-overload, no-any-return]  # fmt: skip


def digests(d: Daemon, namespace: str = "default") -> list[str]:
    lines = d.ctr("content", "ls", "-q", namespace=namespace).stdout.split()
    return sorted(lines)


def get(d: Daemon, dgst: str, namespace: str = "default") -> bytes:
    return subprocess.run(
        ["ctr", "-a", d.socket, "-n", namespace, "content", "get", dgst],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout


def active_refs(d: Daemon) -> list[str]:
    return [line.split()[0] for line in d.ctr("content", "active").stdout.splitlines()[1:]]


def test_ingest_ls_get_label_rm(daemon: Daemon) -> None:
    data = blob(3 * MiB + 17, 1)
    assert ingest(daemon, "ref1", data, "--expected-digest", digest(data)).returncode == 0
    assert digests(daemon) == [digest(data)]
    assert get(daemon, digest(data)) == data
    daemon.ctr("content", "label", digest(data), "foo=bar")
    assert "foo=bar" in daemon.ctr("content", "ls").stdout
    daemon.ctr("content", "rm", digest(data))
    assert digests(daemon) == []


def test_a_failed_commit_keeps_the_bytes_for_a_commit_that_gets_it_right(
    daemon: Daemon, tmp_path: Path
) -> None:
    # As containerd: neither a wrong size nor a wrong digest loses what was written.
    data = blob(MiB, 2)
    result = ingest(daemon, "bad", data, "--expected-digest", "sha256:" + "0" * 64)
    assert result.returncode != 0
    assert b"unexpected commit digest" in result.stderr
    assert digests(daemon) == []
    assert active_refs(daemon) == ["bad"]
    # ctr resumes by seeking its stdin past what the daemon holds, so it reads a file here.
    source = tmp_path / "blob"
    source.write_bytes(data)

    def ingest_file(*args: str) -> int:
        with source.open("rb") as stdin:
            return subprocess.run(["ctr", "-a", daemon.socket, "content", "ingest", *args, "bad"],
                                  stdin=stdin, capture_output=True, timeout=60).returncode  # fmt: skip

    assert ingest_file("--expected-size", str(len(data) + 1)) != 0
    assert active_refs(daemon) == ["bad"]
    assert ingest_file("--expected-digest", digest(data)) == 0
    assert digests(daemon) == [digest(data)]
    assert active_refs(daemon) == []


def test_reingesting_an_existing_blob_succeeds(daemon: Daemon) -> None:
    data = blob(1000, 3)
    assert ingest(daemon, "a", data, "--expected-digest", digest(data)).returncode == 0
    assert ingest(daemon, "b", data, "--expected-digest", digest(data)).returncode == 0
    assert ingest(daemon, "c", data).returncode == 0
    assert digests(daemon) == [digest(data)]


def test_active_shows_a_paused_ingest_and_a_second_writer_waits_for_the_first(
    daemon: Daemon, tmp_path: Path
) -> None:
    first, second = blob(2 * MiB, 4), blob(MiB, 5)
    writer = subprocess.Popen(
        ["ctr", "-a", daemon.socket, "content", "ingest", "shared-ref"],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert writer.stdin is not None
    writer.stdin.write(first[: MiB + MiB // 2])
    writer.stdin.flush()
    deadline = time.monotonic() + 20
    while "shared-ref" not in active_refs(daemon):
        assert time.monotonic() < deadline, "the paused ingest never showed up as active"
        time.sleep(0.05)
    # The waiter does not read its input until it holds the ref, so it reads from a file.
    second_file = tmp_path / "second"
    second_file.write_bytes(second)
    with second_file.open("rb") as stdin:
        waiter = subprocess.Popen(
            ["ctr", "-a", daemon.socket, "content", "ingest", "shared-ref"],
            stdin=stdin,
            stderr=subprocess.PIPE,
        )
    time.sleep(1.0)
    assert waiter.poll() is None, "the second writer did not wait for the lock"
    writer.stdin.write(first[MiB + MiB // 2 :])
    writer.stdin.close()
    assert writer.wait(timeout=30) == 0
    assert waiter.wait(timeout=30) == 0
    assert digests(daemon) == sorted([digest(first), digest(second)])


def test_eight_concurrent_ingests_all_land_intact(daemon: Daemon) -> None:
    payloads = [blob(MiB + i * 4099, 10 + i) for i in range(8)]
    procs = [
        subprocess.Popen(
            ["ctr", "-a", daemon.socket, "content", "ingest", "--expected-digest", digest(p), f"par-{i}"],
            stdin=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for i, p in enumerate(payloads)
    ]
    for proc, data in zip(procs, payloads, strict=True):
        proc.communicate(data, timeout=60)
        assert proc.returncode == 0
    assert digests(daemon) == sorted(digest(p) for p in payloads)
    for data in payloads:
        assert get(daemon, digest(data)) == data


def test_namespaces_do_not_see_each_others_content(daemon: Daemon) -> None:
    data = blob(500, 6)
    assert ingest(daemon, "r", data, namespace="a").returncode == 0
    assert digests(daemon, "b") == []
    result = subprocess.run(
        ["ctr", "-a", daemon.socket, "-n", "b", "content", "get", digest(data)], capture_output=True
    )
    assert result.returncode != 0
    assert b"not found" in result.stderr
    assert ingest(daemon, "r", data, namespace="b").returncode == 0
    assert get(daemon, digest(data), "b") == data


def test_kill_9_mid_ingest_loses_nothing_and_the_ingest_resumes(tmp_path: Path, ctr: str) -> None:
    d = Daemon(tmp_path / "d").start()
    try:
        committed = blob(2 * MiB, 7)
        assert ingest(d, "before", committed, "--expected-digest", digest(committed)).returncode == 0
        big = blob(256 * MiB, 8)
        source = tmp_path / "big"
        source.write_bytes(big)
        with source.open("rb") as stdin:
            writer = subprocess.Popen(
                ["ctr", "-a", d.socket, "content", "ingest", "--expected-digest", digest(big), "big-ref"],
                stdin=subprocess.PIPE, stderr=subprocess.PIPE,
            )  # fmt: skip
            assert writer.stdin is not None
            writer.stdin.write(stdin.read(100 * MiB))
            writer.stdin.flush()
            deadline = time.monotonic() + 30
            while True:
                rows = [r.split() for r in d.ctr("content", "active").stdout.splitlines()[1:]]
                if rows:
                    break
                assert time.monotonic() < deadline
                time.sleep(0.05)
            assert d.proc is not None
            os.kill(d.proc.pid, signal.SIGKILL)
            d.proc.wait()
            writer.kill()
            writer.wait()
        d.start()
        assert digests(d) == [digest(committed)]
        assert get(d, digest(committed)) == committed
        assert active_refs(d) == ["big-ref"]
        with source.open("rb") as stdin:
            result = subprocess.run(
                ["ctr", "-a", d.socket, "content", "ingest", "--expected-digest", digest(big), "big-ref"],
                stdin=stdin, capture_output=True, timeout=300,
            )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert digests(d) == sorted([digest(committed), digest(big)])
        assert hashlib.sha256(get(d, digest(big))).hexdigest() == digest(big).removeprefix("sha256:")
    finally:
        d.stop()


async def _add_to_lease(address: str, lease: str, dgst: str) -> None:
    async with connect(address) as client:
        stub = leases_pb.LeasesStub(client.channel, metadata={"containerd-namespace": "default"})
        await stub.add_resource(
            leases_pb.AddResourceRequest(id=lease, resource=leases_pb.Resource(id=dgst, type="content"))
        )


def test_lease_keeps_a_blob_until_deleted_with_sync(daemon: Daemon) -> None:
    held, loose = blob(1000, 20), blob(1000, 21)
    daemon.ctr("leases", "create", "--id", "hold")
    assert "hold" in daemon.ctr("leases", "ls").stdout
    assert ingest(daemon, "held", held).returncode == 0
    anyio.run(_add_to_lease, daemon.socket, "hold", digest(held))
    assert ingest(daemon, "loose", loose).returncode == 0
    daemon.ctr("leases", "create", "--id", "trigger")
    daemon.ctr("leases", "rm", "--sync", "trigger")
    assert digests(daemon) == [digest(held)]
    daemon.ctr("leases", "rm", "--sync", "hold")
    assert digests(daemon) == []
    assert daemon.ctr("leases", "ls", "-q").stdout.split() == []


def test_content_referenced_by_a_gc_ref_label_survives(daemon: Daemon) -> None:
    parent, child, orphan = blob(100, 30), blob(100, 31), blob(100, 32)
    for ref, data in (("p", parent), ("c", child), ("o", orphan)):
        assert ingest(daemon, ref, data).returncode == 0
    daemon.ctr("content", "label", digest(parent), "containerd.io/gc.root=now",
               f"containerd.io/gc.ref.content.l.0={digest(child)}")  # fmt: skip
    daemon.ctr("leases", "create", "--id", "trigger")
    daemon.ctr("leases", "rm", "--sync", "trigger")
    assert digests(daemon) == sorted([digest(parent), digest(child)])


def test_namespace_holding_blobs_cannot_be_removed_but_leases_go_with_it(daemon: Daemon) -> None:
    data = blob(100, 9)
    ingest(daemon, "r", data, "--expected-digest", digest(data), namespace="busy")
    result = daemon.ctr("namespaces", "rm", "busy", check=False)
    assert 'namespace "busy" must be empty, but it still has blobs: failed precondition' in result.stderr
    daemon.ctr("content", "rm", digest(data), namespace="busy")
    # As containerd: leases do not keep a namespace alive.
    daemon.ctr("leases", "create", "--id", "x", namespace="busy")
    daemon.ctr("namespaces", "rm", "busy")
    assert "busy" not in daemon.ctr("namespaces", "ls", "-q").stdout.split()
    assert daemon.ctr("leases", "ls", "-q", namespace="busy").stdout.split() == []


MALFORMED = [
    "abc",
    "sha256:xyz",
    "sha256:" + "0" * 63,
    "sha256:" + "A" * 64,
    "md5:" + "0" * 32,
    "sha256:../..",
]


@pytest.mark.parametrize("bad", MALFORMED)
def test_malformed_digest_is_invalid_argument_as_containerd_says(daemon: Daemon, bad: str) -> None:
    # ctr refuses these itself; other clients reach the daemon, which answers as containerd's.
    async def probe() -> list[str]:
        messages = []
        async with connect(daemon.socket) as client:
            calls = [
                client.content_info(bad),
                client.delete_content(bad),
                anext(client.read_content(bad)),
                client.label_content(bad, {"k": "v"}),
            ]
            for call in calls:
                with pytest.raises(InvalidArgument) as caught:
                    await call
                messages.append(str(caught.value))
            lease = await client.create_lease()
            with pytest.raises(InvalidArgument, match="invalid content resource id"):
                await client.call(
                    client.leases.add_resource(
                        leases_pb.AddResourceRequest(
                            id=lease.id, resource=leases_pb.Resource(id=bad, type="content")
                        )
                    )
                )
        return messages

    info, delete, read, label = anyio.run(probe)
    assert info == label == f'"{bad}" failed validation: invalid argument'
    assert delete.endswith(": invalid argument") and "digest" in delete
    assert read.startswith(f"{bad}: ") and read.endswith(": invalid argument")
