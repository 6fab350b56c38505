"""Only the operator's own Runs act, and every attempt needs its own approval token.

- the binding (``flywheel.domain.run_binding``): verified for the Run it was sealed for;
  each deciding field tampered, another key, a binding or a proposal seal copied from
  another Run, a Run recreated under the same name (another uid) — all refused;
- the binder: creates and binds, binds on the next try after a pass died in between, and
  leaves a Run it did not propose unbound;
- the executor: an unbound Run ends Failed E-RUN-UNTRUSTED without touching the workload,
  from Pending, WaitingApproval or a forged Running;
- the approval token: kept by id outside the Run, per attempt — replayed for another
  attempt or another Run, or missing, it is refused; a retry issues the next one.
"""

from __future__ import annotations

import copy
from datetime import timedelta
from typing import Any

import pytest

from flywheel.api.enums import RunState
from flywheel.controllers.approval import ApprovalGate, GateRun
from flywheel.controllers.run import RunController, RunStores
from flywheel.controllers.run_binding import RunBinder
from flywheel.domain.approval import (
    Refusal,
    TokenRefused,
    issue_token,
    new_grant,
    next_grant,
    verify_token,
)
from flywheel.domain.run_binding import (
    BINDING,
    DECISION_ID,
    PROPOSAL_SEAL,
    RunBinding,
    binding_annotation,
    proposal_annotations,
    proposal_is_own,
    verify_binding,
)
from flywheel.domain.run_state import RunErrorCode
from flywheel.settings import FlywheelSettings
from flywheel.wiring import approval_settings, run_policy
from tests.unit.test_run_controller import INCIDENT_UID, NAMESPACE, RUN_UID, T0, Harness, run_body

pytestmark = pytest.mark.unit

KEY = b"k" * 32
OTHER_KEY = b"o" * 32
DECISION = "DEC-0123456789ab"


class Key:
    def __init__(self, key: bytes = KEY) -> None:
        self._key = key

    async def key(self) -> bytes:
        return self._key


def bound(body: dict[str, Any] | None = None, key: bytes = KEY) -> dict[str, Any]:
    """A Run as Flywheel creates and binds it."""
    body = copy.deepcopy(body or run_body())
    notes = body["metadata"].setdefault("annotations", {})
    notes.update(proposal_annotations(body, DECISION, key))
    notes.update(binding_annotation(body, key))
    return body


# --------------------------------------------------------------------------- the binding


def test_a_run_bound_by_flywheel_verifies() -> None:
    verdict = verify_binding(bound(), KEY)
    assert verdict == RunBinding(run_uid=RUN_UID, incident_uid=INCIDENT_UID, decision_id=DECISION)


TAMPERED = [
    ("action type", lambda b: b["spec"]["action"].update(type="Scale", params={"replicas": 5})),
    ("target", lambda b: b["spec"]["action"]["target"].update(name="payments")),
    ("target kind", lambda b: b["spec"]["action"]["target"].update(kind="StatefulSet")),
    ("risk", lambda b: b["spec"].update(riskLevel="low")),
    ("requiresApproval", lambda b: b["spec"].update(requiresApproval=True)),
    ("maxAttempts", lambda b: b["spec"].update(maxAttempts=10)),
    ("mode", lambda b: b["spec"].update(mode="Shadow")),
    ("incident uid", lambda b: b["spec"]["incidentRef"].update(uid="another-incident")),
    ("decision id", lambda b: b["metadata"]["annotations"].update({DECISION_ID: "DEC-ffffffffffff"})),
    ("run uid (recreated under the same name)", lambda b: b["metadata"].update(uid="recreated-uid")),
    ("binding", lambda b: b["metadata"]["annotations"].update({BINDING: "0" * 64})),
]


