"""Options on the spec's process: arguments, environment, user, capabilities, limits, image config."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from corral.kernel import InvalidArgument, NotFound
from corral.plugins.runtimes._spec_default import DEFAULT_UNIX_ENV, Spec, SpecOpt, process, put, section
from corral.plugins.runtimes._spec_host import KNOWN_CAPABILITIES, current_capabilities
from corral.plugins.runtimes._spec_users import find_group_id, find_user, go_atoi, supplementary_gids

MAX_ID = 2**31 - 1  # runc's limit on uids and gids, which containerd follows

RLIMIT_TYPES = frozenset(
    f"RLIMIT_{name}"
    for name in (
        "AS", "CORE", "CPU", "DATA", "FSIZE", "LOCKS", "MEMLOCK", "MSGQUEUE", "NICE", "NOFILE",
        "NPROC", "RSS", "RTPRIO", "RTTIME", "SIGPENDING", "STACK",
    )
)  # fmt: skip


def replace_or_append_env(defaults: Sequence[str], overrides: Sequence[str]) -> list[str]:
    """containerd's env merge: an override replaces the default with its key in place or is
    appended; ``KEY`` without ``=`` removes ``KEY``."""
    results = list(defaults)
    index = {entry.partition("=")[0]: i for i, entry in enumerate(defaults)}
    for value in overrides:
        key, sep, _ = value.partition("=")
        if not sep:
            if key in index:
                results[index[key]] = ""
            continue
        if key in index:
            results[index[key]] = value
        else:
            results.append(value)
    return [entry for entry in results if entry != ""]


def _env(spec: Spec) -> list[str]:
    return list(process(spec).get("env", []))


def with_env(env: Sequence[str]) -> SpecOpt:
    """Merge ``env`` into the process environment (replace by key, append new, ``KEY`` unsets)."""

    def opt(spec: Spec) -> None:
        if env:
            put(process(spec), "env", replace_or_append_env(_env(spec), env))

    return opt


def with_default_path_env(spec: Spec) -> None:
    """Set containerd's default ``PATH``."""
    put(process(spec), "env", replace_or_append_env(_env(spec), DEFAULT_UNIX_ENV))


def with_env_file(path: str | Path) -> SpecOpt:
    """``with_env`` of the file's lines (``KEY=value`` one a line), as ``ctr --env-file``."""

    def opt(spec: Spec) -> None:
        text = Path(path).read_text()
        lines = [line.removesuffix("\r") for line in text.split("\n")]
        if lines and lines[-1] == "":
            lines.pop()
        with_env(lines)(spec)

    return opt


def with_process_args(*args: str) -> SpecOpt:
    """Replace the process arguments."""

    def opt(spec: Spec) -> None:
        proc = process(spec)
        put(proc, "args", list(args))
        proc.pop("commandLine", None)

    return opt


def with_process_cwd(cwd: str) -> SpecOpt:
    def opt(spec: Spec) -> None:
        process(spec)["cwd"] = cwd

    return opt


def with_tty(spec: Spec) -> None:
    """A terminal for the process, and ``TERM=xterm`` appended to a Linux spec's environment."""
    proc = process(spec)
    proc["terminal"] = True
    if spec.get("linux") is not None:
        proc["env"] = [*proc.get("env", []), "TERM=xterm"]


def with_terminal_size(width: int, height: int) -> SpecOpt:
    """The console size the runtime sets on the process' terminal (containerd's WithTTYSize)."""

    def opt(spec: Spec) -> None:
        process(spec)["consoleSize"] = {"height": height, "width": width}

    return opt


def with_no_new_privileges(spec: Spec) -> None:
    process(spec)["noNewPrivileges"] = True


def with_new_privileges(spec: Spec) -> None:
    """Turn ``noNewPrivileges`` off (ctr's ``--allow-new-privs``)."""
    process(spec).pop("noNewPrivileges", None)


