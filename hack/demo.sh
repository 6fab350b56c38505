#!/usr/bin/env bash
# The demo: a real local control plane, Redis, an embedded SQLite database, the
# operator, a sample workload and an Incident, with visible progress.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV="${VENV:-.venv}"
FLYWHEEL="${VENV}/bin/flywheel"
CLUSTER=flywheel
NS=flywheel-demo
STATE="${FLYWHEEL_CACHE_DIR:-${HOME}/.cache/flywheel}/clusters/${CLUSTER}"

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "Starting the local control plane and Redis (first run builds the binaries: 15-30 min)"
"${FLYWHEEL}" dev up --name "${CLUSTER}"
eval "$("${FLYWHEEL}" dev env --name "${CLUSTER}")"
kubectl get nodes

step "Installing the CRDs"
kubectl apply --server-side -f crds/ >/dev/null
kubectl wait --for=condition=Established crd --all --timeout=60s >/dev/null
kubectl get crds -o name | grep flywheel.dev

step "Starting the operator (log: ${STATE}/operator.log, database: ${STATE}/flywheel.db)"
export FLYWHEEL_DATABASE_URL="sqlite:///${STATE}/flywheel.db"
export FLYWHEEL_METRICS_PORT="${FLYWHEEL_METRICS_PORT:-8080}"
export FLYWHEEL_METRICS_INTERVAL_SECONDS="${FLYWHEEL_METRICS_INTERVAL_SECONDS:-5}"
# Admission webhooks on loopback (generated CA): approvers' identities come from the API server.
export FLYWHEEL_WEBHOOK_MODE=loopback FLYWHEEL_WEBHOOK_PORT="${FLYWHEEL_WEBHOOK_PORT:-0}"
export FLYWHEEL_NAMESPACE="${NS}"
# Flywheel acts only in namespaces that opted in. The demo keeps the operator's own Secrets in the
# workload's namespace, and the operator's namespace is protected (a label is not enough): list it.
export FLYWHEEL_REMEDIATION_NAMESPACES="${NS}"
# The demo's Pods are KWOK's: the symptom check after the rollout needs no 10-minute window here.
export FLYWHEEL_VERIFICATION_WINDOW_SECONDS="${FLYWHEEL_VERIFICATION_WINDOW_SECONDS:-10}"
if [[ -f "${STATE}/operator.pid" ]] && kill -0 "$(cat "${STATE}/operator.pid")" 2>/dev/null; then
  # A previous demo's operator may run older code: replace it.
  kill "$(cat "${STATE}/operator.pid")" && sleep 2
fi
# Like the Redis counts below, the demo starts from zero: a previous demo's Incidents, Runs and
# Approvals have this demo's names, and would show up beside its own in `flywheel history`.
if kubectl get namespace "${NS}" >/dev/null 2>&1; then
  kubectl delete incidents,runs,approvals -n "${NS}" --all --wait=true >/dev/null
fi
rm -f "${STATE}/flywheel.db" "${STATE}/flywheel.db-wal" "${STATE}/flywheel.db-shm"
"${FLYWHEEL}" db upgrade >/dev/null
nohup "${FLYWHEEL}" run --standalone --all-namespaces >"${STATE}/operator.log" 2>&1 &
echo $! >"${STATE}/operator.pid"
echo "operator started (pid $!)"
for _ in $(seq 1 60); do
  kubectl get validatingwebhookconfiguration flywheel-loopback >/dev/null 2>&1 && break
  sleep 1
done
kubectl get validatingwebhookconfiguration,mutatingwebhookconfiguration -l app.kubernetes.io/name=flywheel

step "Deploying the sample workload ${NS}/checkout"
kubectl create namespace "${NS}" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
# How a team opts its namespace in (for the demo's namespace the list above is what counts).
kubectl label namespace "${NS}" flywheel.dev/remediation=enabled --overwrite >/dev/null
kubectl apply -n "${NS}" -f examples/sample-workload.yaml
kubectl rollout status -n "${NS}" deployment/checkout --timeout=120s
kubectl get pods -n "${NS}" -o wide
kubectl apply -n "${NS}" -f examples/people-rbac.yaml >/dev/null

step "Filing an Incident: checkout was OOM-killed"
# Each demo starts from zero recurrences (the demo's own Redis), so it shows the automatic
# path; repeat the Incident by hand afterwards to watch it escalate towards approval.
redis-cli -u "${FLYWHEEL_REDIS_URL}" FLUSHDB >/dev/null
kubectl apply -n "${NS}" -f examples/incident-oom.yaml
for _ in $(seq 1 30); do
  run="$(kubectl get incident -n "${NS}" checkout-oom -o jsonpath='{.status.runRef.name}' 2>/dev/null || true)"
  [[ -n "${run}" ]] && break
  sleep 1