@pytest.mark.parametrize(("what", "tamper"), TAMPERED, ids=[what for what, _ in TAMPERED])
def test_each_deciding_field_tampered_is_refused(what: str, tamper: Any) -> None:
    body = bound()
    tamper(body)
    verdict = verify_binding(body, KEY)
    assert isinstance(verdict, Refusal), what
    assert verdict.rule == "run-binding-mismatch"


def test_requires_approval_flipped_to_false_is_refused() -> None:
    body = bound(run_body(requiresApproval=True))
    body["spec"]["requiresApproval"] = False
    assert isinstance(verify_binding(body, KEY), Refusal)


def test_a_binding_sealed_with_another_key_is_refused() -> None:
    assert isinstance(verify_binding(bound(key=OTHER_KEY), KEY), Refusal)


def test_a_binding_copied_from_another_run_is_refused() -> None:
    other = bound(run_body())
    other["metadata"]["uid"] = "other-run-uid"
    other["metadata"]["annotations"].update(binding_annotation(other, KEY))
    assert isinstance(verify_binding(other, KEY), RunBinding), "bound for its own uid"
    copy_ = run_body()  # a hand-made Run, identical spec, the other Run's annotations
    copy_["metadata"]["annotations"] = dict(other["metadata"]["annotations"])
    verdict = verify_binding(copy_, KEY)
    assert isinstance(verdict, Refusal) and verdict.rule == "run-binding-mismatch"


def test_a_run_without_binding_is_refused_saying_so() -> None:
    verdict = verify_binding(run_body(), KEY)
    assert isinstance(verdict, Refusal) and verdict.rule == "run-not-bound"
    assert "not created by Flywheel" in verdict.message


def test_the_proposal_seal_is_for_one_name_incident_and_decision() -> None:
    body = bound()
    assert proposal_is_own(body, KEY, incident_uid=INCIDENT_UID, decision_id=DECISION)
    assert not proposal_is_own(body, KEY, incident_uid="other", decision_id=DECISION)
    assert not proposal_is_own(body, KEY, incident_uid=INCIDENT_UID, decision_id="DEC-ffffffffffff")
    renamed = copy.deepcopy(body)
    renamed["metadata"]["name"] = "checkout-oom-9"
    assert not proposal_is_own(renamed, KEY, incident_uid=INCIDENT_UID, decision_id=DECISION)
    assert not proposal_is_own(body, OTHER_KEY, incident_uid=INCIDENT_UID, decision_id=DECISION)


# --------------------------------------------------------------------------- the binder


