"""The images an import creates, named as containerd's transfer image store names them."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from corral.plugins.images import oci
from corral.plugins.transfer import ImageReference, ImageStoreTarget

REF_SOURCE = "io.containerd.import.ref-source"
"""containerd marks an archive's index entries with this annotation (value "annotation")."""


@dataclass(frozen=True)
class NamedImage:
    name: str
    target: oci.Descriptor
    labels: Mapping[str, str] = field(default_factory=dict)


def _translator(image: str, *, check_prefix: bool) -> Callable[[str], str]:
    def translate(ref: str) -> str:
        if not image:
            return ""
        if any(c in ref for c in "/:@"):
            if check_prefix and not _has_prefix(ref, image):
                return ""
            return ref
        return f"{image}:{ref}"

    return translate


def _has_prefix(ref: str, prefix: str) -> bool:
    return ref.startswith(prefix) and (len(ref) == len(prefix) or ref[len(prefix)] in "/:@")


def _annotated_name(annotations: Mapping[str, str], cleanup: Callable[[str], str]) -> str:
    name = annotations.get(oci.ANNOTATION_IMAGE_NAME, "")
    if name:
        return name if cleanup(name) == name else ""
    ref = annotations.get(oci.ANNOTATION_REF_NAME, "")
    return cleanup(ref) if ref else ""


def image_names(
    index: oci.Descriptor, entries: tuple[oci.Descriptor, ...], store: ImageStoreTarget
) -> list[NamedImage]:
    """The images, in containerd 2.1's order: the index itself (for ``store.name`` and complete
    extra references), then each index entry by its annotations and the prefix references."""
    labels = dict(store.labels)
    out: list[NamedImage] = []
    if store.name:
        out.append(NamedImage(store.name, index, labels))
    for ref in store.extra_references:
        if ref.is_prefix:
            continue
        name = f"{ref.name}@{index.digest}" if ref.add_digest else ref.name
        out.append(NamedImage(name, index, labels))
    for entry in entries:
        target = replace(entry, annotations={k: v for k, v in entry.annotations.items() if k != REF_SOURCE})
        out.extend(_entry_names(target, store.extra_references, labels))
    return out


def _entry_names(
    entry: oci.Descriptor, references: tuple[ImageReference, ...], labels: Mapping[str, str]
) -> list[NamedImage]:
    out = []
    for ref in references:
        if not ref.is_prefix:
            continue
        cleanup = _translator(ref.name, check_prefix=not ref.allow_overwrite)
        name = _annotated_name(entry.annotations, cleanup)
        if not name:
            if ref.add_digest:
                out.append(NamedImage(f"{ref.name}@{entry.digest}", entry, labels))
            continue
        out.append(NamedImage(name, entry, labels))
        if ref.add_digest and not ref.skip_named_digest:
            out.append(NamedImage(f"{ref.name}@{entry.digest}", entry, labels))
    return out
