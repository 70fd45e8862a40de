"""io.containerd.image-verifier.v1.bindir — every executable in a directory judges each image.

Compatible with containerd's: the entries of ``bin_dir`` run one after another in name order,
each as ``<entry> -name <image> -digest <digest> -stdin-media-type
application/vnd.oci.descriptor.v1+json`` with the descriptor as JSON on stdin, in its own process
group, killed with the group after ``per_verifier_timeout``. A non-zero exit rejects the image
with the verifier's stdout (32 KiB at most) as the reason; all must pass. A missing or empty
directory lets every image in.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import structlog

from corral.kernel import InitContext, Registration, Unavailable, parse_duration
from corral.plugins import types
from corral.plugins.core import Descriptor
from corral.plugins.images.oci import go_json
from corral.plugins.verifiers import Judgement

log = structlog.get_logger("corral.verifiers")

OUTPUT_LIMIT = 1 << 15
"""Bytes of a verifier's stdout kept as its reason, and of its stderr logged (as containerd's)."""
DESCRIPTOR_MEDIA_TYPE = "application/vnd.oci.descriptor.v1+json"
DEFAULT_BIN_DIR = "/opt/containerd/image-verifier/bin"


@dataclass(frozen=True)
class BindirConfig:
    """The ``io.containerd.image-verifier.v1.bindir`` section."""

    bin_dir: str = DEFAULT_BIN_DIR
    """The directory whose entries are the verifiers."""
    max_verifiers: int = 10
    """At most this many entries run (the rest are skipped with a warning); negative: no limit."""
    per_verifier_timeout: str = "10s"
    """How long one verifier may take (a Go duration) before its process group is killed."""


class VerifierFailed(Unavailable):
    """A verifier that could not judge (it could not start, or was killed): the transfer is blocked."""


class BindirVerifier:
    def __init__(self, bin_dir: Path, *, max_verifiers: int = 10, timeout: float = 10.0) -> None:
        self.bin_dir = bin_dir
        self.max_verifiers = max_verifiers
        self.timeout = timeout

    async def verify_image(self, name: str, desc: Descriptor) -> Judgement:
        try:
            entries = sorted(os.listdir(self.bin_dir))
        except FileNotFoundError:
            return Judgement(True, f"image verifier directory {self.bin_dir} does not exist")
        except OSError as exc:
            raise VerifierFailed(f"failed to list directory contents: {exc}") from None
        if not entries:
            return Judgement(True, f"no image verifier binaries found in {self.bin_dir}")
        reasons = []
        for i, entry in enumerate(entries):
            if self.max_verifiers >= 0 and i + 1 > self.max_verifiers:
                log.warning(
                    "image_verifiers_skipped",
                    bin_dir=str(self.bin_dir),
                    entries=len(entries),
                    max_verifiers=self.max_verifiers,
                )
                break
            start = time.monotonic()
            try:
                code, output = await self._run(entry, name, desc)
            except (OSError, TimeoutError, _Killed) as exc:
                runtime = time.monotonic() - start
                raise VerifierFailed(
                    f"failed to call verifier {entry} (runtime {runtime:.3f}s): {_describe(exc)}"
                ) from None
            if code != 0:
                return Judgement(False, f"verifier {entry} rejected image (exit code {code}): {output}")
            reasons.append(f"{entry} => {output}")
        return Judgement(True, ", ".join(reasons))

    async def _run(self, entry: str, name: str, desc: Descriptor) -> tuple[int, str]:
        args = ["-name", name, "-digest", desc.digest, "-stdin-media-type", DESCRIPTOR_MEDIA_TYPE]
        proc = await asyncio.create_subprocess_exec(
            str(self.bin_dir / entry),
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        try:
            async with asyncio.timeout(self.timeout):
                return await self._converse(proc, entry, desc)
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()

    async def _converse(
        self, proc: asyncio.subprocess.Process, entry: str, desc: Descriptor
    ) -> tuple[int, str]:
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        document = go_json(_descriptor_json(desc)) + b"\n"

        async def feed() -> None:
            assert proc.stdin is not None
            with contextlib.suppress(OSError):
                proc.stdin.write(document)
                await proc.stdin.drain()
            with contextlib.suppress(OSError):
                proc.stdin.close()

        async def stderr() -> None:
            assert proc.stderr is not None
            logged = 0
            while line := await proc.stderr.readline():
                if logged < OUTPUT_LIMIT:
                    log.debug(
                        "image_verifier_stderr", image_verifier=entry, line=line.decode(errors="replace")
                    )
                    logged += len(line)
                    if logged >= OUTPUT_LIMIT:
                        log.debug(
                            "image_verifier_stderr",
                            image_verifier=entry,
                            line="(previous logs may be truncated)",
                        )

        async def stdout() -> str:
            assert proc.stdout is not None
            try:
                kept = await proc.stdout.readexactly(OUTPUT_LIMIT)
            except asyncio.IncompleteReadError as short:
                kept = short.partial
            more = await proc.stdout.read(1)
            while await proc.stdout.read(1 << 16):
                pass
            text = kept.decode(errors="replace").strip()
            return text + ("(stdout truncated)" if more else "")

        _, _, output = await asyncio.gather(feed(), stderr(), stdout())
        code = await proc.wait()
        if code < 0:
            raise _Killed(f"signal: {signal.Signals(-code).name.lower().removeprefix('sig')}")
        return code, output


class _Killed(Exception):
    pass


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out, killed"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)


def _descriptor_json(desc: Descriptor) -> dict[str, object]:
    out: dict[str, object] = {"mediaType": desc.media_type, "digest": desc.digest, "size": desc.size}
    if desc.annotations:
        out["annotations"] = {key: desc.annotations[key] for key in sorted(desc.annotations)}
    return out


async def init(ic: InitContext) -> BindirVerifier:
    config: BindirConfig = ic.config
    timeout = parse_duration(config.per_verifier_timeout).total_seconds()
    if timeout <= 0:
        raise ValueError(f"per_verifier_timeout must be positive, not {config.per_verifier_timeout!r}")
    return BindirVerifier(Path(config.bin_dir), max_verifiers=config.max_verifiers, timeout=timeout)


registration = Registration(
    type=types.IMAGE_VERIFIER,
    id="bindir",
    init=init,
    config=BindirConfig,
    description="image verifiers: every executable in bin_dir must accept an image before it is stored",
)
