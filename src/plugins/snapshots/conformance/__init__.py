"""What every ``Snapshotter`` must do, built-in, third-party or fake: the snapshotter conformance suite.

Give it your plugin's ``Registration`` (it is started by a kernel, as corrald starts it) and a
scratch directory, one check at a time::

    @pytest.mark.parametrize("check", conformance.CHECKS, ids=conformance.check_name)
    def test_conforms(check, tmp_path):
        conformance.run(check, registration, tmp_path, skip=pytest.skip)

or all at once with ``check_snapshotter(registration, scratch)``. A module-level function
``open(root) -> Snapshotter`` does instead of a registration; either way the crash checks open it
again in child processes, so it must be importable by name. The checks need no test framework,
only anyio; each is ``async def check_x(subject: Subject)``.

What they check, beyond containerd's own suite: the calls and their errors (``_api``); what a
container writes through a snapshot's mounts and what its children and views see — contents,
whiteouts and opaque directories, renames, hard links, fifos, device nodes, sockets, symlinks,
owners and modes, xattrs, sparse files, timestamps, 1,000-level trees, long names, usage, 128
layers (``_files``); and crash safety: SIGKILL inside prepare, commit and remove (``_crash``).
Checks that mount need root; without it they are skipped, saying so.
"""

from __future__ import annotations

from pathlib import Path

import anyio

from corral.plugins.snapshots.conformance import _api, _crash, _files
from corral.plugins.snapshots.conformance._subject import (
    Check,
    CheckSkipped,
    Opener,
    Plugin,
    Subject,
    _needs_root,
    check_name,
    needs_root,
    run,
)
from corral.plugins.snapshots.conformance._trees import (
    Entry,
    Tree,
    committed,
    expect,
    mounted,
    read_tree,
    tree_of,
    tree_of_committed,
    walk_all,
    write,
)

CHECKS: tuple[Check, ...] = (
    _api.check_prepare_commit_and_view_build_a_chain,
    _api.check_stat_and_walk_agree_and_times_are_set,
    _api.check_labels_are_kept_and_updated_by_field_path,
    _api.check_walk_filters_by_kind_parent_labels_and_name,
    _api.check_a_parent_with_children_cannot_be_removed,
    _api.check_a_chain_is_removed_from_the_top_and_keys_are_reused,
    _api.check_concurrent_prepares_on_one_parent,
    _api.check_errors_have_containerds_kinds_and_change_nothing,
    _api.check_cleanup_keeps_every_live_snapshot,
    _api.check_closing_twice_is_harmless,
    _files.check_files_written_through_mounts_are_seen_by_children,
    _files.check_whiteouts_and_opaque_directories,
    _files.check_renames_and_moves_from_lower_layers,
    _files.check_hard_links_within_a_layer_and_into_children,
    _files.check_fifos,
    _files.check_device_nodes,
    _files.check_unix_sockets,
    _files.check_symlinks_relative_absolute_and_dangling,
    _files.check_owners_and_modes,
    _files.check_xattrs,
    _files.check_sparse_files,
    _files.check_timestamps,
    _files.check_deep_trees,
    _files.check_long_names,
    _files.check_usage_counts_what_a_snapshot_writes,
    _files.check_many_layers_stack_in_order,
    _crash.check_crash_safety,
)
"""Every check, in a stable order."""

NEEDS_ROOT: frozenset[Check] = frozenset(_needs_root)
"""The checks in ``CHECKS`` that mount snapshots, and so need root."""

BY_NAME: dict[str, Check] = {check_name(check): check for check in CHECKS}
"""Every check by its name (``hard_links_within_a_layer_and_into_children``)."""


class ConformanceFailure(AssertionError):
    """Some checks failed; ``failures`` maps each one's name to what went wrong."""

    def __init__(self, failures: dict[str, str]) -> None:
        self.failures = failures
        super().__init__("; ".join(f"{name}: {why}" for name, why in failures.items()))


def check_snapshotter(plugin: Plugin, scratch: Path) -> dict[str, str]:
    """Run every check; returns the skipped ones with their reasons, raises ``ConformanceFailure``
    naming every check that failed."""
    skipped: dict[str, str] = {}
    failures: dict[str, str] = {}
    for check in CHECKS:
        directory = scratch / check_name(check)
        directory.mkdir(parents=True, exist_ok=True)
        try:
            anyio.run(check, Subject(plugin, directory))
        except CheckSkipped as exc:
            skipped[check_name(check)] = str(exc)
        except Exception as exc:
            failures[check_name(check)] = f"{type(exc).__name__}: {exc}"
    if failures:
        raise ConformanceFailure(failures)
    return skipped


__all__ = [
    "BY_NAME",
    "CHECKS",
    "NEEDS_ROOT",
    "Check",
    "CheckSkipped",
    "ConformanceFailure",
    "Entry",
    "Opener",
    "Plugin",
    "Subject",
    "Tree",
    "check_name",
    "check_snapshotter",
    "committed",
    "expect",
    "mounted",
    "needs_root",
    "read_tree",
    "run",
    "tree_of",
    "tree_of_committed",
    "walk_all",
    "write",
]
