"""``corral snapshots``: list, inspect, prepare, commit, mount, label and remove a snapshotter's snapshots."""

from __future__ import annotations

import posixpath
import shlex
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import click
from rich.table import Table

from corral.api.cli._output import emit, format_option, table, timestamp, to_json
from corral.api.cli._session import call, parse_labels, report_failures
from corral.api.client import Client, rfc3339
from corral.api.types.containerd.services.snapshots import v1 as pb
from corral.api.types.containerd.types import Mount
from corral.kernel import CorralError, NotFound

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_SNAPSHOTTER = "overlayfs"
GC_ROOT_LABEL = "containerd.io/gc.root"

KIND_NAMES = {pb.Kind.VIEW: "View", pb.Kind.ACTIVE: "Active", pb.Kind.COMMITTED: "Committed"}
_BIND_FLAGS = ("bind", "rbind")
_BRANCH = "\\_"
_BINARY_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB")


@dataclass(frozen=True)
class SnapshotterChoice:
    """The group's ``--snapshotter``, kept in the group's context for its commands."""

    name: str


def snapshotter() -> str:
    choice = click.get_current_context().find_object(SnapshotterChoice)
    return choice.name if choice is not None else DEFAULT_SNAPSHOTTER


def kind_name(kind: pb.Kind) -> str:
    """The kind as ctr spells it."""
    return KIND_NAMES.get(kind, "Unknown")


def gc_root_labels(labels: Mapping[str, str], gc_root: bool, now: datetime | None = None) -> dict[str, str]:
    """``labels``, plus ctr's ``containerd.io/gc.root`` (RFC 3339, UTC) that keeps the snapshot from GC."""
    result = dict(labels)
    if gc_root:
        result.setdefault(GC_ROOT_LABEL, rfc3339(now or datetime.now(UTC)))
    return result


def usage_size(size: int) -> str:
    """Binary units to one decimal, as ``ctr snapshots usage`` shows sizes (its progress.Bytes)."""
    value = float(size)
    unit = 0
    while value >= 1024 and unit < len(_BINARY_UNITS) - 1:
        value /= 1024
        unit += 1
    return f"{value:.1f} {_BINARY_UNITS[unit]}"


# ------------------------------------------------------------------------------ listings


def snapshots_table(items: Sequence[pb.Info]) -> Table:
    return table(("KEY", "PARENT", "KIND"), ((i.name, i.parent or "-", kind_name(i.kind)) for i in items))


def snapshot_json(info: pb.Info) -> dict[str, Any]:
    return {
        "key": info.name,
        "parent": info.parent,
        "kind": kind_name(info.kind),
        "created_at": timestamp(info.created_at),
        "updated_at": timestamp(info.updated_at),
        "labels": dict(sorted(info.labels.items())),
    }


def snapshot_lines(info: pb.Info) -> str:
    """``info`` for people: one field a line, labels one a line below."""
    lines = [
        f"Key:      {info.name}",
        f"Parent:   {info.parent or '-'}",
        f"Kind:     {kind_name(info.kind)}",
        f"Created:  {timestamp(info.created_at) or '-'}",
        f"Updated:  {timestamp(info.updated_at) or '-'}",
        "Labels:" + ("" if info.labels else "   -"),
    ]
    lines += [f"  {k}={v}" for k, v in sorted(info.labels.items())]
    return "".join(line + "\n" for line in lines)


@dataclass(frozen=True)
class Usage:
    key: str
    size: int
    inodes: int


def usage_table(items: Sequence[Usage], *, bytes_only: bool = False) -> Table:
    return table(
        ("KEY", "SIZE", "INODES"),
        ((u.key, str(u.size) if bytes_only else usage_size(u.size), str(u.inodes)) for u in items),
    )


def usage_json(items: Sequence[Usage]) -> list[dict[str, Any]]:
    return [{"key": u.key, "size": u.size, "inodes": u.inodes} for u in items]


# ------------------------------------------------------------------------------ the tree


