"""The workload of a Pod-level alert, through the owner chain, with an in-memory API stand-in.

Scenario matrix:
- Pod → ReplicaSet → Deployment, Pod → StatefulSet, Pod → DaemonSet: the Incident targets the workload, its
  service is the workload's app.kubernetes.io/name, else app, else its name;
- labels naming the workload (deployment, statefulset, daemonset, flywheel_target) win over pod;
- another exporter's Pod (node-exporter's DaemonSet Pod reported by kube-state-metrics) is a
  subject like any other;
- refusals with their bounded reason: Pod gone, Pod without controller, Pod of a Job, bare
  ReplicaSet, workload gone (a DaemonSet deleted under its Pod), the exporter's own Pod;
- the cache: a storm of alerts about the same Pods reads each object once, concurrent
  lookups share one read, entries expire, transient API failures are not cached;
- refusals are counted on every delivery and logged once per fingerprint and reason;
- property (Hypothesis): whatever scrape-target labels an alert carries, none becomes the service.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flywheel.api.enums import TargetKind
from flywheel.domain.alerts import (
    SCRAPE_TARGET_LABELS,
    AlertIntake,
    AlertmanagerAlert,
    AlertRefusal,
    NamespaceScope,
    PayloadContext,
    RefusalReason,
    Workload,
    address_alert,
    plan_alert,
)
from flywheel.errors import StoreUnavailableError
from flywheel.intake.refusals import RefusalLog
from flywheel.stores.pod_owners import PodOwnerStore

pytestmark = pytest.mark.unit

NS = "shop"
CONTEXT = PayloadContext(receiver="flywheel")
# Labels as kube-prometheus-stack's kube-state-metrics series carry them (release "prometheus").
KSM_TARGET = {"job": "kube-state-metrics", "endpoint": "http", "instance": "10.244.0.7:8080",
              "service": "prometheus-kube-state-metrics"}


def owner(kind: str, name: str, api_version: str = "apps/v1", controller: bool = True) -> dict[str, Any]:
    return {"apiVersion": api_version, "kind": kind, "name": name, "uid": f"uid-{name}", "controller": controller}


def obj(name: str, *owners: dict[str, Any], labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": NS, "labels": labels or {}, "ownerReferences": list(owners)}}


class InMemoryApi:
    """Objects by API path, counting reads; ``failing`` paths raise as an unreachable API would."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.reads: Counter[str] = Counter()
        self.failing: set[str] = set()

    def put(self, group: str, plural: str, body: dict[str, Any]) -> None:
        prefix = "/api/v1" if not group else f"/apis/{group}/v1"
        self.objects[f"{prefix}/namespaces/{NS}/{plural}/{body['metadata']['name']}"] = body

    async def get(self, path: str, what: str) -> dict[str, Any] | None:
        self.reads[path] += 1
        await asyncio.sleep(0)  # a real read yields to the loop: concurrent lookups overlap
        if path in self.failing:
            raise StoreUnavailableError(f"{what}: unreachable")
        return self.objects.get(path)


@pytest.fixture()
def api() -> InMemoryApi:
    api = InMemoryApi()
    api.put("apps", "deployments", obj("checkout", labels={"app.kubernetes.io/name": "checkout-api", "app": "co"}))
    api.put("apps", "replicasets", obj("checkout-7d9f8", owner("Deployment", "checkout")))
    for suffix in ("x2x9z", "k8s4q", "pl0w1"):
        api.put("", "pods", obj(f"checkout-7d9f8-{suffix}", owner("ReplicaSet", "checkout-7d9f8")))
    api.put("apps", "statefulsets", obj("postgres", labels={"app": "db"}))
    api.put("", "pods", obj("postgres-0", owner("StatefulSet", "postgres")))
    api.put("", "pods", obj("migrate-abcde", owner("Job", "migrate", api_version="batch/v1")))
    api.put("apps", "daemonsets", obj("agent", labels={"app.kubernetes.io/name": "log-agent"}))
    api.put("", "pods", obj("agent-9xk2p", owner("DaemonSet", "agent")))
    api.put("", "pods", obj("collector-5kq2z", owner("DaemonSet", "collector")))
    api.put("apps", "daemonsets", obj("prometheus-prometheus-node-exporter",
                                      labels={"app.kubernetes.io/name": "prometheus-node-exporter"}))
    api.put("", "pods", obj("prometheus-prometheus-node-exporter-7xk2m",
                            owner("DaemonSet", "prometheus-prometheus-node-exporter")))
    api.put("", "pods", obj("standalone"))
    api.put("apps", "replicasets", obj("bare-rs"))
    api.put("", "pods", obj("bare-rs-p0d", owner("ReplicaSet", "bare-rs")))
    api.put("", "pods", obj("orphan-rs-p0d", owner("ReplicaSet", "gone-rs")))
    api.put("apps", "deployments", obj("prometheus-kube-state-metrics",
                                       labels={"app.kubernetes.io/name": "kube-state-metrics"}))
    api.put("apps", "replicasets", obj("prometheus-kube-state-metrics-6d9f7c8b5",
                                       owner("Deployment", "prometheus-kube-state-metrics")))
    api.put("", "pods", obj("prometheus-kube-state-metrics-6d9f7c8b5-x2x9z",
                            owner("ReplicaSet", "prometheus-kube-state-metrics-6d9f7c8b5")))
    return api


