"""The rule catalogue: rules mapping an Incident's alerts to typed actions.

A rule matches in one of two ways:

- **selector rules** (``match``) match alerts exactly: alert names, the ``severity``
  label, namespace globs and label equalities, all of which must hold for one and the
  same alert of the Incident (one of its signals; an Incident without signals is one
  alert named by ``spec.alertName``, without labels). A team binds its own alerts to
  a playbook with them;
- **keyword rules** (``keywords``) match when a keyword is contained in one of the
  lower-cased alert names.

Precedence is the file order, and the file must list every selector rule before the
keyword rules (so that file order and precedence are the same thing): enabled selector
rules are tried first, in order, then keyword rules, in order, and the last rule (no
keywords, no selector) catches everything else. Each enabled rule is a "playbook" in
the flywheel-health metrics.

The built-in catalogue is the package file ``flywheel/rules/default.yaml``; users
copy that very file into a ConfigMap to change it, so the documented format and
the shipped rules cannot drift apart. Reading a catalogue file at start-up is the only
I/O in this module; later versions of the file are read by the reloader
(``flywheel.controllers.catalogue_reload``), which hands the text to :func:`load_catalogue`
and publishes the result through a :class:`CatalogueSource`.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Protocol

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)

from flywheel.api.enums import ActionType, RiskLevel
from flywheel.domain.actions import ActionTemplate
from flywheel.errors import ConfigurationError, InvalidInputError

DEFAULT_RULE_CONFIDENCE = 0.75
BUILTIN_CATALOGUE_SOURCE = "built-in rule catalogue (flywheel/rules/default.yaml)"

# Ordering used when one action type is offered by several rules with different
# risks: an advisor choosing that type is assessed at the highest of them.
_RISK_ORDER: dict[RiskLevel, int] = {
    RiskLevel.LOW: 0,
    RiskLevel.MEDIUM: 1,
    RiskLevel.HIGH: 2,
    RiskLevel.CRITICAL: 3,
}


def risk_rank(risk: RiskLevel) -> int:
    """Position of ``risk`` in low < medium < high < critical."""
    return _RISK_ORDER[risk]


@dataclass(frozen=True, slots=True)
class AlertFacts:
    """One alert of an Incident as a selector sees it."""

    alert_name: str | None
    namespace: str
    """The Incident's namespace (where the alert's workload is)."""
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AlertSelector:
    """Conditions on one alert; every condition given must hold, an empty one holds always.

    ``alert_names`` and ``severities`` are exact values (Prometheus names and label values
    are case-sensitive), ``namespaces`` shell-style globs (``*``, ``?``, ``[...]``), and
    ``labels`` exact equalities of the alert's labels.
    """

    alert_names: frozenset[str] = frozenset()
    severities: frozenset[str] = frozenset()
    namespaces: tuple[str, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()

    def matches(self, alert: AlertFacts) -> bool:
        if self.alert_names and alert.alert_name not in self.alert_names:
            return False
        if self.severities and alert.labels.get("severity") not in self.severities:
            return False
        if self.namespaces and not any(fnmatch.fnmatchcase(alert.namespace, glob) for glob in self.namespaces):
            return False
        return all(alert.labels.get(name) == value for name, value in self.labels)

    def describe(self) -> str:
        parts = []
        if self.alert_names:
            parts.append(f"alertname in {sorted(self.alert_names)}")
        if self.severities:
            parts.append(f"severity in {sorted(self.severities)}")
        if self.namespaces:
            parts.append(f"namespace like {list(self.namespaces)}")
        parts += [f"{name}={value!r}" for name, value in self.labels]
        return ", ".join(parts)


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule: by selector, by keywords, or neither (the catalogue's catch-all)."""

    name: str
    keywords: tuple[str, ...]
    action: ActionTemplate
    risk: RiskLevel
    confidence: float = DEFAULT_RULE_CONFIDENCE
    enabled: bool = True
    description: str = ""
    selector: AlertSelector | None = None
    # How long its Runs stay Verifying after the rollout (None: the operator's default).
    verification_window_seconds: int | None = None

    def __post_init__(self) -> None:
        if self.selector is not None and self.keywords:
            raise ConfigurationError(f"rule {self.name}: matches by selector or by keywords, not both")

    @property
    def is_catch_all(self) -> bool:
        return not self.keywords and self.selector is None

    @property
    def is_selector_rule(self) -> bool:
        return self.selector is not None

    def first_alert_selected(self, alerts: Iterable[AlertFacts]) -> AlertFacts | None:
        """The first alert this rule's selector matches (None for keyword rules)."""
        if self.selector is None:
            return None
        return next((alert for alert in alerts if self.selector.matches(alert)), None)

    def first_keyword_in(self, lowered_alert_names: Iterable[str]) -> tuple[str, str] | None:
        """The first (keyword, alert name) pair where the keyword occurs in the name."""
        names = tuple(lowered_alert_names)
        for keyword in self.keywords:
            for name in names:
                if keyword in name:
                    return keyword, name
        return None


