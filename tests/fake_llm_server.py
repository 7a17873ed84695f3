"""A scripted OpenAI-compatible chat-completions server on 127.0.0.1, for tests and benchmarks.

It speaks ``POST /v1/chat/completions`` with the OpenAI response shape (usage included), runs
in a background thread (one thread per connection, keep-alive on) and records every request.
By default it answers each report with a deterministic answer line derived from the report
text, one part per numbered question in the last user turn that lists them. Behaviours are
scripted per report: the first request whose messages contain ``marker`` takes the next
behaviour queued for it.

Behaviours: ``ok``; ``429`` or ``429:<Retry-After value>``; ``500`` / ``503``; ``400``;
``401`` (its error message echoes the bearer key, as a careless server might); ``slow``
(answers after ``slow_seconds``); ``malformed`` (one part short); ``fenced`` (inside a code
fence); ``prose`` (sentences around the answer); ``empty``; ``garbage`` (a 200 with an HTML
body, as a misconfigured proxy sends). HTTP 200 bodies that are no answer: ``error200`` (an
``{"error": ...}`` body; its message echoes the bearer key), ``nochoices`` (``choices: []``),
``nullchoices`` (``choices: null``), ``nullcontent`` (``message.content: null``). Hostile or
broken answers: ``trickle`` (headers, then the body one byte per ``trickle_seconds``, for
ever), ``huge`` (an answer of ``huge_chars`` characters), ``echokey`` (a normal answer with
the bearer key and an ``sk-`` lookalike appended).

Example:
    >>> with FakeLLMServer() as server:
    ...     server.url.startswith("http://127.0.0.1:")
    True
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections import defaultdict, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

#: Answer parts per question position, shaped like the lung set (extra positions: Unknown).
VOCAB: tuple[tuple[str, ...], ...] = (
    ("Well differentiated", "Moderately differentiated", "Poorly differentiated", "Unknown"),
    ("Spread through air spaces present", "No spread through air spaces", "Unknown"),
    ("Vascular invasion present", "No vascular invasion", "Unknown"),
    ("Pleural invasion present", "No pleural invasion", "Unknown"),
    ("Invasion of the chest wall present", "No invasion of adjacent structures", "Unknown"),
    ("Margins clear of disease (R0)", "Margins involved (R1)", "Unknown"),
)

_NUMBERED = re.compile(r"^\d+\.\s", re.MULTILINE)


def expected_answer(report_turn: str) -> str:
    """The deterministic answer line for a user turn listing numbered questions.

    Example:
        >>> len(expected_answer("Report X\\n1. a?\\n2. b?").split("; "))
        2
    """
    n = len(_NUMBERED.findall(report_turn)) or len(VOCAB)
    digest = hashlib.sha256(report_turn.encode("utf-8")).digest()
    parts = []
    for i in range(n):
        choices = VOCAB[i] if i < len(VOCAB) else ("Unknown",)
        parts.append(choices[digest[i % len(digest)] % len(choices)])
    return "; ".join(parts)


def report_turn(messages: list[dict[str, Any]]) -> str:
    """The last user message that lists numbered questions (the report being asked)."""
    for message in reversed(messages):
        content = str(message.get("content") or "")
        if message.get("role") == "user" and _NUMBERED.search(content):
            return content
    return ""


class FakeLLMServer:
    """The server: ``url`` for clients, ``script()`` to queue behaviours, counters to assert.

    Example:
        >>> server = FakeLLMServer(latency=0.01)
        >>> server.script("report-7", "429:0.2", "ok")
        >>> server.count
        0
    """

    def __init__(
        self,
        latency: float = 0.0,
        slow_seconds: float = 2.0,
        trickle_seconds: float = 0.5,
        huge_chars: int = 2_000_000,
    ) -> None:
        self.latency = latency
        self.slow_seconds = slow_seconds
        self.trickle_seconds = trickle_seconds
        self.huge_chars = huge_chars
        self.bodies: list[dict[str, Any]] = []
        #: Request headers, names lower-cased.
        self.headers: list[dict[str, str]] = []
        #: ``time.monotonic()`` of each request's arrival.
        self.arrivals: list[float] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._scripts: dict[str, deque[str]] = defaultdict(deque)
        self._lock = threading.Lock()
        self._httpd = _Server(("127.0.0.1", 0), _make_handler(self))
        self._httpd.daemon_threads = True
        # A short poll interval makes shutdown quick (tests start many servers).
        serve = lambda: self._httpd.serve_forever(poll_interval=0.02)  # noqa: E731
        self._thread = threading.Thread(target=serve, daemon=True)

    @property
    def url(self) -> str:
        """Base URL for the openai client (ends in ``/v1``)."""
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    @property
    def count(self) -> int:
        """How many chat-completion requests arrived."""
        with self._lock:
            return len(self.bodies)

    def script(self, marker: str, *behaviours: str) -> None:
        """Queue behaviours for requests whose messages contain ``marker`` (then ``ok``)."""
        with self._lock:
            self._scripts[marker].extend(behaviours)

    def reset(self) -> None:
        """Forget recorded requests, counters and scripts."""
        with self._lock:
            self.bodies.clear()
            self.headers.clear()
            self.arrivals.clear()
            self._scripts.clear()
            self.max_in_flight = self.in_flight

    def start(self) -> FakeLLMServer:
        """Serve in the background thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> FakeLLMServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- called from handler threads

    def _begin(self, body: dict[str, Any], headers: dict[str, str]) -> str:
        """Record a request and pick its behaviour."""
        text = json.dumps(body.get("messages", []))
        with self._lock:
            self.bodies.append(body)
            self.headers.append(headers)
            self.arrivals.append(time.monotonic())
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            for marker, queue in self._scripts.items():
                if queue and marker in text:
                    return queue.popleft()
        return "ok"

    def _end(self) -> None:
        with self._lock:
            self.in_flight -= 1