def firing(labels: dict[str, str], fingerprint: str = "a1b2c3d4e5f60718") -> AlertmanagerAlert:
    return AlertmanagerAlert.model_validate({
        "status": "firing", "labels": {"namespace": NS, **labels}, "annotations": {},
        "startsAt": "2025-03-01T12:00:00Z", "endsAt": "0001-01-01T00:00:00Z", "fingerprint": fingerprint,
    })


async def intake_of(store: PodOwnerStore, labels: dict[str, str]) -> AlertIntake | AlertRefusal:
    received = firing(labels)
    address = address_alert(received, NamespaceScope())
    if isinstance(address, AlertRefusal):
        return address
    workload = await store.resolve(address.namespace, address.subject)
    if isinstance(workload, AlertRefusal):
        return workload
    return plan_alert(received, CONTEXT, address, workload)


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


# KubePodCrashLooping as kube-prometheus-stack fires it: the pod/container are the app's (honorLabels).
CRASH_LOOPING = {"alertname": "KubePodCrashLooping", "severity": "warning", "reason": "CrashLoopBackOff",
                 "container": "app", "uid": "0b7c", **KSM_TARGET}


@pytest.mark.parametrize(
    ("labels", "kind", "name", "service"),
    [
        ({**CRASH_LOOPING, "pod": "checkout-7d9f8-x2x9z"}, TargetKind.DEPLOYMENT, "checkout", "checkout-api"),
        ({"alertname": "KubePodNotReady", "severity": "warning", "pod": "postgres-0"},
         TargetKind.STATEFULSET, "postgres", "db"),
        ({"alertname": "CPUThrottlingHigh", "severity": "info", "container": "app", "pod": "checkout-7d9f8-k8s4q",
          "instance": "172.18.0.2:10250", "service": "prometheus-kube-prometheus-kubelet"},
         TargetKind.DEPLOYMENT, "checkout", "checkout-api"),
        # kube-state-metrics object alerts carry the exporter's own pod/container: the object label wins.
        ({"alertname": "KubeStatefulSetReplicasMismatch", "statefulset": "postgres",
          "pod": "prometheus-kube-state-metrics-6d9f7c8b5-x2x9z", "container": "kube-state-metrics", **KSM_TARGET},
         TargetKind.STATEFULSET, "postgres", "db"),
        ({"alertname": "Custom", "flywheel_target": "Deployment/checkout", "pod": "postgres-0"},
         TargetKind.DEPLOYMENT, "checkout", "checkout-api"),
        ({**CRASH_LOOPING, "pod": "agent-9xk2p", "container": "agent"}, TargetKind.DAEMONSET, "agent", "log-agent"),
        # KubeContainerWaiting aggregates by (namespace, pod, container): nothing else is left.
        ({"alertname": "KubeContainerWaiting", "severity": "warning", "pod": "agent-9xk2p", "container": "agent"},
         TargetKind.DAEMONSET, "agent", "log-agent"),
        ({"alertname": "KubeDaemonSetRolloutStuck", "severity": "warning", "daemonset": "agent",
          "pod": "prometheus-kube-state-metrics-6d9f7c8b5-x2x9z", "container": "kube-state-metrics", **KSM_TARGET},
         TargetKind.DAEMONSET, "agent", "log-agent"),
        ({"alertname": "KubeDaemonSetNotScheduled", "severity": "warning", "daemonset": "agent",
          "pod": "prometheus-kube-state-metrics-6d9f7c8b5-x2x9z", "container": "kube-state-metrics", **KSM_TARGET},
         TargetKind.DAEMONSET, "agent", "log-agent"),
        # node-exporter is an exporter, but here kube-state-metrics reports about its Pod.
        ({**CRASH_LOOPING, "pod": "prometheus-prometheus-node-exporter-7xk2m", "container": "node-exporter"},
         TargetKind.DAEMONSET, "prometheus-prometheus-node-exporter", "prometheus-node-exporter"),
    ],
)
def test_an_alert_maps_to_the_workload_that_owns_its_pod(
    api: InMemoryApi, labels: dict[str, str], kind: TargetKind, name: str, service: str
) -> None:
    result = run(intake_of(PodOwnerStore(api), labels))
    assert isinstance(result, AlertIntake), result
    assert (result.spec.target_ref.kind, result.spec.target_ref.name) == (kind, name)
    assert result.spec.service == service
    assert result.signal.labels["pod"] == labels["pod"], "the signal keeps the alert's own labels"