def with_apparmor_profile(profile: str) -> SpecOpt:
    """Name an AppArmor profile already loaded on the host ("" for none); no profile is generated."""

    def opt(spec: Spec) -> None:
        put(process(spec), "apparmorProfile", profile)

    return opt


def with_selinux_label(label: str) -> SpecOpt:
    def opt(spec: Spec) -> None:
        put(process(spec), "selinuxLabel", label)

    return opt


# Users. Each option that reads the image's files takes ``rootfs``, the directory where the
# container's root filesystem can be read now; without it the spec's root path is used, which
# must then be absolute (containerd's rule for a container without a snapshot).


def _lookup_root(spec: Spec, rootfs: str | Path | None) -> Path:
    if rootfs is not None:
        return Path(rootfs)
    path = str(spec.get("root", {}).get("path", ""))
    if not path.startswith("/"):
        raise InvalidArgument("rootfs absolute path is required")
    return Path(path)


def _user(spec: Spec) -> dict[str, Any]:
    return section(process(spec), "user")


def _set_ids(spec: Spec, uid: int, gid: int) -> None:
    user = _user(spec)
    user["uid"], user["gid"] = uid, gid


def _ensure_additional_gids(spec: Spec) -> None:
    user = _user(spec)
    gids = list(user.get("additionalGids", []))
    if user["gid"] not in gids:
        gids.insert(0, user["gid"])
    user["additionalGids"] = gids


def _reset_additional_gids(spec: Spec) -> None:
    _user(spec).pop("additionalGids", None)


def _numeric_id(text: str) -> int | None:
    value = go_atoi(text)
    return value if value is not None and 0 <= value <= MAX_ID else None


def with_uid_gid(uid: int, gid: int) -> SpecOpt:
    def opt(spec: Spec) -> None:
        _reset_additional_gids(spec)
        _set_ids(spec, uid, gid)
        _ensure_additional_gids(spec)

    return opt


def with_user_id(uid: int, rootfs: str | Path | None = None) -> SpecOpt:
    """``uid`` with its primary group from the image's /etc/passwd, or gid 0 when it is not there."""

    def opt(spec: Spec) -> None:
        _reset_additional_gids(spec)
        root = _lookup_root(spec, rootfs)
        try:
            found = find_user(root, lambda u: u.uid == uid)
            _set_ids(spec, found.uid, found.gid)
        except NotFound:
            _set_ids(spec, uid, 0)
        _ensure_additional_gids(spec)

    return opt


def with_username(name: str, rootfs: str | Path | None = None) -> SpecOpt:
    """The uid and gid of ``name`` in the image's /etc/passwd; NotFound when it is not there."""

    def opt(spec: Spec) -> None:
        _reset_additional_gids(spec)
        if spec.get("linux") is None:
            raise InvalidArgument("spec does not contain Linux section")
        found = find_user(_lookup_root(spec, rootfs), lambda u: u.name == name)
        _set_ids(spec, found.uid, found.gid)
        _ensure_additional_gids(spec)

    return opt


def with_user(user: str, rootfs: str | Path | None = None) -> SpecOpt:
    """The OCI image ``User`` forms: ``user``, ``uid``, ``user:group``, ``uid:gid``, ``uid:group``,
    ``user:gid``; names are resolved in the image's /etc/passwd and /etc/group."""

    def opt(spec: Spec) -> None:
        _reset_additional_gids(spec)
        parts = user.split(":")
        if len(parts) == 1:
            uid = _numeric_id(parts[0])
            if uid is None:
                with_username(user, rootfs)(spec)
            else:
                with_user_id(uid, rootfs)(spec)
        elif len(parts) == 2:
            uid, gid = _numeric_id(parts[0]), _numeric_id(parts[1])
            if uid is not None and gid is not None:
                _set_ids(spec, uid, gid)
            else:
                root = _lookup_root(spec, rootfs)
                if uid is None:
                    uid = find_user(root, lambda u: u.name == parts[0]).uid
                if gid is None:
                    gid = find_group_id(root, parts[1])
                _set_ids(spec, uid, gid)
        else:
            raise InvalidArgument(f"invalid USER value {user}")
        _ensure_additional_gids(spec)

    return opt