@dataclass(frozen=True, slots=True)
class RuleHit:
    """A rule that applies to an Incident, and why."""

    rule: Rule
    keyword: str | None
    """The keyword found; ``None`` for the catch-all and selector rules."""
    alert_name: str | None
    """The alert that matched: lower-cased for a keyword, as sent for a selector; ``None`` for the catch-all."""

    def explain(self) -> str:
        if self.rule.selector is not None:
            return f"rule {self.rule.name} (alert {self.alert_name!r} matches {self.rule.selector.describe()})"
        if self.keyword is None:
            return f"rule {self.rule.name} (catch-all: no more specific rule matched)"
        return f"rule {self.rule.name} (keyword {self.keyword!r} in alert {self.alert_name!r})"


@dataclass(frozen=True, slots=True)
class RuleMatch:
    """Every enabled rule that applies, in catalogue order, the catch-all last.

    The first hit is the decision; the later ones are the candidates the
    history-aware choice falls back to when an action has kept failing.
    """

    hits: tuple[RuleHit, ...]

    def __post_init__(self) -> None:
        if not self.hits or not self.hits[-1].rule.is_catch_all:
            raise ValueError("a rule match always ends with the catch-all rule")

    @property
    def first(self) -> RuleHit:
        return self.hits[0]

    @property
    def rule(self) -> Rule:
        return self.hits[0].rule

    @property
    def keyword(self) -> str | None:
        return self.hits[0].keyword


class RuleCatalogue:
    """An ordered, validated list of rules ending with an enabled catch-all."""

    def __init__(self, rules: Iterable[Rule], *, source: str = "rule catalogue") -> None:
        self._rules: tuple[Rule, ...] = tuple(rules)
        self.source = source
        _check_catalogue_shape(self._rules, source)

    @property
    def rules(self) -> tuple[Rule, ...]:
        return self._rules

    @property
    def enabled_rules(self) -> tuple[Rule, ...]:
        return tuple(rule for rule in self._rules if rule.enabled)

    @property
    def playbook_count(self) -> int:
        """Enabled rules, the catch-all included: each is a playbook Flywheel can run."""
        return len(self.enabled_rules)

    @property
    def catch_all(self) -> Rule:
        return self._rules[-1]

    @property
    def action_types(self) -> frozenset[ActionType]:
        """Action types some enabled rule uses: the only ones an advisor may propose.

        Disabling every rule of a type therefore also takes that type away from the
        advisors, which is how an operator forbids, say, rollbacks altogether.
        """
        return frozenset(rule.action.type for rule in self.enabled_rules)

    def risk_for(self, action_type: ActionType) -> RiskLevel:
        """Risk of an action chosen outside the rules (by an advisor).

        The highest risk any enabled rule assigns to that type, so an advisor can
        never make an action look safer than the catalogue says it is.
        """
        risks = [rule.risk for rule in self.enabled_rules if rule.action.type is action_type]
        if not risks:
            raise InvalidInputError("action.type", f"{action_type.value} is not offered by the {self.source}")
        return max(risks, key=risk_rank)

    def match(self, alert_names: Iterable[str | None], alerts: Iterable[AlertFacts] = ()) -> RuleMatch:
        """All enabled rules applying, in precedence order, the catch-all last.

        Selector rules look at ``alerts`` (each with its labels), keyword rules at
        ``alert_names``. The catalogue's shape puts selector rules first, so the catalogue
        order is the precedence.
        """
        lowered = tuple(name.lower() for name in alert_names if name)
        facts = tuple(alerts)
        hits: list[RuleHit] = []
        for rule in self.enabled_rules:
            if rule.is_catch_all:
                continue
            if rule.is_selector_rule:
                selected = rule.first_alert_selected(facts)
                if selected is not None:
                    hits.append(RuleHit(rule=rule, keyword=None, alert_name=selected.alert_name))
                continue
            found = rule.first_keyword_in(lowered)
            if found is not None:
                keyword, alert_name = found
                hits.append(RuleHit(rule=rule, keyword=keyword, alert_name=alert_name))
        hits.append(RuleHit(rule=self.catch_all, keyword=None, alert_name=None))
        return RuleMatch(hits=tuple(hits))

    def __iter__(self) -> Iterator[Rule]:
        return iter(self._rules)

    def __len__(self) -> int:
        return len(self._rules)

    def __repr__(self) -> str:
        return f"RuleCatalogue({[rule.name for rule in self._rules]!r}, source={self.source!r})"

    def current(self) -> RuleCatalogue:
        """A fixed catalogue is its own :class:`CatalogueSource`."""
        return self


