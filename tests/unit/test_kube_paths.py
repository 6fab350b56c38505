"""The pure parts of the operator's Kubernetes client: resource paths and error translation.

(The requests themselves go to the real API server in the e2e tests.)

Scenarios: paths of core and named groups, namespaced and cluster-scoped, with subresources and
names that need quoting; failure statuses become StoreUnavailableError when retrying helps
(no answer, 429, 5xx) and KubernetesApiError carrying the status and the API server's own message
otherwise.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flywheel.errors import KubernetesApiError, StoreUnavailableError
from flywheel.stores.kube import resource_path, status_error

pytestmark = pytest.mark.unit


def test_paths_of_core_and_named_groups() -> None:
    assert resource_path("", "v1", "events", namespace="shop") == "/api/v1/namespaces/shop/events"
    assert resource_path("flywheel.dev", "v1alpha1", "runs", namespace="shop", name="oom-1", subresource="status") == (
        "/apis/flywheel.dev/v1alpha1/namespaces/shop/runs/oom-1/status"
    )
    assert resource_path("admissionregistration.k8s.io", "v1", "mutatingwebhookconfigurations") == (
        "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
    )
    assert resource_path("kopf.dev", "v1", "clusterkopfpeerings", name="flywheel") == (
        "/apis/kopf.dev/v1/clusterkopfpeerings/flywheel"
    )


@given(st.text(min_size=1, max_size=40))
def test_a_name_never_adds_a_path_segment(name: str) -> None:
    path = resource_path("flywheel.dev", "v1alpha1", "incidents", namespace="shop", name=name)
    assert path.count("/") == "/apis/flywheel.dev/v1alpha1/namespaces/shop/incidents/x".count("/")


@pytest.mark.parametrize("status", [None, 0, 429, 500, 502, 503, 504])
def test_statuses_worth_retrying_mean_unavailable(status: int | None) -> None:
    error = status_error(status, "Too Many Requests", b"", "create runs/oom-1")
    assert isinstance(error, StoreUnavailableError)
    assert str(error).startswith("create runs/oom-1: Kubernetes API unavailable")


def test_a_refusal_carries_the_status_and_the_api_servers_message() -> None:
    body = json.dumps({"kind": "Status", "message": 'runs.flywheel.dev "oom-1" is forbidden: no'}).encode()
    error = status_error(403, "Forbidden", body, "create runs/oom-1")
    assert isinstance(error, KubernetesApiError) and error.status == 403
    assert str(error) == 'create runs/oom-1: 403 runs.flywheel.dev "oom-1" is forbidden: no'
    # Without a Status body, the HTTP reason is what there is to say.
    assert str(status_error(404, "Not Found", b"<html>", "get runs/x")) == "get runs/x: 404 Not Found"
