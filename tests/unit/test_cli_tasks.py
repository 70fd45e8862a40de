"""The task commands' pure parts: signals by name or number, and remapping a tree's owners."""

from __future__ import annotations

import os
import signal
import stat
from pathlib import Path

import pytest

from corral.api.cli.tasks import parse_signal, remap_tree
from corral.kernel import InvalidArgument
from corral.plugins.runtimes.spec import parse_id_map


@pytest.mark.parametrize(
    ("text", "number"), [("SIGKILL", 9), ("kill", 9), ("TERM", 15), ("9", 9), ("sigusr1", 10)]
)
def test_a_signal_is_named_as_ctr_names_it(text: str, number: int) -> None:
    assert parse_signal(text) == number == int(signal.Signals(number))


def test_an_unknown_signal_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="unknown signal"):
        parse_signal("SIGNOPE")


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_remapping_gives_each_owner_its_host_id_in_every_range(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    tool = tmp_path / "bin" / "tool"
    tool.write_text("x")
    os.chown(tool, 0, 0)
    tool.chmod(0o4755)
    user_file = tmp_path / "home"
    user_file.write_text("y")
    os.chown(user_file, 1001, 1001)
    (tmp_path / "link").symlink_to("bin/tool")
    uids = parse_id_map(["0:666:1000", "1000:6666:64536"], "uid")
    gids = parse_id_map(["0:777:1000", "1000:7777:64536"], "gid")
    remap_tree(tmp_path, uids, gids)
    assert (tool.stat().st_uid, tool.stat().st_gid) == (666, 777)
    assert stat.S_IMODE(tool.stat().st_mode) == 0o4755  # the set-uid bit a chown clears is back
    assert (user_file.stat().st_uid, user_file.stat().st_gid) == (6667, 7778)
    assert os.lstat(tmp_path / "link").st_uid == 666
    assert (tmp_path / "bin").stat().st_uid == 666