@dataclass
class TreeNode:
    name: str
    kind: pb.Kind = pb.Kind.UNKNOWN
    parent: str = ""
    children: list[str] = field(default_factory=list)


def build_tree(items: Iterable[pb.Info]) -> dict[str, TreeNode]:
    """Nodes in ctr's order: each snapshot where first met, a parent not listed as a placeholder root."""
    nodes: dict[str, TreeNode] = {}
    for info in items:
        node = nodes.setdefault(info.name, TreeNode(info.name))
        node.kind, node.parent = info.kind, info.parent
        if info.parent:
            nodes.setdefault(info.parent, TreeNode(info.parent)).children.append(info.name)
    return nodes


def _walk(nodes: Mapping[str, TreeNode]) -> Iterator[tuple[int, TreeNode]]:
    """Depth first from the roots, each node once (a parent loop cannot make it run forever)."""
    seen: set[str] = set()
    for root in nodes.values():
        if root.parent:
            continue
        stack = [(0, root.name)]
        while stack:
            level, name = stack.pop()
            if name in seen:
                continue
            seen.add(name)
            node = nodes[name]
            yield level, node
            stack.extend((level + 1, child) for child in reversed(node.children))


def tree_lines(nodes: Mapping[str, TreeNode]) -> str:
    r"""As ``ctr snapshots tree`` prints it: `` root``, then ``  \_ child``, ``    \_ grandchild``."""
    return "".join(f"{'  ' * level}{_BRANCH if level else ''} {node.name}\n" for level, node in _walk(nodes))


def tree_json(nodes: Mapping[str, TreeNode]) -> list[dict[str, Any]]:
    roots: list[dict[str, Any]] = []
    path: list[dict[str, Any]] = []
    for level, node in _walk(nodes):
        entry: dict[str, Any] = {"key": node.name, "kind": kind_name(node.kind), "children": []}
        del path[level:]
        (path[-1]["children"] if path else roots).append(entry)
        path.append(entry)
    return roots


# ------------------------------------------------------------------------------ mounts


def mount_target(target: str, sub: str) -> str:
    """Where a mount goes: TARGET itself, or its ``target`` below TARGET (ctr's filepath.Join)."""
    if not sub:
        return target
    return posixpath.normpath(posixpath.join(target, sub.lstrip("/")))


def mount_command(mount: Mount, target: str) -> str:
    """A shell command line that mounts ``mount`` at ``target``, quoted so that it runs as printed.

    A bind mount has no filesystem type for mount(8): ``mount -o rbind,ro SOURCE TARGET``. Others read as
    ctr prints them: ``mount -t overlay overlay TARGET -o index=off,workdir=…,upperdir=…,lowerdir=…``.
    """
    where = mount_target(target, mount.target)
    options = list(mount.options)
    if mount.type == "bind" or (mount.type in ("", "none") and any(o in _BIND_FLAGS for o in options)):
        flags = [o for o in options if o in _BIND_FLAGS] or ["bind"]
        rest = [o for o in options if o not in _BIND_FLAGS]
        return shlex.join(["mount", "-o", ",".join(flags + rest), mount.source, where])
    args = ["mount"]
    if mount.type:
        args += ["-t", mount.type]
    args += [mount.source or "none", where]
    if options:
        args += ["-o", ",".join(options)]
    return shlex.join(args)


def mount_commands(mounts: Sequence[Mount], target: str) -> str:
    return "".join(mount_command(m, target) + "\n" for m in mounts)


def mounts_json(mounts: Sequence[Mount], target: str | None = None) -> list[dict[str, Any]]:
    """The mounts as the daemon sent them; with ``target``, each one's target is where it would go."""
    return [
        {
            "type": m.type,
            "source": m.source,
            "target": m.target if target is None else mount_target(target, m.target),
            "options": list(m.options),
        }
        for m in mounts
    ]


def emit_mounts(mounts: Sequence[Mount], target: str | None, as_json: bool) -> None:
    """What prepare and view print: mount commands for ``--target``, the mounts as JSON for ``--mounts``."""
    if target is not None and mounts:
        emit(mount_commands(mounts, target))
    if as_json:
        emit(to_json(mounts_json(mounts)))


