"""Image archives: reading an OCI layout or ``docker save`` tar as a stream of blobs, and writing
the OCI archive containerd's exporter writes.

Reading never holds an archive in memory: ``ArchiveReader.blobs`` (or ``ablobs``) hands out each
member in tar order for the caller to ingest, then ``contents()`` resolves the index, manifests
and configs (for a docker archive, the OCI view containerd's importer synthesises) and
``ArchiveContents.image_names`` gives the names ``ctr images import`` would create. Writing is
planned from the images' documents (``plan_oci_archive``) and streamed blob by blob.
"""

from corral.plugins.images._reader import (
    DOCKER_MANIFEST_FILE,
    INDEX_FILE,
    OCI_LAYOUT_FILE,
    ArchiveReader,
    AsyncReadable,
    Blob,
    Readable,
    clean_member_name,
    read_archive,
)
from corral.plugins.images._resolve import (
    OCI_LAYOUT_VERSION,
    ArchiveContents,
    ArchiveFormat,
    ImageName,
)
from corral.plugins.images._writer import (
    ArchivePlan,
    ExportImage,
    PlannedMember,
    missing_documents,
    plan_oci_archive,
    write_oci_archive,
)

__all__ = [
    "DOCKER_MANIFEST_FILE",
    "INDEX_FILE",
    "OCI_LAYOUT_FILE",
    "OCI_LAYOUT_VERSION",
    "ArchiveContents",
    "ArchiveFormat",
    "ArchivePlan",
    "ArchiveReader",
    "AsyncReadable",
    "Blob",
    "ExportImage",
    "ImageName",
    "PlannedMember",
    "Readable",
    "clean_member_name",
    "missing_documents",
    "plan_oci_archive",
    "read_archive",
    "write_oci_archive",
]
