"""The OCI vocabulary: references normalised as containerd names images, platforms matched as
containerd's platforms package matches them, digests and chain IDs, and strict parsing of
manifests, indexes and image configs."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from corral.kernel import InvalidArgument
from corral.plugins.images import oci
from corral.plugins.images.oci import Platform

HEX_A, HEX_B, HEX_C = "a" * 64, "b" * 64, "c" * 64
DIGEST = "sha256:" + HEX_A

# --- references ----------------------------------------------------------------------------

NORMALIZED = [
    ("busybox", "docker.io/library/busybox:latest"),
    ("busybox:1.36.1", "docker.io/library/busybox:1.36.1"),
    ("library/busybox", "docker.io/library/busybox:latest"),
    ("docker.io/busybox", "docker.io/library/busybox:latest"),
    ("docker.io/library/busybox:latest", "docker.io/library/busybox:latest"),
    ("index.docker.io/library/busybox:1.36", "docker.io/library/busybox:1.36"),
    ("index.docker.io/busybox", "docker.io/library/busybox:latest"),
    ("me/app", "docker.io/me/app:latest"),
    ("docker.io/library/foo/bar", "docker.io/library/foo/bar:latest"),
    ("localhost/app", "localhost/app:latest"),
    ("localhost:5000/app:dev", "localhost:5000/app:dev"),
    ("LOCALDOMAIN/debian", "LOCALDOMAIN/debian:latest"),
    ("ghcr.io/org/sub/repo:v1", "ghcr.io/org/sub/repo:v1"),
    ("127.0.0.1:5000/debian", "127.0.0.1:5000/debian:latest"),
    ("[fc00::1]:5000/docker/docker", "[fc00::1]:5000/docker/docker:latest"),
    (f"host:5000/repo@{DIGEST}", f"host:5000/repo@{DIGEST}"),
    (f"host:5000/repo:tag@{DIGEST}", f"host:5000/repo@{DIGEST}"),
    (f"busybox@{DIGEST}", f"docker.io/library/busybox@{DIGEST}"),
    ("dock__er/doc-ker---rules.x", "docker.io/dock__er/doc-ker---rules.x:latest"),
]


@pytest.mark.parametrize(("given", "expected"), NORMALIZED)
def test_references_normalise_as_containerd_names_images(given: str, expected: str) -> None:
    assert oci.normalize_reference(given) == expected


INVALID_REFERENCES = [
    "",
    "Busybox",
    "docker/Docker",
    "docker.io/docker/Docker",
    "-docker",
    "-docker/docker",
    "docker-/docker",
    "docker///docker",
    "dock..er/docker",
    "docker/",
    "https://github.com/docker/docker",
    "[fc00::1]",
    "[fc00::1]:5000",
    "fc00::1:5000/debian",
    HEX_A,
    "busybox:",
    "busybox:" + "x" * 129,
    "busybox:-tag",
    "busybox@sha256:xyz",
    f"busybox@sha256:{HEX_A.upper()}",
    "busybox@md5:" + "a" * 32,
    "a:b:c",
    "x/" + "a" * 254,
]


@pytest.mark.parametrize("given", INVALID_REFERENCES)
def test_invalid_references_are_refused(given: str) -> None:
    with pytest.raises(InvalidArgument):
        oci.normalize_reference(given)


def test_a_parsed_reference_has_its_parts() -> None:
    ref = oci.parse_reference(f"localhost:5000/a/b:v1@{DIGEST}")
    assert (ref.domain, ref.path, ref.tag, ref.digest) == ("localhost:5000", "a/b", "v1", DIGEST)
    assert ref.name == "localhost:5000/a/b"
    assert str(ref) == f"localhost:5000/a/b:v1@{DIGEST}"


def test_an_uppercase_repository_is_refused_with_that_reason() -> None:
    with pytest.raises(InvalidArgument, match="lowercase"):
        oci.normalize_reference("docker.io/Library/busybox")


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("docker.io/library/busybox:latest", "busybox:latest"),
        ("docker.io/library/busybox", "busybox:latest"),
        ("docker.io/me/app:1", "me/app:1"),
        ("docker.io/library/foo/bar:2", "library/foo/bar:2"),
        ("ghcr.io/x/y:1", "ghcr.io/x/y:1"),
        (f"docker.io/library/busybox@{DIGEST}", f"busybox@{DIGEST}"),
    ],
)
def test_familiar_names_are_what_docker_manifest_json_lists(given: str, expected: str) -> None:
    assert oci.familiar_reference(given) == expected


@pytest.mark.parametrize(
    ("name", "ref_name"),
    [
        ("docker.io/library/busybox:latest", "latest"),
        ("localhost:5000/a:b", "b"),
        (f"docker.io/library/busybox@{DIGEST}", f"docker.io/library/busybox@{DIGEST}"),
        (f"docker.io/library/busybox:1@{DIGEST}", f"1@{DIGEST}"),
        ("docker.io/library/busybox", "docker.io/library/busybox"),
        ("myindex", "myindex"),
    ],
)
def test_the_oci_ref_name_annotation_is_the_tag_when_there_is_one(name: str, ref_name: str) -> None:
    assert oci.oci_ref_name(name) == ref_name


# --- platforms -----------------------------------------------------------------------------

PARSED = [
    ("linux/amd64", Platform("linux", "amd64")),
    ("linux/x86_64", Platform("linux", "amd64")),
    ("Linux/AMD64", Platform("linux", "amd64")),
    ("linux/aarch64", Platform("linux", "arm64")),
    ("linux/arm64/v8", Platform("linux", "arm64", "v8")),
    ("linux/arm64/8", Platform("linux", "arm64", "v8")),
    ("linux/arm64/v9.0", Platform("linux", "arm64", "v9")),
    ("linux/arm", Platform("linux", "arm")),
    ("linux/arm/7", Platform("linux", "arm", "v7")),
    ("linux/arm/v6", Platform("linux", "arm", "v6")),
    ("linux/armhf", Platform("linux", "arm")),
    ("linux/armel", Platform("linux", "arm", "v6")),
    ("linux/i386", Platform("linux", "386")),
    ("linux/amd64/v1", Platform("linux", "amd64")),
    ("macos/arm64", Platform("darwin", "arm64")),
    ("windows(10.0.17763)/amd64", Platform("windows", "amd64", os_version="10.0.17763")),
    (
        "windows(10.0.17763+win32k)/amd64",
        Platform("windows", "amd64", os_version="10.0.17763", os_features=("win32k",)),
    ),
]


@pytest.mark.parametrize(("spec", "expected"), PARSED)
def test_platform_specifiers_parse_and_normalise_as_containerd(spec: str, expected: Platform) -> None:
    assert Platform.parse(spec) == expected


def test_a_bare_os_or_architecture_is_completed_from_the_host() -> None:
    host = Platform.host()
    assert Platform.parse("linux").architecture == host.architecture
    assert Platform.parse("s390x") == Platform(host.os, "s390x")


@pytest.mark.parametrize(
    "spec", ["linux/*", "linux/am d64", "", "a/b/c/d", "notanos", "linux/arm/v7/x", "li(nux"]
)
def test_malformed_platform_specifiers_are_refused(spec: str) -> None:
    with pytest.raises(InvalidArgument):
        Platform.parse(spec)


def test_platforms_format_back_to_their_specifier() -> None:
    assert str(Platform("linux", "arm64", "v8")) == "linux/arm64/v8"
    assert str(Platform("linux", "amd64")) == "linux/amd64"
    windows = Platform("windows", "amd64", os_version="10.0.17763", os_features=("win32k",))
    assert windows.format_all() == "windows(10.0.17763+win32k)/amd64"
    assert Platform.parse(windows.format_all()) == windows


def test_normalising_maps_aliases_to_canonical_names() -> None:
    assert Platform("linux", "aarch64", "8").normalized() == Platform("linux", "arm64")
    assert Platform("linux", "x86_64", "v1").normalized() == Platform("linux", "amd64")
    assert Platform("linux", "arm", "").normalized() == Platform("linux", "arm", "v7")
    assert Platform("linux", "ARM", "6").normalized() == Platform("linux", "arm", "v6")
    assert Platform("linux", "amd64", os_features=("b", "a", "b")).normalized().os_features == ("a", "b")


MATCHES = [
    # (matcher's platform, candidate, matches)
    ("linux/amd64", "linux/amd64", True),
    ("linux/amd64", "linux/386", True),
    ("linux/amd64", "linux/arm64", False),
    ("linux/amd64", "windows/amd64", False),
    ("linux/amd64/v3", "linux/amd64/v2", True),
    ("linux/amd64/v3", "linux/amd64", True),
    ("linux/amd64/v2", "linux/amd64/v3", False),
    ("linux/arm64", "linux/arm64/v8", True),
    ("linux/arm64", "linux/arm/v8", True),
    ("linux/arm64", "linux/arm/v7", True),
    ("linux/arm64", "linux/arm", True),
    ("linux/arm64", "linux/arm/v5", True),
    ("linux/arm64", "linux/amd64", False),
    ("linux/arm64/v8.2", "linux/arm64/v8.1", True),
    ("linux/arm64/v8.2", "linux/arm64/v8.3", False),
    ("linux/arm64/v9", "linux/arm64/v8.5", True),
    ("linux/arm64/v9", "linux/arm64/v8.6", False),
    ("linux/arm/v7", "linux/arm/v6", True),
    ("linux/arm/v7", "linux/arm/v8", False),
    ("linux/arm/v7", "linux/arm64", False),
    ("linux/arm/v6", "linux/arm/v7", False),
]


@pytest.mark.parametrize(("mine", "candidate", "expected"), MATCHES)
def test_only_matches_the_platform_and_what_it_can_also_run(
    mine: str, candidate: str, expected: bool
) -> None:
    assert oci.only(Platform.parse(mine)).match(Platform.parse(candidate)) is expected


def test_strict_matching_takes_no_lesser_platform() -> None:
    strict = oci.only_strict(Platform.parse("linux/amd64"))
    assert strict.match(Platform("linux", "x86_64"))
    assert not strict.match(Platform("linux", "386"))
    assert not oci.only_strict(Platform.parse("linux/arm/v7")).match(Platform.parse("linux/arm/v6"))


def test_os_features_of_a_candidate_must_be_a_subset_of_the_matchers() -> None:
    matcher = oci.only(Platform("linux", "amd64", os_features=("a", "b")))
    assert matcher.match(Platform("linux", "amd64", os_features=("a",)))
    assert not matcher.match(Platform("linux", "amd64", os_features=("c",)))


def test_windows_matches_os_versions_it_can_run() -> None:
    ltsc2022 = oci.only(Platform("windows", "amd64", os_version="10.0.20348.1"))
    assert ltsc2022.match(Platform("windows", "amd64", os_version="10.0.20348.2"))
    assert not ltsc2022.match(Platform("windows", "amd64", os_version="10.0.17763.1"))
    ltsc2025 = oci.only(Platform("windows", "amd64", os_version="10.0.26100.1"))
    assert ltsc2025.match(Platform("windows", "amd64", os_version="10.0.20348.5"))
    assert ltsc2025.match(Platform("windows", "amd64", os_features=("win32k",)))


def test_candidates_are_ordered_best_match_first() -> None:
    arm64 = [Platform.parse(s) for s in ("linux/arm/v5", "linux/amd64", "linux/arm/v7", "linux/arm64")]
    ordered = oci.by_preference(arm64, oci.only(Platform.parse("linux/arm64")), lambda p: p)
    assert [str(p) for p in ordered] == ["linux/arm64", "linux/arm/v7", "linux/arm/v5"]
    amd64 = [Platform.parse(s) for s in ("linux/386", "linux/amd64")]
    assert oci.by_preference(amd64, oci.only(Platform("linux", "amd64")), lambda p: p)[0] == Platform(
        "linux", "amd64"
    )


def test_the_host_prefers_itself() -> None:
    host = Platform.host()
    others = [Platform("plan9", "mips"), host]
    assert oci.by_preference(others, oci.default_matcher(), lambda p: p) == [host]


def test_entries_without_a_platform_sort_last_and_all_matches_everything() -> None:
    items = [None, Platform("linux", "amd64")]
    assert oci.by_preference(items, oci.ALL, lambda p: p) == [Platform("linux", "amd64"), None]
    assert oci.ALL.match(Platform("plan9", "mips"))


def test_any_of_matches_each_without_preference() -> None:
    matcher = oci.any_of(Platform.parse("linux/amd64"), Platform.parse("linux/arm64"))
    assert matcher.match(Platform.parse("linux/arm64")) and matcher.match(Platform.parse("linux/amd64"))
    assert not matcher.match(Platform.parse("linux/386"))
    assert not matcher.less(Platform.parse("linux/amd64"), Platform.parse("linux/arm64"))


# --- digests and chain IDs -----------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "sha256:xyz",
        "sha256:" + "a" * 63,
        "sha256:" + "a" * 65,
        "sha256:" + "A" * 64,
        "sha256:" + "a" * 63 + "G",
        "md5:" + "a" * 32,
        "sha256:../..",
        "sha256:",
        ":" + "a" * 64,
        "a" * 64,
        "SHA256:" + "a" * 64,
        "sha384:" + "a" * 64,
        "sha512:" + "a" * 96,
        "sha256:" + "a" * 64 + "\n",
        " sha256:" + "a" * 64,
    ],
)
def test_malformed_digests_are_refused(value: str) -> None:
    with pytest.raises(InvalidArgument):
        oci.parse_digest(value)


def test_digests_of_each_supported_algorithm_parse() -> None:
    for algorithm, length in (("sha256", 64), ("sha384", 96), ("sha512", 128)):
        value = f"{algorithm}:{'0' * length}"
        parsed = oci.parse_digest(value)
        assert (parsed.algorithm, parsed.encoded, str(parsed)) == (algorithm, "0" * length, value)


def test_an_unsupported_algorithm_is_named_in_the_error() -> None:
    with pytest.raises(InvalidArgument, match=r"'md5:a+': unsupported digest algorithm"):
        oci.parse_digest("md5:" + "a" * 32)


def test_content_is_verified_against_its_digest() -> None:
    digest = oci.digest_of(b"hello")
    assert digest == "sha256:" + hashlib.sha256(b"hello").hexdigest()
    oci.verify_digest(b"hello", digest)
    with pytest.raises(InvalidArgument, match="expected"):
        oci.verify_digest(b"hellO", digest)
    assert oci.digest_of(b"x", "sha512") == "sha512:" + hashlib.sha512(b"x").hexdigest()


def test_chain_ids_follow_the_image_spec() -> None:
    diff_ids = [f"sha256:{HEX_A}", f"sha256:{HEX_B}", f"sha256:{HEX_C}"]
    # Computed outside Python: printf 'sha256:aaa… sha256:bbb…' | sha256sum, and so on.
    assert oci.chain_ids(diff_ids) == [
        f"sha256:{HEX_A}",
        "sha256:ccd722928bd92476ba1745586fed6e45a102504185ad88cd89e01ff116fd146c",
        "sha256:c1377126441fb2f5ec2c21ae2a60255331d639e830f0ee1b40a36e52d4c40588",
    ]
    assert oci.chain_id(diff_ids) == "sha256:c1377126441fb2f5ec2c21ae2a60255331d639e830f0ee1b40a36e52d4c40588"
    assert oci.chain_id(diff_ids[:1]) == diff_ids[0]
    assert oci.chain_id([]) == ""
    with pytest.raises(InvalidArgument):
        oci.chain_ids(["sha256:nothex"])


# --- documents -----------------------------------------------------------------------------


def descriptor(media_type: str = oci.OCI_LAYER_GZIP, digest: str = DIGEST, size: Any = 3) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest, "size": size}


def manifest_doc(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": oci.OCI_MANIFEST,
        "config": descriptor(oci.OCI_CONFIG),
        "layers": [descriptor()],
    }
    doc.update(changes)
    return {k: v for k, v in doc.items() if v is not ...}


def encode(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def test_a_manifest_parses_with_its_descriptors() -> None:
    manifest = oci.parse_manifest(encode(manifest_doc(annotations={"k": "v"})), oci.OCI_MANIFEST)
    assert manifest.media_type == oci.OCI_MANIFEST
    assert manifest.config == oci.Descriptor(oci.OCI_CONFIG, DIGEST, 3)
    assert manifest.layers == (oci.Descriptor(oci.OCI_LAYER_GZIP, DIGEST, 3),)
    assert manifest.annotations == {"k": "v"}
    assert oci.parse_manifest(manifest.encode()) == manifest


def test_a_docker_manifest_parses_and_a_missing_media_type_takes_the_descriptors() -> None:
    docker = oci.parse_manifest(encode(manifest_doc(mediaType=oci.DOCKER_MANIFEST)))
    assert docker.media_type == oci.DOCKER_MANIFEST
    bare = oci.parse_manifest(encode(manifest_doc(mediaType=...)), oci.DOCKER_MANIFEST)
    assert bare.media_type == oci.DOCKER_MANIFEST


BAD_MANIFESTS = [
    (manifest_doc(schemaVersion=1), "schemaVersion 1"),
    (manifest_doc(schemaVersion=...), "schemaVersion is required"),
    (manifest_doc(mediaType=oci.OCI_INDEX), "is not an image manifest"),
    (manifest_doc(mediaType=oci.DOCKER_MANIFEST), "does not match its descriptor"),
    (manifest_doc(config=...), "config is required"),
    (manifest_doc(layers=...), "layers is required"),
    (manifest_doc(layers=[descriptor(digest="sha256:xyz")]), r"layers\[0\]: digest"),
    (manifest_doc(layers=[descriptor(size=-1)]), "negative"),
    (manifest_doc(layers=[descriptor(size="3")]), "must be an integer"),
    (manifest_doc(layers=[descriptor(size=True)]), "must be an integer"),
    (manifest_doc(layers=[{"digest": DIGEST, "size": 1}]), "mediaType is required"),
    (manifest_doc(layers=[{"mediaType": oci.OCI_LAYER, "digest": DIGEST}]), "size is required"),
    (manifest_doc(layers=[descriptor() | {"annotations": {"k": 1}}]), "annotations"),
    (manifest_doc(manifests=[]), "an index"),
    (
        manifest_doc(config=descriptor(oci.OCI_CONFIG) | {"platform": {"os": "linux"}}),
        "architecture is required",
    ),
]


@pytest.mark.parametrize(("doc", "message"), BAD_MANIFESTS)
def test_malformed_manifests_are_refused_with_a_clear_message(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        oci.parse_manifest(encode(doc), oci.OCI_MANIFEST)


def test_a_manifest_declared_as_something_else_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="is not an image manifest"):
        oci.parse_manifest(encode(manifest_doc()), oci.OCI_INDEX)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not json", "not valid JSON"),
        (b"[]", "must be a JSON object"),
        (b'{"schemaVersion": 2, "schemaVersion": 2}', "duplicate key"),
        (b"\xff\xfe{}", "not valid JSON"),
        (b'{"schemaVersion": NaN}', "not valid JSON"),
    ],
)
def test_documents_that_are_not_json_objects_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        oci.parse_manifest(data)


def test_an_index_parses_with_platforms() -> None:
    entry = descriptor(oci.OCI_MANIFEST) | {
        "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}
    }
    index = oci.parse_index(encode({"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": [entry]}))
    assert index.manifests[0].platform == Platform("linux", "arm64", "v8")
    assert oci.parse_index(index.encode()) == index
    docker = oci.parse_index(encode({"schemaVersion": 2, "manifests": []}), oci.DOCKER_MANIFEST_LIST)
    assert docker.media_type == oci.DOCKER_MANIFEST_LIST


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"schemaVersion": 2, "mediaType": oci.OCI_INDEX}, "manifests is required"),
        ({"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST, "manifests": []}, "is not an image index"),
        ({"schemaVersion": 2, "manifests": [], "layers": []}, "a manifest"),
        (
            {"schemaVersion": 2, "manifests": [descriptor(digest="sha256:" + "a" * 63)]},
            "invalid checksum digest length",
        ),
        (
            {"schemaVersion": 2, "manifests": [{"mediaType": oci.OCI_MANIFEST, "size": 1}]},
            "digest is required",
        ),
        ({"schemaVersion": 2, "manifests": "x"}, "must be a list of objects"),
    ],
)
def test_malformed_indexes_are_refused(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        oci.parse_index(encode(doc))


def config_doc(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["A=1"], "Cmd": ["sh"], "Entrypoint": None, "WorkingDir": "/w", "User": "1:1"},
        "rootfs": {"type": "layers", "diff_ids": [DIGEST]},
        "history": [{"created_by": "x"}],
    }
    doc.update(changes)
    return {k: v for k, v in doc.items() if v is not ...}


def test_an_image_config_parses_its_platform_run_settings_and_diff_ids() -> None:
    config = oci.parse_image_config(encode(config_doc(variant="v8", architecture="aarch64")))
    assert config.diff_ids == (DIGEST,)
    assert config.config.env == ("A=1",) and config.config.cmd == ("sh",) and config.config.entrypoint == ()
    assert (config.config.working_dir, config.config.user) == ("/w", "1:1")
    assert config.platform == Platform("linux", "arm64")
    assert config.history[0].created_by == "x"
    assert oci.parse_image_config(config.encode()) == config


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (config_doc(os=...), "os is required"),
        (config_doc(architecture=5), "architecture must be a string"),
        (config_doc(rootfs=...), "rootfs is required"),
        (config_doc(rootfs={"type": "layered", "diff_ids": []}), "is not 'layers'"),
        (config_doc(rootfs={"type": "layers", "diff_ids": ["sha256:zz"]}), r"diff_ids\[0\]"),
        (config_doc(config={"Env": "A=1"}), "Env must be a list"),
        (config_doc(history=[{"empty_layer": "yes"}]), "empty_layer must be a boolean"),
    ],
)
def test_malformed_image_configs_are_refused(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        oci.parse_image_config(encode(doc))


def test_documents_encode_as_go_does() -> None:
    assert oci.go_json({"b": "<&>", "a": [1, "é"]}) == '{"b":"\\u003c\\u0026\\u003e","a":[1,"é"]}'.encode()
    desc = oci.Descriptor(
        oci.OCI_MANIFEST, DIGEST, 1, {"z": "1", "a": "2"}, platform=Platform("linux", "amd64")
    )
    assert oci.go_json(desc.to_json()) == (
        b'{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"'
        + DIGEST.encode()
        + b'","size":1,'
        b'"annotations":{"a":"2","z":"1"},"platform":{"architecture":"amd64","os":"linux"}}'
    )


def test_media_types_are_classified() -> None:
    assert oci.is_index(oci.DOCKER_MANIFEST_LIST) and oci.is_manifest(oci.DOCKER_MANIFEST)
    assert oci.is_layer(oci.OCI_LAYER_ZSTD) and oci.is_layer(oci.DOCKER_FOREIGN_LAYER_GZIP)
    assert oci.is_layer(oci.OCI_LAYER_GZIP + "+encrypted")
    assert not oci.is_layer(oci.OCI_CONFIG)
    assert oci.is_nondistributable(oci.OCI_LAYER_NONDISTRIBUTABLE_GZIP)
    assert oci.is_nondistributable(oci.DOCKER_FOREIGN_LAYER)
    assert not oci.is_nondistributable(oci.OCI_LAYER)


@pytest.mark.parametrize("module", ["oci", "archive", "build"])
def test_each_images_module_exports_exactly_its_all(module: str) -> None:
    import importlib

    mod = importlib.import_module(f"corral.plugins.images.{module}")
    public = {n for n in dir(mod) if not n.startswith("_") and type(getattr(mod, n)).__name__ != "module"}
    public -= {"annotations"}
    assert public == set(mod.__all__)
