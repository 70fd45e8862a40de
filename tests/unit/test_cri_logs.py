"""The kubelet's log record format as CRI's container logger writes it."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from corral.kernel import InvalidArgument
from corral.plugins.cri.containers import MAX_LOG_LINE, kubelet_log_lines
from corral.plugins.cri.sandboxes import find_by_prefix, sandbox_name
from corral.plugins.sandbox import PodSandboxSpec

AT = datetime(2026, 1, 2, 3, 4, 5, 120000, tzinfo=UTC)


def test_complete_lines_are_full_records_and_the_unfinished_tail_is_kept() -> None:
    records, tail = kubelet_log_lines("stdout", b"one\ntwo\nthr", AT)
    assert records == b"2026-01-02T03:04:05.12Z stdout F one\n2026-01-02T03:04:05.12Z stdout F two\n"
    assert tail == b"thr"


def test_a_whole_second_has_no_fraction_and_an_empty_line_is_a_record() -> None:
    records, tail = kubelet_log_lines("stderr", b"\n", datetime(2026, 1, 2, tzinfo=UTC))
    assert (records, tail) == (b"2026-01-02T00:00:00Z stderr F \n", b"")


def test_a_line_longer_than_the_limit_is_split_into_partial_records() -> None:
    data = b"x" * (MAX_LOG_LINE + 5) + b"\n"
    records, tail = kubelet_log_lines("stdout", data, AT)
    first, second = records.splitlines()
    assert first.split(b" ", 3)[2:] == [b"P", b"x" * MAX_LOG_LINE]
    assert second.split(b" ", 3)[2:] == [b"F", b"xxxxx"]
    assert tail == b""


def test_ids_resolve_by_unique_prefix_as_containerds_truncindex() -> None:
    ids = ["abc1", "abd2"]
    assert find_by_prefix(ids, "abc") == "abc1"
    for bad, text in (("", "prefix can't be empty"), ("ab", "multiple IDs found with provided prefix: ab")):
        with pytest.raises(InvalidArgument) as failed:
            find_by_prefix(ids, bad)
        assert str(failed.value) == text


def test_a_sandbox_name_joins_name_namespace_uid_and_attempt() -> None:
    assert sandbox_name(PodSandboxSpec(name="n", namespace="ns", uid="u", attempt=3)) == "n_ns_u_3"
