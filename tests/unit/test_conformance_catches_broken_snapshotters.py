"""The snapshotter conformance suite fails every broken snapshotter, by the check named for what it breaks.

Each broken one passes a check of what it does right, so the failure is the broken property's.
"""

from __future__ import annotations

from pathlib import Path

import broken_snapshotters as broken
import pytest
from tooling import require_root

from corral.plugins.snapshots import conformance as cf
from corral.plugins.snapshots.conformance import _files

pytestmark = pytest.mark.root

CAUGHT = [
    (broken.LinkBreaking, "hard_links_within_a_layer_and_into_children", "are separate files"),
    (broken.FifoDropping, "fifos", "fifo fifo is missing"),
    (broken.OwnerLosing, "owners_and_modes", "is owned"),
    (broken.XattrDropping, "xattrs", "xattrs in a child"),
    (broken.TimeLosing, "timestamps", "modification times"),
    (broken.RecordsFirst, "crash_safety", "half made"),
    (broken.NeverCleansUp, "crash_safety", "leftovers"),
    (broken.CopytreeSnapshotter, "hard_links_within_a_layer_and_into_children", "are separate files"),
    (broken.CopytreeSnapshotter, "fifos", "holding fifos failed: .* is a named pipe"),
    (broken.CopytreeSnapshotter, "device_nodes", "holding device nodes failed"),
    (broken.CopytreeSnapshotter, "deep_trees", "RecursionError|maximum recursion"),
    (broken.CopytreeSnapshotter, "long_names", "File name too long"),
]


@pytest.mark.parametrize(
    ("snapshotter", "check", "message"), CAUGHT, ids=[f"{s.__name__}-{c}" for s, c, _ in CAUGHT]
)
def test_the_check_named_for_what_a_snapshotter_breaks_fails_it(
    snapshotter: cf.Opener, check: str, message: str, tmp_path: Path
) -> None:
    require_root()
    with pytest.raises(Exception, match=message) as failure:
        cf.run(cf.BY_NAME[check], snapshotter, tmp_path)
    assert not isinstance(failure.value, cf.CheckSkipped)


@pytest.mark.parametrize(
    "snapshotter",
    sorted({s for s, _, _ in CAUGHT} - {broken.CopytreeSnapshotter}, key=lambda s: s.__name__),
    ids=lambda s: s.__name__,
)
def test_each_broken_snapshotter_gets_the_rest_right(snapshotter: cf.Opener, tmp_path: Path) -> None:
    require_root()
    cf.run(cf.BY_NAME["files_written_through_mounts_are_seen_by_children"], snapshotter, tmp_path)
    cf.run(cf.BY_NAME["whiteouts_and_opaque_directories"], snapshotter, tmp_path)


def test_a_copy_that_opens_fifos_is_caught_without_hanging(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A copy that reads a fifo waits for ever for a writer: the check stops it and says so."""
    require_root()
    monkeypatch.setattr(_files, "FIFO_TIMEOUT", 3.0)
    with pytest.raises(AssertionError, match="did not finish within 3 s"):
        cf.run(cf.BY_NAME["fifos"], broken.BlindReader, tmp_path)


def test_the_correct_copier_passes_what_its_broken_variants_fail(tmp_path: Path) -> None:
    require_root()
    for check in sorted({c for _, c, _ in CAUGHT}):
        cf.run(cf.BY_NAME[check], broken.Copier, tmp_path)


def test_check_snapshotter_names_every_failed_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require_root()
    monkeypatch.setattr(
        cf,
        "CHECKS",
        tuple(cf.BY_NAME[n] for n in ("labels_are_kept_and_updated_by_field_path", "xattrs", "timestamps")),
    )
    with pytest.raises(cf.ConformanceFailure) as failure:
        cf.check_snapshotter(broken.XattrDropping, tmp_path)
    assert list(failure.value.failures) == ["xattrs"]
