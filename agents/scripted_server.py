"""A scripted OpenAI-compatible HTTP server on 127.0.0.1, for tests and offline demos.

It answers ``POST /v1/chat/completions`` with replies taken in order from a script, so
the whole LLM path (litellm, HTTP, retries, the proposer's parsing) runs for real
without a model. A script entry is a reply text, or a `ScriptedError` (an HTTP status
with an error body, e.g. 429 or 500), or a callable ``(request_json) -> entry``. When
the script runs out, the last entry is repeated. Every request body is kept in
`requests`, its Authorization header in `authorizations`. Usage::

    with ScriptedLLMServer(["HYPOTHESIS: ...", ScriptedError(429)]) as srv:
        litellm.completion(model="openai/scripted", api_base=srv.api_base, api_key="x", ...)

It is not a model and never decides anything; it does not validate requests beyond
parsing their JSON.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Union


@dataclass(frozen=True)
class ScriptedError:
    status: int
    message: str = "scripted error"
    retry_after: float | None = None


ScriptEntry = Union[str, ScriptedError, Callable[[dict], str | ScriptedError]]


class ScriptedLLMServer:
    def __init__(self, script: list[ScriptEntry], model: str = "scripted", delay_s: float = 0.0) -> None:
        if not script:
            raise ValueError("the script needs at least one entry")
        self.script = list(script)
        self.model = model
        self.delay_s = delay_s
        self.requests: list[dict] = []
        self.authorizations: list[str] = []  # the Authorization header of each request
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def api_base(self) -> str:
        if self._httpd is None:
            raise RuntimeError("server not started")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def _next(self, body: dict) -> str | ScriptedError:
        with self._lock:
            self.requests.append(body)
            i = min(len(self.requests) - 1, len(self.script) - 1)
            entry = self.script[i]
        return entry(body) if callable(entry) else entry

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
                return

            def _send(self, status: int, payload: dict, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                try:
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout test)
                    return

            def do_GET(self) -> None:
                if self.path.rstrip("/") in ("/health", "/v1/models", "/models"):
                    self._send(200, {"status": "ok", "data": [{"id": server.model, "object": "model"}]})
                else:
                    self._send(404, {"error": {"message": "not found", "type": "not_found"}})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
                    return
                try:
                    body = json.loads(raw or b"{}")
                except json.JSONDecodeError:
                    self._send(400, {"error": {"message": "invalid JSON", "type": "invalid_request_error"}})
                    return
                with server._lock:
                    server.authorizations.append(self.headers.get("Authorization", ""))
                entry = server._next(body)
                if server.delay_s:
                    time.sleep(server.delay_s)
                if isinstance(entry, ScriptedError):
                    headers = {"Retry-After": str(entry.retry_after)} if entry.retry_after is not None else None
                    self._send(
                        entry.status,
                        {"error": {"message": entry.message, "type": "scripted", "code": entry.status}},
                        headers,
                    )
                    return
                prompt_chars = sum(len(str(m.get("content", ""))) for m in body.get("messages", []))
                self._send(
                    200,
                    {
                        "id": f"chatcmpl-scripted-{len(server.requests)}",
                        "object": "chat.completion",
                        "created": int(time.time()),
                        "model": body.get("model", server.model),
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": entry},
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": {
                            "prompt_tokens": prompt_chars // 4 + 1,
                            "completion_tokens": len(entry) // 4 + 1,
                            "total_tokens": prompt_chars // 4 + len(entry) // 4 + 2,
                        },
                    },
                )

        return Handler

    def start(self) -> ScriptedLLMServer:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="scripted-llm", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> ScriptedLLMServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
