"""The pydantic API models of Incident, Run and Approval.

Scenarios:
- valid specs and statuses round-trip through their camelCase JSON form (Hypothesis),
  and what Python writes is accepted by the generated CRD schema;
- invalid severities, kinds, names, actions and trace ids are refused with an error
  whose location names the field (as the API server does for the same input);
- helpers: camelCase aliases, conditions (transition time kept), the bounded Run
  journal, manifests for new objects.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from flywheel.api.approval import APPROVAL, ApprovalSpec, ApprovalStatus, PreviousOutcome
from flywheel.api.common import (
    DNS1123_SUBDOMAIN_PATTERN,
    Action,
    Condition,
    CustomResource,
    camel_case,
    find_condition,
    new_condition,
    set_condition,
)
from flywheel.api.crdgen import build_crd
from flywheel.api.enums import (
    ActionType,
    ApprovalDecision,
    ApprovalPhase,
    ConditionStatus,
    DecisionSource,
    DecisionState,
    Disposition,
    EscalationLevel,
    IncidentPhase,
    RemediationMode,
    RiskLevel,
    RunMode,
    RunState,
    Severity,
    SignalStatus,
    TargetKind,
)
from flywheel.api.incident import (
    INCIDENT,
    MAX_SIGNALS,
    TARGET_NAMESPACE_FORBIDDEN,
    IncidentSpec,
    IncidentStatus,
)
from flywheel.api.run import MAX_STEPS, RUN, RunSpec, RunStatus, append_step, short_step_message

pytestmark = pytest.mark.unit

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)

# --------------------------------------------------------------------------- strategies

dns_subdomains = st.from_regex(
    r"[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,10}[a-z0-9])?){0,2}", fullmatch=True
)
short_text = st.text(max_size=40)


def hex_strings(size: int) -> st.SearchStrategy[str]:
    return st.text(alphabet="0123456789abcdef", min_size=size, max_size=size)


names = st.text(min_size=1, max_size=60)
aware_datetimes = st.datetimes(
    min_value=datetime(1990, 1, 1),
    max_value=datetime(2200, 1, 1),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-7))]),
)
wire_datetimes = aware_datetimes.map(lambda moment: moment.isoformat())


def enum_values(enum: type[Any]) -> st.SearchStrategy[str]:
    return st.sampled_from([member.value for member in enum])


workload_refs = st.fixed_dictionaries({"kind": enum_values(TargetKind), "name": dns_subdomains})
object_refs = st.fixed_dictionaries({"name": dns_subdomains, "uid": names})


@st.composite
def actions(draw: st.DrawFn) -> dict[str, Any]:
    action_type = draw(enum_values(ActionType))
    target = draw(workload_refs)
    if action_type == ActionType.SCALE and target["kind"] == TargetKind.DAEMONSET:
        target = {**target, "kind": draw(st.sampled_from([TargetKind.DEPLOYMENT.value, TargetKind.STATEFULSET.value]))}
    action: dict[str, Any] = {"type": action_type, "target": target}
    if action_type == ActionType.SCALE:
        action["params"] = {"replicas": draw(st.integers(min_value=1, max_value=1000))}
    elif action_type == ActionType.ROLLOUT_UNDO and draw(st.booleans()):
        action["params"] = {"toRevision": draw(st.integers(min_value=1, max_value=10**6))}
    return action


signals = st.fixed_dictionaries(
    {"alertName": names, "startsAt": wire_datetimes},
    optional={
        "labels": st.dictionaries(st.text(min_size=1, max_size=20), short_text, max_size=8),
        "endsAt": wire_datetimes,
        "fingerprint": hex_strings(16),
        "status": enum_values(SignalStatus),
    },
)

incident_specs = st.fixed_dictionaries(
    {"service": names, "targetRef": workload_refs},
    optional={
        "alertName": names,
        "errorType": names,
        "severity": enum_values(Severity),
        "source": names,
        "summary": st.text(max_size=300),
        "signals": st.lists(signals, max_size=5),
        "remediation": st.fixed_dictionaries({}, optional={"mode": enum_values(RemediationMode)}),
        "resolution": st.fixed_dictionaries({}, optional={"note": short_text, "rootCause": short_text}),
        "permanentFix": st.fixed_dictionaries({"description": names}),
    },
)

conditions = st.lists(
    st.fixed_dictionaries(
        {
            "type": st.from_regex(r"[A-Z][A-Za-z]{0,20}", fullmatch=True),
            "status": enum_values(ConditionStatus),
            "reason": st.from_regex(r"[A-Z][A-Za-z0-9]{0,20}", fullmatch=True),
            "lastTransitionTime": wire_datetimes,
        },
        optional={"message": short_text, "observedGeneration": st.integers(min_value=0, max_value=2**40)},
    ),
    max_size=4,
    unique_by=lambda condition: condition["type"],
)

incident_statuses = st.fixed_dictionaries(
    {},
    optional={
        "phase": enum_values(IncidentPhase),
        "anomaly": st.fixed_dictionaries(
            {"key": hex_strings(16)},
            optional={
                "count1h": st.integers(min_value=0, max_value=10**6),
                "count24h": st.integers(min_value=0, max_value=10**6),
                "count7d": st.integers(min_value=0, max_value=10**6),
                "count30d": st.integers(min_value=0, max_value=10**6),
                "firstSeen": wire_datetimes,
                "lastSeen": wire_datetimes,
                "escalationLevel": enum_values(EscalationLevel),
                "autoRepairCount": st.integers(min_value=0, max_value=1000),
                "permanentFixApplied": st.booleans(),
                "degraded": st.booleans(),
            },
        ),
        "decision": st.fixed_dictionaries(
            {"id": hex_strings(12).map(lambda digits: f"DEC-{digits}"), "state": enum_values(DecisionState)},
            optional={
                "source": enum_values(DecisionSource),
                "action": actions(),
                "riskLevel": enum_values(RiskLevel),
                "confidence": st.floats(min_value=0.0, max_value=1.0),
                "reasoning": short_text,
                "matchedRule": names,
                "error": short_text,
            },
        ),
        "runRef": object_refs,
        "duplicateOf": dns_subdomains,
        "disposition": enum_values(Disposition),
        "resolvedAt": wire_datetimes,
        "conditions": conditions,
        "observedGeneration": st.integers(min_value=0, max_value=2**40),
    },
)

trace_ids = hex_strings(32).filter(lambda trace_id: trace_id != "0" * 32)

run_specs = st.fixed_dictionaries(
    {
        "incidentRef": object_refs,
        "action": actions(),
        "riskLevel": enum_values(RiskLevel),
        "traceId": trace_ids,
    },
    optional={
        "requiresApproval": st.booleans(),
        "mode": enum_values(RunMode),
        "timeoutSeconds": st.integers(min_value=10, max_value=86400),
        "maxAttempts": st.integers(min_value=1, max_value=10),
        "trigger": st.fixed_dictionaries(
            {"type": st.text(min_size=1, max_size=20)}, optional={"ref": dns_subdomains}
        ),
    },
)

run_steps = st.fixed_dictionaries(
    {
        "seq": st.integers(min_value=1, max_value=10**6),
        "name": names,
        "result": st.sampled_from(["Succeeded", "Failed", "Skipped"]),
        "at": wire_datetimes,
    },
    optional={"latencyMs": st.integers(min_value=0, max_value=10**7), "message": st.text(max_size=128)},
)

run_statuses = st.fixed_dictionaries(
    {},
    optional={
        "state": enum_values(RunState),
        "attempt": st.integers(min_value=0, max_value=10),
        "startedAt": wire_datetimes,
        "completedAt": wire_datetimes,
        "timeoutAt": wire_datetimes,
        "heartbeatAt": wire_datetimes,
        "errorCode": st.sampled_from(["E-APPR-REJECTED", "E-VERIFY-TIMEOUT", "E-TARGET-NOT-FOUND"]),
        "errorDetail": short_text,
        "approvalRef": object_refs,
        "steps": st.lists(run_steps, max_size=5),
        "conditions": conditions,
        "observedGeneration": st.integers(min_value=0, max_value=2**40),
    },
)


@st.composite
def previous_outcomes(draw: st.DrawFn) -> dict[str, Any]:
    attempts = draw(st.integers(min_value=0, max_value=100))
    successes = draw(st.integers(min_value=0, max_value=attempts))
    return {"action": draw(enum_values(ActionType)), "attempts": attempts, "successes": successes}


approval_specs = st.fixed_dictionaries(
    {
        "runRef": object_refs,
        "action": actions(),
        "riskLevel": enum_values(RiskLevel),
        "expiresAt": wire_datetimes,
    },
    optional={
        "reasoning": short_text,
        "escalationLevel": enum_values(EscalationLevel),
        "anomaly": st.fixed_dictionaries(
            {"key": hex_strings(16)},
            optional={
                "count24h": st.integers(min_value=0, max_value=10**6),
                "count7d": st.integers(min_value=0, max_value=10**6),
            },
        ),
        "previousOutcomes": st.lists(previous_outcomes(), max_size=3),
        "decision": enum_values(ApprovalDecision),
        "reason": st.text(max_size=200),
    },
)

approval_statuses = st.fixed_dictionaries(
    {},
    optional={
        "phase": enum_values(ApprovalPhase),
        "decidedBy": names,
        "decidedGroups": st.lists(names, max_size=4),
        "decidedAt": wire_datetimes,
        "message": short_text,
        "conditions": conditions,
        "observedGeneration": st.integers(min_value=0, max_value=2**40),
    },
)


# --------------------------------------------------------------------------- helpers


def wire(model: BaseModel) -> dict[str, Any]:
    """What a handler sends to the API server, through an actual JSON encoding."""
    dumped: dict[str, Any] = json.loads(
        json.dumps(model.model_dump(by_alias=True, exclude_none=True, mode="json"))
    )
    return dumped


def keys_outside_free_form_maps(value: Any, parent: str = "") -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            if parent == "labels":
                continue
            yield key
            yield from keys_outside_free_form_maps(item, key)
    elif isinstance(value, list):
        for item in value:
            yield from keys_outside_free_form_maps(item, parent)


def error_locations(error: ValidationError) -> list[tuple[int | str, ...]]:
    return [tuple(detail["loc"]) for detail in error.errors()]


def base_incident_spec(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "alertName": "PodCrashLooping",
        "service": "checkout",
        "targetRef": {"kind": "Deployment", "name": "checkout"},
    }
    spec.update(overrides)
    return spec


def base_run_spec(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "incidentRef": {"name": "inc-1", "uid": "5f7c1f0e-0000-4000-8000-000000000001"},
        "action": {"type": "RolloutRestart", "target": {"kind": "Deployment", "name": "checkout"}},
        "riskLevel": "medium",
        "traceId": "4bf92f3577b34da6a3ce929d0e0e4736",
    }
    spec.update(overrides)
    return spec


def schema_errors(value: Any, schema: Mapping[str, Any], path: str = "") -> list[str]:
    """A small validator for the subset of OpenAPI the generated CRDs use.

    It checks the same keywords the API server checks (types, enums, bounds, patterns,
    required and unknown fields), so that a model/schema disagreement shows up here
    without a cluster.
    """
    if value is None:
        return [] if schema.get("nullable") else [f"{path}: null is not allowed"]
    errors: list[str] = []
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} not in {schema['enum']}")
    kind = schema["type"]
    if kind == "object":
        if not isinstance(value, dict):
            return [f"{path}: expected an object"]
        properties = schema.get("properties")
        if properties is not None:
            errors += [f"{path}.{key}: unknown field" for key in value if key not in properties]
            errors += [f"{path}.{key}: required" for key in schema.get("required", []) if key not in value]
            for key, item in value.items():
                if key in properties:
                    errors += schema_errors(item, properties[key], f"{path}.{key}")
        elif "additionalProperties" in schema:
            for key, item in value.items():
                errors += schema_errors(item, schema["additionalProperties"], f"{path}.{key}")
        if len(value) > schema.get("maxProperties", len(value)):
            errors.append(f"{path}: too many properties")
    elif kind == "array":
        if not isinstance(value, list):
            return [f"{path}: expected an array"]
        if len(value) > schema.get("maxItems", len(value)):
            errors.append(f"{path}: too many items")
        for index, item in enumerate(value):
            errors += schema_errors(item, schema["items"], f"{path}[{index}]")
    elif kind == "string":
        if not isinstance(value, str):
            return [f"{path}: expected a string"]
        if len(value) > schema.get("maxLength", len(value)) or len(value) < schema.get("minLength", 0):
            errors.append(f"{path}: length {len(value)} out of bounds")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{path}: {value!r} does not match {schema['pattern']}")
        if schema.get("format") == "date-time":
            try:
                datetime.fromisoformat(value)
            except ValueError:
                errors.append(f"{path}: {value!r} is not a date-time")
    elif kind in ("integer", "number"):
        if isinstance(value, bool) or not isinstance(value, int if kind == "integer" else (int, float)):
            return [f"{path}: expected {kind}"]
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{path}: below minimum")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{path}: above maximum")
    elif kind == "boolean" and not isinstance(value, bool):
        return [f"{path}: expected a boolean"]
    return errors


def crd_schema(resource: CustomResource, part: str) -> dict[str, Any]:
    schema: dict[str, Any] = build_crd(resource)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return dict(schema["properties"][part])


# --------------------------------------------------------------------------- round trips


ROUND_TRIPS = [
    pytest.param(IncidentSpec, incident_specs, id="IncidentSpec"),
    pytest.param(IncidentStatus, incident_statuses, id="IncidentStatus"),
    pytest.param(RunSpec, run_specs, id="RunSpec"),
    pytest.param(RunStatus, run_statuses, id="RunStatus"),
    pytest.param(ApprovalSpec, approval_specs, id="ApprovalSpec"),
    pytest.param(ApprovalStatus, approval_statuses, id="ApprovalStatus"),
]


@pytest.mark.parametrize(("model", "documents"), ROUND_TRIPS)
@given(data=st.data())
def test_valid_documents_round_trip_through_camel_case_json(
    model: type[BaseModel], documents: st.SearchStrategy[dict[str, Any]], data: st.DataObject
) -> None:
    document = data.draw(documents)
    parsed = model.model_validate(document)
    written = wire(parsed)
    assert model.model_validate(written) == parsed
    assert all("_" not in key for key in keys_outside_free_form_maps(written))


SCHEMA_AGREEMENT = [
    pytest.param(IncidentSpec, incident_specs, INCIDENT, "spec", id="IncidentSpec"),
    pytest.param(IncidentStatus, incident_statuses, INCIDENT, "status", id="IncidentStatus"),
    pytest.param(RunSpec, run_specs, RUN, "spec", id="RunSpec"),
    pytest.param(RunStatus, run_statuses, RUN, "status", id="RunStatus"),
    pytest.param(ApprovalSpec, approval_specs, APPROVAL, "spec", id="ApprovalSpec"),
    pytest.param(ApprovalStatus, approval_statuses, APPROVAL, "status", id="ApprovalStatus"),
]


@pytest.mark.parametrize(("model", "documents", "resource", "part"), SCHEMA_AGREEMENT)
@given(data=st.data())
def test_what_python_writes_is_accepted_by_the_crd_schema(
    model: type[BaseModel],
    documents: st.SearchStrategy[dict[str, Any]],
    resource: CustomResource,
    part: str,
    data: st.DataObject,
) -> None:
    written = wire(model.model_validate(data.draw(documents)))
    assert schema_errors(written, crd_schema(resource, part), part) == []


def test_spec_defaults_match_the_schema_defaults() -> None:
    """The API server and Python fill in the same defaults, so both read the same spec."""
    for resource in (INCIDENT, RUN, APPROVAL):
        properties = crd_schema(resource, "spec")["properties"]
        for name, field in resource.spec_model.model_fields.items():
            alias = camel_case(name)
            if "default" in properties[alias]:
                assert field.get_default(call_default_factory=True) == properties[alias]["default"], alias


def test_models_accept_kopf_style_read_only_mappings() -> None:
    class ReadOnlyBody(Mapping[str, Any]):
        def __init__(self, content: dict[str, Any]) -> None:
            self._content = content

        def __getitem__(self, key: str) -> Any:
            return self._content[key]

        def __iter__(self) -> Iterator[str]:
            return iter(self._content)

        def __len__(self) -> int:
            return len(self._content)

    spec = IncidentSpec.model_validate(ReadOnlyBody(base_incident_spec()))
    assert spec.target_ref.name == "checkout"


def test_incident_spec_defaults() -> None:
    spec = IncidentSpec.model_validate(
        {"service": "checkout", "targetRef": {"kind": "Deployment", "name": "web"}}
    )
    assert spec.alert_name is None
    assert spec.severity is Severity.P2
    assert spec.source == "manual"
    assert spec.remediation.mode is RemediationMode.AUTO
    assert spec.signals == []


def test_models_can_be_built_by_python_field_name() -> None:
    spec = RunSpec(**{camel_to_snake(key): value for key, value in base_run_spec().items()})
    assert wire(spec)["incidentRef"]["name"] == "inc-1"
    assert wire(spec)["timeoutSeconds"] == 600


def camel_to_snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


@pytest.mark.parametrize(
    ("python_name", "json_name"),
    [
        ("observed_generation", "observedGeneration"),
        ("count_1h", "count1h"),
        ("count_24h", "count24h"),
        ("count_30d", "count30d"),
        ("latency_ms", "latencyMs"),
        ("service", "service"),
    ],
)
def test_camel_case_keeps_digit_segments_lower_case(python_name: str, json_name: str) -> None:
    assert camel_case(python_name) == json_name


def test_anomaly_counters_use_the_documented_json_names() -> None:
    status = IncidentStatus.model_validate({"anomaly": {"key": "0123456789abcdef", "count24h": 4}})
    assert status.anomaly is not None and status.anomaly.count_24h == 4
    assert set(wire(status)["anomaly"]) >= {"count1h", "count24h", "count7d", "count30d"}


# --------------------------------------------------------------------------- refusals


@given(severity=st.text(max_size=10).filter(lambda value: value not in {member.value for member in Severity}))
def test_unknown_severity_is_refused_naming_the_field(severity: str) -> None:
    with pytest.raises(ValidationError) as refused:
        IncidentSpec.model_validate(base_incident_spec(severity=severity))
    assert error_locations(refused.value) == [("severity",)]


@given(kind=st.text(max_size=20).filter(lambda value: value not in {member.value for member in TargetKind}))
def test_unknown_target_kind_is_refused_naming_the_field(kind: str) -> None:
    with pytest.raises(ValidationError) as refused:
        IncidentSpec.model_validate(base_incident_spec(targetRef={"kind": kind, "name": "checkout"}))
    assert error_locations(refused.value) == [("targetRef", "kind")]


def is_dns_subdomain(value: str) -> bool:
    return len(value) <= 253 and re.fullmatch(DNS1123_SUBDOMAIN_PATTERN, value) is not None


invalid_names = st.one_of(
    st.text(max_size=30),
    st.from_regex(r"[a-z]{254,260}", fullmatch=True),
    st.sampled_from(["", "Checkout", "-web", "web-", "web_1", "web..x", "web\n", "wéb"]),
).filter(lambda value: not is_dns_subdomain(value))


@given(name=invalid_names)
def test_invalid_target_name_is_refused_naming_the_field(name: str) -> None:
    with pytest.raises(ValidationError) as refused:
        IncidentSpec.model_validate(base_incident_spec(targetRef={"kind": "Deployment", "name": name}))
    assert error_locations(refused.value) == [("targetRef", "name")]


@given(name=invalid_names)
def test_invalid_action_target_name_is_refused_naming_the_field(name: str) -> None:
    action = {"type": "RolloutRestart", "target": {"kind": "StatefulSet", "name": name}}
    with pytest.raises(ValidationError) as refused:
        RunSpec.model_validate(base_run_spec(action=action))
    assert error_locations(refused.value) == [("action", "target", "name")]


@given(name=dns_subdomains)
def test_valid_target_names_are_accepted(name: str) -> None:
    spec = IncidentSpec.model_validate(base_incident_spec(targetRef={"kind": "StatefulSet", "name": name}))
    assert spec.target_ref.name == name


def test_target_in_another_namespace_is_refused() -> None:
    with pytest.raises(ValidationError) as refused:
        IncidentSpec.model_validate(
            base_incident_spec(targetRef={"kind": "Deployment", "name": "checkout", "namespace": "prod"})
        )
    assert error_locations(refused.value) == [("targetRef", "namespace")]
    assert TARGET_NAMESPACE_FORBIDDEN in str(refused.value)


def test_missing_required_fields_are_named() -> None:
    with pytest.raises(ValidationError) as refused:
        IncidentSpec.model_validate({"targetRef": {"kind": "Deployment"}})
    assert sorted(error_locations(refused.value)) == [("service",), ("targetRef", "name")]


@pytest.mark.parametrize(
    ("overrides", "location"),
    [
        ({"summary": "x" * 2049}, ("summary",)),
        ({"service": "s" * 254}, ("service",)),
        ({"alertName": ""}, ("alertName",)),
        ({"signals": "not-a-list"}, ("signals",)),
        ({"remediation": {"mode": "Sometimes"}}, ("remediation", "mode")),
        ({"permanentFix": {}}, ("permanentFix", "description")),
        ({"unexpected": True}, ("unexpected",)),
    ],
)
def test_malformed_incident_fields_are_refused(overrides: dict[str, Any], location: tuple[str, ...]) -> None:
    with pytest.raises(ValidationError) as refused:
        IncidentSpec.model_validate(base_incident_spec(**overrides))
    assert error_locations(refused.value) == [location]


def test_signals_are_bounded() -> None:
    signal = {"alertName": "HighLatency", "startsAt": "2025-03-01T12:00:00Z"}
    IncidentSpec.model_validate(base_incident_spec(signals=[signal] * MAX_SIGNALS))
    with pytest.raises(ValidationError) as refused:
        IncidentSpec.model_validate(base_incident_spec(signals=[signal] * (MAX_SIGNALS + 1)))
    assert error_locations(refused.value) == [("signals",)]


def test_timestamps_without_a_timezone_are_refused() -> None:
    signal = {"alertName": "HighLatency", "startsAt": "2025-03-01T12:00:00"}
    with pytest.raises(ValidationError) as refused:
        IncidentSpec.model_validate(base_incident_spec(signals=[signal]))
    assert error_locations(refused.value) == [("signals", 0, "startsAt")]


def test_timestamps_are_written_in_rfc3339() -> None:
    step = append_step([], name="execute", result="Succeeded", at=NOW)[0]
    assert wire(step)["at"] == "2025-03-01T12:00:00Z"


@pytest.mark.parametrize(
    ("action", "message"),
    [
        ({"type": "Scale"}, "params.replicas is required when type is Scale"),
        ({"type": "Scale", "params": {"toRevision": 2}}, "params.replicas is required when type is Scale"),
        (
            {"type": "RolloutRestart", "params": {"replicas": 3}},
            "params.replicas is only allowed when type is Scale",
        ),
        ({"type": "Scale", "params": {"replicas": 2, "toRevision": 1}}, "params.toRevision is only allowed"),
    ],
)
def test_action_params_must_match_the_action_type(action: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as refused:
        Action.model_validate({**action, "target": {"kind": "Deployment", "name": "web"}})
    assert message in str(refused.value)


@pytest.mark.parametrize("action_type", ["RolloutRestart", "RolloutUndo"])
def test_a_daemonset_takes_restarts_and_rollbacks(action_type: str) -> None:
    action = Action.model_validate({"type": action_type, "target": {"kind": "DaemonSet", "name": "agent"}})
    assert action.target.kind is TargetKind.DAEMONSET


def test_scaling_a_daemonset_is_refused_naming_the_type() -> None:
    with pytest.raises(ValidationError) as refused:
        Action.model_validate(
            {"type": "Scale", "target": {"kind": "DaemonSet", "name": "agent"}, "params": {"replicas": 2}}
        )
    assert "type Scale does not apply to a DaemonSet" in str(refused.value)


def test_scale_below_one_replica_is_refused() -> None:
    with pytest.raises(ValidationError) as refused:
        Action.model_validate(
            {"type": "Scale", "target": {"kind": "Deployment", "name": "web"}, "params": {"replicas": 0}}
        )
    assert error_locations(refused.value) == [("params", "replicas")]


@pytest.mark.parametrize("trace_id", ["0" * 32, "4BF92F3577B34DA6A3CE929D0E0E4736", "abc", "g" * 32])
def test_invalid_trace_ids_are_refused(trace_id: str) -> None:
    with pytest.raises(ValidationError) as refused:
        RunSpec.model_validate(base_run_spec(traceId=trace_id))
    assert error_locations(refused.value) == [("traceId",)]


@pytest.mark.parametrize(
    ("overrides", "location"),
    [
        ({"timeoutSeconds": 9}, ("timeoutSeconds",)),
        ({"timeoutSeconds": 86401}, ("timeoutSeconds",)),
        ({"maxAttempts": 0}, ("maxAttempts",)),
        ({"maxAttempts": 11}, ("maxAttempts",)),
        ({"mode": "RequireApproval"}, ("mode",)),
        ({"riskLevel": "extreme"}, ("riskLevel",)),
    ],
)
def test_run_limits_are_enforced(overrides: dict[str, Any], location: tuple[str, ...]) -> None:
    with pytest.raises(ValidationError) as refused:
        RunSpec.model_validate(base_run_spec(**overrides))
    assert error_locations(refused.value) == [location]


def test_previous_outcome_cannot_succeed_more_often_than_attempted() -> None:
    with pytest.raises(ValidationError, match="successes cannot exceed attempts"):
        PreviousOutcome.model_validate({"action": "Scale", "attempts": 1, "successes": 2})


def test_approval_decision_accepts_only_approve_or_reject() -> None:
    spec = {
        "runRef": {"name": "run-1", "uid": "u-1"},
        "action": {"type": "RolloutUndo", "target": {"kind": "Deployment", "name": "web"}},
        "riskLevel": "critical",
        "expiresAt": "2025-03-01T13:00:00Z",
    }
    assert ApprovalSpec.model_validate({**spec, "decision": "Approve"}).decision is ApprovalDecision.APPROVE
    with pytest.raises(ValidationError) as refused:
        ApprovalSpec.model_validate({**spec, "decision": "Maybe"})
    assert error_locations(refused.value) == [("decision",)]


def test_status_models_ignore_fields_from_newer_operators() -> None:
    status = RunStatus.model_validate({"state": "Running", "fieldFromTheFuture": 1})
    assert status.state is RunState.RUNNING


def test_decision_ids_follow_the_documented_shape() -> None:
    with pytest.raises(ValidationError) as refused:
        IncidentStatus.model_validate({"decision": {"id": "DEC-XYZ", "state": "Init"}})
    assert error_locations(refused.value) == [("decision", "id")]


# --------------------------------------------------------------------------- conditions


def test_condition_reason_must_be_camel_case() -> None:
    with pytest.raises(ValidationError) as refused:
        new_condition("Ready", ConditionStatus.TRUE, "not camel case", "", now=NOW)
    assert error_locations(refused.value) == [("reason",)]


def test_set_condition_keeps_transition_time_while_status_is_unchanged() -> None:
    first = new_condition("Ready", ConditionStatus.FALSE, "Waiting", "waiting for Redis", now=NOW)
    later = NOW + timedelta(minutes=5)
    unchanged = set_condition(
        [first], new_condition("Ready", ConditionStatus.FALSE, "StillWaiting", "", now=later)
    )
    assert unchanged[0].last_transition_time == NOW
    assert unchanged[0].reason == "StillWaiting"
    flipped = set_condition(
        unchanged, new_condition("Ready", ConditionStatus.TRUE, "Recorded", "", now=later)
    )
    assert flipped[0].last_transition_time == later


def test_set_condition_appends_new_types_and_keeps_order() -> None:
    ready = new_condition("Ready", ConditionStatus.UNKNOWN, "Initializing", "", now=NOW)
    degraded = new_condition("RedisDegraded", ConditionStatus.TRUE, "RedisUnavailable", "", now=NOW)
    conditions = set_condition(set_condition([], ready), degraded)
    assert [condition.type for condition in conditions] == ["Ready", "RedisDegraded"]
    found = find_condition(conditions, "RedisDegraded")
    assert found is not None and found.status is ConditionStatus.TRUE
    assert find_condition(conditions, "Missing") is None


def test_conditions_are_written_with_kubernetes_field_names() -> None:
    condition = new_condition("Ready", ConditionStatus.TRUE, "Done", "ok", now=NOW, observed_generation=3)
    assert wire(condition) == {
        "type": "Ready",
        "status": "True",
        "reason": "Done",
        "message": "ok",
        "lastTransitionTime": "2025-03-01T12:00:00Z",
        "observedGeneration": 3,
    }
    assert Condition.model_validate(wire(condition)) == condition


# --------------------------------------------------------------------------- run journal


def test_append_step_numbers_steps_and_keeps_the_latest_fifty() -> None:
    steps: list[Any] = []
    for index in range(MAX_STEPS + 7):
        steps = append_step(steps, name="verify", result="Succeeded", at=NOW + timedelta(seconds=index))
    assert len(steps) == MAX_STEPS
    assert [step.seq for step in steps] == list(range(8, MAX_STEPS + 8))


def test_step_messages_are_compacted_to_128_characters() -> None:
    message = short_step_message("approve   by\nalice " + "x" * 300)
    assert len(message) == 128
    assert message.startswith("approve by alice x")
    assert message.endswith("…")
    assert short_step_message("  short\tmessage ") == "short message"
    step = append_step([], name="approve", result="Succeeded", at=NOW, message="y" * 500)[0]
    assert step.message is not None and len(step.message) == 128


# --------------------------------------------------------------------------- manifests


def test_manifest_writes_the_wire_format() -> None:
    spec = RunSpec.model_validate(base_run_spec())
    body = RUN.manifest(name="run-1", namespace="shop", spec=spec, labels={"flywheel.dev/incident": "inc-1"})
    assert body["apiVersion"] == "flywheel.dev/v1alpha1"
    assert body["kind"] == "Run"
    assert body["metadata"] == {
        "name": "run-1",
        "namespace": "shop",
        "labels": {"flywheel.dev/incident": "inc-1"},
    }
    assert body["spec"]["traceId"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert RunSpec.model_validate(body["spec"]) == spec


def test_manifest_refuses_the_spec_of_another_kind() -> None:
    with pytest.raises(TypeError):
        INCIDENT.manifest(name="x", spec=RunSpec.model_validate(base_run_spec()))


def test_resource_names() -> None:
    assert [(r.kind, r.plural, r.short_names, r.crd_name) for r in (INCIDENT, RUN, APPROVAL)] == [
        ("Incident", "incidents", ("inc",), "incidents.flywheel.dev"),
        ("Run", "runs", ("fwrun",), "runs.flywheel.dev"),
        ("Approval", "approvals", ("appr",), "approvals.flywheel.dev"),
    ]
    assert {r.api_version for r in (INCIDENT, RUN, APPROVAL)} == {"flywheel.dev/v1alpha1"}
