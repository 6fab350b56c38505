"""Refused alerts made visible: counted by reason, logged once per fingerprint.

Alertmanager re-sends a firing group every ``group_interval`` and ``repeat_interval``, so
an alert that cannot become an Incident comes back again and again. Each refusal counts in
``flywheel_intake_alerts_refused_total{reason}`` (the reasons are the closed vocabulary of
:class:`~flywheel.domain.alerts.RefusalReason`), and is logged at WARNING the first time a
fingerprint is refused for a reason — again only when the reason changes — so that an SRE
sees why nothing happened without the re-sends flooding the log.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Protocol

from flywheel.domain.alerts import RefusalReason
from flywheel.logs import get_logger

log = get_logger(__name__)

REMEMBERED_FINGERPRINTS = 10_000
"""Fingerprints whose last refusal is remembered (least recently refused forgotten first)."""


class RefusalCounter(Protocol):
    """Where refusals are counted (``flywheel.metrics.collector.OperatorCounters``)."""

    def alert_refused(self, reason: RefusalReason) -> None: ...


class RefusalLog:
    """Counts every refusal and logs each (fingerprint, reason) once."""

    def __init__(self, counter: RefusalCounter, remembered: int = REMEMBERED_FINGERPRINTS) -> None:
        self._counter = counter
        self._remembered = remembered
        self._last_reason: OrderedDict[str, RefusalReason] = OrderedDict()

    def refused(self, fingerprint: str, code: RefusalReason, **details: Any) -> bool:
        """Count the refusal; log it unless this fingerprint was refused for this reason already.

        Returns whether it was logged.
        """
        self._counter.alert_refused(code)
        if self._last_reason.get(fingerprint) is code:
            self._last_reason.move_to_end(fingerprint)
            log.debug("alert_refused_again", fingerprint=fingerprint, refusal=code.value, **details)
            return False
        self._last_reason[fingerprint] = code
        self._last_reason.move_to_end(fingerprint)
        if len(self._last_reason) > self._remembered:
            self._last_reason.popitem(last=False)
        log.warning("alert_refused", fingerprint=fingerprint, refusal=code.value, **details)
        return True


__all__ = ["REMEMBERED_FINGERPRINTS", "RefusalCounter", "RefusalLog"]