class _Server(ThreadingHTTPServer):
    # The default listen backlog (5) resets connections when many clients connect at once.
    request_queue_size = 128


def _make_handler(server: FakeLLMServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        # HTTP/1.1 keeps connections alive, as real servers do.
        protocol_version = "HTTP/1.1"
        # Headers and body go out in two writes; without this, Nagle's algorithm holds the
        # body back until the client's delayed ACK (tens of ms per request).
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:
            """Silence the per-request stderr lines."""

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", 0))
            raw = self.rfile.read(length)
            if not self.path.endswith("/chat/completions"):
                self._send(404, {"error": {"message": f"no route {self.path}"}})
                return
            body = json.loads(raw or b"{}")
            behaviour = server._begin(body, {k.lower(): v for k, v in self.headers.items()})
            try:
                if server.latency:
                    time.sleep(server.latency)
                self._respond(behaviour, body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout); nothing to answer
            finally:
                server._end()

        def _respond(self, behaviour: str, body: dict[str, Any]) -> None:
            name, _, arg = behaviour.partition(":")
            if name == "429":
                headers = {"Retry-After": arg} if arg else {}
                self._send(429, _error("Rate limit reached", "rate_limit_exceeded"), headers)
            elif name in {"500", "503"}:
                self._send(int(name), _error("The server had an error", "server_error"))
            elif name == "400":
                self._send(400, _error("Invalid request: bad message", "invalid_request_error"))
            elif name == "garbage":
                self._send_raw(200, b"<html>proxy error</html>", "text/html")
            elif name == "401":
                key = self.headers.get("authorization", "").removeprefix("Bearer ")
                self._send(401, _error(f"Incorrect API key provided: {key}", "invalid_api_key"))
            elif name == "error200":
                key = self.headers.get("authorization", "").removeprefix("Bearer ")
                self._send(200, _error(f"model overloaded (key {key})", "server_error"))
            elif name in {"nochoices", "nullchoices", "nullcontent"}:
                payload = _completion(body, "")
                if name == "nullcontent":
                    payload["choices"][0]["message"]["content"] = None
                else:
                    payload["choices"] = [] if name == "nochoices" else None
                self._send(200, payload)
            elif name == "trickle":
                self._trickle()
            else:
                if name == "slow":
                    time.sleep(server.slow_seconds)
                content = _content(name, expected_answer(report_turn(body.get("messages", []))))
                if name == "huge":
                    content += " " + "x" * server.huge_chars
                elif name == "echokey":
                    key = self.headers.get("authorization", "").removeprefix("Bearer ")
                    content += f" (debug: key={key}; other=sk-proj-abcdefghijklmnop1234)"
                self._send(200, _completion(body, content))

        def _trickle(self) -> None:
            """A 200 whose body never ends: one byte per ``trickle_seconds``."""
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "1000000")
            self.end_headers()
            for _ in range(100_000):
                self.wfile.write(b" ")
                self.wfile.flush()
                time.sleep(server.trickle_seconds)

        def _send(
            self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None
        ) -> None:
            self._send_raw(status, json.dumps(payload).encode("utf-8"), headers=headers)

        def _send_raw(
            self,
            status: int,
            data: bytes,
            content_type: str = "application/json",
            headers: dict[str, str] | None = None,
        ) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

    return Handler


def _content(behaviour: str, answer: str) -> str:
    """The reply text for an answer-bearing behaviour."""
    if behaviour == "malformed":
        return "; ".join(answer.split("; ")[:-1])
    if behaviour == "fenced":
        return f"```\n{answer}\n```"
    if behaviour == "prose":
        return f"Here is the summary of the report:\n{answer}\nLet me know if you need more."
    if behaviour == "empty":
        return ""
    return answer


def _error(message: str, code: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": code, "param": None, "code": code}}


def _completion(body: dict[str, Any], content: str) -> dict[str, Any]:
    prompt_words = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
    completion_words = len(content.split())
    return {
        "id": f"chatcmpl-fake-{time.monotonic_ns()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", "fake"),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_words,
            "completion_tokens": completion_words,
            "total_tokens": prompt_words + completion_words,
        },
    }
