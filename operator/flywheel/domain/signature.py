"""Anomaly signature: the key under which recurrences of one anomaly are counted.

The key must stay byte-identical to the one the older system stored (SPEC §2,
seed 001), so that its recurrence data stays usable after migrating to Flywheel.
That system hashed ``json.dumps(fields, sort_keys=True)`` with the *default*
separators (``", "`` and ``": "``) and the default ``ensure_ascii=True``; both
defaults are therefore spelled out below instead of being left implicit, so a
well-meant "compact JSON" refactoring cannot silently change every key.
"""

from __future__ import annotations

import hashlib
import json

ANOMALY_KEY_LENGTH = 16
"""Hex characters kept from the SHA-256 digest."""


def anomaly_key(
    alert_name: str | None,
    service: str | None,
    namespace: str | None,
    error_type: str | None,
) -> str:
    """The 16-lowercase-hex anomaly key of the four identifying fields.

    ``None`` is hashed as ``""``: an Incident without an alert name must land on the
    same key as one whose alert name is empty, as it did in the older system.
    """
    fields = {
        "alert_name": alert_name or "",
        "service": service or "",
        "namespace": namespace or "",
        "error_type": error_type or "",
    }
    canonical = json.dumps(fields, sort_keys=True, separators=(", ", ": "), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:ANOMALY_KEY_LENGTH]