@pytest.mark.parametrize(
    ("labels", "reason", "words"),
    [
        ({"pod": "checkout-7d9f8-gone0"}, RefusalReason.POD_NOT_FOUND, "does not exist"),
        ({"pod": "orphan-rs-p0d"}, RefusalReason.POD_NOT_FOUND, "ReplicaSet gone-rs"),
        ({"pod": "standalone"}, RefusalReason.UNSUPPORTED_OWNER, "no controller"),
        ({"pod": "migrate-abcde"}, RefusalReason.UNSUPPORTED_OWNER, "Job/migrate"),
        ({"pod": "collector-5kq2z"}, RefusalReason.WORKLOAD_NOT_FOUND, "DaemonSet/collector"),
        ({"daemonset": "nothing-here"}, RefusalReason.WORKLOAD_NOT_FOUND, "DaemonSet/nothing-here"),
        ({"pod": "bare-rs-p0d"}, RefusalReason.UNSUPPORTED_OWNER, "belongs to no Deployment"),
        ({"deployment": "nothing-here"}, RefusalReason.WORKLOAD_NOT_FOUND, "Deployment/nothing-here"),
        ({"alertname": "KubeNodeNotReady", "node": "node-1", "condition": "Ready", "container": "kube-state-metrics",
          "pod": "prometheus-kube-state-metrics-6d9f7c8b5-x2x9z", **KSM_TARGET},
         RefusalReason.EXPORTER_POD, "exporter"),
        ({"alertname": "Whatever"}, RefusalReason.NO_WORKLOAD, "names no workload"),
    ],
)
def test_an_alert_whose_workload_cannot_be_found_is_refused_with_its_reason(
    api: InMemoryApi, labels: dict[str, str], reason: RefusalReason, words: str
) -> None:
    result = run(intake_of(PodOwnerStore(api), labels))
    assert isinstance(result, AlertRefusal), result
    assert result.code is reason
    assert words in result.reason
    assert result.field.startswith("labels.")


def test_a_storm_about_the_same_pods_reads_each_object_once(api: InMemoryApi) -> None:
    store = PodOwnerStore(api)
    pods = ["checkout-7d9f8-x2x9z", "checkout-7d9f8-k8s4q", "checkout-7d9f8-pl0w1", "postgres-0"]

    async def storm() -> list[Workload | AlertRefusal]:
        return await asyncio.gather(*(store.resolve(NS, address.subject) for index in range(400)
                                      if not isinstance(address := address_alert(
                                          firing({"pod": pods[index % len(pods)]}), NamespaceScope()), AlertRefusal)))

    results = run(storm())
    assert all(isinstance(result, Workload) for result in results)
    # 4 Pods + 1 ReplicaSet + 2 workloads, however many alerts and however concurrent.
    assert store.api_reads == 7
    assert max(api.reads.values()) == 1


