"""The command line front door: subcommands, version, settings reference, usage errors, and the
approver's pure parts (waiting Approvals oldest first, API refusals in the approver's words)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner

from flywheel import __version__
from flywheel.cli import cli
from flywheel.cli_approvals import (
    action_text,
    outcome_of,
    refusal_before_deciding,
    refusal_for_api_error,
    remaining_text,
    render_waiting,
    waiting_approvals,
)

pytestmark = pytest.mark.unit


def test_help_lists_the_subcommands() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for command in ("run", "version", "crds", "dev", "config-reference"):
        assert f"  {command}" in result.output


def test_version_prints_the_package_version() -> None:
    result = CliRunner().invoke(cli, ["version"])
    assert result.output.strip() == f"flywheel {__version__}"


def test_dev_help_lists_up_down_status() -> None:
    result = CliRunner().invoke(cli, ["dev", "--help"])
    assert result.exit_code == 0
    for command in ("up", "down", "status"):
        assert f"  {command}" in result.output


def test_run_refuses_namespaces_together_with_all_namespaces() -> None:
    result = CliRunner().invoke(cli, ["run", "-n", "a", "--all-namespaces"])
    assert result.exit_code == 2
    assert "either --namespace or --all-namespaces" in result.output


def test_config_reference_documents_every_setting() -> None:
    from flywheel.settings import FlywheelSettings

    result = CliRunner().invoke(cli, ["config-reference"])
    assert result.exit_code == 0
    for name, field in FlywheelSettings.model_fields.items():
        assert f"`FLYWHEEL_{name.upper()}`" in result.output
        assert field.description, f"setting {name} has no description"


# --------------------------------------------------------------------------- the approver's commands

NOW = datetime(2026, 12, 2, 8, 0, tzinfo=UTC)


def _approval(name: str, created: str, **spec: object) -> dict[str, object]:
    return {
        "metadata": {"name": name, "namespace": "shop", "creationTimestamp": created},
        "spec": {"runRef": {"name": name, "uid": "u"}, "riskLevel": "high", "expiresAt": "2026-12-02T09:00:00Z",
                 "action": {"type": "Scale", "target": {"kind": "Deployment", "name": "api"},
                            "params": {"replicas": 3}}, **spec},
        "status": {"phase": "Pending"},
    }


def test_waiting_approvals_are_the_undecided_ones_oldest_first() -> None:
    decided = _approval("done", "2026-12-02T07:00:00Z", decision="Approve")
    expired = {**_approval("late", "2026-12-02T07:00:00Z"), "status": {"phase": "Expired"}}
    newer, older = _approval("a-new", "2026-12-02T07:59:00Z"), _approval("z-old", "2026-12-02T07:30:00Z")
    items = waiting_approvals([decided, newer, expired, older])
    assert [item.name for item in items] == ["z-old", "a-new"]
    table = render_waiting(items, NOW, all_namespaces=True).splitlines()
    assert table[0].split() == ["NAMESPACE", "NAME", "RUN", "ACTION", "RISK", "ESCALATION", "AGE", "EXPIRES"]
    assert "Scale Deployment/api to 3" in table[1] and "30m00s" in table[1] and "(in 1h00m)" in table[1]
    assert render_waiting([], NOW, all_namespaces=False) == "no Approvals wait for a decision"


def test_actions_and_remaining_time_read_like_a_person_would_say_them() -> None:
    assert action_text({"type": "RolloutUndo", "target": {"kind": "Deployment", "name": "x"},
                        "params": {"toRevision": 4}}) == "RolloutUndo Deployment/x to revision 4"
    assert remaining_text(NOW - timedelta(seconds=3), NOW) == "expired 3s ago"


@pytest.mark.parametrize(
    ("status", "message", "expected"),
    [
        (403, ('admission webhook "approval-policy.flywheel.dev" denied the request: four-eyes: user \'a\' created '
              "the Incident and cannot approve its own Run"),
         "four eyes: user 'a' created the Incident and cannot approve its own Run"),
        (403, ('admission webhook "approval-policy.flywheel.dev" denied the request: approver-not-allowed: user '
              "'m' may not decide"), "not an approver: user 'm' may not decide"),
        (403, ('admission webhook "approval-policy.flywheel.dev" denied the request: decision-final: spec.decision '
              "is Approve"), "already decided: spec.decision is Approve"),
        (403, 'approvals.flywheel.dev "x" is forbidden: User "eve" cannot patch resource "approvals"',
         'forbidden by RBAC: approvals.flywheel.dev "x" is forbidden: User "eve" cannot patch resource "approvals"'),
        (404, 'approvals.flywheel.dev "x" not found', "not found"),
        (422, ('Approval.flywheel.dev "x" is invalid: spec.decision: Invalid value: "string": decision is immutable '
              "once set: it cannot be changed or removed"),
         ('already decided: Approval.flywheel.dev "x" is invalid: spec.decision: Invalid value: "string": '
         "decision is immutable once set: it cannot be changed or removed")),
    ],
)
def test_api_refusals_become_the_approvers_words(status: int, message: str, expected: str) -> None:
    assert refusal_for_api_error(status, message) == expected


def test_an_unreachable_webhook_says_nothing_was_written() -> None:
    line = refusal_for_api_error(500, 'Internal error occurred: failed calling webhook "stamp-approver.flywheel.dev": '
                                      "dial tcp 127.0.0.1:1: connect: connection refused")
    assert line.startswith("Flywheel's admission webhook stamp-approver.flywheel.dev did not answer")
    assert line.endswith("nothing was written")


def test_decided_or_expired_approvals_are_refused_before_any_patch() -> None:
    decided = {**_approval("x", "2026-12-02T07:00:00Z", decision="Reject"),
               "status": {"phase": "Rejected", "decidedBy": "carol"}}
    assert refusal_before_deciding(decided, NOW) == "already decided: Reject by carol (phase Rejected)"
    assert refusal_before_deciding(_approval("x", "2026-12-02T07:00:00Z"), NOW + timedelta(hours=2)) == (
        "expired at 2026-12-02T09:00:00Z, its Run timed out; nothing was written"
    )
    assert refusal_before_deciding(_approval("x", "2026-12-02T07:00:00Z"), NOW) is None


def test_the_outcome_is_what_flywheel_recorded() -> None:
    assert outcome_of({"status": {"phase": "Pending"}}) is None
    assert outcome_of({"status": {"phase": "Approved", "decidedBy": "bob", "decidedAt": "T"}}) == (
        "approved by bob at T", True)
    assert outcome_of({"status": {"phase": "Invalid", "message": "decision  refused"}}) == (
        "invalid: decision refused", False)


def test_impersonating_groups_needs_a_user() -> None:
    result = CliRunner().invoke(cli, ["approvals", "--as-group", "g"])
    assert result.exit_code == 2 and "--as-group needs --as" in result.output


def test_a_decision_needs_a_reason() -> None:
    result = CliRunner().invoke(cli, ["approve", "x", "--reason", "  "])
    assert result.exit_code == 2 and "must say why" in result.output