class Runs:
    """Runs by name; create_or_get and a resourceVersion-checked annotation patch."""

    def __init__(self) -> None:
        self.stored: dict[str, dict[str, Any]] = {}
        self.fail_patch = False
        self.version = 0

    async def create_or_get(self, plural: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        name = body["metadata"]["name"]
        if name not in self.stored:
            self.version += 1
            created = copy.deepcopy(body)
            created["metadata"].update(uid=f"uid-{self.version}", resourceVersion=str(self.version))
            self.stored[name] = created
        return copy.deepcopy(self.stored[name])

    async def patch_annotations(
        self, plural: str, namespace: str, name: str, annotations: Any, *, resource_version: str
    ) -> dict[str, Any]:
        if self.fail_patch:
            raise RuntimeError("killed between create and bind")
        stored = self.stored[name]
        assert stored["metadata"]["resourceVersion"] == resource_version
        stored["metadata"].setdefault("annotations", {}).update(annotations)
        return copy.deepcopy(stored)


def manifest() -> dict[str, Any]:
    body = run_body()
    body["metadata"].pop("uid")
    return body


async def test_the_binder_creates_and_binds_and_binds_again_after_a_crash() -> None:
    runs = Runs()
    binder = RunBinder(Key(), runs)
    runs.fail_patch = True
    with pytest.raises(RuntimeError):
        await binder.create_bound(manifest(), DECISION)
    assert isinstance(verify_binding(runs.stored["checkout-oom-1"], KEY), Refusal), "created, not bound yet"
    runs.fail_patch = False
    body = await binder.create_bound(manifest(), DECISION)
    assert isinstance(verify_binding(body, KEY), RunBinding)
    assert body["metadata"]["uid"] == "uid-1", "the one Run, not a twin"
    again = await binder.create_bound(manifest(), DECISION)
    assert again == body, "bound already: nothing written"


async def test_the_binder_never_binds_a_run_it_did_not_propose() -> None:
    runs = Runs()
    planted = manifest()  # created first by someone else under the deterministic name
    planted["metadata"]["annotations"] = {PROPOSAL_SEAL: "0" * 64, DECISION_ID: DECISION}
    await runs.create_or_get("runs", NAMESPACE, planted)
    body = await RunBinder(Key(), runs).create_bound(manifest(), DECISION)
    assert BINDING not in body["metadata"]["annotations"]
    assert isinstance(await RunBinder(Key(), runs).verify(body), Refusal)


# --------------------------------------------------------------------------- the executor


def trusting(h: Harness, *, key: bytes = KEY) -> Harness:
    h.controller = RunController(
        run_policy(FlywheelSettings()),
        h.repairs,
        RunStores(workloads=h.workloads, incidents=h.incidents, attempts=h.attempts,
                  binder=RunBinder(Key(key), Runs())),
    )
    return h


async def test_a_bound_run_acts() -> None:
    h = trusting(Harness(bound()))
    await h.step()
    status = await h.step(1)
    assert status.state is RunState.SUCCEEDED
    assert len(h.workloads.applied) == 1


@pytest.mark.parametrize("state", [None, "WaitingApproval", "Running", "Verifying"])
async def test_an_unbound_run_fails_untrusted_and_never_touches_the_workload(state: str | None) -> None:
    body = run_body()
    if state is not None:  # a status claiming progress, written by hand
        body["status"] = {"state": state, "attempt": 1, "startedAt": T0.isoformat()}
    h = trusting(Harness(body))
    status = await h.step(1)
    assert (status.state, status.error_code) == (RunState.FAILED, RunErrorCode.RUN_UNTRUSTED.value)
    assert h.workloads.applied == []
    (event,) = [e for e in h.outcomes[-1].events if e.reason == "RunUntrusted"]
    assert event.type == "Warning" and "not created by Flywheel" in event.message
    assert h.repairs.attempts == {} and h.incidents.writes == 0, "nothing recorded for a Run not Flywheel's"


async def test_a_run_edited_after_it_was_bound_fails_before_its_next_attempt() -> None:
    h = trusting(Harness(bound()))
    await h.step()
    h.body["spec"]["action"]["target"]["name"] = "payments"
    status = await h.step(1)
    assert (status.state, status.error_code) == (RunState.FAILED, "E-RUN-UNTRUSTED")
    assert h.workloads.applied == []


async def test_a_run_bound_with_another_key_fails() -> None:
    h = trusting(Harness(bound(key=OTHER_KEY)))
    status = await h.step()
    assert status.error_code == "E-RUN-UNTRUSTED"


# --------------------------------------------------------------------------- the token, per attempt


ACTION = {"type": "RolloutRestart", "target": {"kind": "Deployment", "name": "checkout"}}


def test_a_token_lets_one_attempt_act_and_the_next_grant_keeps_the_expiry() -> None:
    grant = new_grant(run_uid="r", approval_uid="a", approver="alice", action=ACTION, now=T0, ttl=timedelta(minutes=10))
    token = issue_token(grant, KEY)
    assert verify_token(token, KEY, run_uid="r", action=ACTION, now=T0, attempt=1).attempt == 1
    with pytest.raises(TokenRefused) as refused:
        verify_token(token, KEY, run_uid="r", action=ACTION, now=T0, attempt=2)
    assert refused.value.code is RunErrorCode.APPROVAL_REPLAYED
    assert "attempt 1" in str(refused.value)
    second = next_grant(grant)
    assert (second.attempt, second.expires_at) == (2, grant.expires_at)
    assert second.token_id != grant.token_id


class Ledger:
    def __init__(self) -> None:
        self.spent: dict[str, str] = {}
        self.kept: dict[str, str] = {}

    async def spend(self, token_id: str, run_uid: str, keep_for: timedelta) -> bool:
        return self.spent.setdefault(token_id, run_uid) == run_uid

    async def keep(self, token_id: str, token: str, keep_for: timedelta) -> None:
        self.kept[token_id] = token

    async def fetch(self, token_id: str) -> str | None:
        return self.kept.get(token_id)


def gate(ledger: Ledger) -> ApprovalGate:
    return ApprovalGate(approval_settings(FlywheelSettings()), resources=None, incidents=None, signing_key=Key(),  # type: ignore[arg-type]
                        spent_tokens=ledger, action_history=None, audit=None)  # type: ignore[arg-type]


def gate_run(token_id: str | None, uid: str = "r") -> GateRun:
    from flywheel.api.common import Action

    return GateRun(name="run", namespace=NAMESPACE, uid=uid, labels={}, incident_name="inc",
                   action=Action.model_validate(ACTION), risk_level="high", approval_ref=None,
                   approval_token_id=token_id, tenant=NAMESPACE)


async def test_tokens_are_kept_by_id_spent_per_attempt_and_never_replayed() -> None:
    ledger = Ledger()
    approvals = gate(ledger)
    grant = new_grant(run_uid="r", approval_uid="a", approver="alice", action=ACTION, now=T0, ttl=timedelta(minutes=10))
    first = await approvals._keep(grant, T0)
    assert first == grant.token_id and ledger.kept[first].count(".") == 2, "the token stays in the ledger"
    await approvals.authorise(gate_run(first), 1, T0)
    await approvals.authorise(gate_run(first), 1, T0)  # the same Run and attempt again: a retried pass
    with pytest.raises(TokenRefused) as replayed:
        await approvals.authorise(gate_run(first), 2, T0)  # a status claiming attempt 2 with attempt 1's token
    assert replayed.value.code is RunErrorCode.APPROVAL_REPLAYED
    with pytest.raises(TokenRefused) as foreign:
        await approvals.authorise(gate_run(first, uid="another-run"), 1, T0)
    assert foreign.value.code is RunErrorCode.APPROVAL_REPLAYED
    with pytest.raises(TokenRefused) as missing:
        await approvals.authorise(gate_run(None), 1, T0)
    assert missing.value.code is RunErrorCode.APPROVAL_TOKEN_INVALID
    with pytest.raises(TokenRefused):
        await approvals.authorise(gate_run("never-issued"), 1, T0)
    second = await approvals.renew(gate_run(first), 1, T0)
    await approvals.authorise(gate_run(second), 2, T0)
    with pytest.raises(TokenRefused):  # attempt 1's token cannot issue attempt 3's
        await approvals.renew(gate_run(first), 2, T0)


async def test_a_run_flywheel_just_created_waits_for_its_binding_then_fails_without_it() -> None:
    body = run_body()
    body["metadata"]["annotations"] = proposal_annotations(body, DECISION, KEY)  # created, not bound yet
    verdict = verify_binding(body, KEY)
    assert isinstance(verdict, Refusal) and verdict.rule == "run-binding-pending"
    unbound = copy.deepcopy(body)
    h = trusting(Harness(body))
    status = await h.step()
    assert status.state is RunState.PENDING and h.workloads.applied == []
    h.body["metadata"]["annotations"].update(binding_annotation(h.body, KEY))
    await h.step(1)
    assert (await h.step(1)).state is RunState.SUCCEEDED

    late = trusting(Harness(unbound))
    status = await late.step(61)
    assert (status.state, status.error_code) == (RunState.FAILED, "E-RUN-UNTRUSTED")
    assert late.workloads.applied == []
