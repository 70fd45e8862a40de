"""The names a pull or push reports blobs under (containerd's ref keys), and the byte-count
reports' pacing."""

from __future__ import annotations

from corral.plugins.images import oci
from corral.plugins.transfer import Progress
from corral.plugins.transfer._registry import BlobProgress, ref_key

DIGEST = "sha256:" + "ab" * 32


def test_ref_keys_are_containerds() -> None:
    assert ref_key(oci.Descriptor(oci.OCI_LAYER_GZIP, DIGEST, 1)) == f"layer-{DIGEST}"
    assert ref_key(oci.Descriptor(oci.DOCKER_MANIFEST, DIGEST, 1)) == f"manifest-{DIGEST}"
    assert ref_key(oci.Descriptor(oci.OCI_INDEX, DIGEST, 1)) == f"index-{DIGEST}"
    assert ref_key(oci.Descriptor(oci.OCI_CONFIG, DIGEST, 1)) == f"config-{DIGEST}"
    named = oci.Descriptor(oci.OCI_MANIFEST, DIGEST, 1, {oci.ANNOTATION_REF_NAME: "v1"})
    assert ref_key(named) == f"manifest-v1@{DIGEST}"
    assert ref_key(oci.Descriptor("application/x-other", DIGEST, 1)) == f"unknown-{DIGEST}"


def test_byte_counts_are_paced_but_a_forced_report_always_goes() -> None:
    seen: list[Progress] = []
    desc = oci.Descriptor(oci.OCI_LAYER_GZIP, DIGEST, 100)
    blob = BlobProgress(seen.append, "downloading", ref_key(desc), ("manifest-x",), desc)
    blob.moved(10)
    blob.moved(20)  # within the interval: not reported
    blob.moved(20, force=True)
    blob.moved(20, force=True)  # no new bytes: not reported again
    assert [(p.event, p.progress, p.total, p.parents) for p in seen] == [
        ("downloading", 10, 100, ("manifest-x",)),
        ("downloading", 20, 100, ("manifest-x",)),
    ]
    blob.state("complete")
    assert seen[-1].event == "complete" and seen[-1].progress == 100 and seen[-1].desc is not None
