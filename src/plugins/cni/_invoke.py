"""Running one CNI plugin binary: the environment and stdin contract, its result or its error."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from corral.kernel import FailedPrecondition, NotFound

PLUGIN_TIMEOUT = 60.0


@dataclass(frozen=True)
class Invocation:
    """The CNI_* variables of one call."""

    command: str
    container_id: str
    netns: str
    ifname: str
    args: Sequence[tuple[str, str]] = ()
    bin_dirs: Sequence[str] = ()

    def environ(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
        env.update(
            CNI_COMMAND=self.command,
            CNI_CONTAINERID=self.container_id,
            CNI_NETNS=self.netns,
            CNI_IFNAME=self.ifname,
            CNI_ARGS=";".join(f"{k}={v}" for k, v in self.args),
            CNI_PATH=os.pathsep.join(self.bin_dirs),
        )
        return env


def find_plugin(kind: str, bin_dirs: Sequence[str]) -> Path:
    """The plugin binary named ``kind`` in the first of ``bin_dirs`` that has it (libcni's FindInPath)."""
    if not kind or "/" in kind:
        raise NotFound(f"invalid plugin name {kind!r}")
    for d in bin_dirs:
        path = Path(d) / kind
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise NotFound(f'failed to find plugin "{kind}" in path {list(bin_dirs)}')


async def run_plugin(
    kind: str, network: str, invocation: Invocation, stdin: bytes
) -> Mapping[str, Any] | None:
    """Run the plugin; its JSON result for ADD (None for DEL and CHECK). A failure is
    FailedPrecondition in go-cni's words: ``plugin type="bridge" name="net" failed (add): …``."""
    path = find_plugin(kind, invocation.bin_dirs)
    verb = invocation.command.lower()
    with anyio.fail_after(PLUGIN_TIMEOUT):
        done = await anyio.run_process([str(path)], input=stdin, env=invocation.environ(), check=False)
    out = done.stdout.decode(errors="replace")
    if done.returncode != 0:
        message = out.strip() or done.stderr.decode(errors="replace").strip()
        try:
            err = json.loads(out)
            message = err.get("msg", message)
            if err.get("details"):
                message += f"; {err['details']}"
        except (ValueError, AttributeError):
            pass
        raise FailedPrecondition(f'plugin type="{kind}" name="{network}" failed ({verb}): {message}')
    if invocation.command != "ADD":
        return None
    try:
        result = json.loads(out)
    except ValueError:
        raise FailedPrecondition(
            f'plugin type="{kind}" name="{network}" failed ({verb}): invalid result: {out[:200]!r}'
        ) from None
    if not isinstance(result, dict):
        raise FailedPrecondition(
            f'plugin type="{kind}" name="{network}" failed ({verb}): result is not an object'
        )
    return result


def version_tuple(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in version.split("."))
    except ValueError:
        return (0,)