class CatalogueSource(Protocol):
    """Where a decision takes the catalogue from: one call per decision, so a decision never
    mixes two versions of a catalogue reloaded meanwhile."""

    def current(self) -> RuleCatalogue: ...


def _check_catalogue_shape(rules: tuple[Rule, ...], source: str) -> None:
    if not rules:
        raise ConfigurationError(f"{source}: the catalogue is empty; it needs at least the catch-all rule")
    seen: dict[str, int] = {}
    for index, rule in enumerate(rules):
        if rule.name in seen:
            raise ConfigurationError(
                f"{source}: rules[{index}].name: {rule.name!r} is already used by rules[{seen[rule.name]}]"
            )
        seen[rule.name] = index
        if rule.is_catch_all and index != len(rules) - 1:
            raise ConfigurationError(
                f"{source}: rules[{index}].keywords: only the last rule may have neither keywords nor match "
                "(it is the catch-all; rules after it could never match)"
            )
        if rule.is_selector_rule and index > 0 and not rules[index - 1].is_selector_rule:
            raise ConfigurationError(
                f"{source}: rules[{index}].match: selector rules are tried before keyword rules, so they "
                f"must come before them in the file (move it above rules[{_first_keyword_rule(rules)}])"
            )
    last_index = len(rules) - 1
    last = rules[last_index]
    if not last.is_catch_all:
        field_name = "match" if last.is_selector_rule else "keywords"
        raise ConfigurationError(
            f"{source}: rules[{last_index}].{field_name}: the last rule must have neither keywords nor match, "
            "so that every Incident gets a decision"
        )
    if not last.enabled:
        raise ConfigurationError(
            f"{source}: rules[{last_index}].enabled: the catch-all rule cannot be disabled, "
            "otherwise an Incident matching no keyword would get no decision"
        )


def _first_keyword_rule(rules: tuple[Rule, ...]) -> int:
    return next(index for index, rule in enumerate(rules) if not rule.is_selector_rule)


# --- the YAML (ConfigMap) format -------------------------------------------------------

