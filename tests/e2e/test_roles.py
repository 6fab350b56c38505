"""The user roles manifests/ ships, asked of the real API server with ``kubectl auth can-i``.

Scenario matrix (the ClusterRoles flywheel-sre and flywheel-approver from the rendered manifests,
bound in the test's namespace as the comment in user-roles.yaml says):
- both read Incidents, Runs, Approvals and Events; neither writes a Run, any ``*/status``
  subresource, deletes anything of Flywheel's, reads Secrets or touches workloads;
- an SRE files and patches Incidents, and cannot decide Approvals;
- an approver patches Approvals (the admission webhook then lets only spec.decision and
  spec.reason through, see test_gate_evidence) and cannot create, update or delete them, nor
  file or change Incidents;
- nobody bound to them can escalate (bind or edit roles, impersonate).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.harness.cluster import TestCluster
from tests.harness.serviceaccount import MANIFESTS, RBAC_API, only, render

pytestmark = pytest.mark.e2e

SRE, APPROVER = "role-test-sre", "role-test-approver"
FLYWHEEL = ("incidents.flywheel.dev", "runs.flywheel.dev", "approvals.flywheel.dev")


@pytest.fixture()
def bound_roles(test_cluster: TestCluster, namespace: str) -> Iterator[None]:
    documents = render(test_cluster, MANIFESTS / "base")
    for role, user in (("flywheel-sre", SRE), ("flywheel-approver", APPROVER)):
        rules = only(documents, "ClusterRole", role)["rules"]
        test_cluster.kubectl("apply", "-f", "-", input=json.dumps({
            "apiVersion": RBAC_API, "kind": "Role", "metadata": {"name": role, "namespace": namespace},
            "rules": rules,
        }))
        test_cluster.kubectl("apply", "-f", "-", input=json.dumps({
            "apiVersion": RBAC_API, "kind": "RoleBinding", "metadata": {"name": role, "namespace": namespace},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
        }))
    yield


def can_i(cluster: TestCluster, user: str, verb: str, resource: str, namespace: str) -> bool:
    if resource.endswith("]"):
        resource, subresource = resource[:-1].split("[")
        scope = ["-n", namespace, f"--subresource={subresource}"]
    else:
        scope = ["-n", namespace]
    result = cluster.kubectl("auth", "can-i", "--as", user, verb, resource, *scope, check=False)
    answer = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert answer in ("yes", "no"), f"can-i {verb} {resource}: {result.stdout}{result.stderr}"
    return answer == "yes"


READS = [(verb, resource) for verb in ("get", "list", "watch") for resource in (*FLYWHEEL, "events")]
NOBODY = [
    *[(verb, "runs.flywheel.dev") for verb in ("create", "update", "patch", "delete", "deletecollection")],
    *[(verb, f"{resource}[status]") for verb in ("update", "patch") for resource in FLYWHEEL],
    *[(verb, resource) for verb in ("delete", "deletecollection") for resource in FLYWHEEL],
    ("get", "secrets"), ("list", "secrets"),
    ("patch", "deployments.apps"), ("update", "deployments.apps[scale]"), ("patch", "statefulsets.apps"),
    ("create", "rolebindings.rbac.authorization.k8s.io"), ("escalate", "roles.rbac.authorization.k8s.io"),
    ("bind", "roles.rbac.authorization.k8s.io"), ("impersonate", "users"), ("impersonate", "groups"),
    ("patch", "leases.coordination.k8s.io"), ("create", "events"),
]


def test_both_roles_read_everything_and_write_no_run_status_or_deletion(
    test_cluster: TestCluster, namespace: str, bound_roles: None
) -> None:
    for user in (SRE, APPROVER):
        assert [check for check in READS if not can_i(test_cluster, user, *check, namespace)] == [], user
        assert [check for check in NOBODY if can_i(test_cluster, user, *check, namespace)] == [], user


def test_an_sre_files_incidents_and_cannot_decide(test_cluster: TestCluster, namespace: str, bound_roles: None) -> None:
    assert can_i(test_cluster, SRE, "create", "incidents.flywheel.dev", namespace)
    assert can_i(test_cluster, SRE, "patch", "incidents.flywheel.dev", namespace)
    for verb in ("create", "update", "patch"):
        assert not can_i(test_cluster, SRE, verb, "approvals.flywheel.dev", namespace), verb


def test_an_approver_patches_approvals_and_nothing_else(
    test_cluster: TestCluster, namespace: str, bound_roles: None
) -> None:
    assert can_i(test_cluster, APPROVER, "patch", "approvals.flywheel.dev", namespace)
    for verb in ("create", "update"):
        assert not can_i(test_cluster, APPROVER, verb, "approvals.flywheel.dev", namespace), verb
    for verb in ("create", "update", "patch"):
        assert not can_i(test_cluster, APPROVER, verb, "incidents.flywheel.dev", namespace), verb


def test_the_roles_are_bound_nowhere_else(test_cluster: TestCluster, namespace: str, bound_roles: None) -> None:
    # Bound in the test's namespace only: elsewhere they grant nothing (no ClusterRoleBinding shipped).
    assert not can_i(test_cluster, APPROVER, "patch", "approvals.flywheel.dev", "default")
    assert not can_i(test_cluster, SRE, "get", "incidents.flywheel.dev", "default")
