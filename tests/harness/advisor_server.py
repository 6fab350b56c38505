"""A local model endpoint speaking the OpenAI chat-completions protocol, for tests.

vLLM, Ollama and llama.cpp serve this protocol, but none can run here (no model
weights can be fetched), so tests stand one up on loopback that answers the way a
real model server does: the proposal is the assistant message's content.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class AdvisorBehaviour:
    """What the endpoint answers: a proposal (dict), a raw text, an HTTP error, after a delay."""

    proposal: dict[str, object] | None = None
    raw_content: str | None = None
    http_status: int = 200
    delay_seconds: float = 0.0
    requests: list[dict[str, object]] = field(default_factory=list)


def _handler_for(behaviour: AdvisorBehaviour) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            behaviour.requests.append(json.loads(self.rfile.read(length) or b"{}"))
            time.sleep(behaviour.delay_seconds)
            if self.path.rstrip("/") != "/v1/chat/completions":
                self.send_error(404)
                return
            if behaviour.http_status != 200:
                self.send_error(behaviour.http_status, "model server error")
                return
            content = behaviour.raw_content if behaviour.raw_content is not None else json.dumps(behaviour.proposal)
            body = json.dumps({
                "id": "chatcmpl-test", "object": "chat.completion", "model": "test-model",
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": content}}],
            }).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            # The client may have given up (deadline): exactly what a late answer looks like.
            with contextlib.suppress(BrokenPipeError):
                self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


@contextmanager
def advisor_server(behaviour: AdvisorBehaviour) -> Iterator[str]:
    """Serve ``behaviour`` on a free loopback port; yields the base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(behaviour))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
