"""The advisor client against a real HTTP server speaking the chat-completions protocol.

vLLM, Ollama or llama.cpp cannot run in this test environment (no GPU, no model
weights), so the server here is a real aiohttp web server on a free loopback port
that implements the part of the OpenAI-compatible protocol Flywheel uses
(``POST /v1/chat/completions`` returning ``choices[0].message.content``). Each
scenario is served under its own base path, so one server plays several advisors.
Nothing in the client is mocked: requests go through real sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from flywheel.api.enums import ActionType, Severity, TargetKind
from flywheel.domain.actions import IncidentTarget, ProposedAction
from flywheel.domain.advisor import IncidentFacts, build_messages
from flywheel.domain.rules import default_catalogue
from flywheel.errors import ConfigurationError
from flywheel.stores.advisor_client import AdvisorClient, AdvisorEndpoint, ask_all

pytestmark = pytest.mark.integration

TARGET = IncidentTarget(namespace="shop", kind=TargetKind.DEPLOYMENT, name="checkout")
SLOW_ANSWER_SECONDS = 10.0
"""How long the slow advisor would take; far beyond every deadline used below."""

GOOD_PROPOSAL = {
    "action": "Scale",
    "target": {"kind": "Deployment", "name": "checkout", "namespace": "shop"},
    "params": {"replicas": 3},
    "confidence": 0.82,
    "reasoning": "Latency rises with load; more replicas spread it.",
}


def completion(content: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "model": "test-model",
        "choices": [
            {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}
        ],
    }


@dataclass
class FakeModelServer:
    """A chat-completions server; ``url(scenario)`` is the base URL of one advisor."""

    port: int
    requests: list[tuple[str, dict[str, str], dict[str, Any]]] = field(default_factory=list)
    release_slow: asyncio.Event = field(default_factory=asyncio.Event)
    expected_together: int = 3
    """The "together" scenarios answer only once this many requests have arrived."""
    all_arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, scenario: str) -> str:
        return f"http://127.0.0.1:{self.port}/{scenario}"


def _scenarios(server: FakeModelServer) -> dict[str, Callable[[], Awaitable[web.StreamResponse]]]:
    async def good() -> web.StreamResponse:
        return web.json_response(completion(json.dumps(GOOD_PROPOSAL)))

    async def restart() -> web.StreamResponse:
        proposal = {**GOOD_PROPOSAL, "action": "RolloutRestart", "params": {}}
        return web.json_response(completion(json.dumps(proposal)))

    async def together(action: str, params: dict[str, int]) -> web.StreamResponse:
        # Answers only when every advisor's request is in flight: a client asking one
        # advisor after the other would never get here and would see a timeout instead.
        try:
            await asyncio.wait_for(server.all_arrived.wait(), timeout=SLOW_ANSWER_SECONDS)
        except TimeoutError:
            return web.Response(status=503, text="the other advisors' requests never arrived")
        proposal = {**GOOD_PROPOSAL, "action": action, "params": params}
        return web.json_response(completion(json.dumps(proposal)))

    async def together_scale() -> web.StreamResponse:
        return await together("Scale", {"replicas": 3})

    async def together_restart() -> web.StreamResponse:
        return await together("RolloutRestart", {})

    async def slow() -> web.StreamResponse:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.release_slow.wait(), timeout=SLOW_ANSWER_SECONDS)
        return web.json_response(completion(json.dumps(GOOD_PROPOSAL)))

    async def broken() -> web.StreamResponse:
        return web.Response(status=500, text="CUDA out of memory")

    async def malformed() -> web.StreamResponse:
        return web.Response(status=200, text="<html>gateway says hi</html>", content_type="text/html")

    async def no_choices() -> web.StreamResponse:
        return web.json_response({"object": "chat.completion", "choices": []})

    async def shell() -> web.StreamResponse:
        proposal = {
            **GOOD_PROPOSAL,
            "action": "RolloutRestart",
            "params": {},
            "command": "kubectl delete ns shop",
        }
        return web.json_response(completion(json.dumps(proposal)))

    async def prose() -> web.StreamResponse:
        return web.json_response(completion("Run `kubectl rollout restart deployment/checkout -n shop`."))

    async def other_namespace() -> web.StreamResponse:
        proposal = {
            **GOOD_PROPOSAL,
            "target": {"kind": "Deployment", "name": "checkout", "namespace": "prod"},
        }
        return web.json_response(completion(json.dumps(proposal)))

    return {
        "good": good,
        "restart": restart,
        "slow": slow,
        "together-scale": together_scale,
        "together-restart": together_restart,
        "broken": broken,
        "malformed": malformed,
        "no-choices": no_choices,
        "shell": shell,
        "prose": prose,
        "other-namespace": other_namespace,
    }


@pytest.fixture()
async def model_server() -> AsyncIterator[FakeModelServer]:
    server = FakeModelServer(port=0)
    scenarios = _scenarios(server)

    async def chat_completions(request: web.Request) -> web.StreamResponse:
        scenario = request.match_info["scenario"]
        server.requests.append((scenario, dict(request.headers), await request.json()))
        if len(server.requests) >= server.expected_together:
            server.all_arrived.set()
        handler = scenarios.get(scenario)
        if handler is None:
            return web.Response(status=404, text=f"no scenario {scenario}")
        return await handler()

    app = web.Application()
    app.router.add_post("/{scenario}/v1/chat/completions", chat_completions)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.port = runner.addresses[0][1]
    try:
        yield server
    finally:
        server.release_slow.set()
        await runner.cleanup()


def messages() -> list[dict[str, str]]:
    facts = IncidentFacts(target=TARGET, severity=Severity.P1, alert_names=("CheckoutLatencyHigh",))
    return build_messages(facts, default_catalogue())


async def ask_one(server: FakeModelServer, scenario: str, *, deadline: float = 5.0, **endpoint: Any) -> Any:
    async with AdvisorClient() as client:
        return await client.ask(
            AdvisorEndpoint(base_url=server.url(scenario), **endpoint),
            messages(),
            expected_target=TARGET,
            deadline=deadline,
        )


async def test_a_good_answer_is_parsed_and_the_request_follows_the_protocol(
    model_server: FakeModelServer,
) -> None:
    result = await ask_one(model_server, "good", model="qwen2.5-7b-instruct", api_key="s3cret")
    assert result.ok, result.error
    assert result.advice.action == ProposedAction(
        ActionType.SCALE, TargetKind.DEPLOYMENT, "checkout", replicas=3
    )
    assert result.advice.confidence == 0.82
    assert result.advisor == model_server.url("good")
    assert result.latency_seconds is not None and result.latency_seconds >= 0

    [(scenario, headers, body)] = model_server.requests
    assert scenario == "good"
    assert headers["Authorization"] == "Bearer s3cret"
    assert headers["User-Agent"].startswith("flywheel-operator/")
    assert body["model"] == "qwen2.5-7b-instruct"
    assert body["response_format"] == {"type": "json_object"}
    assert body["stream"] is False
    assert [message["role"] for message in body["messages"]] == ["system", "user"]


async def test_no_authorization_header_without_a_key(model_server: FakeModelServer) -> None:
    await ask_one(model_server, "good")
    [(_, headers, _)] = model_server.requests
    assert "Authorization" not in headers


async def test_an_answer_past_the_deadline_is_a_timeout(model_server: FakeModelServer) -> None:
    result = await ask_one(model_server, "slow", deadline=0.3)
    assert not result.ok
    assert result.timed_out
    assert result.error == "timed out after 0.3s"


@pytest.mark.parametrize(
    ("scenario", "expected_error"),
    [
        ("broken", "HTTP 500: CUDA out of memory"),
        ("malformed", "response is not JSON"),
        ("no-choices", "response has no choices"),
        ("missing", "HTTP 404"),
    ],
)
async def test_server_failures_become_errors(
    model_server: FakeModelServer, scenario: str, expected_error: str
) -> None:
    result = await ask_one(model_server, scenario)
    assert not result.ok and not result.timed_out
    assert expected_error in result.error


@pytest.mark.parametrize(
    ("scenario", "expected_error"),
    [
        ("shell", "refused: command: free-form commands are never executed"),
        ("prose", "refused: answer: not JSON"),
        ("other-namespace", "refused: target.namespace: 'prod' is not the Incident's namespace 'shop'"),
    ],
)
async def test_unsafe_answers_are_refused(
    model_server: FakeModelServer, scenario: str, expected_error: str
) -> None:
    result = await ask_one(model_server, scenario)
    assert not result.ok
    assert result.error.startswith(expected_error)


async def test_an_unreachable_advisor_is_an_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    async with AdvisorClient() as client:
        result = await client.ask(
            AdvisorEndpoint(base_url=f"http://127.0.0.1:{closed_port}"),
            messages(),
            expected_target=TARGET,
            deadline=5.0,
        )
    assert result.error is not None and result.error.startswith("request failed: ClientConnectorError")


async def test_advisors_are_asked_concurrently_and_a_slow_one_only_times_out(
    model_server: FakeModelServer,
) -> None:
    advisors = [
        AdvisorEndpoint(base_url=model_server.url("together-scale")),
        AdvisorEndpoint(base_url=model_server.url("slow")),
        AdvisorEndpoint(base_url=model_server.url("together-restart")),
    ]
    model_server.expected_together = len(advisors)
    results = await ask_all(advisors, messages(), expected_target=TARGET, deadline=2.0)

    assert [result.advisor for result in results] == [advisor.name for advisor in advisors]
    scale, slow, restart = results
    # Both "together" advisors only answer once all three requests are in flight, so
    # their success shows the calls ran concurrently; the slow one only times out.
    assert scale.advice is not None and scale.advice.action.type is ActionType.SCALE, scale.error
    assert restart.advice is not None and restart.advice.action.type is ActionType.ROLLOUT_RESTART, (
        restart.error
    )
    assert slow.timed_out and slow.error == "timed out after 2s"


async def test_a_shared_session_is_left_open(model_server: FakeModelServer) -> None:
    async with aiohttp.ClientSession() as session:
        results = await ask_all(
            [AdvisorEndpoint(base_url=model_server.url("good"))],
            messages(),
            expected_target=TARGET,
            deadline=5.0,
            session=session,
        )
        assert results[0].ok
        assert not session.closed


def test_endpoint_urls_and_names() -> None:
    plain = AdvisorEndpoint(base_url="http://vllm.models:8000")
    assert plain.completions_url == "http://vllm.models:8000/v1/chat/completions"
    with_v1 = AdvisorEndpoint(base_url="https://llm.example.com/v1/")
    assert with_v1.completions_url == "https://llm.example.com/v1/chat/completions"
    with_credentials = AdvisorEndpoint(
        base_url="http://user:pw@ollama:11434/api?token=t0k", api_key="s3cret-key"
    )
    assert with_credentials.name == "http://ollama:11434/api"
    for secret in ("pw", "t0k", "s3cret-key"):
        assert secret not in repr(with_credentials)
    with pytest.raises(ConfigurationError, match="advisor URL"):
        AdvisorEndpoint(base_url="ollama:11434")