_RuleName = Annotated[StrictStr, Field(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
_Keyword = Annotated[StrictStr, Field(min_length=1, max_length=128)]
_PositiveInt = Annotated[StrictInt, Field(ge=1)]


class _ActionParamsDocument(BaseModel):
    model_config = ConfigDict(extra="forbid")

    replicas: _PositiveInt | None = None
    # camelCase on purpose: the field is spelled as in the Run's spec.action.params.
    toRevision: _PositiveInt | None = None


class _ActionDocument(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: ActionType
    params: _ActionParamsDocument = Field(default_factory=_ActionParamsDocument)


_AlertName = Annotated[StrictStr, Field(min_length=1, max_length=253, pattern=r"\S")]
_SeverityValue = Annotated[StrictStr, Field(min_length=1, max_length=63, pattern=r"^\S+$")]
# Lower-case DNS-label characters plus the glob wildcards: anything else could never match a namespace.
_NamespaceGlob = Annotated[StrictStr, Field(min_length=1, max_length=253, pattern=r"^[a-z0-9*?\[\]!-]+$")]
_LabelName = Annotated[StrictStr, Field(min_length=1, max_length=128, pattern=r"^\S+$")]
# Prometheus drops empty labels, so an empty value could never be met; the intake keeps 1024 characters.
_LabelValue = Annotated[StrictStr, Field(min_length=1, max_length=1024)]


class _MatchDocument(BaseModel):
    model_config = ConfigDict(extra="forbid")

    alertnames: Annotated[list[_AlertName], Field(min_length=1)] | None = None
    severity: Annotated[list[_SeverityValue], Field(min_length=1)] | None = None
    namespaces: Annotated[list[_NamespaceGlob], Field(min_length=1)] | None = None
    labels: Annotated[dict[_LabelName, _LabelValue], Field(min_length=1)] | None = None

    @model_validator(mode="after")
    def _selects_something(self) -> _MatchDocument:
        if not (self.alertnames or self.severity or self.namespaces or self.labels):
            raise ValueError(
                "needs at least one of alertnames, severity, namespaces, labels "
                "(an empty selector would match every alert; the catch-all rule does that)"
            )
        return self

    def selector(self) -> AlertSelector:
        return AlertSelector(
            alert_names=frozenset(self.alertnames or ()),
            severities=frozenset(self.severity or ()),
            namespaces=tuple(self.namespaces or ()),
            labels=tuple(sorted((self.labels or {}).items())),
        )


class _RuleDocument(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: _RuleName
    description: StrictStr = ""
    keywords: list[_Keyword] = Field(default_factory=list)
    match: _MatchDocument | None = None
    action: _ActionDocument
    risk: RiskLevel
    confidence: Annotated[float, Field(ge=0.0, le=1.0, strict=True)] = DEFAULT_RULE_CONFIDENCE
    enabled: StrictBool = True
    verificationWindowSeconds: Annotated[int, Field(ge=0, le=86400, strict=True)] | None = None


def _field_path(location: tuple[int | str, ...]) -> str:
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "(rule)"


def _rule_from_document(index: int, item: Any, source: str) -> Rule:
    label = f"{source}: rules[{index}]"
    if not isinstance(item, dict):
        raise ConfigurationError(f"{label}: must be a mapping with name, keywords or match, action and risk")
    name = item.get("name")
    if isinstance(name, str):
        label = f"{label} ({name})"
    try:
        document = _RuleDocument.model_validate(item)
    except ValidationError as exc:
        problems = "; ".join(f"{_field_path(error['loc'])}: {error['msg']}" for error in exc.errors())
        raise ConfigurationError(f"{label}: {problems}") from exc

    keywords = tuple(keyword.strip().lower() for keyword in document.keywords)
    if any(not keyword for keyword in keywords):
        raise ConfigurationError(f"{label}: keywords: a keyword cannot be blank")
    if keywords and document.match is not None:
        raise ConfigurationError(
            f"{label}: match: a rule matches by selector or by keywords, not both (split it into two rules)"
        )
    try:
        action = ActionTemplate(
            type=document.action.type,
            replicas=document.action.params.replicas,
            to_revision=document.action.params.toRevision,
        )
    except InvalidInputError as exc:
        raise ConfigurationError(f"{label}: {exc.field}: {exc.reason}") from exc
    return Rule(
        name=document.name,
        keywords=keywords,
        action=action,
        risk=document.risk,
        confidence=document.confidence,
        enabled=document.enabled,
        description=document.description.strip(),
        selector=document.match.selector() if document.match is not None else None,
        verification_window_seconds=document.verificationWindowSeconds,
    )


def load_catalogue(yaml_text: str, *, source: str = "rule catalogue") -> RuleCatalogue:
    """Parse and validate a catalogue in the ConfigMap format (a YAML list of rules).

    Raises :class:`ConfigurationError` naming ``source``, the rule index and the field.
    """
    try:
        document = yaml.safe_load(yaml_text)
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"{source}: not valid YAML: {exc}") from exc
    if not isinstance(document, list):
        found = "nothing" if document is None else type(document).__name__
        raise ConfigurationError(f"{source}: must be a YAML list of rules, found {found}")
    rules = [_rule_from_document(index, item, source) for index, item in enumerate(document)]
    return RuleCatalogue(rules, source=source)


def load_catalogue_file(path: str | Path) -> RuleCatalogue:
    """Read a catalogue file (typically a mounted ConfigMap key)."""
    file_path = Path(path)
    try:
        text = file_path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(
            f"rule catalogue {file_path}: cannot be read: {exc.strerror or exc}"
        ) from exc
    return load_catalogue(text, source=f"rule catalogue {file_path}")


def default_catalogue_text() -> str:
    """The shipped ``default.yaml``, exactly as users copy it into a ConfigMap."""
    return resources.files("flywheel").joinpath("rules/default.yaml").read_text(encoding="utf-8")


@lru_cache(maxsize=1)
def default_catalogue() -> RuleCatalogue:
    """The built-in catalogue, parsed once per process."""
    return load_catalogue(default_catalogue_text(), source=BUILTIN_CATALOGUE_SOURCE)


def configured_catalogue(rules_file: str | Path | None) -> RuleCatalogue:
    """The catalogue from ``FLYWHEEL_RULES_FILE`` when set, else the built-in one."""
    if rules_file is None or str(rules_file).strip() == "":
        return default_catalogue()
    return load_catalogue_file(rules_file)
