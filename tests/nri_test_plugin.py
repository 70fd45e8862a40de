#!/usr/bin/env python3
"""A small NRI plugin process, written from NRI's protocol definition and nothing of corral's own
NRI or ttrpc code: its framing is containerd/nri's (pkg/net/multiplex: uint32 BE connection id,
uint32 BE length, payload; connection 1 carries the runtime's calls to the plugin, 2 the plugin's
to the runtime) around ttrpc's (uint32 BE length, uint32 BE stream id, type, flags; a Request or
Response message). Only the generated protobuf message classes are shared.

It connects to the NRI socket (``--socket``) or uses the pre-connected descriptor NRI passes in
``NRI_PLUGIN_SOCKET``, registers, subscribes to container events and answers CreateContainer with
the env, annotations and mounts it was told to add. ``--behaviour hang`` never answers
CreateContainer, ``crash`` exits there. Every request received is appended to ``--log`` as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import sys
import time

from corral.api.types.nri.pkg.api import v1alpha1 as nri
from corral.api.types.ttrpc import Request, Response

MUX_HEADER = struct.Struct(">II")
TTRPC_HEADER = struct.Struct(">IIBB")
PLUGIN_CONN, RUNTIME_CONN = 1, 2
REQUEST, RESPONSE = 1, 2
PLUGIN = "nri.pkg.api.v1alpha1.Plugin"
RUNTIME = "nri.pkg.api.v1alpha1.Runtime"

EVENTS = {
    "run-pod": nri.Event.RUN_POD_SANDBOX,
    "stop-pod": nri.Event.STOP_POD_SANDBOX,
    "remove-pod": nri.Event.REMOVE_POD_SANDBOX,
    "create": nri.Event.CREATE_CONTAINER,
    "post-create": nri.Event.POST_CREATE_CONTAINER,
    "start": nri.Event.START_CONTAINER,
    "post-start": nri.Event.POST_START_CONTAINER,
    "stop": nri.Event.STOP_CONTAINER,
    "remove": nri.Event.REMOVE_CONTAINER,
}


class Wire:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.streams = {PLUGIN_CONN: b"", RUNTIME_CONN: b""}

    def send(self, conn: int, stream: int, kind: int, payload: bytes) -> None:
        message = TTRPC_HEADER.pack(len(payload), stream, kind, 0) + payload
        # Frames of at most 4 KiB, as a Go writer with its 4 KiB buffer sends them.
        for start in range(0, len(message), 4096):
            piece = message[start : start + 4096]
            self.sock.sendall(MUX_HEADER.pack(conn, len(piece)) + piece)

    def messages(self) -> list[tuple[int, int, int, bytes]]:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError
        self.buffer += data
        while len(self.buffer) >= MUX_HEADER.size:
            conn, length = MUX_HEADER.unpack_from(self.buffer)
            if len(self.buffer) < MUX_HEADER.size + length:
                break
            self.streams[conn] = self.streams.get(conn, b"") + self.buffer[8 : 8 + length]
            self.buffer = self.buffer[8 + length :]
        out = []
        for conn, stream in self.streams.items():
            while len(stream) >= TTRPC_HEADER.size:
                length, stream_id, kind, _flags = TTRPC_HEADER.unpack_from(stream)
                if len(stream) < TTRPC_HEADER.size + length:
                    break
                out.append((conn, stream_id, kind, stream[10 : 10 + length]))
                stream = stream[10 + length :]
            self.streams[conn] = stream
        return out


def adjustment(args: argparse.Namespace) -> nri.ContainerAdjustment:
    adjust = nri.ContainerAdjustment()
    for item in args.env:
        key, _, value = item.partition("=")
        adjust.env.append(nri.KeyValue(key=key, value=value))
    for item in args.annotation:
        key, _, value = item.partition("=")
        adjust.annotations[key] = value
    for item in args.mount:
        source, _, destination = item.partition(":")
        adjust.mounts.append(
            nri.Mount(destination=destination, type="bind", source=source, options=["rbind", "ro"])
        )
    return adjust


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--socket", default="")
    parser.add_argument("--name", default=os.environ.get("NRI_PLUGIN_NAME", "testplugin"))
    parser.add_argument("--index", default=os.environ.get("NRI_PLUGIN_IDX", "10"))
    parser.add_argument("--env", action="append", default=[])
    parser.add_argument("--annotation", action="append", default=[])
    parser.add_argument("--mount", action="append", default=[])
    parser.add_argument("--events", default="create,post-create,start,post-start,stop,remove")
    parser.add_argument("--behaviour", default="normal", choices=("normal", "hang", "crash"))
    parser.add_argument("--log", default="")
    parser.add_argument("--update-on-start", default="", metavar="ID=MEMORY_LIMIT")
    args = parser.parse_args()

    if args.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(args.socket)
    else:
        sock = socket.socket(fileno=int(os.environ["NRI_PLUGIN_SOCKET"]))
    wire = Wire(sock)

    def record(entry: dict[str, object]) -> None:
        if args.log:
            with open(args.log, "a") as f:
                f.write(json.dumps(entry) + "\n")

    register = nri.RegisterPluginRequest(plugin_name=args.name, plugin_idx=args.index)
    request = Request(service=RUNTIME, method="RegisterPlugin", payload=bytes(register))
    wire.send(RUNTIME_CONN, 1, REQUEST, bytes(request))
    next_stream = 3
    mask = 0
    for name in args.events.split(","):
        mask |= 1 << (EVENTS[name] - 1)

    while True:
        try:
            messages = wire.messages()
        except (EOFError, OSError):
            return
        for conn, stream_id, kind, payload in messages:
            if conn == RUNTIME_CONN and kind == RESPONSE:
                response = Response.parse(payload)
                ok = response.status is None or response.status.code == 0
                if stream_id == 1:
                    record({"registered": ok})
                else:
                    failed = nri.UpdateContainersResponse.parse(response.payload).failed
                    record({"updated": ok, "failed": [u.container_id for u in failed]})
                continue
            if conn != PLUGIN_CONN or kind != REQUEST:
                continue
            call = Request.parse(payload)
            reply: bytes = b""
            entry: dict[str, object] = {"method": call.method}
            if call.method == "Configure":
                configure = nri.ConfigureRequest.parse(call.payload)
                entry.update(runtime=configure.runtime_name, config=configure.config)
                reply = bytes(nri.ConfigureResponse(events=mask))
            elif call.method == "Synchronize":
                sync = nri.SynchronizeRequest.parse(call.payload)
                entry.update(containers=[c.id for c in sync.containers], more=sync.more)
                reply = bytes(nri.SynchronizeResponse(more=sync.more))
            elif call.method == "CreateContainer":
                create = nri.CreateContainerRequest.parse(call.payload)
                assert create.container is not None
                entry.update(container=create.container.id, env=list(create.container.env))
                if create.pod is not None:
                    entry.update(pod=create.pod.id, pod_name=create.pod.name)
                record(entry)
                if args.behaviour == "hang":
                    time.sleep(3600)
                if args.behaviour == "crash":
                    os._exit(3)
                reply = bytes(nri.CreateContainerResponse(adjust=adjustment(args)))
                entry = {}
            elif call.method == "StartContainer" and args.update_on_start:
                target, _, limit = args.update_on_start.partition("=")
                memory = nri.LinuxMemory(limit=nri.OptionalInt64(value=int(limit)))
                update = nri.ContainerUpdate(
                    container_id=target,
                    linux=nri.LinuxContainerUpdate(resources=nri.LinuxResources(memory=memory)),
                )
                unsolicited = Request(
                    service=RUNTIME,
                    method="UpdateContainers",
                    payload=bytes(nri.UpdateContainersRequest(update=[update])),
                )
                wire.send(RUNTIME_CONN, next_stream, REQUEST, bytes(unsolicited))
                next_stream += 2
            elif call.method in ("StopContainer",):
                reply = bytes(nri.StopContainerResponse())
            elif call.method == "Shutdown":
                return
            if entry:
                if call.method not in ("Configure", "Synchronize"):
                    event = getattr(nri, f"{call.method}Request").parse(call.payload)
                    container = getattr(event, "container", None)
                    entry["container"] = container.id if container else ""
                    pod = getattr(event, "pod", None)
                    if pod is not None:
                        entry.update(pod=pod.id, pod_name=pod.name, pod_uid=pod.uid)
                record(entry)
            wire.send(PLUGIN_CONN, stream_id, RESPONSE, bytes(Response(payload=reply)))


if __name__ == "__main__":
    sys.exit(main())
