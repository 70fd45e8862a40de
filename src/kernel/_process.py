"""The daemon process's own settings from config.toml: its temp dir, OOM score and cgroup.

As containerd applies them at start (``temp``, ``oom_score``, ``[cgroup] path``): a setting that
cannot be applied stops the daemon with a message naming the key, before any plugin runs.
"""

from __future__ import annotations

import os
from pathlib import Path

import structlog

from corral.kernel._config import DaemonConfig
from corral.kernel._context import ensure_directory
from corral.kernel._errors import ConfigError

CGROUP_ROOT = Path("/sys/fs/cgroup")
log = structlog.get_logger("corral.kernel")


def apply_process_settings(config: DaemonConfig, *, pid: int | None = None) -> None:
    pid = pid or os.getpid()
    if config.temp:
        ensure_directory(Path(config.temp), 0o700)
        os.environ["TMPDIR"] = config.temp
    if config.oom_score:
        try:
            Path(f"/proc/{pid}/oom_score_adj").write_text(str(config.oom_score))
        except OSError as exc:
            raise ConfigError(f"oom_score: cannot set {config.oom_score}: {exc.strerror}") from None
        log.info("oom_score_set", oom_score=config.oom_score)
    if config.cgroup.path:
        move_to_cgroup(config.cgroup.path, pid)


def move_to_cgroup(path: str, pid: int) -> None:
    """Put the daemon in the cgroup (v2) ``path``, created if missing, as containerd's ``[cgroup]`` does."""
    if not (CGROUP_ROOT / "cgroup.controllers").exists():
        raise ConfigError("cgroup.path: needs the unified cgroup (v2) hierarchy at /sys/fs/cgroup")
    target = CGROUP_ROOT / path.lstrip("/")
    try:
        target.mkdir(parents=True, exist_ok=True)
        (target / "cgroup.procs").write_text(str(pid))
    except OSError as exc:
        raise ConfigError(f"cgroup.path: cannot move the daemon into {target}: {exc.strerror}") from None
    log.info("cgroup_joined", cgroup=str(target))
