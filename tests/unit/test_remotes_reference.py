"""The distribution client's minimal reference parser, and the remotes package's public surface."""

from __future__ import annotations

import pytest

import corral.plugins.remotes as remotes
from corral.kernel import InvalidArgument
from corral.plugins.remotes.reference import Reference, parse_reference, validate_digest

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("busybox", Reference("docker.io", "library/busybox")),
        ("busybox:1.36", Reference("docker.io", "library/busybox", "1.36")),
        ("docker.io/busybox:1", Reference("docker.io", "library/busybox", "1")),
        ("user/app:v2", Reference("docker.io", "user/app", "v2")),
        ("localhost/app", Reference("localhost", "app")),
        ("127.0.0.1:5000/x:1", Reference("127.0.0.1:5000", "x", "1")),
        ("registry.example.com/a/b/c:tag", Reference("registry.example.com", "a/b/c", "tag")),
        (f"ghcr.io/o/app@{DIGEST}", Reference("ghcr.io", "o/app", "", DIGEST)),
        (f"ghcr.io/o/app:1@{DIGEST}", Reference("ghcr.io", "o/app", "1", DIGEST)),
        ("[::1]:5000/app:1", Reference("[::1]:5000", "app", "1")),
    ],
)
def test_references_parse_with_docker_hub_normalisation(text: str, expected: Reference) -> None:
    assert parse_reference(text) == expected


def test_a_reference_prints_back_and_names_its_object() -> None:
    ref = parse_reference(f"127.0.0.1:5000/x:1@{DIGEST}")
    assert str(ref) == f"127.0.0.1:5000/x:1@{DIGEST}"
    assert ref.name == "127.0.0.1:5000/x" and ref.object == DIGEST
    assert parse_reference("busybox").object == ""


@pytest.mark.parametrize(
    "text",
    [
        "",
        "example.com/Upper",
        "app:bad tag",
        "app@sha256:short",
        "app@md5:" + "a" * 32,
        "a//b",
        "host:port:x/app:1",
    ],
)
def test_malformed_references_are_invalid_arguments_naming_them(text: str) -> None:
    with pytest.raises(InvalidArgument) as failure:
        parse_reference(text)
    assert repr(text) in str(failure.value)


def test_digests_must_be_of_a_known_algorithm_and_length() -> None:
    assert validate_digest(DIGEST) == DIGEST
    for bad in ("sha256:" + "AB" * 32, "sha512:" + "ab" * 32, "ab" * 32):
        with pytest.raises(InvalidArgument):
            validate_digest(bad)


def test_the_remotes_facade_exports_exactly_its_all() -> None:
    public = {n for n in dir(remotes) if not n.startswith("_")}
    modules = {n for n in public if type(getattr(remotes, n)).__name__ == "module"}
    assert public - modules == set(remotes.__all__)
