"""ttrpc micro-benchmark: unary calls from corral's client to corral's server on a unix socket.

Run with ``python -m benchmarks.ttrpc_micro [--calls N] [--concurrency C]``. It prints calls per
second for calls made one after another and for calls in flight together on one connection; it
measures, it never asserts.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import anyio
import structlog

from corral.api.ttrpc import TTRPCClient, TTRPCContext, TTRPCServer

SERVICE = "corral.bench.v1.Echo"
PAYLOAD = b"\x0a\x0ccontainer-id\x12\x04exec"
"""About the size of a shim's State request."""


async def echo(payload: bytes, ctx: TTRPCContext) -> bytes:
    return payload


async def sequential(client: TTRPCClient, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        await client.call(SERVICE, "Echo", PAYLOAD)
    return time.perf_counter() - start


async def concurrent(client: TTRPCClient, calls: int, concurrency: int) -> float:
    """``calls`` calls from ``concurrency`` tasks, each making its share one after another."""
    share, extra = divmod(calls, concurrency)

    async def worker(count: int) -> None:
        for _ in range(count):
            await client.call(SERVICE, "Echo", PAYLOAD)

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for i in range(concurrency):
            tg.start_soon(worker, share + (1 if i < extra else 0))
    return time.perf_counter() - start


async def run(calls: int, concurrency: int) -> None:
    server = TTRPCServer()
    server.register(SERVICE, "Echo", echo)
    with tempfile.TemporaryDirectory(prefix="ttrpc-bench-") as tmp:
        path = Path(tmp) / "bench.sock"
        async with server.serve(path), TTRPCClient.connect(path) as client:
            await sequential(client, min(calls, 500))  # warm-up
            elapsed = await sequential(client, calls)
            print(f"sequential: {calls} calls in {elapsed:.3f} s = {calls / elapsed:,.0f} calls/s")
            elapsed = await concurrent(client, calls, concurrency)
            print(
                f"concurrent ({concurrency} in flight): {calls} calls in {elapsed:.3f} s"
                f" = {calls / elapsed:,.0f} calls/s"
            )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ttrpc_micro", description=__doc__)
    p.add_argument("--calls", type=int, default=10_000)
    p.add_argument("--concurrency", type=int, default=100)
    args = p.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    anyio.run(run, args.calls, args.concurrency)


if __name__ == "__main__":
    main()
