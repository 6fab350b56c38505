"""Client for model advisors speaking the OpenAI-compatible chat-completions protocol.

Any server implementing ``POST /v1/chat/completions`` works: vLLM, Ollama,
llama.cpp's server, or a hosted endpoint. Each call gets a hard deadline; a late,
failing or unusable answer becomes an :class:`AdvisorResult` carrying the reason,
never an exception, because an advisor is optional and the rules always have an
answer. What an answer may contain is judged by
:func:`flywheel.domain.advisor.parse_proposal`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from pydantic import SecretStr

from flywheel import __version__
from flywheel.api.enums import ActionType
from flywheel.domain.actions import IncidentTarget
from flywheel.domain.advisor import AdvisorResult, RejectedAdvice, parse_proposal
from flywheel.domain.redaction import redact_credentials
from flywheel.errors import ConfigurationError
from flywheel.logs import get_logger

log = get_logger(__name__)

MAX_RESPONSE_BYTES = 1024 * 1024
"""A chat completion carrying one small JSON object never comes close; more is refused."""

DEFAULT_MAX_TOKENS = 512
_ERROR_BODY_SNIPPET = 200


@dataclass(frozen=True, slots=True, repr=False)
class AdvisorEndpoint:
    """One advisor: a chat-completions server and the model to ask."""

    base_url: str
    model: str = "default"
    api_key: SecretStr | None = None
    name: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.api_key, str):  # a plain string from a caller: held as a secret all the same
            object.__setattr__(self, "api_key", SecretStr(self.api_key) if self.api_key else None)
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigurationError(
                f"advisor URL must look like http(s)://host[:port][/path], got {self.base_url!r}"
            )
        if not self.name:
            # Credentials and query strings never end up in names, logs or status.
            host_and_port = parts.netloc.rpartition("@")[2]
            name = urlunsplit((parts.scheme, host_and_port, parts.path.rstrip("/"), "", ""))
            object.__setattr__(self, "name", name)

    def __repr__(self) -> str:
        # The base URL may embed credentials and the key is a secret: show neither.
        return f"AdvisorEndpoint(name={self.name!r}, model={self.model!r})"

    @property
    def completions_url(self) -> str:
        """``{base_url}/v1/chat/completions``; a base URL already ending in ``/v1`` is not doubled."""
        base = self.base_url.rstrip("/")
        if base.endswith("/v1"):
            return f"{base}/chat/completions"
        return f"{base}/v1/chat/completions"


def advisor_endpoints(urls: Sequence[str], model: str, api_key: SecretStr | None) -> list[AdvisorEndpoint]:
    """The advisors configured by ``FLYWHEEL_ADVISOR_URLS`` (empty: rules only), all asking ``model``."""
    return [AdvisorEndpoint(base_url=url, model=model, api_key=api_key) for url in urls]


class _AdvisorProtocolError(Exception):
    """The server answered, but not with a usable chat completion."""


def _snippet(raw: bytes, api_key: str | None = None) -> str:
    # Redacted whole before it is cut: an answer may echo the key it got (proxies and model
    # servers do, in their 401s), and this text goes to the log, the Incident's status and Events.
    text = redact_credentials(" ".join(raw.decode("utf-8", errors="replace").split()), (api_key,) if api_key else ())
    return text[:_ERROR_BODY_SNIPPET] + ("…" if len(text) > _ERROR_BODY_SNIPPET else "")


async def _read_limited(response: aiohttp.ClientResponse, limit: int) -> bytes:
    body = bytearray()
    async for chunk in response.content.iter_chunked(64 * 1024):
        body.extend(chunk)
        if len(body) > limit:
            raise _AdvisorProtocolError(f"response larger than {limit} bytes")
    return bytes(body)


def _message_content(payload: Any) -> str:
    """``choices[0].message.content`` of a chat completion, checked step by step."""
    if not isinstance(payload, dict):
        raise _AdvisorProtocolError("response is not a chat completion object")
    choices = payload.get("choices")
    if not isinstance(choices, list) or not choices:
        raise _AdvisorProtocolError("response has no choices")
    first = choices[0]
    message = first.get("message") if isinstance(first, dict) else None
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, str):
        raise _AdvisorProtocolError("response has no message content")
    return content


class AdvisorClient:
    """Asks advisors for proposals. Use as an async context manager, or call :meth:`close`.

    Pass an existing ``session`` to share its connection pool; it is then not closed here.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession | None = None,
        *,
        max_tokens: int = DEFAULT_MAX_TOKENS,
    ) -> None:
        self._session = session
        self._owns_session = session is None
        self._max_tokens = max_tokens

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _client_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            # No aiohttp-level total timeout: the per-call asyncio deadline is the one limit.
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None),
                headers={"User-Agent": f"flywheel-operator/{__version__}"},
            )
        return self._session

    def _request_body(self, advisor: AdvisorEndpoint, messages: Sequence[dict[str, str]]) -> dict[str, Any]:
        return {
            "model": advisor.model,
            "messages": list(messages),
            "temperature": 0,
            "max_tokens": self._max_tokens,
            "stream": False,
            # Supported by vLLM, Ollama and llama.cpp; servers without it just ignore it,
            # and parse_proposal still refuses anything that is not one JSON object.
            "response_format": {"type": "json_object"},
        }

    async def _complete(self, advisor: AdvisorEndpoint, messages: Sequence[dict[str, str]]) -> str:
        headers = {"Accept": "application/json"}
        api_key = advisor.api_key.get_secret_value() if advisor.api_key else None
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        session = self._client_session()
        async with session.post(
            advisor.completions_url, json=self._request_body(advisor, messages), headers=headers
        ) as response:
            raw = await _read_limited(response, MAX_RESPONSE_BYTES)
            if response.status != 200:
                raise _AdvisorProtocolError(
                    f"HTTP {response.status}: {_snippet(raw, api_key) or response.reason}"
                )
        try:
            payload = json.loads(raw)
        except ValueError as exc:
            raise _AdvisorProtocolError(f"response is not JSON: {_snippet(raw, api_key)!r}") from exc
        return _message_content(payload)

    async def ask(
        self,
        advisor: AdvisorEndpoint,
        messages: Sequence[dict[str, str]],
        *,
        expected_target: IncidentTarget,
        deadline: float,
        allowed_actions: Collection[ActionType] | None = None,
    ) -> AdvisorResult:
        """One advisor's proposal, or the reason there is none. Never raises (except on cancellation)."""
        loop = asyncio.get_running_loop()
        started = loop.time()

        def failure(error: str, *, timed_out: bool = False) -> AdvisorResult:
            latency = loop.time() - started
            log.warning(
                "advisor_unusable", advisor=advisor.name, error=error, latency_seconds=round(latency, 3)
            )
            return AdvisorResult(
                advisor=advisor.name, error=error, timed_out=timed_out, latency_seconds=latency
            )

        try:
            async with asyncio.timeout(deadline):
                content = await self._complete(advisor, messages)
        except TimeoutError:
            # Also covers aiohttp's own socket timeouts, which subclass TimeoutError.
            return failure(f"timed out after {deadline:g}s", timed_out=True)
        except _AdvisorProtocolError as exc:
            return failure(str(exc))
        except aiohttp.ClientError as exc:
            return failure(f"request failed: {exc.__class__.__name__}: {exc}")
        except Exception as exc:
            # An advisor is optional: nothing it does may break the decision.
            log.exception("advisor_call_crashed", advisor=advisor.name)
            return failure(f"unexpected error: {exc.__class__.__name__}: {exc}")

        try:
            advice = parse_proposal(content, expected_target, allowed_actions=allowed_actions)
        except RejectedAdvice as exc:
            return failure(f"refused: {exc}")
        latency = loop.time() - started
        log.info(
            "advisor_proposal",
            advisor=advisor.name,
            action=advice.action.type.value,
            confidence=advice.confidence,
            latency_seconds=round(latency, 3),
        )
        return AdvisorResult(advisor=advisor.name, advice=advice, latency_seconds=latency)

    async def ask_all(
        self,
        advisors: Sequence[AdvisorEndpoint],
        messages: Sequence[dict[str, str]],
        *,
        expected_target: IncidentTarget,
        deadline: float,
        allowed_actions: Collection[ActionType] | None = None,
    ) -> list[AdvisorResult]:
        """All advisors at once, each with the same deadline; results in ``advisors`` order.

        The whole call therefore takes at most about ``deadline`` seconds
        (the Incident controller passes ``FLYWHEEL_ADVISOR_TIMEOUT_SECONDS``).
        """
        seconds = deadline
        return list(
            await asyncio.gather(
                *(
                    self.ask(
                        advisor,
                        messages,
                        expected_target=expected_target,
                        deadline=seconds,
                        allowed_actions=allowed_actions,
                    )
                    for advisor in advisors
                )
            )
        )


async def ask_all(
    advisors: Sequence[AdvisorEndpoint],
    messages: Sequence[dict[str, str]],
    *,
    expected_target: IncidentTarget,
    deadline: float,
    allowed_actions: Collection[ActionType] | None = None,
    session: aiohttp.ClientSession | None = None,
) -> list[AdvisorResult]:
    """Ask every advisor concurrently with a one-off client (see :meth:`AdvisorClient.ask_all`)."""
    async with AdvisorClient(session) as client:
        return await client.ask_all(
            advisors,
            messages,
            expected_target=expected_target,
            deadline=deadline,
            allowed_actions=allowed_actions,
        )
