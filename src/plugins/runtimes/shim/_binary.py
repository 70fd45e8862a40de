"""Running a shim binary: ``start`` (which forks the shim daemon and prints its address) and
``delete`` (the cleanup after a shim is gone), with the arguments and environment containerd
gives them (core/runtime/v2/shim/util.go, binary.go).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import anyio

from corral.kernel import CorralError, FailedPrecondition, InvalidArgument, NotFound, Unimplemented
from corral.plugins.runtimes.shim._bundle import BINARY_FILE, BOOTSTRAP_FILE, Bundle

START_TIMEOUT = 60.0
DELETE_TIMEOUT = 10.0


def shim_call_error(message: str) -> CorralError:
    """A failed shim binary, as containerd's shimCallError: kind unknown, the message as is."""
    err = CorralError.__new__(CorralError)
    Exception.__init__(err, message)
    err.detail = message
    return err


def binary_name(runtime: str) -> str:
    """``io.containerd.runc.v2`` → ``containerd-shim-runc-v2`` (shim/util.go BinaryName)."""
    parts = runtime.split(".")
    if len(parts) < 2 or not all(parts):
        return ""
    return f"containerd-shim-{parts[-2]}-{parts[-1]}"


def resolve_runtime(runtime: str, search_path: str | None = None) -> str:
    """The shim binary for a runtime name, or an absolute path as given (it must exist)."""
    if not runtime:
        raise InvalidArgument("no runtime name")
    if os.path.isabs(runtime):
        if not os.path.exists(runtime):
            raise NotFound(f"invalid custom binary path: stat {runtime}: no such file or directory")
        return runtime
    invalid = (
        f"invalid runtime name {runtime}, correct runtime name should be either format like "
        "`io.containerd.runc.v2` or a full path to the binary"
    )
    if "/" in runtime:
        raise InvalidArgument(invalid)
    name = binary_name(runtime)
    if not name:
        raise InvalidArgument(invalid)
    # Beside the daemon's own executable first, as containerd looks beside its binary.
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name, path=search_path)
    if found is None:
        raise NotFound(f"runtime {runtime!r} binary not installed {name!r}: file does not exist")
    return found


@dataclass(frozen=True)
class ShimBinary:
    """One task's shim binary, with what it needs to find the daemon."""

    path: str
    bundle: Bundle
    grpc_address: str
    ttrpc_address: str
    debug: bool = False
    env: Mapping[str, str] | None = None

    def _args(self, action: str, *, with_bundle: bool) -> list[str]:
        args = [
            self.path,
            "-namespace",
            self.bundle.namespace,
            "-address",
            self.grpc_address,
            "-publish-binary",
            sys.argv[0] or "corrald",
            "-id",
            self.bundle.id,
        ]
        if with_bundle:
            args += ["-bundle", str(self.bundle.path)]
        if self.debug:
            args.append("-debug")
        return [*args, action]

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "GOMAXPROCS": "2",
                "TTRPC_ADDRESS": self.ttrpc_address,
                "GRPC_ADDRESS": self.grpc_address,
                "NAMESPACE": self.bundle.namespace,
                "MAX_SHIM_VERSION": "2",
            }
        )
        if self.env:
            env.update(self.env)
        return env

    async def start(self, options: bytes) -> tuple[str, str, int]:
        """Run ``start``; the shim's (protocol, address, version) from what it printed."""
        argv = self._args("start", with_bundle=False)
        with anyio.move_on_after(START_TIMEOUT) as scope:
            result = await anyio.run_process(
                argv,
                input=options,
                cwd=str(self.bundle.path),
                env=self._environment(),
                check=False,
                stderr=-2,  # STDOUT: containerd reads the combined output
            )
        if scope.cancelled_caught:
            raise FailedPrecondition(f"{self.path} start: shim killed after {START_TIMEOUT:g}s")
        out = result.stdout
        if result.returncode != 0:
            text = out.decode(errors="replace").strip()
            raise FailedPrecondition(
                f"{text}: exit status {result.returncode}"
                if text
                else f"{self.path} start: exit status {result.returncode}"
            )
        self.bundle.write(BINARY_FILE, self.path)
        protocol, address, version = parse_start_output(out)
        self.bundle.write(
            BOOTSTRAP_FILE, json.dumps({"version": version, "address": address, "protocol": protocol})
        )
        return protocol, address, version

    async def delete(self) -> bytes:
        """Run ``delete`` from the bundle: the shim's marshalled DeleteResponse on stdout."""
        argv = self._args("delete", with_bundle=True)
        cwd = str(self.bundle.path) if self.bundle.path.is_dir() else None
        with anyio.move_on_after(DELETE_TIMEOUT) as scope:
            result = await anyio.run_process(argv, cwd=cwd, env=self._environment(), check=False)
        if scope.cancelled_caught:
            raise shim_call_error(f"shim killed after {DELETE_TIMEOUT:g}s")
        if result.returncode != 0:
            text = result.stderr.decode(errors="replace").strip()
            raise shim_call_error(f"{text}: exit status {result.returncode}")
        return result.stdout


def parse_start_output(out: bytes) -> tuple[str, str, int]:
    """containerd's parseStartResponse for v2 shims: JSON bootstrap params or a bare address."""
    text = out.decode(errors="replace").strip()
    try:
        params = json.loads(text)
    except ValueError:
        params = None
    if isinstance(params, dict) and int(params.get("version", 0)) >= 2:
        version = int(params["version"])
        if version > 2:
            raise Unimplemented(f"unsupported shim version ({version})")
        return str(params.get("protocol", "ttrpc")), str(params.get("address", "")), version
    # A bare address: version 2 over ttrpc. The last line, should a shim print more.
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise FailedPrecondition("shim start printed no address")
    return "ttrpc", lines[-1].strip(), 2


def read_bootstrap(bundle: Bundle) -> tuple[str, str, int] | None:
    """What ``start`` printed, from bootstrap.json or (as older daemons left it) ``address``."""
    text = bundle.read(BOOTSTRAP_FILE)
    if text is not None:
        try:
            params = json.loads(text)
            return str(params["protocol"]), str(params["address"]), int(params["version"])
        except (ValueError, KeyError, TypeError):
            return None
    address = bundle.read("address")
    if address:
        return "ttrpc", address.strip(), 2
    return None