# ------------------------------------------------------------------------------ commands


@click.group("snapshots")
@click.option(
    "--snapshotter",
    "snapshotter_name",
    envvar="CORRAL_SNAPSHOTTER",
    default=DEFAULT_SNAPSHOTTER,
    show_default=True,
    metavar="NAME",
    help="the snapshotter to use  [env: CORRAL_SNAPSHOTTER]",
)
@click.pass_context
def snapshots_group(ctx: click.Context, snapshotter_name: str) -> None:
    """Manage a snapshotter's snapshots (alias: snapshot)."""
    ctx.obj = SnapshotterChoice(snapshotter_name)


@snapshots_group.command("ls")
@click.argument("filters", nargs=-1, metavar="[FILTER]...")
@click.option("-q", "--quiet", is_flag=True, help="print only the keys")
@format_option("table", "json")
def list_snapshots(filters: tuple[str, ...], quiet: bool, output_format: str) -> None:
    """List snapshots with their parent and kind.

    FILTERs are containerd's, e.g. 'kind==committed', 'parent==KEY' or 'labels."containerd.io/gc.root"'.
    """
    name = snapshotter()

    async def fetch(client: Client) -> list[pb.Info]:
        return await client.snapshot_list(name, filters)

    items = sorted(call(fetch), key=lambda info: info.name)
    if quiet:
        for info in items:
            click.echo(info.name)
    else:
        emit(
            to_json([snapshot_json(i) for i in items]) if output_format == "json" else snapshots_table(items)
        )


@snapshots_group.command("tree")
@format_option("text", "json")
def snapshot_tree(output_format: str) -> None:
    """Show snapshots as a tree of parents and children."""
    name = snapshotter()

    async def fetch(client: Client) -> list[pb.Info]:
        return await client.snapshot_list(name)

    nodes = build_tree(sorted(call(fetch), key=lambda info: info.name))
    text = to_json(tree_json(nodes)) if output_format == "json" else tree_lines(nodes)
    if text:  # no snapshots: no lines, as with ctr
        emit(text)


@snapshots_group.command("info")
@click.argument("key")
@format_option("table", "json")
def snapshot_info(key: str, output_format: str) -> None:
    """Show snapshot KEY: parent, kind, creation and update times (UTC) and labels."""
    name = snapshotter()

    async def stat(client: Client) -> pb.Info:
        return await client.snapshot_stat(name, key)

    info = call(stat)
    emit(to_json(snapshot_json(info)) if output_format == "json" else snapshot_lines(info))


@snapshots_group.command("usage")
@click.argument("keys", nargs=-1, metavar="[KEY]...")
@click.option("-b", "bytes_only", is_flag=True, help="show sizes in bytes")
@format_option("table", "json")
def snapshot_usage(keys: tuple[str, ...], bytes_only: bool, output_format: str) -> None:
    """Show the disk space and inodes that snapshots use (each without its parents); all without KEY."""
    name = snapshotter()

    async def measure(client: Client) -> list[Usage]:
        wanted = list(keys) or sorted(info.name for info in await client.snapshot_list(name))
        found: list[Usage] = []
        for key in wanted:
            try:
                usage = await client.snapshot_usage(name, key)
            except NotFound:
                if keys:
                    raise
                continue  # removed since it was listed
            found.append(Usage(key, usage.size, usage.inodes))
        return found

    items = call(measure)
    emit(to_json(usage_json(items)) if output_format == "json" else usage_table(items, bytes_only=bytes_only))


def label_options(what: str) -> Callable[[F], F]:
    """``--label`` and ``--no-gc-root`` for a command that creates ``what``."""

    def decorate(fn: F) -> F:
        fn = click.option(
            "--no-gc-root",
            is_flag=True,
            help=f"leave out the containerd.io/gc.root label (then GC may remove the {what})",
        )(fn)
        return click.option(
            "--label", "labels", multiple=True, metavar="KEY=VALUE", help=f"label the {what}"
        )(fn)

    return decorate


