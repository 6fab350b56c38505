"""When the operator's own webhook certificates are issued, rotated and trusted (pure, no clock).

In ``managed`` mode the operator keeps a CA and a serving pair in one Secret. Every replica
serves the pair found there, and the API server trusts the webhooks through the CA bundle the
operator injects into its webhook configurations. The schedule below keeps every request
verifiable while both rotate:

- the serving certificate is re-issued at 2/3 of its life (or at once when it is missing,
  expired, names other hosts, or was signed by a CA that no longer signs);
- a CA's successor is made at 1/2 of the CA's life and only **added to the bundle** (pending):
  nothing is signed by it yet, so the API server learns it before any replica serves it;
- at 2/3 of the CA's life, once the successor has been trusted for 1/6 of a CA lifetime, the
  successor starts signing (promoted) and the old CA is **retired**: it stays in the bundle
  until it expires, so a replica still serving a pair it signed (it has not re-read the Secret
  yet) is still trusted. Serving certificates never outlive the CA that signed them.

So the bundle holds the signing CA, its pending successor and the retired CAs not yet expired.
A CA that expired with no successor (the operator was down for a long time) is replaced at
once: nothing could be verified anyway.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Final

from flywheel.errors import ConfigurationError

SERVING_RENEWAL_FRACTION: Final = 2 / 3
CA_SUCCESSOR_FRACTION: Final = 1 / 2
CA_PROMOTION_FRACTION: Final = 2 / 3
# How long a successor CA must have been trusted before it signs, as a share of the CA lifetime.
CA_SETTLE_FRACTION: Final = 1 / 6
# Certificates start a little in the past, for clocks that lag behind the issuer's.
MAX_BACKDATE: Final = timedelta(minutes=5)
# Replicas re-read the Secret at most this far apart (sooner for very short test lifetimes).
MAX_CHECK_INTERVAL: Final = timedelta(seconds=30)
MIN_CHECK_INTERVAL: Final = timedelta(seconds=1)


@dataclass(frozen=True)
class Validity:
    not_before: datetime
    not_after: datetime

    @property
    def lifetime(self) -> timedelta:
        return self.not_after - self.not_before

    def expired(self, now: datetime) -> bool:
        return now >= self.not_after

    def reached(self, fraction: float, now: datetime) -> bool:
        """Whether ``fraction`` of the lifetime has passed at ``now``."""
        return now >= self.not_before + self.lifetime * fraction


@dataclass(frozen=True)
class AuthorityFacts:
    """What the schedule needs to know about one CA certificate."""

    key_id: str
    validity: Validity


@dataclass(frozen=True)
class ServingFacts:
    """What the schedule needs to know about the serving certificate."""

    issuer_key_id: str
    dns_names: frozenset[str]
    validity: Validity


@dataclass(frozen=True)
class CertificateState:
    """The certificates kept in the Secret, as facts (``None``: absent or unreadable)."""

    signing: AuthorityFacts | None = None
    pending: AuthorityFacts | None = None
    retired: tuple[AuthorityFacts, ...] = ()
    serving: ServingFacts | None = None


@dataclass(frozen=True)
class CertificatePolicy:
    dns_names: frozenset[str]
    serving_validity: timedelta
    authority_validity: timedelta

    def __post_init__(self) -> None:
        if not self.dns_names:
            raise ConfigurationError("the webhook serving certificate needs at least one DNS name")
        if self.serving_validity <= timedelta(0):
            raise ConfigurationError("FLYWHEEL_WEBHOOK_CERT_VALIDITY_SECONDS must be positive")
        if self.authority_validity < self.serving_validity:
            raise ConfigurationError(
                "FLYWHEEL_WEBHOOK_CA_VALIDITY_SECONDS must be at least FLYWHEEL_WEBHOOK_CERT_VALIDITY_SECONDS "
                f"({self.authority_validity.total_seconds():.0f} < {self.serving_validity.total_seconds():.0f})"
            )

    @property
    def check_interval(self) -> timedelta:
        """How often replicas look at the Secret: often enough that none lags a rotation step."""
        return max(MIN_CHECK_INTERVAL, min(MAX_CHECK_INTERVAL, self.serving_validity / 30))


def backdate(validity: timedelta) -> timedelta:
    """How far into the past a new certificate starts (a tenth of short test lifetimes)."""
    return min(MAX_BACKDATE, validity / 10)


class Step(StrEnum):
    """One change to the Secret, applied in the order a plan lists them."""

    NEW_AUTHORITY = "NewAuthority"  # a new CA signs from now on (first start, or the old one expired)
    PREPARE_SUCCESSOR = "PrepareSuccessor"  # a new CA joins the bundle, signing nothing yet
    PROMOTE_SUCCESSOR = "PromoteSuccessor"  # the pending CA signs; the old one is retired
    DROP_PENDING = "DropPending"  # the pending CA expired unused
    ISSUE_SERVING = "IssueServing"  # a new serving pair, signed by the signing CA
    PRUNE_RETIRED = "PruneRetired"  # retired CAs that expired leave the bundle


@dataclass(frozen=True)
class RotationPlan:
    steps: tuple[Step, ...] = ()
    reasons: tuple[str, ...] = field(default=())

    def __bool__(self) -> bool:
        return bool(self.steps)


def plan_rotation(state: CertificateState, policy: CertificatePolicy, now: datetime) -> RotationPlan:
    """The changes due at ``now``; an empty plan when the Secret is fine as it is."""
    steps: list[Step] = []
    reasons: list[str] = []
    signing, pending = state.signing, state.pending

    if pending is not None and pending.validity.expired(now):
        steps.append(Step.DROP_PENDING)
        reasons.append("the pending CA expired")
        pending = None

    if signing is None or signing.validity.expired(now):
        if pending is not None:
            steps.append(Step.PROMOTE_SUCCESSOR)
            reasons.append("the signing CA expired; its successor is already trusted")
        else:
            steps.append(Step.NEW_AUTHORITY)
            reasons.append("no CA yet" if signing is None else "the signing CA expired")
        signing_key_id = None  # whichever CA signs now, the serving pair must be re-issued
    elif pending is None and signing.validity.reached(CA_SUCCESSOR_FRACTION, now):
        steps.append(Step.PREPARE_SUCCESSOR)
        reasons.append("the signing CA is half way through its life")
        signing_key_id = signing.key_id
    elif pending is not None and _promotion_due(signing, pending, policy, now):
        steps.append(Step.PROMOTE_SUCCESSOR)
        reasons.append("the signing CA reached 2/3 of its life")
        signing_key_id = pending.key_id
    else:
        signing_key_id = signing.key_id

    serving_reason = _serving_reason(state.serving, signing_key_id, policy, now)
    if serving_reason is not None:
        steps.append(Step.ISSUE_SERVING)
        reasons.append(serving_reason)

    if any(authority.validity.expired(now) for authority in state.retired):
        steps.append(Step.PRUNE_RETIRED)
        reasons.append("a retired CA expired")
    return RotationPlan(tuple(steps), tuple(reasons))


def _promotion_due(signing: AuthorityFacts, pending: AuthorityFacts, policy: CertificatePolicy, now: datetime) -> bool:
    settled = now >= pending.validity.not_before + policy.authority_validity * CA_SETTLE_FRACTION
    return settled and signing.validity.reached(CA_PROMOTION_FRACTION, now)


def _serving_reason(
    serving: ServingFacts | None, signing_key_id: str | None, policy: CertificatePolicy, now: datetime
) -> str | None:
    if serving is None:
        return "no serving certificate yet"
    if signing_key_id is None or serving.issuer_key_id != signing_key_id:
        return "the serving certificate was signed by another CA"
    if serving.dns_names != policy.dns_names:
        return f"the serving certificate names {sorted(serving.dns_names)}, not {sorted(policy.dns_names)}"
    if serving.validity.expired(now):
        return "the serving certificate expired"
    if serving.validity.reached(SERVING_RENEWAL_FRACTION, now):
        return "the serving certificate reached 2/3 of its life"
    return None


def trusted_authorities(state: CertificateState, now: datetime) -> tuple[AuthorityFacts, ...]:
    """The CAs of the bundle: the signing one, its pending successor, retired ones not expired."""
    candidates = [state.signing, state.pending, *state.retired]
    trusted: list[AuthorityFacts] = []
    for authority in candidates:
        if authority is None or authority.validity.expired(now):
            continue
        if all(authority.key_id != seen.key_id for seen in trusted):
            trusted.append(authority)
    return tuple(trusted)


def serving_not_after(signing: Validity, policy: CertificatePolicy, now: datetime) -> datetime:
    """A serving certificate's end: its lifetime, but never past the CA that signs it."""
    return min(now + policy.serving_validity, signing.not_after)


__all__ = [
    "AuthorityFacts",
    "CertificatePolicy",
    "CertificateState",
    "RotationPlan",
    "ServingFacts",
    "Step",
    "Validity",
    "backdate",
    "plan_rotation",
    "serving_not_after",
    "trusted_authorities",
]
