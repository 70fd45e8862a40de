"""Pull with unpack, and push, of a large multi-layer image against a loopback registry.

``python -m benchmarks.registry_pull [--runs N] [--layers L] [--files F] [--file-size B]``
generates an image (L layers of F files each, half of every file random bytes so gzip cannot
shrink it away), starts Debian's ``docker-registry`` on 127.0.0.1 and fills it with ``skopeo``,
then times, each in a fresh daemon, kinds alternating run by run:

- ``ctr images pull --plain-http`` of containerd 1.6 (a client-side pull: content, images,
  leases and diff services) against corrald and against Debian's containerd 1.6;
- ``ctr images pull --plain-http`` of containerd 2.1 (a server-side pull through the Transfer
  service, unpacking while it downloads) against corrald and against containerd 2.1, when the
  2.1 package is unpacked in ``.cache/`` (as the tests fetch it);
- ``ctr images push --plain-http`` of the pulled image to a fresh, empty registry, by each ctr.

It prints medians and corral / containerd. It measures; it never asserts, and the test suite
never runs it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.daemons import (
    ContainerdDaemon,
    CorralDaemon,
    Ctr,
    Daemon,
    _toml_str,
    corrald_binary,
    ctr_binary,
)
from corral.plugins.images.build import LayerEntry, build_image, build_layer

CACHE = Path(__file__).resolve().parents[1] / ".cache" / "containerd-2.1.9" / "usr" / "bin"


class Containerd2Daemon(Daemon):
    kind = "containerd"
    label = "containerd 2.1"
    socket_name = "containerd.sock"

    def write_config(self) -> None:
        self.config_path.write_text(
            "\n".join(
                [
                    "version = 3",
                    'disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images",',
                    '  "io.containerd.cri.v1.runtime", "io.containerd.nri.v1.nri"]',
                    "[grpc]",
                    f"  address = {_toml_str(self.socket)}",
                    "[ttrpc]",
                    f"  address = {_toml_str(self.state / (self.socket_name + '.ttrpc'))}",
                    "[debug]",
                    '  address = ""',
                    "[metrics]",
                    '  address = ""',
                    '[plugins."io.containerd.internal.v1.opt"]',
                    f"  path = {_toml_str(self.root / 'opt')}",
                    "",
                ]
            )
        )


def make_layout(base: Path, layers: int, files: int, size: int) -> tuple[Path, int, int]:
    """An OCI layout of the generated image; (layout, uncompressed bytes, compressed bytes)."""
    built = []
    raw = 0
    for n in range(layers):
        entries = [LayerEntry.directory(f"layer{n}", 0o755)]
        for i in range(files):
            half = size // 2
            entries.append(
                LayerEntry.file(f"layer{n}/d{i // 500}/f{i}", os.urandom(half) + bytes(size - half))
            )
        dirs = {f"layer{n}/d{i // 500}" for i in range(files)}
        entries[1:1] = [LayerEntry.directory(d, 0o755) for d in sorted(dirs)]
        layer = build_layer(entries)
        raw += len(layer.tar)
        built.append(layer)
    image = build_image(built, cmd=["/bin/true"])
    layout = image.write_oci_layout(base / "layout", ["latest"])
    return layout, raw, sum(layer.size for layer in image.manifest.layers)


class Registry:
    def __init__(self, base: Path) -> None:
        base.mkdir(parents=True)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.host = f"127.0.0.1:{self.port}"
        config = base / "config.yml"
        config.write_text(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n"
            f"storage:\n  filesystem:\n    rootdirectory: {base / 'storage'}\n"
            f"http:\n  addr: {self.host}\n  secret: bench-{self.port}\n"
        )
        self.proc = subprocess.Popen(
            ["docker-registry", "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("docker-registry did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def timed(argv: list[str], timeout: float = 1800) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()[-2000:]}")
    return seconds


Spawn = Callable[[Path], Daemon]


def measure(
    work: Path, ref: str, ctr: Ctr, kinds: dict[str, Spawn], runs: int, tag: str
) -> dict[str, dict[str, list[float]]]:
    """Per kind: pull seconds and push seconds, each run in a fresh daemon and a fresh push registry."""
    out: dict[str, dict[str, list[float]]] = {k: {"pull": [], "push": []} for k in kinds}
    order = list(kinds)
    for run in range(runs):
        for kind in order if run % 2 == 0 else reversed(order):
            with kinds[kind](work / f"{tag}-{kind}-{run}") as daemon:
                address = daemon.socket
                out[kind]["pull"].append(timed(ctr.argv(address, "images", "pull", "--plain-http", ref)))
                target = Registry(work / f"{tag}-push-{kind}-{run}")
                try:
                    dest = f"{target.host}/bench/pushed:1"
                    ctr.check(address, "images", "tag", ref, dest)
                    out[kind]["push"].append(timed(ctr.argv(address, "images", "push", "--plain-http", dest)))
                finally:
                    target.stop()
            print(
                f"  {tag} {kind} run {run + 1}: pull {out[kind]['pull'][-1]:.1f}s push {out[kind]['push'][-1]:.1f}s"
            )
            shutil.rmtree(work / f"{tag}-{kind}-{run}", ignore_errors=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--files", type=int, default=5000, help="files per layer")
    parser.add_argument("--file-size", type=int, default=8192)
    parser.add_argument("--skip-16", action="store_true", help="only containerd 2.1's ctr")
    args = parser.parse_args()
    ctr16 = ctr_binary()
    corrald = corrald_binary()
    with tempfile.TemporaryDirectory(prefix="corral-pull-bench-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        layout, raw, packed = make_layout(work, args.layers, args.files, args.file_size)
        print(
            f"image: {args.layers} layers, {args.layers * args.files} files, "
            f"{raw / 2**20:.0f} MiB of tar, {packed / 2**20:.0f} MiB gzipped ({time.perf_counter() - t0:.0f}s to make)"
        )
        registry = Registry(work / "registry")
        try:
            subprocess.run(
                ["skopeo", "copy", "--dest-tls-verify=false", f"oci:{layout}:latest",
                 f"docker://{registry.host}/bench/big:1"],
                check=True, capture_output=True,
            )  # fmt: skip
            ref = f"{registry.host}/bench/big:1"
            results: list[tuple[str, dict[str, dict[str, list[float]]]]] = []
            if ctr16 and not args.skip_16:
                c16 = Ctr(ctr16)
                kinds16: dict[str, Spawn] = {
                    "corral": lambda d: CorralDaemon(corrald, d, c16),
                    "containerd": lambda d: ContainerdDaemon("/usr/bin/containerd", d, c16),
                }
                results.append(("ctr 1.6 (client side)", measure(work, ref, c16, kinds16, args.runs, "c16")))
            if (CACHE / "ctr").exists():
                c21 = Ctr(str(CACHE / "ctr"))
                kinds21: dict[str, Spawn] = {
                    "corral": lambda d: CorralDaemon(corrald, d, c21),
                    "containerd": lambda d: Containerd2Daemon(str(CACHE / "containerd"), d, c21),
                }
                results.append(
                    ("ctr 2.1 (transfer service)", measure(work, ref, c21, kinds21, args.runs, "c21"))
                )
            else:
                print(f"no containerd 2.1 in {CACHE}: the transfer rows are left out")
        finally:
            registry.stop()
    print()
    print("| Measurement | corral | containerd | corral / containerd |")
    print("|---|---:|---:|---:|")
    for label, found in results:
        for op in ("pull", "push"):
            ours = statistics.median(found["corral"][op])
            theirs = statistics.median(found["containerd"][op])
            what = "pull with unpack" if op == "pull" else "push to an empty registry"
            row = f"| {label}: {what} | {ours:,.1f} s | {theirs:,.1f} s | {ours / theirs:.2f}\u00d7 |"
            print(row)


if __name__ == "__main__":
    main()
