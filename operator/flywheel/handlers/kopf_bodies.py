"""Bodies for Kopf's posting functions, whose hints are narrower than what they accept."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import kopf


def as_body(raw: Mapping[str, Any]) -> kopf.Body:
    """``kopf.event`` and ``kopf.warn`` take a ``kopf.Body``; they read only apiVersion, kind and
    metadata from it, so any object's mapping (a copy, or a Run's own view) will do."""
    return kopf.Body(cast(Any, raw))
