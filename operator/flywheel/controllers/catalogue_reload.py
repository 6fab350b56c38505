"""The rule catalogue in force, and its reload when the file changes (no operator restart).

A mounted ConfigMap is updated in place by the kubelet; :class:`CatalogueReloader` polls the
file (``flywheel.stores.catalogue_file``: the resolved path's identity, then the content hash)
and replaces the :class:`LiveCatalogue` whole when a new version parses and validates. A
broken version — not YAML, not UTF-8, a schema error naming the rule and the field, a file
that vanished — is refused: the catalogue in force stays, the refusal is counted, logged and
posted as a Warning Event once per broken version (its hash), however long it stays on disk;
a later fixed version is loaded as usual.

Every replica reloads its own copy: each decides with the catalogue its own Pod mounts, and a
standby must be current when it takes over.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Protocol

from flywheel.api.times import format_time
from flywheel.domain.rules import RuleCatalogue, load_catalogue
from flywheel.errors import ConfigurationError
from flywheel.logs import get_logger
from flywheel.stores.catalogue_file import FileIdentity, FileVersion, content_digest

log = get_logger(__name__)

DIGEST_LABEL_LENGTH = 12
"""Characters of the SHA-256 shown in logs, Events and the info metric (enough to tell versions apart)."""


class ReloadResult(StrEnum):
    """The ``result`` label of ``flywheel_rule_catalogue_reloads_total``."""

    LOADED = "loaded"
    REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class CatalogueVersion:
    """The catalogue in force: what it is, where it came from, when it was loaded."""

    catalogue: RuleCatalogue
    digest: str
    loaded_at: datetime

    @property
    def short_digest(self) -> str:
        return self.digest[:DIGEST_LABEL_LENGTH]


class LiveCatalogue:
    """The catalogue decisions use (a :class:`~flywheel.domain.rules.CatalogueSource`), replaced whole."""

    def __init__(self, catalogue: RuleCatalogue, digest: str, loaded_at: datetime) -> None:
        self._version = CatalogueVersion(catalogue, digest, loaded_at)

    def current(self) -> RuleCatalogue:
        return self._version.catalogue

    @property
    def version(self) -> CatalogueVersion:
        return self._version

    def replace(self, version: CatalogueVersion) -> None:
        # One reference swap: a decision holding the previous catalogue finishes with it.
        self._version = version


class CatalogueFileReader(Protocol):
    """The catalogue file (``flywheel.stores.catalogue_file.CatalogueFile``)."""

    @property
    def path(self) -> object: ...

    def identity(self) -> FileIdentity: ...

    def read(self) -> FileVersion: ...


class RefusalWarnings(Protocol):
    """Posts the Warning Event of a refused version; raising is logged, never fatal."""

    async def refused(self, message: str) -> None: ...


class CatalogueReloader:
    """One :meth:`check` per poll; the loop that calls it lives in the handlers."""

    def __init__(
        self,
        file: CatalogueFileReader,
        live: LiveCatalogue,
        warnings: RefusalWarnings,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._file = file
        self._live = live
        self._warnings = warnings
        self._clock = clock
        self._seen: FileIdentity | None = None
        self._refused_digest: str | None = None
        self.reloads: Counter[ReloadResult] = Counter()

    @property
    def live(self) -> LiveCatalogue:
        return self._live

    @property
    def refusing(self) -> bool:
        """Whether the file's latest version was refused: what is on disk is not what decides."""
        return self._refused_digest is not None

    async def check(self) -> ReloadResult | None:
        """Load the file's new version, or refuse it; ``None`` when there is nothing new."""
        source = f"rule catalogue {self._file.path}"
        try:
            identity = self._file.identity()
            if identity == self._seen:
                return None
            version = self._file.read()
        except ConfigurationError as exc:
            # A file that vanished (a ConfigMap key removed) is a broken version of its own.
            self._seen = None
            return await self._refuse(content_digest(str(exc).encode()), str(exc))
        self._seen = version.identity
        if version.digest == self._live.version.digest:
            self._refused_digest = None
            return None
        if version.digest == self._refused_digest:
            return None
        try:
            catalogue = load_catalogue(version.text(), source=source)
        except ConfigurationError as exc:
            message = str(exc) if str(exc).startswith(source) else f"{source}: {exc}"
            return await self._refuse(version.digest, message)
        previous = self._live.version
        self._live.replace(CatalogueVersion(catalogue, version.digest, self._clock()))
        self._refused_digest = None
        self.reloads[ReloadResult.LOADED] += 1
        log.info(
            "rule_catalogue_reloaded",
            path=str(self._file.path),
            digest=version.digest[:DIGEST_LABEL_LENGTH],
            previous_digest=previous.short_digest,
            rules=len(catalogue),
            playbooks=catalogue.playbook_count,
        )
        return ReloadResult.LOADED

    async def _refuse(self, digest: str, message: str) -> ReloadResult | None:
        if digest == self._refused_digest:
            return None
        self._refused_digest = digest
        self.reloads[ReloadResult.REFUSED] += 1
        kept = self._live.version
        text = (
            f"{message} — refused; the catalogue loaded at {format_time(kept.loaded_at)} "
            f"(sha256 {kept.short_digest}) stays in force"
        )
        log.warning(
            "rule_catalogue_refused",
            path=str(self._file.path),
            digest=digest[:DIGEST_LABEL_LENGTH],
            kept_digest=kept.short_digest,
            reason=message,
        )
        try:
            await self._warnings.refused(text)
        except Exception as exc:  # noqa: BLE001 - the refusal is logged and counted already
            log.warning("rule_catalogue_refusal_event_failed", error=str(exc))
        return ReloadResult.REFUSED


__all__ = [
    "CatalogueFileReader",
    "CatalogueReloader",
    "CatalogueVersion",
    "LiveCatalogue",
    "RefusalWarnings",
    "ReloadResult",
]
