"""corrald: load the config, start the kernel, serve gRPC on the unix socket until signalled."""

from __future__ import annotations

import gc
import os
import sys

# Start-up allocates some 50,000 objects that live as long as the daemon; the cyclic collector
# would walk them again and again while they are made (a sixth of start-up's time). In the
# ``corrald`` process (not in one that merely imports this module) it is off until corrald is
# ready (``serve``).
if (
    __name__ == "__main__"
    or os.path.basename(getattr(sys.modules["__main__"], "__file__", None) or "") == "corrald"
):
    gc.disable()

# isort: split
from corral.api import _dataclass_cache  # (first: dataclasses' generated code cached, see there)

# isort: split
from corral.api import _lean_imports  # noqa: F401  (structlog without rich, see there)

# isort: split
import dataclasses
import signal
from pathlib import Path
from typing import Any, NoReturn

import anyio
import structlog

from corral import __version__
from corral.api._spin import new_event_loop as spinning_loop
from corral.api.grpc import lazy
from corral.api.grpc.server import build_mapping, serve_unix
from corral.api.ttrpc.services import build_ttrpc_server
from corral.kernel import (
    ConfigError,
    DaemonConfig,
    Kernel,
    LoadedConfig,
    StartupError,
    configure_logging,
    discover,
    load_config,
)

log = structlog.get_logger("corral.daemon")

SOCKET_NAME = "corral.sock"


def _user_dirs() -> tuple[Path, Path, Path]:
    """Config, root and state for an unprivileged daemon, after the XDG base directory spec."""
    home = Path.home()
    config = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config") / "corral" / "config.toml"
    data = Path(os.environ.get("XDG_DATA_HOME") or home / ".local" / "share") / "corral"
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    state = Path(runtime) / "corral" if runtime else Path(f"/tmp/corral-{os.getuid()}")
    return config, data, state


def default_paths() -> tuple[Path, DaemonConfig]:
    """The config file looked for, and the embedded defaults: system paths as root, XDG otherwise."""
    if os.geteuid() == 0:
        config_path, root, state = (
            Path("/etc/corral/config.toml"),
            Path("/var/lib/corral"),
            Path("/run/corral"),
        )
    else:
        config_path, root, state = _user_dirs()
    defaults = DaemonConfig(root=str(root), state=str(state))
    return config_path, defaults


def finish(config: DaemonConfig) -> DaemonConfig:
    """Fill what the files left empty and check what only makes sense once merged."""
    _, defaults = default_paths()
    root = config.root or defaults.root
    state = config.state or defaults.state
    grpc = config.grpc
    if not grpc.address:
        grpc = dataclasses.replace(grpc, address=str(Path(state) / SOCKET_NAME))
    if os.path.abspath(root) == os.path.abspath(state):
        raise ConfigError("root and state must be different paths")
    return dataclasses.replace(config, root=os.path.abspath(root), state=os.path.abspath(state), grpc=grpc)


def read_config(path: Path | None) -> LoadedConfig:
    """--config PATH must exist; without it the default path is read only if present."""
    default_path, defaults = default_paths()
    if path is None and default_path.exists():
        path = default_path
    if path is not None and not path.exists():
        raise ConfigError(f"{path}: no such file")
    loaded = load_config(path, defaults=defaults)
    # Plugin migrations run from the oldest version any file declared; containerd skips them for
    # unversioned (version 1) files, which silently drops their plugin sections.
    version = min(loaded.config.version, loaded.migrated_from)
    return dataclasses.replace(loaded, config=dataclasses.replace(loaded.config, version=version))


_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 256 * 1024
"""Allocations from this size up get pages of their own, given back to the system when freed."""


def limit_heap_growth() -> None:
    """Keep large buffers (ingest and read chunks, up to 1 MiB each) out of glibc's heaps.

    glibc raises its mmap threshold each time a large block is freed, up to 32 MiB; after that,
    1 MiB chunks come from the heaps of the threads that handled them, and a burst of concurrent
    ingests leaves the daemon tens of MiB larger for good. A fixed threshold turns that off."""
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return  # not glibc (musl has no mallopt): nothing to tune
    mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)


async def serve(kernel: Kernel) -> None:
    config = kernel.config
    grpc = config.grpc
    async with kernel.running():
        mapping = build_mapping(kernel.records())
        uid = grpc.uid if grpc.uid != os.geteuid() else -1
        gid = grpc.gid if grpc.gid != os.getegid() else -1
        ttrpc = build_ttrpc_server(kernel.records())
        ttrpc_address = config.ttrpc.address or f"{grpc.address}.ttrpc"
        ttrpc_uid = config.ttrpc.uid if config.ttrpc.uid != os.geteuid() else -1
        ttrpc_gid = config.ttrpc.gid if config.ttrpc.gid != os.getegid() else -1
        async with (
            ttrpc.serve(ttrpc_address, mode=0o660, uid=ttrpc_uid, gid=ttrpc_gid),
            serve_unix(mapping, grpc.address, mode=grpc.mode, uid=uid, gid=gid),
        ):
            ok = sum(1 for r in kernel.records() if r.ok)
            log.info("corrald_ready", version=__version__, address=grpc.address, plugins_ok=ok)
            lazy.save_index(kernel.records())
            if not gc.isenabled():
                # Start-up's objects live as long as the daemon: frozen, the collector leaves them
                # out of every collection (the first would walk all of them, some 30 ms, while the
                # first calls wait), and only what is made from now on is collected.
                gc.freeze()
                gc.enable()
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(_save_dataclass_cache_soon)
                with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for signum in signals:
                        log.info("corrald_stopping", signal=signal.Signals(signum).name)
                        break
                tasks.cancel_scope.cancel()
            _dataclass_cache.save()  # what was compiled since (later calls' messages), or all if sooner