def mount_output_options(fn: F) -> F:
    """``--target`` and ``--mounts`` for prepare and view, as ctr has them."""
    fn = click.option("--mounts", "print_mounts", is_flag=True, help="print the snapshot's mounts as JSON")(
        fn
    )
    return click.option(
        "-t", "--target", metavar="PATH", help="print the commands that mount the snapshot at PATH"
    )(fn)


@snapshots_group.command("prepare")
@click.argument("key")
@click.argument("parent", default="")
@label_options("snapshot")
@mount_output_options
def prepare_snapshot(
    key: str, parent: str, labels: tuple[str, ...], no_gc_root: bool, target: str | None, print_mounts: bool
) -> None:
    """Create the active (writable) snapshot KEY, on top of the committed PARENT if given."""
    name = snapshotter()
    parsed = gc_root_labels(parse_labels(labels), not no_gc_root)

    async def prepare(client: Client) -> list[Mount]:
        return await client.snapshot_prepare(name, key, parent, parsed)

    emit_mounts(call(prepare), target, print_mounts)


@snapshots_group.command("view")
@click.argument("key")
@click.argument("parent")
@label_options("view")
@mount_output_options
def view_snapshot(
    key: str, parent: str, labels: tuple[str, ...], no_gc_root: bool, target: str | None, print_mounts: bool
) -> None:
    """Create the read-only snapshot KEY of the committed PARENT.

    Unlike ctr, the view gets the gc.root label too, so that the garbage collector leaves it alone.
    """
    name = snapshotter()
    parsed = gc_root_labels(parse_labels(labels), not no_gc_root)

    async def view(client: Client) -> list[Mount]:
        return await client.snapshot_view(name, key, parent, parsed)

    emit_mounts(call(view), target, print_mounts)


@snapshots_group.command("commit")
@click.argument("name")
@click.argument("key")
@label_options("committed snapshot")
def commit_snapshot(name: str, key: str, labels: tuple[str, ...], no_gc_root: bool) -> None:
    """Commit the active snapshot KEY as the committed snapshot NAME."""
    chosen = snapshotter()
    parsed = gc_root_labels(parse_labels(labels), not no_gc_root)

    async def commit(client: Client) -> None:
        await client.snapshot_commit(chosen, name, key, parsed)

    call(commit)


@snapshots_group.command("mounts")
@click.argument("target")
@click.argument("key")
@format_option("shell", "json")
def snapshot_mounts(target: str, key: str, output_format: str) -> None:
    """Print the commands that mount snapshot KEY at TARGET (this command mounts nothing itself)."""
    name = snapshotter()

    async def mounts(client: Client) -> list[Mount]:
        return await client.snapshot_mounts(name, key)

    found = call(mounts)
    text = to_json(mounts_json(found, target)) if output_format == "json" else mount_commands(found, target)
    if text:
        emit(text)


@snapshots_group.command("rm")
@click.argument("keys", nargs=-1, required=True, metavar="KEY...")
def remove_snapshots(keys: tuple[str, ...]) -> None:
    """Remove snapshots; a snapshot that does not exist or has children is an error."""
    name = snapshotter()

    async def remove(client: Client) -> list[str]:
        failures: list[str] = []
        for key in keys:
            try:
                await client.snapshot_remove(name, key)
            except CorralError as exc:  # go on with the others, and fail at the end
                failures.append(str(exc))
                continue
            click.echo(key)
        return failures

    report_failures(call(remove))


@snapshots_group.command("label")
@click.argument("key")
@click.argument("labels", nargs=-1, required=True, metavar="LABEL=[VALUE]...")
def label_snapshot(key: str, labels: tuple[str, ...]) -> None:
    """Set labels on snapshot KEY; LABEL= removes LABEL."""
    name = snapshotter()
    parsed = parse_labels(labels)

    async def label(client: Client) -> None:
        await client.snapshot_update_labels(name, key, parsed)

    call(label)
