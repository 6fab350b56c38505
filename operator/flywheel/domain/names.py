"""Label values and child names derived from object names, valid for every valid name.

An object name may be 253 characters long (an RFC 1123 subdomain: ``[a-z0-9]``, ``-`` and
``.``, starting and ending alphanumeric); a label value at most 63, starting and ending
alphanumeric, with ``-``, ``_`` and ``.`` inside. Cutting a name with ``name[:63]`` can end in
``-`` or ``.`` — the API server refuses the write with 422 — and two long names sharing their
first 63 characters would share a label value.

So a name that does not fit is cut, stripped of what may not end it, and followed by a short
hash of the whole name: stable across passes and replicas, different for different names
(collision-resistant, 40 bits), and a name that fits is kept as it is, so that
``-l flywheel.dev/incident=checkout-oom`` keeps working for every usual name.
"""

from __future__ import annotations

import hashlib
import re
from typing import Final

LABEL_VALUE_MAX_LENGTH: Final = 63
OBJECT_NAME_MAX_LENGTH: Final = 253
HASH_LENGTH: Final = 10

_LABEL_VALUE: Final = re.compile(r"^(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
_NOT_IN_LABEL_VALUE: Final = re.compile(r"[^-A-Za-z0-9_.]")
_NOT_ALPHANUMERIC_AT_ENDS: Final = re.compile(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$")
# What may not end a subdomain cut short (a label ends alphanumeric, so does the name).
_SUBDOMAIN_TAIL: Final = re.compile(r"[-.]+$")


def is_label_value(value: str) -> bool:
    """Whether Kubernetes accepts ``value`` as a label value."""
    return len(value) <= LABEL_VALUE_MAX_LENGTH and _LABEL_VALUE.match(value) is not None


def _digest(name: str) -> str:
    return hashlib.sha256(name.encode("utf-8")).hexdigest()[:HASH_LENGTH]


def label_value(name: str) -> str:
    """A valid label value standing for ``name``: the name itself when it is one, else cut + hash."""
    if is_label_value(name):
        return name
    cut = _NOT_IN_LABEL_VALUE.sub("-", name)[: LABEL_VALUE_MAX_LENGTH - HASH_LENGTH - 1]
    cut = _NOT_ALPHANUMERIC_AT_ENDS.sub("", cut)
    return f"{cut}-{_digest(name)}" if cut else _digest(name)


def suffixed_name(base: str, suffix: str) -> str:
    """``base + suffix`` (a child's name, e.g. ``<incident>-1``) as a valid object name.

    ``base`` is a valid object name and ``suffix`` starts with ``-`` and ends alphanumeric; when
    the two do not fit in 253 characters, ``base`` is cut and a hash of it keeps names apart.
    """
    joined = base + suffix
    if len(joined) <= OBJECT_NAME_MAX_LENGTH:
        return joined
    room = OBJECT_NAME_MAX_LENGTH - len(suffix) - HASH_LENGTH - 1
    cut = _SUBDOMAIN_TAIL.sub("", base[:room])
    return f"{cut}-{_digest(base)}{suffix}"


__all__ = [
    "HASH_LENGTH",
    "LABEL_VALUE_MAX_LENGTH",
    "OBJECT_NAME_MAX_LENGTH",
    "is_label_value",
    "label_value",
    "suffixed_name",
]
