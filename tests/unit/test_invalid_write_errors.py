"""A 422 answer of the API server becomes InvalidWriteError naming the refused fields.

Scenario matrix (Status bodies as kube-apiserver 1.34 sends them):
- a CRD schema refusal (enum): InvalidWriteError (a KubernetesApiError with status 422)
  whose ``describe()`` names each field and the API server's message;
- an admission policy refusal (a cause without a field): the message alone;
- a body that is not a Status, and other statuses: no causes / not an InvalidWriteError.
"""

from __future__ import annotations

import json

import pytest

from flywheel.errors import InvalidWriteError, KubernetesApiError, StoreUnavailableError
from flywheel.stores.kube import status_error

pytestmark = pytest.mark.unit

ENUM_REFUSAL = {
    "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Invalid", "code": 422,
    "message": 'Approval.flywheel.dev "checkout-oom-1" is invalid: spec.previousOutcomes[0].action: '
               'Unsupported value: "restart_pod": supported values: "RolloutRestart", "Scale", "RolloutUndo"',
    "details": {"name": "checkout-oom-1", "group": "flywheel.dev", "kind": "Approval", "causes": [
        {"reason": "FieldValueNotSupported", "field": "spec.previousOutcomes[0].action",
         "message": 'Unsupported value: "restart_pod": supported values: "RolloutRestart", "Scale", "RolloutUndo"'},
    ]},
}
POLICY_REFUSAL = {
    "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Invalid", "code": 422,
    "message": 'runs.flywheel.dev "x-1" is invalid: : ValidatingAdmissionPolicy \'frozen\' with binding '
               "'frozen' denied request: Runs are frozen",
    "details": {"name": "x-1", "group": "flywheel.dev", "kind": "runs", "causes": [
        {"message": "ValidatingAdmissionPolicy 'frozen' with binding 'frozen' denied request: Runs are frozen"},
    ]},
}


def test_a_schema_refusal_names_the_field() -> None:
    error = status_error(422, "Unprocessable Entity", json.dumps(ENUM_REFUSAL), "create approvals/checkout-oom-1")
    assert isinstance(error, InvalidWriteError) and isinstance(error, KubernetesApiError)
    assert error.status == 422
    assert error.causes == (("spec.previousOutcomes[0].action", ENUM_REFUSAL["details"]["causes"][0]["message"]),)
    assert error.describe().startswith('spec.previousOutcomes[0].action: Unsupported value: "restart_pod"')
    assert str(error).startswith("create approvals/checkout-oom-1: 422 Approval.flywheel.dev")


def test_a_policy_refusal_without_a_field_gives_its_message() -> None:
    error = status_error(422, "Unprocessable Entity", POLICY_REFUSAL, "create runs/x-1")
    assert isinstance(error, InvalidWriteError)
    assert error.describe() == "ValidatingAdmissionPolicy 'frozen' with binding 'frozen' denied request: Runs are frozen"


def test_a_body_that_is_not_a_status_has_no_causes() -> None:
    error = status_error(422, "Unprocessable Entity", "<html>bad gateway</html>", "create runs/x-1")
    assert isinstance(error, InvalidWriteError)
    assert error.causes == ()
    assert error.describe() == str(error)


@pytest.mark.parametrize(("status", "kind"), [(409, KubernetesApiError), (403, KubernetesApiError),
                                              (503, StoreUnavailableError)])
def test_other_statuses_are_not_invalid_writes(status: int, kind: type[Exception]) -> None:
    error = status_error(status, "x", "{}", "create runs/x-1")
    assert isinstance(error, kind) and not isinstance(error, InvalidWriteError)
