"""``corral run`` and ``corral tasks``: run a container's task, attach to it, and manage tasks."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal as signals
import stat
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import click

from corral.api.cli._output import emit, format_option, table, timestamp, to_json
from corral.api.cli._session import CommandError, call, parse_labels, report_failures
from corral.api.cli._stdio import ProcessStdio, follow_resizes, forward_signals, raw_terminal, terminal_size
from corral.api.cli.containers import DEFAULT_RUNTIME, STOP_SIGNAL_LABEL, create_from_image
from corral.api.client import Client
from corral.api.types.containerd import types as containerd_types
from corral.api.types.containerd.services.containers import v1 as containers_pb
from corral.api.types.containerd.v1 import types as task_types
from corral.api.types.google import protobuf
from corral.kernel import CorralError, FailedPrecondition, InvalidArgument, NotFound
from corral.plugins.cdi import SpecError, annotation_key, parse_qualified_name
from corral.plugins.runtimes.spec import (
    IDMapping,
    RunFlags,
    parse_id_map,
)

PROCESS_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Process"
OUTPUT_DRAIN_TIMEOUT = 5.0


def parse_signal(value: str) -> int:
    """``SIGKILL``, ``KILL``, ``kill`` or ``9``."""
    text = value.strip().upper()
    if text.isdigit():
        return int(text)
    name = text if text.startswith("SIG") else f"SIG{text}"
    try:
        return int(signals.Signals[name])
    except KeyError:
        raise InvalidArgument(f"unknown signal {value!r}") from None


def status_name(status: task_types.Status) -> str:
    return task_types.Status(status).name


# -- corral run -------------------------------------------------------------------------------------
async def _create_container(
    client: Client,
    image: str,
    container_id: str,
    flags: RunFlags,
    snapshotter: str,
    runtime: str,
    labels: dict[str, str],
    devices: Sequence[str] = (),
) -> containers_pb.Container:
    """The container ``corral containers create`` makes, with ``corral run``'s user namespaces,
    terminal size and CDI devices (an annotation corrald resolves when the task is created)."""

    def adjust(spec: dict[str, Any], rootfs: Path) -> None:
        if devices:
            spec.setdefault("annotations", {})[annotation_key("corral", "run")] = ",".join(devices)
        if flags.uidmap:
            # As ctr's remapped snapshot: the container's root owns its files in the namespace.
            remap_tree(rootfs, parse_id_map(flags.uidmap, "uid"), parse_id_map(flags.gidmap, "gid"))
        if flags.tty:
            # The size from the start, not only once the first resize arrives.
            width, height = terminal_size()
            spec.setdefault("process", {})["consoleSize"] = {"height": height, "width": width}

    return await create_from_image(client, image, container_id, flags, snapshotter, runtime, labels, adjust)


def _host_id(value: int, mappings: Sequence[IDMapping]) -> int:
    for m in mappings:
        if m.container_id <= value < m.container_id + m.size:
            return m.host_id + value - m.container_id
    return value


def remap_tree(root: Path, uids: Sequence[IDMapping], gids: Sequence[IDMapping]) -> None:
    """Give every file under ``root`` the host ids its owner has inside the user namespace
    (any number of ranges); set-id bits, which a chown clears, are put back."""
    for directory, dirs, files in os.walk(root):
        for path in [directory, *(os.path.join(directory, name) for name in dirs + files)]:
            if path != directory and os.path.isdir(path) and not os.path.islink(path):
                continue  # a directory is remapped as its walk's own ``directory``
            st = os.lstat(path)
            os.lchown(path, _host_id(st.st_uid, uids), _host_id(st.st_gid, gids))
            if not stat.S_ISLNK(st.st_mode) and st.st_mode & (stat.S_ISUID | stat.S_ISGID):
                os.chmod(path, stat.S_IMODE(st.st_mode))


async def _remove_container(client: Client, container: containers_pb.Container) -> None:
    with contextlib.suppress(NotFound):
        if container.snapshotter and container.snapshot_key:
            await client.snapshot_remove(container.snapshotter, container.snapshot_key)
    with contextlib.suppress(NotFound):
        await client.delete_container(container.id)


async def _force_delete(client: Client, container_id: str) -> None:
    """Delete the task, killing it first if it still runs (an attach that failed part way)."""
    try:
        await client.delete_task(container_id)
        return
    except NotFound:
        return
    except CorralError:
        pass
    with contextlib.suppress(CorralError):
        await client.kill_task(container_id, int(signals.SIGKILL), all=True)
    with contextlib.suppress(CorralError), anyio.move_on_after(10):
        await client.wait_task(container_id)
    with contextlib.suppress(CorralError):
        await client.delete_task(container_id)


async def attach_and_wait(
    client: Client,
    container_id: str,
    stdio: ProcessStdio | None,
    start: Any,
    *,
    exec_id: str = "",
) -> int:
    """Copy stdio while the process runs: Wait is asked before ``start``, as ctr does; the exit status.

    With no ``stdio`` (the output goes to a log file) only signals are forwarded."""
    exit_status = -1
    async with anyio.create_task_group() as tg:
        output_done = await stdio.copy_output(tg) if stdio is not None else None
        waited = anyio.Event()

        async def wait() -> None:
            nonlocal exit_status
            exit_status = (await client.wait_task(container_id, exec_id)).exit_status
            waited.set()

        tg.start_soon(wait)
        await anyio.lowlevel.checkpoint()
        try:
            await start()
        except BaseException:
            tg.cancel_scope.cancel()
            raise
        if stdio is not None and stdio.terminal:
            tg.start_soon(follow_resizes, lambda w, h: client.resize_pty(container_id, w, h, exec_id))
        else:
            tg.start_soon(forward_signals, lambda s: client.kill_task(container_id, s, exec_id=exec_id))
        if stdio is not None:
            tg.start_soon(stdio.copy_input, lambda: client.close_stdin(container_id, exec_id))
        await waited.wait()
        if output_done is not None:
            with anyio.move_on_after(OUTPUT_DRAIN_TIMEOUT):
                await output_done.wait()
        tg.cancel_scope.cancel()
    return exit_status


PASS_ARGS = {"ignore_unknown_options": True, "allow_interspersed_args": False}


@click.command("run", context_settings=PASS_ARGS)
@click.argument("image")
@click.argument("container_id", metavar="ID")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.option("--rm", "remove", is_flag=True, help="remove the container (and its snapshot) when it exits")
@click.option(
    "-d", "--detach", is_flag=True, help="start the task and return (its output: --log-file, else nowhere)"
)
@click.option(
    "--log-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="append the process's stdout and stderr to this file (the shim writes it), as ctr's --log-uri",
)
@click.option("-t", "--tty", is_flag=True, help="give the process a terminal (this one, in raw mode)")
@click.option("--env", multiple=True, metavar="KEY=VALUE", help="set an environment variable")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="label the container")
@click.option("--mount", "mounts", multiple=True, metavar="type=T,src=S,dst=D,options=O", help="as ctr's")
@click.option("--cwd", default="", help="the process's working directory")
@click.option("--user", "-u", default="", help="user[:group] to run as, looked up in the image")
@click.option("--hostname", default="", help="the container's hostname")
@click.option("--read-only", is_flag=True, help="a read-only root filesystem")
@click.option("--privileged", is_flag=True, help="all capabilities and host devices")
@click.option("--net-host", is_flag=True, help="the host's network namespace")
@click.option(
    "--uidmap", multiple=True, metavar="CONTAINER:HOST:SIZE", help="a user namespace uid range (repeat)"
)
@click.option(
    "--gidmap", multiple=True, metavar="CONTAINER:HOST:SIZE", help="a user namespace gid range (repeat)"
)
@click.option("--device", "devices", multiple=True, metavar="VENDOR/CLASS=NAME", help="a CDI device (repeat)")
@click.option("--snapshotter", default="overlayfs", show_default=True, help="where the image is unpacked")
@click.option("--runtime", default=DEFAULT_RUNTIME, show_default=True, help="the runtime's name or path")
def run_command(
    image: str,
    container_id: str,
    args: tuple[str, ...],
    remove: bool,
    detach: bool,
    log_file: Path | None,
    tty: bool,
    env: tuple[str, ...],
    labels: tuple[str, ...],
    mounts: tuple[str, ...],
    cwd: str,
    user: str,
    hostname: str,
    read_only: bool,
    privileged: bool,
    net_host: bool,
    uidmap: tuple[str, ...],
    gidmap: tuple[str, ...],
    devices: tuple[str, ...],
    snapshotter: str,
    runtime: str,
) -> None:
    """Run ARGS (or the image's command) in a new container ID from the unpacked IMAGE.

    Exits with the process's exit status. As ctr run: Wait before Start, SIGINT and SIGTERM go to
    the process, and -t makes this terminal the process's (resizes follow).
    """
    if remove and detach:
        raise CommandError("--rm and --detach cannot be used together")
    if log_file is not None and tty:
        raise CommandError("--log-file and --tty cannot be used together")
    log_uri = f"file://{log_file.absolute()}" if log_file is not None else ""
    if bool(uidmap) != bool(gidmap):
        raise CommandError("--uidmap and --gidmap go together")
    for device in devices:
        try:
            parse_qualified_name(device)
        except SpecError as exc:
            raise CommandError(f"--device: {exc}") from None
    flags = RunFlags(
        args=args, env=env, mounts=mounts, cwd=cwd, user=user, tty=tty, hostname=hostname,
        read_only=read_only, privileged=privileged, net_host=net_host, uidmap=uidmap, gidmap=gidmap,
        cpu_shares=1024,
    )  # fmt: skip
    parsed_labels = parse_labels(labels)

    async def run(client: Client) -> int:
        container = await _create_container(
            client, image, container_id, flags, snapshotter, runtime, parsed_labels, devices
        )
        stdio: ProcessStdio | None = None
        try:
            rootfs = await client.snapshot_mounts(snapshotter, container_id)
            if detach:
                await client.create_task(
                    container_id, rootfs=rootfs, stdout=log_uri, stderr=log_uri, terminal=tty
                )
                await client.start_task(container_id)
                return 0
            if log_uri:
                await client.create_task(container_id, rootfs=rootfs, stdout=log_uri, stderr=log_uri)
            else:
                stdio = ProcessStdio(container_id, stdin=True, terminal=tty)
                await client.create_task(
                    container_id,
                    rootfs=rootfs,
                    stdin=stdio.stdin,
                    stdout=stdio.stdout,
                    stderr=stdio.stderr,
                    terminal=tty,
                )
            try:
                with raw_terminal(tty):
                    status = await attach_and_wait(
                        client, container_id, stdio, lambda: client.start_task(container_id)
                    )
            finally:
                with anyio.CancelScope(shield=True):
                    await _force_delete(client, container_id)
            return status
        finally:
            if stdio is not None:
                stdio.remove()
            if remove:
                with anyio.CancelScope(shield=True):
                    await _remove_container(client, container)

    status = call(run)
    sys.exit(status)


# -- corral tasks -----------------------------------------------------------------------------------
@click.group("tasks")
def tasks_group() -> None:
    """Manage tasks: the running processes of containers."""


def task_json(p: task_types.Process) -> dict[str, Any]:
    return {
        "id": p.id,
        "pid": p.pid,
        "status": status_name(p.status),
        "stdin": p.stdin,
        "stdout": p.stdout,
        "stderr": p.stderr,
        "terminal": p.terminal,
        "exit_status": p.exit_status,
        "exited_at": timestamp(p.exited_at) if p.status == task_types.Status.STOPPED else None,
    }


@tasks_group.command("ls")
@click.option("-q", "--quiet", is_flag=True, help="print only the ids")
@format_option("table", "json")
def list_tasks(quiet: bool, output_format: str) -> None:
    """List the namespace's tasks: id, pid and status (CREATED, RUNNING, PAUSED, STOPPED)."""

    async def fetch(client: Client) -> list[task_types.Process]:
        return await client.list_tasks()

    items = sorted(call(fetch), key=lambda p: p.id)
    if quiet:
        for p in items:
            click.echo(p.id)
    elif output_format == "json":
        emit(to_json([task_json(p) for p in items]))
    else:
        emit(table(("TASK", "PID", "STATUS"), ((p.id, str(p.pid), status_name(p.status)) for p in items)))


@tasks_group.command("ps")
@click.argument("container_id", metavar="ID")
@format_option("table", "json")
def list_pids(container_id: str, output_format: str) -> None:
    """The processes in task ID's cgroup."""

    async def fetch(client: Client) -> list[task_types.ProcessInfo]:
        return await client.list_pids(container_id)

    items = call(fetch)
    if output_format == "json":
        emit(to_json([{"pid": p.pid, "info": p.info.type_url if p.info else None} for p in items]))
    else:
        emit(table(("PID", "INFO"), ((str(p.pid), p.info.type_url if p.info else "-") for p in items)))


@tasks_group.command("start")
@click.argument("container_id", metavar="ID")
@click.option(
    "--log-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="append the process's stdout and stderr to this file",
)
def start_task(container_id: str, log_file: Path | None) -> None:
    """Create and start container ID's task, detached (its output: --log-file, else nowhere)."""
    log_uri = f"file://{log_file.absolute()}" if log_file is not None else ""

    async def start(client: Client) -> int:
        container = await client.get_container(container_id)
        rootfs = await client.snapshot_mounts(container.snapshotter, container.snapshot_key)
        await client.create_task(container_id, rootfs=rootfs, stdout=log_uri, stderr=log_uri)
        return await client.start_task(container_id)

    click.echo(call(start))


@tasks_group.command("kill")
@click.argument("container_ids", nargs=-1, required=True, metavar="ID...")
@click.option("-s", "--signal", "signal_name", default="", help="signal (default: the image's stop signal)")
@click.option("-a", "--all", "all_processes", is_flag=True, help="every process in the task")
@click.option("--exec-id", default="", help="an exec'd process instead of the init process")
def kill_tasks(container_ids: tuple[str, ...], signal_name: str, all_processes: bool, exec_id: str) -> None:
    """Signal tasks (SIGTERM, or the stop signal their image names)."""

    async def kill(client: Client) -> list[str]:
        failures = []
        for container_id in container_ids:
            try:
                signum = parse_signal(signal_name) if signal_name else None
                if signum is None:
                    container = await client.get_container(container_id)
                    signum = parse_signal(container.labels.get(STOP_SIGNAL_LABEL) or "SIGTERM")
                await client.kill_task(container_id, signum, exec_id=exec_id, all=all_processes)
            except CorralError as exc:
                failures.append(str(exc))
        return failures

    report_failures(call(kill))


@tasks_group.command("rm")
@click.argument("container_ids", nargs=-1, required=True, metavar="ID...")
@click.option("-f", "--force", is_flag=True, help="SIGKILL a running task first")
def remove_tasks(container_ids: tuple[str, ...], force: bool) -> None:
    """Delete stopped tasks (prints each id and exit status)."""

    async def remove(client: Client) -> list[str]:
        failures = []
        for container_id in container_ids:
            try:
                process = await client.get_task(container_id)
                if (
                    process.status != task_types.Status.STOPPED
                    and process.status != task_types.Status.CREATED
                ):
                    if not force:
                        raise FailedPrecondition(
                            f"task {container_id} is {status_name(process.status).lower()}; stop it or use -f"
                        )
                    await client.kill_task(container_id, int(signals.SIGKILL), all=True)
                    with anyio.fail_after(10):
                        await client.wait_task(container_id)
                reply = await client.delete_task(container_id)
            except (CorralError, TimeoutError) as exc:
                failures.append(str(exc) or f"task {container_id}: timed out")
                continue
            click.echo(f"{container_id} {reply.exit_status}")
        return failures

    report_failures(call(remove))


@tasks_group.command("pause")
@click.argument("container_id", metavar="ID")
def pause_task(container_id: str) -> None:
    """Freeze every process of task ID."""

    async def pause(client: Client) -> None:
        await client.pause_task(container_id)

    call(pause)


@tasks_group.command("resume")
@click.argument("container_id", metavar="ID")
def resume_task(container_id: str) -> None:
    """Thaw a paused task."""

    async def resume(client: Client) -> None:
        await client.resume_task(container_id)

    call(resume)


@tasks_group.command("metrics")
@click.argument("container_ids", nargs=-1, metavar="[ID]...")
@format_option("table", "json")
def task_metrics(container_ids: tuple[str, ...], output_format: str) -> None:
    """The runtime's metrics for tasks (all of the namespace's without IDs), as it sent them."""

    async def fetch(client: Client) -> list[containerd_types.Metric]:
        return await client.task_metrics([f"id=={json.dumps(i)}" for i in container_ids])

    items = call(fetch)
    if container_ids and not items:
        raise CommandError(f"no metrics for {', '.join(container_ids)}")
    if output_format == "json":
        emit(
            to_json(
                [
                    {
                        "id": m.id,
                        "timestamp": timestamp(m.timestamp),
                        "type_url": m.data.type_url if m.data else "",
                        "data": base64.b64encode(m.data.value).decode() if m.data else "",
                    }
                    for m in items
                ]
            )
        )
    else:
        emit(
            table(
                ("ID", "TIMESTAMP", "TYPE", "SIZE"),
                (
                    (
                        m.id,
                        timestamp(m.timestamp) or "-",
                        m.data.type_url if m.data else "-",
                        str(len(m.data.value)) if m.data else "0",
                    )
                    for m in items
                ),
            )
        )


@tasks_group.command("exec", context_settings=PASS_ARGS)
@click.argument("container_id", metavar="ID")
@click.argument("args", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("--exec-id", required=True, help="the new process's id, unique in the task")
@click.option("-t", "--tty", is_flag=True, help="give the process a terminal (this one, in raw mode)")
@click.option("--cwd", default="", help="the process's working directory")
@click.option("--env", multiple=True, metavar="KEY=VALUE", help="add an environment variable")
def exec_process(
    container_id: str, args: tuple[str, ...], exec_id: str, tty: bool, cwd: str, env: tuple[str, ...]
) -> None:
    """Run ARGS in task ID, attached; exits with its exit status."""

    async def run(client: Client) -> int:
        container = await client.get_container(container_id)
        process = _base_process(container)
        process.update(args=list(args), terminal=tty)
        if cwd:
            process["cwd"] = cwd
        if env:
            process["env"] = [*process.get("env", []), *env]
        if tty:
            width, height = terminal_size()
            process["consoleSize"] = {"width": width, "height": height}
        stdio = ProcessStdio(exec_id, stdin=True, terminal=tty)
        spec = protobuf.Any(type_url=PROCESS_TYPE_URL, value=json.dumps(process).encode())
        try:
            await client.exec_process(
                container_id, exec_id, spec,
                stdin=stdio.stdin, stdout=stdio.stdout, stderr=stdio.stderr, terminal=tty,
            )  # fmt: skip
            try:
                with raw_terminal(tty):
                    return await attach_and_wait(
                        client, container_id, stdio, lambda: client.start_task(container_id, exec_id),
                        exec_id=exec_id,
                    )  # fmt: skip
            finally:
                with anyio.CancelScope(shield=True), contextlib.suppress(CorralError):
                    await client.delete_process(container_id, exec_id)
        finally:
            stdio.remove()

    sys.exit(call(run))


def _base_process(container: containers_pb.Container) -> dict[str, Any]:
    """The container's own process spec, the base of an exec's (as ctr takes it)."""
    if container.spec is None or not container.spec.value:
        raise FailedPrecondition(f"container {container.id} has no spec")
    try:
        spec = json.loads(container.spec.value)
    except ValueError:
        raise FailedPrecondition(f"container {container.id} has a spec that is not JSON") from None
    process = dict(spec.get("process") or {})
    process.pop("consoleSize", None)
    return process
