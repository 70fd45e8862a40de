"""The image verifier contract (``io.containerd.image-verifier.v1``): may this image enter the store?

A verifier is asked once per image name with the descriptor the name will point at, before the
image is created; its ``Judgement`` says yes or no and why. An error is not a judgement: it blocks
the transfer too, with the error as the reason. Every verifier installed must say yes.
``corral.plugins.verifiers.bindir`` is the built-in one, compatible with containerd's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from corral.plugins.core import Descriptor

__all__ = ["ImageVerifier", "Judgement"]


@dataclass(frozen=True)
class Judgement:
    """A verifier's answer: ``ok`` lets the image in; ``reason`` says why either way."""

    ok: bool
    reason: str = ""


@runtime_checkable
class ImageVerifier(Protocol):
    async def verify_image(self, name: str, desc: Descriptor) -> Judgement:
        """Judge the image ``name`` whose target is ``desc``; raise for a verifier that could not judge."""
        ...