CACHE_SAVE_DELAY = 1.0
"""Seconds after ready at which the dataclass cache is first written: the texts a start uses by
then, kept in the file every start reads, include those of the modules its first calls import
(gRPC plugins are imported at their first call; a client's first ``ctr version`` imports the
version and introspection messages)."""


async def _save_dataclass_cache_soon() -> None:
    await anyio.sleep(CACHE_SAVE_DELAY)
    _dataclass_cache.save()


_OPTIONS = {
    "-c": "config_path",
    "--config": "config_path",
    "-a": "address",
    "--address": "address",
    "--root": "root",
    "--state": "state",
    "-l": "log_level",
    "--log-level": "log_level",
}


def plain_options(argv: list[str]) -> dict[str, str] | None:
    """The options of a command line made only of ``--name value``, ``--name=value``, ``-n value``
    and ``-nvalue`` (what a service file or a script passes), as click parses them; None for
    anything else (``--help``, ``--version``, a typo), which goes to the click command. click is
    not imported by a start that does not need it."""
    found: dict[str, str] = {}
    rest = iter(argv)
    for arg in rest:
        if arg.startswith("--") and "=" in arg:
            name, value = arg.split("=", 1)
        elif arg in _OPTIONS:
            name, value = arg, next(rest, None)  # type: ignore[assignment]
            if value is None:
                return None
        elif arg[:2] in _OPTIONS and not arg.startswith("--"):
            name, value = arg[:2], arg[2:]
        else:
            return None
        if name not in _OPTIONS or value.startswith("-"):
            return None
        found[_OPTIONS[name]] = value
    return found


def _fail(message: str, code: int) -> NoReturn:
    print(message, file=sys.stderr, flush=True)
    sys.exit(code)


def run(
    config_path: Path | None = None,
    address: str | None = None,
    root: str | None = None,
    state: str | None = None,
    log_level: str | None = None,
) -> None:
    """Run the corral daemon."""
    loaded = LoadedConfig(DaemonConfig(), (), DaemonConfig().version)
    try:
        loaded = read_config(config_path)
        config = loaded.config
        overrides: dict[str, object] = {}
        if root:
            overrides["root"] = os.path.abspath(root)
        if state:
            overrides["state"] = os.path.abspath(state)
        if address:
            overrides["grpc"] = dataclasses.replace(config.grpc, address=address)
        if log_level:
            overrides["debug"] = dataclasses.replace(config.debug, level=log_level)
        config = finish(dataclasses.replace(config, **overrides))  # type: ignore[arg-type]
    except ConfigError as exc:
        _fail(f"corrald: config error: {exc.detail}", 2)
    configure_logging(config.debug.level, config.debug.format)
    limit_heap_growth()
    kernel = Kernel(config, candidates=lazy.lazy_candidates(discover()))
    try:
        anyio.run(serve, kernel, backend_options={"loop_factory": spinning_loop})
    except ConfigError as exc:  # a plugin section, decoded at start: name the file that set the key
        _fail(f"corrald: config error: {loaded.attribute(exc).detail}", 2)
    except StartupError as exc:
        _fail(f"corrald: {exc}", 1)
    except KeyboardInterrupt:
        pass


def command() -> Any:
    """corrald's command line as a click command: help, version and errors."""
    import click

    @click.command(context_settings={"help_option_names": ["-h", "--help"]})
    @click.option(
        "-c", "--config", "config_path", type=click.Path(path_type=Path), help="config.toml to load"
    )
    @click.option("-a", "--address", help="gRPC socket path (overrides [grpc] address)")
    @click.option("--root", help="persistent state directory (overrides root)")
    @click.option("--state", help="runtime state directory (overrides state)")
    @click.option("-l", "--log-level", help="log level (overrides [debug] level)")
    @click.version_option(__version__, prog_name="corrald")
    def corrald(**options: Any) -> None:
        """Run the corral daemon."""
        run(**options)

    return corrald


def main() -> None:
    options = plain_options(sys.argv[1:])
    if options is None:
        command()()
        return
    config_path = options.pop("config_path", None)
    run(Path(config_path) if config_path is not None else None, **options)


if __name__ == "__main__":
    main()
