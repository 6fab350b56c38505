"""Namespaces opt in (issue 17, item 7): the rule, the labels kept from the watch, the Run refused."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flywheel.api.enums import RunState
from flywheel.controllers.run import RunController, RunStores
from flywheel.domain.namespaces import OPT_IN_LABEL, OPT_IN_VALUE, SYSTEM_NAMESPACES, RemediationScope
from flywheel.errors import NotFoundError
from flywheel.settings import FlywheelSettings
from flywheel.stores.namespaces import NamespaceLabels
from flywheel.wiring import remediation_scope, run_policy
from tests.unit.test_run_controller import NAMESPACE, Harness, condition

pytestmark = pytest.mark.unit

ENABLED = {OPT_IN_LABEL: OPT_IN_VALUE}
SCOPE = RemediationScope.of(["listed-team"], "flywheel-system")


def test_a_labelled_or_listed_namespace_may_be_acted_in() -> None:
    assert SCOPE.refusal("shop", ENABLED) is None
    assert SCOPE.refusal("listed-team", {}) is None
    assert SCOPE.refusal("listed-team", None) is None, "the list is enough on its own"


def test_any_other_namespace_is_refused_with_how_to_opt_in() -> None:
    for labels in ({}, {OPT_IN_LABEL: "disabled"}, {OPT_IN_LABEL: "Enabled"}, {"other": "enabled"}):
        refusal = SCOPE.refusal("shop", labels)
        assert refusal is not None and f"{OPT_IN_LABEL}={OPT_IN_VALUE}" in refusal
        assert "FLYWHEEL_REMEDIATION_NAMESPACES" in refusal
    assert "does not exist" in (SCOPE.refusal("gone", None) or "")


@pytest.mark.parametrize("namespace", sorted(SYSTEM_NAMESPACES | {"flywheel-system"}))
def test_protected_namespaces_need_the_list_a_label_is_not_enough(namespace: str) -> None:
    refusal = SCOPE.refusal(namespace, ENABLED)
    assert refusal is not None and "protected" in refusal
    listed = RemediationScope.of([namespace], "flywheel-system")
    assert listed.refusal(namespace, {}) is None


@given(st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True), st.dictionaries(st.text(max_size=10), st.text(max_size=10)))
def test_only_the_exact_label_opts_in(namespace: str, labels: dict[str, str]) -> None:
    scope = RemediationScope.of([], "flywheel-system")
    allowed = scope.refusal(namespace, labels) is None
    expected = labels.get(OPT_IN_LABEL) == OPT_IN_VALUE and namespace not in scope.protected
    assert allowed == expected


def test_the_scope_comes_from_the_settings_and_describes_itself() -> None:
    scope = remediation_scope(FlywheelSettings(remediation_namespaces="a, kube-system", namespace="ops"))
    assert scope.listed == {"a", "kube-system"}
    assert scope.protected == SYSTEM_NAMESPACES | {"ops"}
    described = scope.describe()
    assert "a, kube-system" in described and "never kube-node-lease, kube-public, ops" in described


class Reader:
    def __init__(self, namespaces: Mapping[str, Mapping[str, str]]) -> None:
        self.namespaces = namespaces
        self.reads: list[str] = []

    async def read_namespace(self, name: str) -> Mapping[str, Any]:
        self.reads.append(name)
        if name not in self.namespaces:
            raise NotFoundError(f"namespace {name} not found", status=404)
        return {"metadata": {"name": name, "labels": dict(self.namespaces[name])}}


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_watched_labels_are_read_from_memory() -> None:
    reader = Reader({})
    labels = NamespaceLabels(reader, SCOPE)
    labels.observed("shop", ENABLED)
    for _ in range(3):
        assert await labels.refusal("shop") is None
    labels.observed("shop", {})
    assert await labels.refusal("shop") is not None, "a label removed is seen from the next event"
    assert reader.reads == [], "no API call for a namespace the watch brought"


async def test_a_namespace_not_watched_yet_is_read_once_and_kept_for_a_while() -> None:
    reader, clock = Reader({"shop": ENABLED}), Clock()
    labels = NamespaceLabels(reader, SCOPE, clock=clock, miss_ttl_seconds=30)
    assert await labels.refusal("shop") is None
    assert "does not exist" in (await labels.refusal("gone") or "")
    clock.now = 10
    await labels.refusal("shop"), await labels.refusal("gone")
    assert reader.reads == ["shop", "gone"], "one read per namespace within the TTL, a missing one too"
    clock.now = 31
    await labels.refusal("gone")
    assert reader.reads == ["shop", "gone", "gone"]
    labels.observed("gone", ENABLED)
    assert await labels.refusal("gone") is None, "the watch overrides what a read found"
    labels.deleted("gone")
    clock.now = 32
    assert await labels.refusal("gone") is not None


async def test_listed_namespaces_need_no_lookup() -> None:
    reader = Reader({})
    assert await NamespaceLabels(reader, SCOPE).refusal("listed-team") is None
    assert reader.reads == []


class Gate:
    def __init__(self, refusal: str | None) -> None:
        self.answer = refusal
        self.asked: list[str] = []

    async def refusal(self, namespace: str) -> str | None:
        self.asked.append(namespace)
        return self.answer


def refused(h: Harness, gate: Gate) -> None:
    h.controller = RunController(
        run_policy(FlywheelSettings()),
        h.repairs,
        RunStores(workloads=h.workloads, incidents=h.incidents, attempts=h.attempts, namespaces=gate),
    )


async def test_a_run_in_a_namespace_that_did_not_opt_in_is_refused_before_acting() -> None:
    h, gate = Harness(), Gate("namespace shop has not opted in to remediation")
    refused(h, gate)
    status = await h.step()
    assert gate.asked == [NAMESPACE]
    assert status.state is RunState.CANCELLED
    assert status.error_code == "E-NAMESPACE-NOT-ENABLED"
    assert condition(status, "Succeeded") == ("False", "NamespaceNotEnabled")
    assert "has not opted in" in (status.error_detail or "")
    assert h.workloads.applied == []
    assert "NamespaceNotEnabled" in h.events()
    incident = h.incidents.body
    assert incident is not None
    resolved = next(c for c in incident["status"]["conditions"] if c["type"] == "Resolved")
    assert (resolved["status"], resolved["reason"]) == ("False", "NotRemediated"), "left to a person, and says why"
    assert "was refused" in resolved["message"]


async def test_a_namespace_that_opts_out_stops_the_next_attempt() -> None:
    h, gate = Harness(), Gate(None)
    refused(h, gate)
    assert (await h.step()).state is RunState.RUNNING
    gate.answer = "namespace shop has not opted in to remediation"
    status = await h.step(1)
    assert status.state is RunState.CANCELLED
    assert h.workloads.applied == [], "started, but nothing was done on the workload"
