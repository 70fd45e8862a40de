"""The real `ctr events` against corrald: namespace events, filters, and shutdown with a subscriber."""

from __future__ import annotations

import hashlib
import json
import queue
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from grpclib.client import Channel
from harness import Daemon

from corral.api.client import connect
from corral.api.edge import NAMESPACE_HEADER
from corral.api.types.containerd import events as pb_events
from corral.api.types.containerd.services.events import v1 as pb
from corral.api.types.google import protobuf

PROBE_NAMESPACE = "probe"


@dataclass(frozen=True)
class Printed:
    """One line of `ctr events`: ``<go time: 4 words> <namespace> <topic> <json>``."""

    timestamp: str
    namespace: str
    topic: str
    payload: Any

    @classmethod
    def parse(cls, line: str) -> Printed:
        date, clock, offset, zone, namespace, topic, payload = line.split(" ", 6)
        return cls(" ".join((date, clock, offset, zone)), namespace, topic, json.loads(payload))


class EventsWatcher:
    """`ctr events` in the background; its lines are read on a thread so reads can time out."""

    def __init__(self, daemon: Daemon, filters: Sequence[str]) -> None:
        self.daemon = daemon
        self.proc = subprocess.Popen(
            ["ctr", "-a", daemon.socket, "events", *filters],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def next(self, timeout: float = 10.0) -> Printed:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"ctr events printed nothing within {timeout}s") from None
        if line is None:
            raise AssertionError(f"ctr events exited {self.proc.wait()}: {self.stderr()}")
        return Printed.parse(line)

    def next_real(self, timeout: float = 10.0) -> Printed:
        """The next event that is not a readiness probe."""
        while True:
            printed = self.next(timeout)
            if printed.namespace != PROBE_NAMESPACE:
                return printed

    def wait_subscribed(self, timeout: float = 10.0) -> None:
        """Publish probes until ctr prints one: ctr shows no sign of being subscribed before its first event."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            anyio.run(publish_probe, self.daemon.socket)
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"ctr events exited {self.proc.wait()}: {self.stderr()}")
            if Printed.parse(line).namespace == PROBE_NAMESPACE:
                self._drain_probes()
                return
            raise AssertionError(f"unexpected event before subscribing finished: {line}")
        raise AssertionError(f"ctr events did not subscribe within {timeout}s: {self.stderr()}")

    def _drain_probes(self) -> None:
        # Probes published while the first one was in flight arrive shortly after it.
        time.sleep(0.3)
        while True:
            try:
                line = self.lines.get_nowait()
            except queue.Empty:
                return
            if line is None or Printed.parse(line).namespace != PROBE_NAMESPACE:
                raise AssertionError(f"unexpected output while draining probes: {line}")

    def stderr(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return ""
        return self.proc.stderr.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.reader.join(timeout=5)


async def publish_probe(socket: str) -> None:
    channel = Channel(path=socket)
    try:
        stub = pb.EventsStub(channel, metadata={NAMESPACE_HEADER: PROBE_NAMESPACE})
        event = protobuf.Any(
            type_url="containerd.events.NamespaceCreate", value=bytes(pb_events.NamespaceCreate(name="probe"))
        )
        await stub.publish(pb.PublishRequest(topic="/probe", event=event))
    finally:
        channel.close()


@contextmanager
def ctr_events(daemon: Daemon, *filters: str) -> Iterator[EventsWatcher]:
    watcher = EventsWatcher(daemon, filters)
    try:
        watcher.wait_subscribed()
        yield watcher
    finally:
        watcher.stop()


def test_ctr_events_shows_namespace_create_label_and_remove(daemon: Daemon) -> None:
    with ctr_events(daemon) as events:
        daemon.ctr("namespaces", "create", "ns1", "a=b")
        daemon.ctr("namespaces", "label", "ns1", "c=d")
        daemon.ctr("namespaces", "rm", "ns1")
        printed = [events.next_real() for _ in range(3)]
    assert [(p.namespace, p.topic, p.payload) for p in printed] == [
        ("ns1", "/namespaces/create", {"name": "ns1", "labels": {"a": "b"}}),
        ("ns1", "/namespaces/update", {"name": "ns1", "labels": {"c": "d"}}),
        ("ns1", "/namespaces/delete", {"name": "ns1"}),
    ]
    for p in printed:
        assert p.timestamp.endswith(" +0000 UTC")


def test_ctr_events_without_filters_crosses_namespaces(daemon: Daemon) -> None:
    with ctr_events(daemon) as events:
        daemon.ctr("namespaces", "create", "one", namespace="default")
        daemon.ctr("namespaces", "create", "two", namespace="other")
        seen = {events.next_real().namespace, events.next_real().namespace}
    assert seen == {"one", "two"}


def test_ctr_events_filters_are_ored_and_applied_by_the_daemon(daemon: Daemon) -> None:
    # Topics hold '/', which the filter language reads as a quote, so they are quoted.
    filters = (f"namespace=={PROBE_NAMESPACE}", 'topic=="/namespaces/delete"', "event.name==keep")
    with ctr_events(daemon, *filters) as events:
        daemon.ctr("namespaces", "create", "skipped")
        daemon.ctr("namespaces", "create", "keep", "x=y")
        daemon.ctr("namespaces", "rm", "skipped")
        first, second = events.next_real(), events.next_real()
        # Nothing else was selected; a final delete proves the stream is still live and ordered.
        daemon.ctr("namespaces", "rm", "keep")
        third = events.next_real()
    assert (first.topic, first.payload) == ("/namespaces/create", {"name": "keep", "labels": {"x": "y"}})
    assert (second.namespace, second.topic) == ("skipped", "/namespaces/delete")
    assert (third.namespace, third.topic) == ("keep", "/namespaces/delete")


def test_a_bad_filter_makes_ctr_events_fail_with_invalid_argument(daemon: Daemon) -> None:
    result = subprocess.run(
        ["ctr", "-a", daemon.socket, "events", "topic=="], capture_output=True, text=True, timeout=30
    )
    assert result.returncode != 0
    assert "InvalidArgument" in result.stderr and "expected value or quoted" in result.stderr


def test_corrald_stops_promptly_with_a_subscriber_attached(daemon: Daemon) -> None:
    watcher = EventsWatcher(daemon, ())
    try:
        watcher.wait_subscribed()
        started = time.monotonic()
        assert daemon.stop() == 0
        assert time.monotonic() - started < 10
        assert watcher.proc.wait(timeout=10) != 0
    finally:
        watcher.stop()


def test_a_layer_made_by_the_differ_emits_content_create_like_an_ingest(
    daemon: Daemon, tmp_path: Path
) -> None:
    """Events come from the store that makes the change, so the differ's layer is announced too.

    (ctr 1.6 has no ContentCreate message and prints a warning instead of these envelopes, for the
    layer and the ingest alike; the envelopes are read here with corral's client.)
    """
    s = ("snapshots", "--snapshotter", "native")
    ingested = b"ingested bytes"

    async def scenario() -> tuple[list[tuple[str, str, str]], str, int]:
        async with connect(daemon.socket) as client:
            seen: list[tuple[str, str, str]] = []
            async with anyio.create_task_group() as tg:
                ready = anyio.Event()

                async def watch() -> None:
                    stream = client.subscribe(['topic=="/content/create"', 'topic=="/probe"'])
                    async for envelope in stream:
                        if envelope.topic == "/probe":
                            ready.set()
                            continue
                        assert envelope.event is not None
                        decoded = pb_events.ContentCreate.parse(envelope.event.value)
                        seen.append((envelope.namespace, envelope.event.type_url, decoded.digest))
                        if len(seen) == 2:
                            return

                tg.start_soon(watch)
                while not ready.is_set():
                    await publish_probe(daemon.socket)
                    with anyio.move_on_after(0.2):
                        await ready.wait()
                digest, size = await anyio.to_thread.run_sync(make_layer_and_ingest)
        return seen, digest, size

    def make_layer_and_ingest() -> tuple[str, int]:
        daemon.ctr(*s, "prepare", "base")
        subprocess.run(daemon.ctr(*s, "mounts", str(tmp_path), "base").stdout.split(), check=True)
        try:
            (tmp_path / "hello").write_text("hi")
        finally:
            subprocess.run(["umount", str(tmp_path)], check=True)
        made = subprocess.run(["ctr", "-a", daemon.socket, *s, "diff", "--keep", "base"], capture_output=True)
        assert made.returncode == 0, made.stderr
        subprocess.run(["ctr", "-a", daemon.socket, "content", "ingest", "r"], input=ingested, check=True)
        return "sha256:" + hashlib.sha256(made.stdout).hexdigest(), len(made.stdout)

    seen, layer, _ = anyio.run(scenario)
    assert seen == [
        ("default", "containerd.events.ContentCreate", layer),
        ("default", "containerd.events.ContentCreate", "sha256:" + hashlib.sha256(ingested).hexdigest()),
    ]
