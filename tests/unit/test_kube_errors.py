"""Each refusal of the Kubernetes API is its own exception, chosen once in the store.

Scenario matrix: 401/403 → ForbiddenError, 404 → NotFoundError, 409 → ConflictError,
410 → GoneError, 422 → InvalidWriteError, any other refusal → a plain KubernetesApiError; every
one still a KubernetesApiError carrying its status (the Run's failure classes read it);
no answer, 429 and 5xx → KubernetesUnavailableError, a StoreUnavailableError (retried later).
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flywheel.errors import (
    ConflictError,
    FlywheelError,
    ForbiddenError,
    GoneError,
    InvalidWriteError,
    KubernetesApiError,
    KubernetesUnavailableError,
    NotFoundError,
    StoreUnavailableError,
)
from flywheel.stores.kube import TRANSIENT_STATUSES, status_error

pytestmark = pytest.mark.unit

NAMED = {
    401: ForbiddenError,
    403: ForbiddenError,
    404: NotFoundError,
    409: ConflictError,
    410: GoneError,
    422: InvalidWriteError,
}


@pytest.mark.parametrize(("status", "expected"), sorted(NAMED.items()))
def test_each_refusal_is_its_own_exception_and_keeps_its_status(status: int, expected: type[Exception]) -> None:
    error = status_error(status, "Refused", b"", "patch runs/oom-1")
    assert type(error) is expected
    assert isinstance(error, KubernetesApiError) and error.status == status
    assert not isinstance(error, StoreUnavailableError), "a refusal is an answer, not an outage"
    assert str(error) == f"patch runs/oom-1: {status} Refused"


@given(st.integers(min_value=400, max_value=599).filter(lambda s: s not in NAMED and s not in TRANSIENT_STATUSES))
def test_other_refusals_stay_plain_kubernetes_api_errors(status: int) -> None:
    error = status_error(status, "Refused", b"", "get runs/oom-1")
    assert type(error) is KubernetesApiError and error.status == status


@pytest.mark.parametrize("status", sorted(s for s in TRANSIENT_STATUSES if s is not None) + [None])
def test_outages_are_kubernetes_unavailable_and_retried_as_a_store_outage(status: int | None) -> None:
    error = status_error(status, "Service Unavailable", b"", "get runs/oom-1")
    assert type(error) is KubernetesUnavailableError
    assert isinstance(error, StoreUnavailableError) and isinstance(error, FlywheelError)
    assert not isinstance(error, KubernetesApiError)
