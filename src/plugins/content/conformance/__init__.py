"""What every ``ContentStore`` must do, built-in, third-party or fake: the content conformance suite.

Give it your plugin's ``Registration`` (it is started by a kernel, as corrald starts it) and a
scratch directory, one check at a time::

    @pytest.mark.parametrize("check", conformance.CHECKS, ids=conformance.check_name)
    def test_conforms(check, tmp_path):
        conformance.run(check, registration, tmp_path, skip=pytest.skip)

or all at once with ``check_content_store(registration, scratch)``. A module-level function
``open(root) -> ContentStore`` does instead of a registration; pass ``durable=False`` for a store
that keeps nothing across a restart (an in-memory fake), which skips the crash checks. The checks
need no test framework, only anyio; each is ``async def check_x(subject: Subject)``.

Beyond containerd's own suite: every error kind, one writer per ref with hand-over, resume after
a SIGKILL of the writing process and after every fraction, commits cut short, the empty blob end
to end, and a blob of hundreds of MiB streamed through without the store holding it in memory.
"""

from __future__ import annotations

from pathlib import Path

import anyio

from corral.plugins.content.conformance import _checks, _crash
from corral.plugins.content.conformance._blobs import (
    EMPTY_DIGEST,
    MALFORMED_DIGESTS,
    digest_of,
    drain,
    expect,
    ingest,
    list_all,
    partial_ingest,
    payload,
    read_all,
)
from corral.plugins.content.conformance._subject import (
    Check,
    CheckSkipped,
    Opener,
    Plugin,
    Subject,
    check_name,
    durable_only,
    run,
)

CHECKS: tuple[Check, ...] = (
    _checks.check_implements_the_protocols,
    _checks.check_ingest_commit_info_read_round_trip,
    _checks.check_writers_with_and_without_size_and_digest,
    _checks.check_the_empty_blob_end_to_end,
    _checks.check_commit_without_size_or_digest_takes_what_was_written,
    _checks.check_status_reports_progress_total_and_expected,
    _checks.check_status_follows_the_ingest,
    _checks.check_an_ingest_resumes_where_it_stopped,
    _checks.check_a_ref_reopened_for_another_total_starts_again,
    _checks.check_an_ingest_resumes_after_every_fraction,
    _checks.check_one_writer_per_ref,
    _checks.check_a_waiting_writer_gets_the_ref_once_it_is_closed,
    _checks.check_commit_ends_the_writer_whatever_the_outcome,
    _checks.check_commit_error_states,
    _checks.check_a_closed_writer_refuses_work,
    _checks.check_expected_blob_that_exists_aborts_the_ingest,
    _checks.check_committing_an_existing_blob_removes_the_ingest,
    _checks.check_size_mismatch_leaves_the_ingest_resumable,
    _checks.check_digest_mismatch_leaves_the_ingest_resumable,
    _checks.check_truncate_to_zero_restarts_the_ingest,
    _checks.check_abort_removes_an_ingest,
    _checks.check_abort_removes_an_ingest_from_under_its_writer,
    _checks.check_list_enumerates_committed_blobs,
    _checks.check_delete_removes_a_blob,
    _checks.check_read_returns_bounded_chunks_from_offset_and_size,
    _checks.check_a_reader_may_stop_early,
    _checks.check_malformed_digests_are_invalid_arguments,
    _checks.check_malformed_refs_and_sizes_are_invalid_arguments,
    _checks.check_missing_things_are_not_found,
    _checks.check_concurrent_writers_on_different_refs_land_intact,
    _checks.check_a_huge_blob_is_streamed_through,
    _crash.check_an_ingest_survives_its_writer_being_killed,
)
"""Every check, in a stable order."""

BY_NAME: dict[str, Check] = {check_name(check): check for check in CHECKS}
"""Every check by its name (``a_huge_blob_is_streamed_through``)."""


class ConformanceFailure(AssertionError):
    """Some checks failed; ``failures`` maps each one's name to what went wrong."""

    def __init__(self, failures: dict[str, str]) -> None:
        self.failures = failures
        super().__init__("; ".join(f"{name}: {why}" for name, why in failures.items()))


def check_content_store(plugin: Plugin, scratch: Path, *, durable: bool = True) -> dict[str, str]:
    """Run every check; returns the skipped ones with their reasons, raises ``ConformanceFailure``
    naming every check that failed."""
    skipped: dict[str, str] = {}
    failures: dict[str, str] = {}
    for check in CHECKS:
        directory = scratch / check_name(check)
        directory.mkdir(parents=True, exist_ok=True)
        try:
            anyio.run(check, Subject(plugin, directory, durable))
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
    "EMPTY_DIGEST",
    "MALFORMED_DIGESTS",
    "Check",
    "CheckSkipped",
    "ConformanceFailure",
    "Opener",
    "Plugin",
    "Subject",
    "check_content_store",
    "check_name",
    "digest_of",
    "drain",
    "durable_only",
    "expect",
    "ingest",
    "list_all",
    "partial_ingest",
    "payload",
    "read_all",
    "run",
]