def with_additional_gids(user: str, rootfs: str | Path | None = None) -> SpecOpt:
    """The supplementary groups /etc/group lists ``user`` (a name or uid) in, plus the primary gid."""

    def opt(spec: Spec) -> None:
        if spec.get("windows") is not None:
            return
        _reset_additional_gids(spec)
        root = _lookup_root(spec, rootfs)
        try:
            uid = go_atoi(user)
            if uid is None:
                username = user
            else:
                try:
                    username = find_user(root, lambda u: u.uid == uid).name
                except NotFound:
                    return
            gids = supplementary_gids(root, username)
            if gids is not None:
                put(_user(spec), "additionalGids", gids)
        finally:
            _ensure_additional_gids(spec)

    return opt


def with_append_additional_groups(*groups: str, rootfs: str | Path | None = None) -> SpecOpt:
    """Add groups (names from the image's /etc/group, or numeric gids) to the supplementary ones."""

    def opt(spec: Spec) -> None:
        if spec.get("windows") is not None:
            return
        root = _lookup_root(spec, rootfs)
        gids = []
        for group in groups:
            numeric = group.isascii() and group.isdigit() and int(group) < 2**32
            gids.append(int(group) if numeric else find_group_id(root, group))
        user = _user(spec)
        put(user, "additionalGids", [*user.get("additionalGids", []), *gids])
        _ensure_additional_gids(spec)

    return opt


# Capabilities.


def _capabilities(spec: Spec) -> dict[str, Any]:
    return section(process(spec), "capabilities")


def _check_capabilities(caps: Sequence[str]) -> None:
    for cap in caps:
        if not cap.startswith("CAP_"):
            raise InvalidArgument(f"capabilities must be specified with 'CAP_' prefix, got {cap!r}")


def with_capabilities(caps: Sequence[str]) -> SpecOpt:
    """Exactly ``caps`` in the bounding, effective and permitted sets; inheritable kept only within them."""

    _check_capabilities(caps)

    def opt(spec: Spec) -> None:
        sets = _capabilities(spec)
        for name in ("bounding", "effective", "permitted"):
            put(sets, name, list(caps))
        inheritable = sets.get("inheritable", [])
        put(sets, "inheritable", [c for c in inheritable if c in caps] if caps else [])

    return opt


def with_added_capabilities(caps: Sequence[str]) -> SpecOpt:
    _check_capabilities(caps)

    def opt(spec: Spec) -> None:
        sets = _capabilities(spec)
        for name in ("bounding", "effective", "permitted"):
            current = list(sets.get(name, []))
            current += [c for c in dict.fromkeys(caps) if c not in current]
            put(sets, name, current)

    return opt


def with_dropped_capabilities(caps: Sequence[str]) -> SpecOpt:
    """Remove ``caps`` from every set, inheritable included."""

    _check_capabilities(caps)

    def opt(spec: Spec) -> None:
        sets = _capabilities(spec)
        for name in ("bounding", "effective", "permitted", "inheritable"):
            put(sets, name, [c for c in sets.get(name, []) if c not in caps])

    return opt


def with_ambient_capabilities(caps: Sequence[str]) -> SpecOpt:
    """Set the inheritable and ambient sets (for a non-root process that needs capabilities)."""

    _check_capabilities(caps)

    def opt(spec: Spec) -> None:
        sets = _capabilities(spec)
        put(sets, "inheritable", list(caps))
        put(sets, "ambient", list(caps))

    return opt


def with_all_current_capabilities(spec: Spec) -> None:
    """The caller's own effective capabilities (what ``--privileged`` gives)."""
    with_capabilities(current_capabilities())(spec)


