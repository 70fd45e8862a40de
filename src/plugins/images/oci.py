"""The OCI image-spec and Docker schema 2 vocabulary: media types, descriptors, platforms,
manifests, indexes, image configs, digests, chain IDs and image references.

Pure functions and frozen records, shared by the image store, import/export, unpack and pulls.
Everything parsed from bytes is validated; malformed input is ``InvalidArgument`` with a message
that names the document and the field.

Names load on first use (PEP 562): a plugin that reads one platform or one JSON helper at start-up
imports that module, not the whole vocabulary (the reference grammar's and the documents' parsers).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from corral.kernel import names_on_first_use

if TYPE_CHECKING:
    from corral.plugins.images._digest import ALGORITHMS as ALGORITHMS
    from corral.plugins.images._digest import CANONICAL as CANONICAL
    from corral.plugins.images._digest import Digest as Digest
    from corral.plugins.images._digest import chain_id as chain_id
    from corral.plugins.images._digest import chain_ids as chain_ids
    from corral.plugins.images._digest import digest_of as digest_of
    from corral.plugins.images._digest import parse_digest as parse_digest
    from corral.plugins.images._digest import validate_digest as validate_digest
    from corral.plugins.images._digest import verify_digest as verify_digest
    from corral.plugins.images._documents import ANNOTATION_IMAGE_NAME as ANNOTATION_IMAGE_NAME
    from corral.plugins.images._documents import ANNOTATION_MANIFEST_SUBJECT as ANNOTATION_MANIFEST_SUBJECT
    from corral.plugins.images._documents import ANNOTATION_REF_NAME as ANNOTATION_REF_NAME
    from corral.plugins.images._documents import ContainerConfig as ContainerConfig
    from corral.plugins.images._documents import Descriptor as Descriptor
    from corral.plugins.images._documents import HistoryEntry as HistoryEntry
    from corral.plugins.images._documents import ImageConfig as ImageConfig
    from corral.plugins.images._documents import Index as Index
    from corral.plugins.images._documents import Manifest as Manifest
    from corral.plugins.images._documents import descriptor_from_json as descriptor_from_json
    from corral.plugins.images._documents import parse_image_config as parse_image_config
    from corral.plugins.images._documents import parse_index as parse_index
    from corral.plugins.images._documents import parse_manifest as parse_manifest
    from corral.plugins.images._documents import platform_from_json as platform_from_json
    from corral.plugins.images._documents import platform_to_json as platform_to_json
    from corral.plugins.images._json import JSON_LIMIT as JSON_LIMIT
    from corral.plugins.images._json import go_json as go_json
    from corral.plugins.images._mediatypes import CONFIG_TYPES as CONFIG_TYPES
    from corral.plugins.images._mediatypes import DOCKER_CONFIG as DOCKER_CONFIG
    from corral.plugins.images._mediatypes import DOCKER_FOREIGN_LAYER as DOCKER_FOREIGN_LAYER
    from corral.plugins.images._mediatypes import DOCKER_FOREIGN_LAYER_GZIP as DOCKER_FOREIGN_LAYER_GZIP
    from corral.plugins.images._mediatypes import DOCKER_LAYER as DOCKER_LAYER
    from corral.plugins.images._mediatypes import DOCKER_LAYER_GZIP as DOCKER_LAYER_GZIP
    from corral.plugins.images._mediatypes import DOCKER_LAYER_ZSTD as DOCKER_LAYER_ZSTD
    from corral.plugins.images._mediatypes import DOCKER_MANIFEST as DOCKER_MANIFEST
    from corral.plugins.images._mediatypes import DOCKER_MANIFEST_LIST as DOCKER_MANIFEST_LIST
    from corral.plugins.images._mediatypes import INDEX_TYPES as INDEX_TYPES
    from corral.plugins.images._mediatypes import MANIFEST_TYPES as MANIFEST_TYPES
    from corral.plugins.images._mediatypes import OCI_CONFIG as OCI_CONFIG
    from corral.plugins.images._mediatypes import OCI_EMPTY as OCI_EMPTY
    from corral.plugins.images._mediatypes import OCI_INDEX as OCI_INDEX
    from corral.plugins.images._mediatypes import OCI_LAYER as OCI_LAYER
    from corral.plugins.images._mediatypes import OCI_LAYER_GZIP as OCI_LAYER_GZIP
    from corral.plugins.images._mediatypes import OCI_LAYER_NONDISTRIBUTABLE as OCI_LAYER_NONDISTRIBUTABLE
    from corral.plugins.images._mediatypes import (
        OCI_LAYER_NONDISTRIBUTABLE_GZIP as OCI_LAYER_NONDISTRIBUTABLE_GZIP,
    )
    from corral.plugins.images._mediatypes import (
        OCI_LAYER_NONDISTRIBUTABLE_ZSTD as OCI_LAYER_NONDISTRIBUTABLE_ZSTD,
    )
    from corral.plugins.images._mediatypes import OCI_LAYER_ZSTD as OCI_LAYER_ZSTD
    from corral.plugins.images._mediatypes import OCI_LAYOUT_HEADER as OCI_LAYOUT_HEADER
    from corral.plugins.images._mediatypes import OCI_MANIFEST as OCI_MANIFEST
    from corral.plugins.images._mediatypes import is_config as is_config
    from corral.plugins.images._mediatypes import is_index as is_index
    from corral.plugins.images._mediatypes import is_layer as is_layer
    from corral.plugins.images._mediatypes import is_manifest as is_manifest
    from corral.plugins.images._mediatypes import is_nondistributable as is_nondistributable
    from corral.plugins.images._platforms import ALL as ALL
    from corral.plugins.images._platforms import AnyOf as AnyOf
    from corral.plugins.images._platforms import Ordered as Ordered
    from corral.plugins.images._platforms import Platform as Platform
    from corral.plugins.images._platforms import PlatformMatcher as PlatformMatcher
    from corral.plugins.images._platforms import any_of as any_of
    from corral.plugins.images._platforms import by_preference as by_preference
    from corral.plugins.images._platforms import compatible as compatible
    from corral.plugins.images._platforms import default_matcher as default_matcher
    from corral.plugins.images._platforms import default_strict_matcher as default_strict_matcher
    from corral.plugins.images._platforms import only as only
    from corral.plugins.images._platforms import only_strict as only_strict
    from corral.plugins.images._platforms import ordered as ordered
    from corral.plugins.images._reference import DEFAULT_DOMAIN as DEFAULT_DOMAIN
    from corral.plugins.images._reference import DEFAULT_TAG as DEFAULT_TAG
    from corral.plugins.images._reference import Reference as Reference
    from corral.plugins.images._reference import familiar_reference as familiar_reference
    from corral.plugins.images._reference import normalize_reference as normalize_reference
    from corral.plugins.images._reference import oci_ref_name as oci_ref_name
    from corral.plugins.images._reference import parse_docker_ref as parse_docker_ref
    from corral.plugins.images._reference import parse_normalized as parse_normalized
    from corral.plugins.images._reference import parse_reference as parse_reference

_SOURCES = {
    "ALGORITHMS": "corral.plugins.images._digest",
    "CANONICAL": "corral.plugins.images._digest",
    "Digest": "corral.plugins.images._digest",
    "chain_id": "corral.plugins.images._digest",
    "chain_ids": "corral.plugins.images._digest",
    "digest_of": "corral.plugins.images._digest",
    "parse_digest": "corral.plugins.images._digest",
    "validate_digest": "corral.plugins.images._digest",
    "verify_digest": "corral.plugins.images._digest",
    "ANNOTATION_IMAGE_NAME": "corral.plugins.images._documents",
    "ANNOTATION_MANIFEST_SUBJECT": "corral.plugins.images._documents",
    "ANNOTATION_REF_NAME": "corral.plugins.images._documents",
    "ContainerConfig": "corral.plugins.images._documents",
    "Descriptor": "corral.plugins.images._documents",
    "HistoryEntry": "corral.plugins.images._documents",
    "ImageConfig": "corral.plugins.images._documents",
    "Index": "corral.plugins.images._documents",
    "Manifest": "corral.plugins.images._documents",
    "descriptor_from_json": "corral.plugins.images._documents",
    "parse_image_config": "corral.plugins.images._documents",
    "parse_index": "corral.plugins.images._documents",
    "parse_manifest": "corral.plugins.images._documents",
    "platform_from_json": "corral.plugins.images._documents",
    "platform_to_json": "corral.plugins.images._documents",
    "JSON_LIMIT": "corral.plugins.images._json",
    "go_json": "corral.plugins.images._json",
    "CONFIG_TYPES": "corral.plugins.images._mediatypes",
    "DOCKER_CONFIG": "corral.plugins.images._mediatypes",
    "DOCKER_FOREIGN_LAYER": "corral.plugins.images._mediatypes",
    "DOCKER_FOREIGN_LAYER_GZIP": "corral.plugins.images._mediatypes",
    "DOCKER_LAYER": "corral.plugins.images._mediatypes",
    "DOCKER_LAYER_GZIP": "corral.plugins.images._mediatypes",
    "DOCKER_LAYER_ZSTD": "corral.plugins.images._mediatypes",
    "DOCKER_MANIFEST": "corral.plugins.images._mediatypes",
    "DOCKER_MANIFEST_LIST": "corral.plugins.images._mediatypes",
    "INDEX_TYPES": "corral.plugins.images._mediatypes",
    "MANIFEST_TYPES": "corral.plugins.images._mediatypes",
    "OCI_CONFIG": "corral.plugins.images._mediatypes",
    "OCI_EMPTY": "corral.plugins.images._mediatypes",
    "OCI_INDEX": "corral.plugins.images._mediatypes",
    "OCI_LAYER": "corral.plugins.images._mediatypes",
    "OCI_LAYER_GZIP": "corral.plugins.images._mediatypes",
    "OCI_LAYER_NONDISTRIBUTABLE": "corral.plugins.images._mediatypes",
    "OCI_LAYER_NONDISTRIBUTABLE_GZIP": "corral.plugins.images._mediatypes",
    "OCI_LAYER_NONDISTRIBUTABLE_ZSTD": "corral.plugins.images._mediatypes",
    "OCI_LAYER_ZSTD": "corral.plugins.images._mediatypes",
    "OCI_LAYOUT_HEADER": "corral.plugins.images._mediatypes",
    "OCI_MANIFEST": "corral.plugins.images._mediatypes",
    "is_config": "corral.plugins.images._mediatypes",
    "is_index": "corral.plugins.images._mediatypes",
    "is_layer": "corral.plugins.images._mediatypes",
    "is_manifest": "corral.plugins.images._mediatypes",
    "is_nondistributable": "corral.plugins.images._mediatypes",
    "ALL": "corral.plugins.images._platforms",
    "AnyOf": "corral.plugins.images._platforms",
    "Ordered": "corral.plugins.images._platforms",
    "Platform": "corral.plugins.images._platforms",
    "PlatformMatcher": "corral.plugins.images._platforms",
    "any_of": "corral.plugins.images._platforms",
    "by_preference": "corral.plugins.images._platforms",
    "compatible": "corral.plugins.images._platforms",
    "default_matcher": "corral.plugins.images._platforms",
    "default_strict_matcher": "corral.plugins.images._platforms",
    "only": "corral.plugins.images._platforms",
    "only_strict": "corral.plugins.images._platforms",
    "ordered": "corral.plugins.images._platforms",
    "DEFAULT_DOMAIN": "corral.plugins.images._reference",
    "DEFAULT_TAG": "corral.plugins.images._reference",
    "Reference": "corral.plugins.images._reference",
    "familiar_reference": "corral.plugins.images._reference",
    "normalize_reference": "corral.plugins.images._reference",
    "oci_ref_name": "corral.plugins.images._reference",
    "parse_docker_ref": "corral.plugins.images._reference",
    "parse_normalized": "corral.plugins.images._reference",
    "parse_reference": "corral.plugins.images._reference",
}

__all__ = [
    "ALGORITHMS",
    "ALL",
    "ANNOTATION_IMAGE_NAME",
    "ANNOTATION_MANIFEST_SUBJECT",
    "ANNOTATION_REF_NAME",
    "CANONICAL",
    "CONFIG_TYPES",
    "DEFAULT_DOMAIN",
    "DEFAULT_TAG",
    "DOCKER_CONFIG",
    "DOCKER_FOREIGN_LAYER",
    "DOCKER_FOREIGN_LAYER_GZIP",
    "DOCKER_LAYER",
    "DOCKER_LAYER_GZIP",
    "DOCKER_LAYER_ZSTD",
    "DOCKER_MANIFEST",
    "DOCKER_MANIFEST_LIST",
    "INDEX_TYPES",
    "JSON_LIMIT",
    "MANIFEST_TYPES",
    "OCI_CONFIG",
    "OCI_EMPTY",
    "OCI_INDEX",
    "OCI_LAYER",
    "OCI_LAYER_GZIP",
    "OCI_LAYER_NONDISTRIBUTABLE",
    "OCI_LAYER_NONDISTRIBUTABLE_GZIP",
    "OCI_LAYER_NONDISTRIBUTABLE_ZSTD",
    "OCI_LAYER_ZSTD",
    "OCI_LAYOUT_HEADER",
    "OCI_MANIFEST",
    "AnyOf",
    "ContainerConfig",
    "Descriptor",
    "Digest",
    "HistoryEntry",
    "ImageConfig",
    "Index",
    "Manifest",
    "Ordered",
    "Platform",
    "PlatformMatcher",
    "Reference",
    "any_of",
    "by_preference",
    "chain_id",
    "chain_ids",
    "compatible",
    "default_matcher",
    "default_strict_matcher",
    "descriptor_from_json",
    "digest_of",
    "familiar_reference",
    "go_json",
    "is_config",
    "is_index",
    "is_layer",
    "is_manifest",
    "is_nondistributable",
    "normalize_reference",
    "oci_ref_name",
    "only",
    "only_strict",
    "ordered",
    "parse_digest",
    "parse_docker_ref",
    "parse_image_config",
    "parse_index",
    "parse_manifest",
    "parse_normalized",
    "parse_reference",
    "platform_from_json",
    "platform_to_json",
    "validate_digest",
    "verify_digest",
]


__getattr__ = names_on_first_use(__name__, _SOURCES)


def __dir__() -> list[str]:
    return list(__all__)
