"""Admission webhooks: identities stamped from the API server, and the approval rules enforced.

The handler ids are the URL paths the webhook configurations point at (``/stamp-approver``,
``/approval-policy``, ...). They are only served when ``FLYWHEEL_WEBHOOK_MODE`` is not off.
The rules themselves are pure (``flywheel.domain.approval``); a refusal names its rule.

:class:`ReloadableWebhookServer` serves them over TLS with a context whose certificate is
replaced in place (:class:`ServingContext`) when the managed Secret or the mounted files change.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, Final

import aiohttp.web
import kopf

from flywheel.domain.approval import (
    APPROVE,
    CREATED_BY,
    ApproverPolicy,
    Refusal,
    Requester,
    decided_in_this_request,
    review_approval_change,
    review_incident_change,
)
from flywheel.domain.run_binding import review_run_write
from flywheel.errors import FlywheelError
from flywheel.logs import get_logger
from flywheel.stores.kube import GROUP, VERSION
from flywheel.stores.serving_tls import ServingContext

# Kopf passes indexes, `old` and `operation` as keyword arguments its callback Protocols do not
# declare, so mypy cannot match such handlers to them: the decorators below carry an ignore for it.

log = get_logger(__name__)

STAMP_APPROVER: Final = "stamp-approver"
STAMP_INCIDENT_CREATOR: Final = "stamp-incident-creator"
APPROVAL_POLICY: Final = "approval-policy"
INCIDENT_CREATOR: Final = "incident-creator"
RUN_WRITER: Final = "run-writer"

# 403: the request is understood and refused (what kubectl prints as Forbidden).
FORBIDDEN: Final = 403
# 503: what the decision needs (the signing key, the Incident) cannot be read right now.
UNAVAILABLE: Final = 503
# The user this operator authenticates as (a SelfSubjectReview at start-up).
MEMO_OPERATOR_IDENTITY: Final = "operator_identity"


class ReloadableWebhookServer(kopf.WebhookServer):
    """Kopf's webhook server on a :class:`ServingContext` that is never rebuilt.

    Kopf's own server restarts its listener when its certificate files change; this one keeps
    listening, so a rotation never refuses a connection. Requests are served by Kopf's handler.
    """

    def __init__(self, *, addr: str, port: int, serving: ServingContext) -> None:
        super().__init__(addr=addr, port=port, context=serving.context)
        self.serving = serving

    async def __call__(self, fn: kopf.WebhookFn) -> AsyncIterator[kopf.WebhookClientConfig]:
        async def serve(request: aiohttp.web.Request) -> aiohttp.web.Response:
            return await self._serve(fn, request)

        if self.serving.serving_fingerprint is None:
            raise RuntimeError("the webhook server has no certificate loaded")
        app = aiohttp.web.Application()
        app.add_routes([aiohttp.web.post("/{id:.*}", serve)])
        runner = aiohttp.web.AppRunner(app, handle_signals=False)
        await runner.setup()
        try:
            site = aiohttp.web.TCPSite(runner, self.addr, self.port, ssl_context=self.context, reuse_address=True)
            await site.start()
            log.info("webhook_server_listening", address=self.addr, port=self.port)
            # The configurations are not Kopf's to manage (settings.admission.managed is unset).
            yield kopf.WebhookClientConfig(url=f"https://{self.addr}:{self.port}")
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()


def _refuse(refusal: Refusal, kind: str, name: str | None, requester: Requester) -> None:
    log.info("admission_refused", kind=kind, name=name, user=requester.username, rule=refusal.rule,
             message=refusal.message)
    raise kopf.AdmissionError(str(refusal), code=FORBIDDEN)


def _unavailable(exc: FlywheelError, what: str) -> kopf.AdmissionError:
    # Fail closed: nothing is stamped or allowed without the key and the facts.
    log.warning("admission_unavailable", what=what, error=str(exc))
    return kopf.AdmissionError(f"Flywheel cannot {what} right now ({exc}); try again", code=UNAVAILABLE)


@kopf.on.mutate(GROUP, VERSION, "approvals", id=STAMP_APPROVER, operations=["UPDATE"])  # type: ignore[arg-type]
async def stamp_approver(
    old: kopf.Body | None, body: kopf.Body, userinfo: kopf.UserInfo, patch: kopf.Patch, memo: kopf.Memo, **_: Any
) -> None:
    """Whoever sets spec.decision is recorded as the API server authenticated them, and sealed."""
    requester = Requester.from_userinfo(userinfo)
    try:
        stamp = await memo.deps.run_stores.approvals.stamp_decision(old, body, requester, datetime.now(UTC))
    except FlywheelError as exc:
        raise _unavailable(exc, "seal the decision") from exc
    for key, value in stamp.items():
        patch.metadata.annotations[key] = value


@kopf.on.mutate(GROUP, VERSION, "incidents", id=STAMP_INCIDENT_CREATOR, operations=["CREATE", "UPDATE"])  # type: ignore[arg-type]
async def stamp_incident_creator(
    operation: str, old: kopf.Body | None, body: kopf.Body, userinfo: kopf.UserInfo, patch: kopf.Patch,
    memo: kopf.Memo, **_: Any,
) -> None:
    """The Incident's creator, and everyone who changes its spec, for the four-eyes rule on its Runs."""
    requester = Requester.from_userinfo(userinfo)
    try:
        stamp = await memo.deps.run_stores.approvals.stamp_incident_authors(operation, old, body, requester)
    except FlywheelError as exc:
        raise _unavailable(exc, "record who wrote the Incident") from exc
    if operation == "CREATE":
        patch.metadata.annotations[CREATED_BY] = requester.username
    for key, value in stamp.items():
        patch.metadata.annotations[key] = value