def with_all_known_capabilities(spec: Spec) -> None:
    with_capabilities(KNOWN_CAPABILITIES)(spec)


# Resource limits.


def with_rlimit(kind: str, soft: int, hard: int) -> SpecOpt:
    """Set one rlimit (replacing one of the same type), e.g. ``with_rlimit("RLIMIT_NOFILE", 4096, 8192)``."""
    if kind not in RLIMIT_TYPES:
        raise InvalidArgument(f"unknown rlimit type {kind!r}")
    if not 0 <= soft <= hard < 2**64:
        raise InvalidArgument(f"{kind}: soft limit {soft} must be within 0..hard ({hard})")

    def opt(spec: Spec) -> None:
        proc = process(spec)
        limits = [r for r in proc.get("rlimits", []) if r.get("type") != kind]
        limits.append({"type": kind, "hard": hard, "soft": soft})
        proc["rlimits"] = limits

    return opt


def with_process_rlimits(rlimits: Mapping[str, tuple[int, int]]) -> SpecOpt:
    """Set several rlimits, ``{"RLIMIT_NOFILE": (soft, hard), ...}``, each as ``with_rlimit``."""
    opts = [with_rlimit(kind, soft, hard) for kind, (soft, hard) in rlimits.items()]

    def opt(spec: Spec) -> None:
        for each in opts:
            each(spec)

    return opt


# The image's config and exec processes.


def with_image_config(
    image: Mapping[str, Any], args: Sequence[str] = (), rootfs: str | Path | None = None
) -> SpecOpt:
    """containerd's ``WithImageConfigArgs`` for a Linux spec, from the OCI image config document.

    Env is the image's (or the default PATH) with the spec's own env merged over it; args are the
    Entrypoint followed by ``args`` or else Cmd; cwd is WorkingDir or ``/``; User is resolved in
    the image's files, and the supplementary groups are looked up even without one. StopSignal is
    not part of the spec: see ``image_stop_signal``.
    """

    def opt(spec: Spec) -> None:
        config = image.get("config") or {}
        if spec.get("linux") is None:
            raise InvalidArgument("spec does not contain Linux section")
        proc = process(spec)
        defaults = list(config.get("Env") or ()) or list(DEFAULT_UNIX_ENV)
        put(proc, "env", replace_or_append_env(defaults, proc.get("env", [])))
        command = list(args) if args else list(config.get("Cmd") or ())
        put(proc, "args", [*(config.get("Entrypoint") or ()), *command])
        proc["cwd"] = config.get("WorkingDir") or "/"
        user = config.get("User") or ""
        if user:
            with_user(user, rootfs)(spec)
            with_additional_gids(str(_user(spec)["uid"]), rootfs)(spec)
        else:
            with_additional_gids("root", rootfs)(spec)

    return opt


STOP_SIGNAL_LABEL = "io.containerd.image.config.stop-signal"


def image_stop_signal(image: Mapping[str, Any], default: str = "SIGTERM") -> str:
    """The signal that stops this image's containers, kept in the container label
    ``STOP_SIGNAL_LABEL`` (containerd's ``WithImageStopSignal``, ctr's default SIGTERM)."""
    return str((image.get("config") or {}).get("StopSignal") or default)


def process_spec(
    spec: Spec,
    args: Sequence[str],
    *,
    tty: bool = False,
    cwd: str = "",
    user: str = "",
    rootfs: str | Path | None = None,
) -> dict[str, Any]:
    """The process ``ctr exec`` sends: the container's own process with ``args``, ``tty`` and
    optionally another cwd or user (resolved in the container's rootfs); ``spec`` is not changed."""
    working = copy.deepcopy(spec)
    if user:
        with_user(user, rootfs)(working)
    proc = process(working)
    put(proc, "terminal", tty)
    put(proc, "args", list(args))
    if cwd:
        proc["cwd"] = cwd
    return proc
