"""Which namespaces Flywheel may act in: an explicit opt-in, never the system's own.

A namespace opts in with the label ``flywheel.dev/remediation=enabled`` or by being listed in
``FLYWHEEL_REMEDIATION_NAMESPACES``. The Kubernetes system namespaces and the operator's own
namespace are protected: a label is not enough for them (anyone who may label a namespace could
otherwise hand Flywheel's cluster-wide rights over ``kube-system``), only the list is.
Everywhere else, Incidents are still recorded and decided, but no Run acts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

OPT_IN_LABEL: Final = "flywheel.dev/remediation"
OPT_IN_VALUE: Final = "enabled"
SYSTEM_NAMESPACES: Final = frozenset({"kube-system", "kube-public", "kube-node-lease"})


@dataclass(frozen=True)
class RemediationScope:
    """The opt-in rule: ``listed`` namespaces, else the label; ``protected`` ones only when listed."""

    listed: frozenset[str]
    protected: frozenset[str]

    @classmethod
    def of(cls, listed: Iterable[str], operator_namespace: str) -> RemediationScope:
        return cls(frozenset(listed), SYSTEM_NAMESPACES | {operator_namespace})

    def refusal(self, namespace: str, labels: Mapping[str, str] | None) -> str | None:
        """Why Flywheel may not act in ``namespace`` (labels ``None``: no such namespace); None if it may."""
        if namespace in self.listed:
            return None
        if namespace in self.protected:
            return (
                f"namespace {namespace} is protected (Kubernetes system or Flywheel's own namespace): Flywheel acts "
                "there only when FLYWHEEL_REMEDIATION_NAMESPACES lists it"
            )
        if labels is None:
            return f"namespace {namespace} does not exist"
        if labels.get(OPT_IN_LABEL) == OPT_IN_VALUE:
            return None
        return (
            f"namespace {namespace} has not opted in to remediation (label it {OPT_IN_LABEL}={OPT_IN_VALUE} "
            "or list it in FLYWHEEL_REMEDIATION_NAMESPACES)"
        )

    def describe(self) -> str:
        listed = ", ".join(sorted(self.listed)) or "none"
        protected = ", ".join(sorted(self.protected - self.listed)) or "none"
        return (
            f"namespaces labelled {OPT_IN_LABEL}={OPT_IN_VALUE}, and those listed ({listed}); "
            f"never {protected}"
        )


__all__ = ["OPT_IN_LABEL", "OPT_IN_VALUE", "SYSTEM_NAMESPACES", "RemediationScope"]