@kopf.on.validate(GROUP, VERSION, "approvals", id=APPROVAL_POLICY, operations=["CREATE", "UPDATE"])  # type: ignore[arg-type]
async def approval_policy(
    operation: str,
    old: kopf.Body | None,
    body: kopf.Body,
    userinfo: kopf.UserInfo,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    settings = memo.deps.settings
    requester = Requester.from_userinfo(userinfo)
    policy = ApproverPolicy.of(settings.approver_users, settings.approver_groups)
    authors = None
    if operation == "UPDATE" and decided_in_this_request(old, body) and body.get("spec", {}).get("decision") == APPROVE:
        try:
            authors = await memo.deps.run_stores.approvals.authors_behind(body)
        except FlywheelError as exc:
            raise _unavailable(exc, "verify who wrote the Incident") from exc
    refusal = review_approval_change(
        operation, old, body, requester, policy, memo.get(MEMO_OPERATOR_IDENTITY), authors=authors,
        now=datetime.now(UTC),
    )
    if refusal is not None:
        _refuse(refusal, "Approval", body.get("metadata", {}).get("name"), requester)


@kopf.on.validate(GROUP, VERSION, "runs", id=RUN_WRITER, operations=["CREATE", "UPDATE"], subresource="*")  # type: ignore[arg-type]
async def run_writer(
    operation: str, subresource: str | None, old: kopf.Body | None, body: kopf.Body, userinfo: kopf.UserInfo,
    memo: kopf.Memo, **_: Any,
) -> None:
    """Defence in depth beside the binding: nobody but Flywheel writes a Run's spec or status."""
    identity = memo.get(MEMO_OPERATOR_IDENTITY)
    requester = Requester.from_userinfo(userinfo)
    if not identity:
        raise _unavailable(FlywheelError("Flywheel's own identity is not known yet"), "tell who writes Runs")
    refusal = review_run_write(operation, subresource, old, body, requester.username, identity)
    if refusal is not None:
        _refuse(refusal, "Run", body.get("metadata", {}).get("name"), requester)


@kopf.on.validate(GROUP, VERSION, "incidents", id=INCIDENT_CREATOR, operations=["CREATE", "UPDATE"])  # type: ignore[arg-type]
async def incident_creator(
    operation: str, old: kopf.Body | None, body: kopf.Body, userinfo: kopf.UserInfo, **_: Any
) -> None:
    requester = Requester.from_userinfo(userinfo)
    refusal = review_incident_change(operation, old, body, requester)
    if refusal is not None:
        _refuse(refusal, "Incident", body.get("metadata", {}).get("name"), requester)