def test_cached_answers_expire_and_failures_are_not_cached(api: InMemoryApi) -> None:
    now = [0.0]
    store = PodOwnerStore(api, owner_seconds=60, missing_seconds=10, clock=lambda: now[0])
    pod_path = f"/api/v1/namespaces/{NS}/pods/postgres-0"

    async def resolve(pod: str) -> Workload | AlertRefusal:
        address = address_alert(firing({"pod": pod}), NamespaceScope())
        assert not isinstance(address, AlertRefusal)
        return await store.resolve(NS, address.subject)

    assert isinstance(run(resolve("postgres-0")), Workload)
    now[0] = 59
    run(resolve("postgres-0"))
    assert api.reads[pod_path] == 1
    now[0] = 61
    run(resolve("postgres-0"))
    assert api.reads[pod_path] == 2

    gone = "checkout-7d9f8-late0"
    assert isinstance(run(resolve(gone)), AlertRefusal)
    api.put("", "pods", obj(gone, owner("ReplicaSet", "checkout-7d9f8")))
    now[0] = 70
    assert isinstance(run(resolve(gone)), AlertRefusal), "a missing Pod is remembered for a while"
    now[0] = 72
    assert isinstance(run(resolve(gone)), Workload), "and found once the short negative entry expired"

    api.failing.add(f"/api/v1/namespaces/{NS}/pods/checkout-7d9f8-pl0w1")
    with pytest.raises(StoreUnavailableError):
        run(resolve("checkout-7d9f8-pl0w1"))
    api.failing.clear()
    assert isinstance(run(resolve("checkout-7d9f8-pl0w1")), Workload), "an outage is not remembered as an answer"


class CountingCounter:
    def __init__(self) -> None:
        self.counts: Counter[RefusalReason] = Counter()

    def alert_refused(self, reason: RefusalReason) -> None:
        self.counts[reason] += 1


def test_refusals_count_every_time_and_log_once_per_fingerprint_and_reason() -> None:
    counter = CountingCounter()
    refusals = RefusalLog(counter, remembered=2)
    logged = [refusals.refused("fp1", RefusalReason.POD_NOT_FOUND) for _ in range(5)]
    assert logged == [True, False, False, False, False]
    assert refusals.refused("fp1", RefusalReason.UNSUPPORTED_OWNER), "a new reason is logged again"
    assert refusals.refused("fp2", RefusalReason.POD_NOT_FOUND)
    assert refusals.refused("fp3", RefusalReason.POD_NOT_FOUND)
    assert refusals.refused("fp1", RefusalReason.UNSUPPORTED_OWNER), "forgotten past the bound: logged again"
    assert counter.counts == {RefusalReason.POD_NOT_FOUND: 7, RefusalReason.UNSUPPORTED_OWNER: 2}


_target_values = st.one_of(
    st.sampled_from(["kube-state-metrics", "node-exporter", "kubelet", "http", "https-metrics",
                     "prometheus-kube-state-metrics", "prometheus-kube-prometheus-kubelet", "prometheus-operated",
                     "10.244.0.7:8080", "checkout", "checkout-api"]),
    st.from_regex(r"[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?", fullmatch=True),
)


@settings(max_examples=200, deadline=None)
@given(target=st.dictionaries(st.sampled_from(SCRAPE_TARGET_LABELS), _target_values),
       workload_labels=st.dictionaries(st.sampled_from(["app.kubernetes.io/name", "app", "tier"]),
                                       st.from_regex(r"[a-z]([-a-z0-9]{0,20}[a-z0-9])?", fullmatch=True)),
       named_by=st.sampled_from(["deployment", "flywheel_target"]))
def test_no_scrape_target_label_ever_becomes_the_service(
    target: dict[str, str], workload_labels: dict[str, str], named_by: str
) -> None:
    labels = {"alertname": "KubeDeploymentReplicasMismatch", **target,
              named_by: "web" if named_by == "deployment" else "Deployment/web"}
    received = firing(labels)
    address = address_alert(received, NamespaceScope())
    assert not isinstance(address, AlertRefusal), address
    workload = Workload(TargetKind.DEPLOYMENT, "web", workload_labels)
    result = plan_alert(received, CONTEXT, address, workload)
    assert isinstance(result, AlertIntake), result
    expected = (workload_labels.get("app.kubernetes.io/name") or workload_labels.get("app") or "web")
    assert result.spec.service == expected
    assert (result.spec.target_ref.kind, result.spec.target_ref.name) == (TargetKind.DEPLOYMENT, "web")


def test_the_refusal_counter_is_exposed_per_reason() -> None:
    from flywheel.metrics.collector import OperatorCounters

    counters = OperatorCounters()
    RefusalLog(counters).refused("fp", RefusalReason.POD_NOT_FOUND)
    (family,) = [f for f in counters.families() if f.name == "flywheel_intake_alerts_refused"]
    values = {sample.labels["reason"]: sample.value for sample in family.samples if sample.name.endswith("_total")}
    assert values[RefusalReason.POD_NOT_FOUND.value] == 1
    assert set(values) == {reason.value for reason in RefusalReason}
