"""containerd's identifier rule, shared by namespaces, containers, leases and event topics."""

from __future__ import annotations

import re

from corral.kernel import InvalidArgument

IDENTIFIER_PATTERN = r"^[A-Za-z0-9]+(?:[._-](?:[A-Za-z0-9]+))*$"
_IDENTIFIER = re.compile(IDENTIFIER_PATTERN)
MAX_IDENTIFIER_LENGTH = 76


def validate_identifier(value: str) -> None:
    """Letters and digits, joined by single ``.``, ``_`` or ``-``; at most 76 characters."""
    if not value:
        raise InvalidArgument("identifier must not be empty")
    if len(value) > MAX_IDENTIFIER_LENGTH:
        raise InvalidArgument(
            f'identifier "{value}" greater than maximum length ({MAX_IDENTIFIER_LENGTH} characters)'
        )
    if not _IDENTIFIER.match(value):
        raise InvalidArgument(f'identifier "{value}" must match {IDENTIFIER_PATTERN}')
