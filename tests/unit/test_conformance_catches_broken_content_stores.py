"""The content conformance suite fails every broken content store, by the check named for what it breaks.

Each broken one passes a check of what it does right, so the failure is the broken property's.
"""

from __future__ import annotations

from pathlib import Path

import broken_content_stores as broken
import pytest

from corral.plugins.content import conformance as cf

CAUGHT = [
    (broken.ResumeLosesBytes, "an_ingest_survives_its_writer_being_killed", "resumed at 0, status said"),
    (broken.AcceptsWrongDigest, "digest_mismatch_leaves_the_ingest_resumable", "expected FailedPrecondition"),
    (broken.AcceptsWrongDigest, "commit_error_states", "expected FailedPrecondition"),
    (broken.ReadsWholeBlobs, "read_returns_bounded_chunks_from_offset_and_size", "read in chunks of"),
    (broken.ReadsWholeBlobs, "a_huge_blob_is_streamed_through", "a read chunk of"),
    (broken.LaxDigests, "malformed_digests_are_invalid_arguments", "expected InvalidArgument, got NotFound"),
    (broken.SharesRefs, "one_writer_per_ref", "expected Unavailable"),
    (broken.SharesRefs, "a_waiting_writer_gets_the_ref_once_it_is_closed", "while the first still held it"),
    (
        broken.KeepsIngestsInMemory,
        "a_huge_blob_is_streamed_through",
        "must stream blobs, not keep them in memory",
    ),
    (broken.KeepsIngestsInMemory, "an_ingest_survives_its_writer_being_killed", "the bytes are lost"),
]


@pytest.mark.parametrize(
    ("store", "check", "message"), CAUGHT, ids=[f"{s.__name__}-{c}" for s, c, _ in CAUGHT]
)
def test_the_check_named_for_what_a_store_breaks_fails_it(
    store: cf.Opener, check: str, message: str, tmp_path: Path
) -> None:
    with pytest.raises(AssertionError, match=message):
        cf.run(cf.BY_NAME[check], store, tmp_path)


@pytest.mark.parametrize(
    "store", sorted({s for s, _, _ in CAUGHT}, key=lambda s: s.__name__), ids=lambda s: s.__name__
)
def test_each_broken_store_gets_the_rest_right(store: cf.Opener, tmp_path: Path) -> None:
    for check in (
        "ingest_commit_info_read_round_trip",
        "an_ingest_resumes_where_it_stopped",
        "the_empty_blob_end_to_end",
    ):
        cf.run(cf.BY_NAME[check], store, tmp_path)


def test_check_content_store_names_every_failed_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = (
        "ingest_commit_info_read_round_trip",
        "digest_mismatch_leaves_the_ingest_resumable",
        "commit_error_states",
    )
    monkeypatch.setattr(cf, "CHECKS", tuple(cf.BY_NAME[n] for n in names))
    with pytest.raises(cf.ConformanceFailure) as failure:
        cf.check_content_store(broken.AcceptsWrongDigest, tmp_path)
    assert list(failure.value.failures) == [
        "digest_mismatch_leaves_the_ingest_resumable",
        "commit_error_states",
    ]
