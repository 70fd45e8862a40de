"""An operator's containerd config.toml loads unchanged, and what corral does not act on is said."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from harness import Daemon, run_corrald_once
from tooling import require_root

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
DEFAULTS = sorted(FIXTURES.glob("containerd-*-config-default.toml"))
CORRAL = str(Path(sys.executable).parent / "corral")


@pytest.mark.parametrize("fixture", DEFAULTS, ids=lambda p: p.stem)
def test_containerds_own_default_config_validates(fixture: Path) -> None:
    result = subprocess.run(
        [CORRAL, "config", "validate", "--config", str(fixture)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("config ok: ")
    # Nothing is ignored silently: settings corral does not act on are named.
    assert "# warning: timeouts: accepted, but has no effect in corral" in result.stderr
    # The CRI section is read (a 1.x one split as containerd 2.x splits it); what it sets that
    # corral does not act on yet is named, key by key, and the runc handler's options, which go to
    # the shim, are not among them.
    assert 'plugins."io.containerd.grpc.v1.cri": no installed plugin' not in result.stderr
    cri = [line for line in result.stderr.splitlines() if "io.containerd.cri.v1" in line]
    assert all(line.endswith("(not acted on by corral's CRI pods and containers yet)") for line in cri), cri
    assert "runtimes.runc.options" not in result.stderr


@pytest.mark.parametrize("fixture", DEFAULTS, ids=lambda p: p.stem)
def test_corrald_runs_on_containerds_own_default_config(fixture: Path, tmp_path: Path, ctr: str) -> None:
    d = Daemon(tmp_path / "corral", config=fixture.read_text()).start()
    try:
        assert "Version:" in d.ctr("version").stdout
        log = d.log()
        assert "config_not_applied" in log and "stream_processors" in log
        # The CRI plugins started on the operator's section (their config split and decoded).
        assert "runtimes.runc.options" not in log
        rows = [line.split() for line in d.ctr("plugins", "ls").stdout.splitlines()[1:]]
        assert ["io.containerd.grpc.v1", "cri", "-", "ok"] in rows
    finally:
        d.stop()


def test_a_plugin_disabled_and_required_is_refused_by_validate_as_by_corrald(
    tmp_path: Path, ctr: str
) -> None:
    text = (
        'version = 3\ndisabled_plugins = ["io.containerd.metadata.v1.sqlite"]\n'
        'required_plugins = ["io.containerd.metadata.v1.sqlite"]\n'
    )
    path = tmp_path / "config.toml"
    path.write_text(text)
    validate = subprocess.run(
        [CORRAL, "config", "validate", "--config", str(path)], capture_output=True, text=True
    )
    assert validate.returncode != 0
    assert "io.containerd.metadata.v1.sqlite: disabled" in validate.stderr
    result = run_corrald_once(tmp_path / "corral", text)
    assert result.returncode == 1
    assert "io.containerd.metadata.v1.sqlite: disabled" in result.stderr


def test_oom_score_temp_and_cgroup_are_applied_to_the_daemon(tmp_path: Path, ctr: str) -> None:
    require_root()
    if not Path("/sys/fs/cgroup/cgroup.controllers").exists():
        pytest.skip("needs the unified cgroup hierarchy")
    group = f"corral-test-{uuid.uuid4().hex[:8]}"
    temp = tmp_path / "tmp"
    config = f'version = 3\noom_score = -321\ntemp = "{temp}"\n[cgroup]\npath = "/{group}"\n'
    d = Daemon(tmp_path / "corral", config=config).start()
    try:
        assert d.proc is not None
        pid = d.proc.pid
        assert Path(f"/proc/{pid}/oom_score_adj").read_text().strip() == "-321"
        assert f"0::/{group}" in Path(f"/proc/{pid}/cgroup").read_text()
        assert temp.is_dir() and (temp.stat().st_mode & 0o777) == 0o700
    finally:
        d.stop()
        os.rmdir(f"/sys/fs/cgroup/{group}")


@pytest.mark.parametrize("where", ["main", "imported"])
def test_a_bad_plugin_key_names_the_file_that_set_it_in_corrald_and_validate(
    tmp_path: Path, where: str
) -> None:
    bad = '[plugins."io.containerd.snapshotter.v1.native"]\nno_such_key = 1\n'
    included = tmp_path / "conf.d" / "10-native.toml"
    included.parent.mkdir()
    included.write_text("version = 3\n" + (bad if where == "imported" else ""))
    text = f'version = 3\nimports = ["{included.parent}/*.toml"]\n' + (bad if where == "main" else "")
    result = run_corrald_once(tmp_path / "corral", text)
    main = tmp_path / "corral" / "config.toml"
    culprit = included if where == "imported" else main
    message = f'{culprit}: plugins."io.containerd.snapshotter.v1.native".no_such_key: unknown key'
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"corrald: config error: {message}"
    validate = subprocess.run(
        [CORRAL, "config", "validate", "--config", str(main)], capture_output=True, text=True
    )
    assert validate.returncode != 0
    assert validate.stderr.strip().splitlines()[-1] == f"corral: config error: {message}"
