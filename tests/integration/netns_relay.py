"""A TCP relay from 127.0.0.1:PORT inside a network namespace to 127.0.0.1:PORT of the host's, so
a daemon running in a test's node namespace reaches a registry the test runs on the host's loopback.

The relay process listens on a socket made while it is in the node's namespace, then returns to the
host's, where every connection it makes to the registry is created (a socket belongs to the
namespace it was made in)."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = r"""
import ctypes, os, socket, sys, threading
CLONE_NEWNET = 0x40000000
libc = ctypes.CDLL(None, use_errno=True)
netns, port = sys.argv[1], int(sys.argv[2])
host = os.open("/proc/self/ns/net", os.O_RDONLY)
node = os.open(netns, os.O_RDONLY)
assert libc.setns(node, CLONE_NEWNET) == 0, ctypes.get_errno()
listener = socket.create_server(("127.0.0.1", port))
assert libc.setns(host, CLONE_NEWNET) == 0, ctypes.get_errno()
print("ready", flush=True)

def pipe(a, b):
    try:
        while data := a.recv(65536):
            b.sendall(data)
    except OSError:
        pass
    finally:
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

while True:
    inside, _ = listener.accept()
    outside = socket.create_connection(("127.0.0.1", port))
    threading.Thread(target=pipe, args=(inside, outside), daemon=True).start()
    threading.Thread(target=pipe, args=(outside, inside), daemon=True).start()
"""


def relay_into(netns: str, port: int) -> subprocess.Popen[str]:
    """Start the relay; it answers on 127.0.0.1:``port`` in ``netns`` until killed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, netns, str(port)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        raise AssertionError(f"the relay into {netns} did not start ({proc.wait()})")
    return proc
