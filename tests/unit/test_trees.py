"""Removing trees of any depth, by descriptor, without following symlinks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from deep_trees import deep_tree

from corral.plugins.core.trees import KEEP_OPEN, remove_tree


def test_a_tree_10000_levels_deep_is_removed(tmp_path: Path) -> None:
    tree = deep_tree(tmp_path / "t", 10_000)
    remove_tree(tree)
    assert not tree.exists()


def test_removal_holds_a_bounded_number_of_descriptors(tmp_path: Path) -> None:
    # One process, a low descriptor limit: a walk that kept every level open would hit EMFILE.
    tree = deep_tree(tmp_path / "t", 3_000)
    code = (
        "import resource, sys\n"
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({KEEP_OPEN + 40}, {KEEP_OPEN + 40}))\n"
        "from corral.plugins.core.trees import remove_tree\n"
        "remove_tree(sys.argv[1])\n"
    )
    subprocess.run([sys.executable, "-c", code, str(tree)], check=True)
    assert not tree.exists()


def test_symlinks_are_removed_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("x")
    tree = tmp_path / "t"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "a" / "link").symlink_to(outside)
    (tree / "a" / "b" / "dangling").symlink_to(tmp_path / "nowhere")
    os.mkfifo(tree / "fifo")
    remove_tree(tree)
    assert not tree.exists()
    assert (outside / "keep").read_text() == "x"


def test_a_symlink_given_as_the_tree_is_removed_itself(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.mkdir()
    (target / "keep").write_text("x")
    link = tmp_path / "link"
    link.symlink_to(target)
    remove_tree(link)
    assert not os.path.lexists(link)
    assert (target / "keep").exists()


def test_a_missing_tree_is_fine(tmp_path: Path) -> None:
    remove_tree(tmp_path / "nothing")


def test_wide_directories_are_removed(tmp_path: Path) -> None:
    tree = tmp_path / "t"
    for i in range(200):
        (tree / f"d{i}" / "x").mkdir(parents=True)
        (tree / f"f{i}").write_text("y")
    remove_tree(tree)
    assert not tree.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="chattr +i needs root")
def test_an_entry_that_cannot_be_removed_raises_and_the_rest_can_be_retried(tmp_path: Path) -> None:
    tree = tmp_path / "t"
    (tree / "a").mkdir(parents=True)
    stuck = tree / "a" / "stuck"
    stuck.write_text("x")
    if subprocess.run(["chattr", "+i", str(stuck)], capture_output=True).returncode != 0:
        pytest.skip("this file system has no immutable attribute")
    try:
        with pytest.raises(PermissionError):
            remove_tree(tree)
    finally:
        subprocess.run(["chattr", "-i", str(stuck)], check=True)
    remove_tree(tree)
    assert not tree.exists()