done
kubectl get flywheel -n "${NS}"

step "What Flywheel made of it"
kubectl describe incident -n "${NS}" checkout-oom | sed -n '/^Status:/,$p'

step "The Run restarts checkout for real, verifies the rollout, then that its Pods stay Ready for ${FLYWHEEL_VERIFICATION_WINDOW_SECONDS}s"
for _ in $(seq 1 90); do
  state="$(kubectl get run -n "${NS}" "${run}" -o jsonpath='{.status.state}' 2>/dev/null || true)"
  case "${state}" in Succeeded|Failed|Cancelled|TimedOut) break ;; esac
  sleep 1
done
kubectl get flywheel -n "${NS}"
kubectl rollout status -n "${NS}" deployment/checkout --timeout=60s
kubectl get deployment -n "${NS}" checkout -o jsonpath='{.spec.template.metadata.annotations}{"\n"}'

step "Its timeline, from the history database"
for _ in $(seq 1 15); do
  "${FLYWHEEL}" timeline -n "${NS}" "${run}" 2>/dev/null | grep -q completed && break
  sleep 1
done
"${FLYWHEEL}" timeline -n "${NS}" "${run}"
"${FLYWHEEL}" history -n "${NS}"

step "An approval round trip: sre-alice files an Incident that needs a person's approval"
kubectl --as sre-alice create -n "${NS}" -f examples/incident-approval.yaml
approval=""
for _ in $(seq 1 60); do
  approval="$(kubectl get incident -n "${NS}" checkout-oom-again -o jsonpath='{.status.runRef.name}' 2>/dev/null || true)"
  [[ -n "${approval}" ]] && kubectl get approval -n "${NS}" "${approval}" >/dev/null 2>&1 && break
  sleep 1
done
echo '$ kubectl get approvals'
kubectl get approvals -n "${NS}"
echo "\$ kubectl describe approval ${approval}"
kubectl describe approval -n "${NS}" "${approval}" | sed -n '/^Spec:/,/^Events:/p'
echo "\$ kubectl --as sre-alice --as-group flywheel-approvers patch approval ${approval} ...   # approving her own Incident"
kubectl --as sre-alice --as-group flywheel-approvers patch approval -n "${NS}" "${approval}" --type merge \
  -p '{"spec":{"decision":"Approve","reason":"mine"}}' || echo "(refused: four eyes)"
echo "\$ kubectl --as bob --as-group flywheel-approvers patch approval ${approval} --type merge -p '{\"spec\":{\"decision\":\"Approve\",...}}'"
kubectl --as bob --as-group flywheel-approvers patch approval -n "${NS}" "${approval}" --type merge \
  -p '{"spec":{"decision":"Approve","reason":"known OOM pattern, a restart is safe"}}'
for _ in $(seq 1 90); do
  state="$(kubectl get run -n "${NS}" "${approval}" -o jsonpath='{.status.state}' 2>/dev/null || true)"
  case "${state}" in Succeeded|Failed|Cancelled|TimedOut) break ;; esac
  sleep 1
done
kubectl get approvals,runs -n "${NS}"
kubectl get run -n "${NS}" "${approval}" \
  -o jsonpath='{range .status.steps[*]}{.seq}{"  "}{.name}{"  "}{.result}{"  "}{.message}{"\n"}{end}'

step "Metrics for Prometheus: http://127.0.0.1:${FLYWHEEL_METRICS_PORT}/metrics (JSON: /stats/summary, /stats/flywheel)"
for _ in $(seq 1 40); do
  # Wait for a snapshot taken after the Run finished.
  curl -fsS "http://127.0.0.1:${FLYWHEEL_METRICS_PORT}/metrics" 2>/dev/null \
    | grep -qE '^flywheel_runs\{state="(Succeeded|Failed|TimedOut)"\} [1-9]' && break
  sleep 1
done
curl -fsS "http://127.0.0.1:${FLYWHEEL_METRICS_PORT}/metrics" \
  | grep -E '^flywheel_(runs|anomaly_occurrences|funnel_stage|playbooks|execution_success_rate|redis_up|database_up)' | grep -v ' 0.0$' | head -20 || true

cat <<EOT

The demo keeps running. Try:
  export KUBECONFIG=${KUBECONFIG}
  kubectl get flywheel -n ${NS}
  sed s/checkout-oom/checkout-oom-2/ examples/incident-oom.yaml | kubectl apply -n ${NS} -f -   # the same anomaly again: counted, escalates, another Run
  tail -f ${STATE}/operator.log
Stop everything with: make demo-down
EOT
