"""The LLM backend: every report asked of an OpenAI-compatible chat-completions server.

The prompt follows FiVE's scheme: the question set's instruction as the system turn, its worked
examples as user / assistant turns, then the report and the numbered questions; temperature 0.
Any server speaking ``POST /v1/chat/completions`` works (OpenAI, Azure, vLLM, Ollama,
llama.cpp): only plain chat completions are used, no JSON mode and no tools.

Robustness:

- bounded concurrency (one ``asyncio.Semaphore`` around every HTTP request);
- our own retry loop (the client's is off): exponential backoff with jitter on 408 / 409 / 429 /
  5xx, timeouts and connection errors (``timeout`` bounds each request's total time, so a
  server trickling bytes cannot hold a report for ever), honouring ``Retry-After`` (seconds
  or an HTTP date); other 4xx fail the report at once with a readable error, and 401 / 403 /
  404 (bad key, no access, unknown model) fail the whole rest of the run at once, as every
  request would;
- an answer that does not split into one part per question gets ONE repair turn; if the repair
  does not parse either the report is ``needs_review`` with the raw answer kept;
- finished answers go to a sqlite cache (:mod:`fivewsi.reports.cache`) the moment they arrive,
  so a rerun asks only what is missing.

The API key is read from the environment variable ``config.api_key_env`` and never logged:
every error text and every answer is scrubbed of it (and of anything shaped like a key,
``sk-…`` or ``Bearer …``) before it is kept, cached or shown. Answers are bounded: each
request asks for at most ``max_tokens`` and a reply longer than ``max_answer_chars`` fails
the report without being stored.

Example (against a local server; ``extract_llm`` runs its own event loop):
    >>> from fivewsi.reports import load_question_set
    >>> config = LLMConfig(base_url="http://127.0.0.1:8000/v1", model="llama3")
    >>> results, stats = extract_llm([("r1", "Adenocarcinoma ...")],
    ...                              load_question_set("lung"), config)  # doctest: +SKIP
    >>> results[0].status, stats.requests  # doctest: +SKIP
    ('ok', 1)
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import os
import random
import re
import time
import urllib.parse
from dataclasses import dataclass, field
from datetime import timezone
from pathlib import Path
from typing import TYPE_CHECKING

import openai
from pydantic import BaseModel, ConfigDict, Field, field_validator

from fivewsi.errors import ReportStageError
from fivewsi.reports.cache import AnswerCache, CachedAnswer, cache_key, text_hash
from fivewsi.reports.normalize import normalize_answer, split_answer
from fivewsi.reports.schema import (
    STATUS_FAILED,
    STATUS_NEEDS_REVIEW,
    STATUS_OK,
    FieldAnswer,
    unknown_answers,
)
from fivewsi.utils.logs import make_progress

if TYPE_CHECKING:
    from fivewsi.reports.questions import QuestionSet

log = logging.getLogger(__name__)

#: The user turn for one report (worked examples use the same template).
USER_TEMPLATE = (
    "Pathology report:\n{report}\n\n"
    "Questions:\n{questions}\n\n"
    "Answer the {n} questions on one line, in order, separated by semicolons."
)

#: The follow-up turn sent once when an answer does not split into one part per question.
REPAIR_TEMPLATE = (
    "Your answer could not be read: {problem}. Answer again with exactly {n} parts separated "
    "by semicolons (one per question, in order, 'Unknown' where the report does not tell), on "
    "one line, with no numbering, no code fences and no other text."
)

#: Placeholder key for local servers that do not check keys (vLLM, Ollama, llama.cpp).
PLACEHOLDER_KEY = "not-needed"

#: HTTP statuses worth retrying: timeout, conflict, rate limit; 5xx are added by range.
RETRYABLE_STATUSES = frozenset({408, 409, 429})

#: HTTP statuses that every later request would hit too (bad key, no access, unknown model).
FATAL_STATUSES = frozenset({401, 403, 404})

#: How many individual failures are logged before only the summary counts them.
_LOGGED_FAILURES = 5


class LLMConfigError(ReportStageError, ValueError):
    """A configuration the backend cannot run with (no API key for a remote server, ...)."""


class LLMConfig(BaseModel):
    """Where and how to ask: server, model, key variable, concurrency, retries, cache.

    Example:
        >>> LLMConfig(model="gpt-4o").concurrency
        16
    """

    model_config = ConfigDict(extra="forbid")

    #: Server root ending in ``/v1``; None = the openai client's default (api.openai.com).
    base_url: str | None = None
    model: str = Field(min_length=1)
    #: Name of the environment variable holding the key (the key itself is never stored).
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = Field(16, ge=1)
    #: Seconds one HTTP request may take in total (connect, wait, read the whole answer)
    #: before it counts as timed out (and is retried).
    timeout: float = Field(60.0, gt=0)
    #: Retries per request after the first attempt.
    max_retries: int = Field(5, ge=0)
    #: sqlite answer cache; None = no cache.
    cache: Path | None = None
    temperature: float = Field(0.0, ge=0)
    #: How many worked examples to include; None = all in the question set.
    examples: int | None = Field(None, ge=0)
    #: ``max_tokens`` sent with every request (an answer is one short line); None sends none,
    #: for servers that refuse the parameter.
    max_tokens: int | None = Field(1024, ge=1)
    #: Longest answer text accepted: a longer one fails the report (never stored whole).
    max_answer_chars: int = Field(8000, ge=1)
    #: First backoff delay in seconds; doubles per retry, with jitter.
    backoff: float = Field(1.0, ge=0)
    #: Longest single wait, backoff or ``Retry-After`` alike.
    max_backoff: float = Field(60.0, ge=0)

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str | None) -> str | None:
        # Checked here, once: a bad URL would otherwise fail every report after all retries.
        if value is None:
            return None
        parts = urllib.parse.urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"{value!r} is not an http(s) URL with a host, e.g. http://127.0.0.1:8000/v1"
            )
        return value.strip()


@dataclass(frozen=True)
class LLMResult:
    """One report's outcome: the raw answer, its fields and a status.

    ``answer`` is the model's text as received (after a repair turn, the repaired text);
    ``error`` says what went wrong for ``failed`` and ``needs_review`` rows.

    Example:
        >>> LLMResult("r1", "", {}, "failed", "HTTP 400: bad request").status
        'failed'
    """

    report_id: str
    answer: str
    fields: dict[str, FieldAnswer]
    status: str
    error: str = ""
    cached: bool = False


@dataclass
class LLMStats:
    """Counters of one run.

    Example:
        >>> LLMStats(requests=3, retries=1).summary().split(",")[0]
        'LLM: 3 requests'
    """

    #: HTTP requests sent: first attempts, retries and repair turns.
    requests: int = 0
    retries: int = 0
    #: Reports answered from the cache (no request).
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    #: Reports whose status is ``failed`` / ``needs_review``.
    failures: int = 0
    needs_review: int = 0
    #: Reports that needed the repair turn.
    repairs: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        """One line for the log."""
        return (
            f"LLM: {self.requests} requests, {self.retries} retries, {self.repairs} repairs, "
            f"{self.cache_hits} cache hits, {self.prompt_tokens} prompt + "
            f"{self.completion_tokens} completion tokens, {self.failures} failed, "
            f"{self.needs_review} need review, {self.seconds:.1f} s"
        )


class LLMRequestError(ReportStageError, RuntimeError):
    """A request that failed for good (non-retryable, or out of retries); message is key-free."""

    def __init__(self, message: str, fatal: bool = False) -> None:
        super().__init__(message)
        self.fatal = fatal


class RequestDeadline(Exception):
    """A request that ran past ``LLMConfig.timeout`` in total (retried like a timeout)."""


# --------------------------------------------------------------------------- prompt


def _numbered_questions(questions: QuestionSet) -> str:
    return "\n".join(f"{i}. {q.question.strip()}" for i, q in enumerate(questions.questions, 1))


def user_turn(report: str, questions: QuestionSet) -> str:
    """The user message asking ``questions`` of one report.

    Example:
        >>> from fivewsi.reports import load_question_set
        >>> user_turn("No tumour.", load_question_set("lung")).splitlines()[:3]
        ['Pathology report:', 'No tumour.', '']
    """
    return USER_TEMPLATE.format(
        report=report.strip(), questions=_numbered_questions(questions), n=len(questions.questions)
    )


def build_messages(
    report: str, questions: QuestionSet, n_examples: int | None = None
) -> list[dict[str, str]]:
    """The chat messages for one report: instruction, worked examples, then the report.

    ``n_examples`` caps the worked examples (None = all of them).

    Example:
        >>> from fivewsi.reports import load_question_set
        >>> msgs = build_messages("No tumour.", load_question_set("lung"), n_examples=1)
        >>> [m["role"] for m in msgs]
        ['system', 'user', 'assistant', 'user']
    """
    examples = questions.examples if n_examples is None else questions.examples[:n_examples]
    messages = [{"role": "system", "content": questions.instruction.strip()}]
    for example in examples:
        messages.append({"role": "user", "content": user_turn(example.report, questions)})
        messages.append({"role": "assistant", "content": example.answer.strip()})
    messages.append({"role": "user", "content": user_turn(report, questions)})
    return messages


def repair_turn(problem: str, n: int) -> dict[str, str]:
    """The follow-up user message asking for exactly ``n`` semicolon-separated parts.

    Example:
        >>> repair_turn("5 parts instead of 6", 6)["content"][:38]
        'Your answer could not be read: 5 parts'
    """
    return {"role": "user", "content": REPAIR_TEMPLATE.format(problem=problem, n=n)}


def prompt_version(questions: QuestionSet, n_examples: int | None = None) -> str:
    """A hash of everything that shapes the prompt: set version, templates, examples, questions.

    The exact messages for a placeholder report are hashed, so any change to the instruction,
    the examples used, the question texts or the templates gives a new version (and new cache
    keys), while label-only edits (render phrases, synonyms) do not.

    Example:
        >>> from fivewsi.reports import load_question_set
        >>> qs = load_question_set("lung")
        >>> prompt_version(qs) == prompt_version(qs, 1)
        False
    """
    skeleton = build_messages("{report}", questions, n_examples)
    return text_hash(json.dumps([questions.version, skeleton, REPAIR_TEMPLATE]))[:16]


# --------------------------------------------------------------------------- keys and errors


def resolve_api_key(config: LLMConfig) -> str:
    """The API key from ``config.api_key_env``; a placeholder for local servers without one.

    Raises:
        LLMConfigError: the variable is unset and no ``base_url`` is given (the default server
            needs a key).

    Example:
        >>> resolve_api_key(LLMConfig(base_url="http://127.0.0.1:1/v1", model="m",
        ...                           api_key_env="FIVEWSI_UNSET_KEY_VAR"))
        'not-needed'
    """
    key = os.environ.get(config.api_key_env, "").strip()
    if key:
        return key
    if config.base_url is not None:
        return PLACEHOLDER_KEY
    raise LLMConfigError(
        f"no API key: set the environment variable {config.api_key_env} "
        "(or give base_url for a local server that needs none)"
    )


#: Anything shaped like an API key or a bearer token, masked wherever it appears.
_KEY_LIKE = re.compile(r"\bsk-[A-Za-z0-9_\-]{8,}|(?<=Bearer )[A-Za-z0-9._~+/=\-]+", re.IGNORECASE)


def redact(text: str, secret: str) -> str:
    """``text`` with ``secret`` and anything looking like a key (``sk-…``, ``Bearer …``)
    masked (placeholder keys are not secret).

    Example:
        >>> redact("bad key sk-123", "sk-123")
        'bad key [redacted]'
        >>> redact("Authorization: Bearer abc.def; sk-proj-0123456789", "")
        'Authorization: Bearer [redacted]; [redacted]'
    """
    if secret and secret != PLACEHOLDER_KEY:
        text = text.replace(secret, "[redacted]")
    return _KEY_LIKE.sub("[redacted]", text)


#: Longest server message kept in a report's ``error``.
MAX_ERROR_CHARS = 300


def bounded(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """``text`` on one line, cut to ``limit`` characters (with an ellipsis when cut).

    Example:
        >>> bounded("a   b" + "x" * 10, limit=5)
        'a bx…'
    """
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _server_error(response: object) -> str | None:
    """The server's message when a 200 body is an ``{"error": ...}`` object, else None."""
    error = getattr(response, "error", None)
    if error is None:
        extra = getattr(response, "model_extra", None) or {}
        error = extra.get("error") if isinstance(extra, dict) else None
    if error is None:
        return None
    if isinstance(error, dict):
        return str(error.get("message") or error.get("type") or error)
    return str(getattr(error, "message", None) or error)


def describe_error(exc: BaseException) -> str:
    """A short readable text for a request error, built from safe attributes only.

    The exception's repr is avoided on purpose: it can carry the request, whose headers hold
    the key.

    Example:
        >>> describe_error(TimeoutError())
        'TimeoutError'
    """
    if isinstance(exc, openai.APIStatusError):
        return f"HTTP {exc.status_code}: {_status_message(exc)}"
    if isinstance(exc, (openai.APITimeoutError, RequestDeadline)):
        return "request timed out"
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__
        return f"connection error ({type(cause).__name__})" if cause else "connection error"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _status_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
        if isinstance(inner, str):
            return inner
    return exc.message


def is_retryable(exc: BaseException) -> bool:
    """True for errors worth another attempt: timeouts, connection errors, 408/409/429/5xx.

    Example:
        >>> is_retryable(ValueError())
        False
    """
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in RETRYABLE_STATUSES or exc.status_code >= 500
    # APIConnectionError includes APITimeoutError.
    return isinstance(exc, (openai.APIConnectionError, RequestDeadline))


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta seconds or an HTTP date), or None.

    Example:
        >>> parse_retry_after("0.5")
        0.5
        >>> parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0)
        10.0
        >>> parse_retry_after("soon") is None
        True
    """
    if value is None or not value.strip():
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


def retry_after_seconds(exc: BaseException) -> float | None:
    """The server's requested wait from an error response's headers, if it sent one."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    millis = parse_retry_after(headers.get("retry-after-ms"))
    if millis is not None:
        return millis / 1000.0
    return parse_retry_after(headers.get("retry-after"))


def backoff_delay(attempt: int, config: LLMConfig, retry_after: float | None = None) -> float:
    """Seconds to wait before retry number ``attempt`` (0-based).

    With a ``Retry-After`` the wait is at least that (plus up to 10% jitter so that clients
    told the same time do not return in lockstep); otherwise exponential with equal jitter.
    Both are capped at ``config.max_backoff``.

    Example:
        >>> cfg = LLMConfig(model="m", backoff=1.0, max_backoff=60.0)
        >>> 4.0 <= backoff_delay(3, cfg) <= 8.0
        True
        >>> 0.2 <= backoff_delay(0, cfg, retry_after=0.2) <= 0.22
        True
    """
    if retry_after is not None:
        return min(config.max_backoff, retry_after * random.uniform(1.0, 1.1))
    ceiling = min(config.max_backoff, config.backoff * 2.0**attempt)
    return ceiling / 2 + random.uniform(0.0, ceiling / 2)


# --------------------------------------------------------------------------- the client


@dataclass
class _Reply:
    """One report's finished exchange: final text, status, error and its own token counts."""

    text: str = ""
    status: str = STATUS_OK
    error: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    #: False when the answer is incomplete for a transient reason (not to be cached).
    cacheable: bool = True


@dataclass
class _Run:
    """Shared state of one extraction: client, settings, cache and counters."""

    client: openai.AsyncOpenAI
    questions: QuestionSet
    config: LLMConfig
    secret: str
    cache: AnswerCache | None
    semaphore: asyncio.Semaphore
    stats: LLMStats = field(default_factory=LLMStats)
    #: The error of a 401 / 403 / 404: once set, no further request is sent.
    fatal: str = ""
    logged_failures: int = 0

    async def complete(self, messages: list[dict[str, str]], reply: _Reply) -> str:
        """One chat completion with retries; the answer text ('' for an empty reply).

        Token usage is added to ``reply`` and to the run's stats.

        Raises:
            LLMRequestError: out of retries, a non-retryable status, or the run already hit
                a fatal error.
        """
        for attempt in range(self.config.max_retries + 1):
            try:
                return await self._request(messages, reply)
            except (openai.APIError, RequestDeadline) as exc:
                reason = redact(describe_error(exc), self.secret)
                if not is_retryable(exc):
                    status = getattr(exc, "status_code", None)
                    raise LLMRequestError(reason, fatal=status in FATAL_STATUSES) from None
                if attempt == self.config.max_retries:
                    raise LLMRequestError(
                        f"{reason} (gave up after {attempt + 1} attempts)"
                    ) from None
                delay = backoff_delay(attempt, self.config, retry_after_seconds(exc))
                self.stats.retries += 1
                log.debug("retrying in %.2f s after %s", delay, reason)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # the loop always returns or raises

    async def _request(self, messages: list[dict[str, str]], reply: _Reply) -> str:
        async with self.semaphore:
            # Checked after the wait: a fatal error may have come while this one queued.
            if self.fatal:
                raise LLMRequestError(self.fatal, fatal=True)
            self.stats.requests += 1
            limit = {} if self.config.max_tokens is None else {"max_tokens": self.config.max_tokens}
            # The client's timeout bounds each read, not the whole request: a server that
            # trickles a byte at a time would hold it for ever. ``wait_for`` is the deadline.
            try:
                response = await asyncio.wait_for(
                    self.client.chat.completions.create(
                        model=self.config.model,
                        messages=messages,  # type: ignore[arg-type]
                        temperature=self.config.temperature,
                        **limit,
                    ),
                    timeout=self.config.timeout,
                )
            except asyncio.TimeoutError:
                raise RequestDeadline() from None
        if not hasattr(response, "choices"):
            # openai hands back the raw text when the body is not JSON (a proxy's error page).
            snippet = redact(str(response)[:80], self.secret)
            raise LLMRequestError(f"the server did not answer with a chat completion: {snippet!r}")
        usage = getattr(response, "usage", None)
        if usage is not None:
            reply.prompt_tokens += getattr(usage, "prompt_tokens", 0) or 0
            reply.completion_tokens += getattr(usage, "completion_tokens", 0) or 0
            self.stats.prompt_tokens += getattr(usage, "prompt_tokens", 0) or 0
            self.stats.completion_tokens += getattr(usage, "completion_tokens", 0) or 0
        return self._answer_text(response)

    def _answer_text(self, response: object) -> str:
        """The answer of an HTTP 200 reply; a reply that carries none is a failed request.

        An ``{"error": ...}`` body, empty or null ``choices`` and a null message content are
        no answer: they raise (so they are never cached and a rerun asks again), keeping the
        server's own message, redacted and bounded.

        Raises:
            LLMRequestError: the reply holds no answer.
        """
        server_error = _server_error(response)
        choices = getattr(response, "choices", None)
        if server_error is not None or not choices:
            what = f"an error: {server_error}" if server_error else "no choices"
            raise LLMRequestError(
                bounded(redact(f"the server answered HTTP 200 with {what}", self.secret))
            )
        content = getattr(getattr(choices[0], "message", None), "content", None)
        if not isinstance(content, str):
            raise LLMRequestError("the server answered HTTP 200 with no message content")
        if len(content) > self.config.max_answer_chars:
            raise LLMRequestError(
                f"answer too long ({len(content)} characters; at most "
                f"{self.config.max_answer_chars} accepted); not kept"
            )
        # A server may echo the key (or another one) inside an answer: never keep it.
        return redact(content, self.secret)

    async def answer(self, report: str) -> _Reply:
        """Ask one report, with one repair turn if the answer does not split.

        Raises:
            LLMRequestError: the first request failed for good.
        """
        reply = _Reply()
        n = len(self.questions.questions)
        messages = build_messages(report, self.questions, self.config.examples)
        reply.text = await self.complete(messages, reply)
        problem = parse_problem(reply.text, n)
        if problem is None:
            return reply
        self.stats.repairs += 1
        log.debug("answer not in %d parts (%s); asking once more", n, problem)
        first = reply.text
        follow_up = [*messages, {"role": "assistant", "content": first}, repair_turn(problem, n)]
        try:
            reply.text = await self.complete(follow_up, reply)
        except LLMRequestError as exc:
            # Keep the first answer for a human, but do not cache it: the repair may work later.
            reply.status, reply.cacheable = STATUS_NEEDS_REVIEW, False
            reply.error = f"{problem}; repair request failed: {exc}"
            return reply
        if parse_problem(reply.text, n) is not None:
            reply.status = STATUS_NEEDS_REVIEW
            reply.error = f"{problem}, also after a repair turn; first answer: {first!r}"
        return reply


def parse_problem(answer: str, n: int) -> str | None:
    """None if ``answer`` splits into ``n`` parts, else a short description of what is wrong.

    Example:
        >>> parse_problem("a; b", 2) is None
        True
        >>> parse_problem("a; b; c", 2)
        'expected 2 semicolon-separated parts, got 3'
    """
    if split_answer(answer, n) is not None:
        return None
    if not answer.strip():
        return "the answer was empty"
    return f"expected {n} semicolon-separated parts, got {len(answer.split(';'))}"


def make_client(config: LLMConfig, api_key: str) -> openai.AsyncOpenAI:
    """An ``AsyncOpenAI`` client with its own retries off (the backend retries itself).

    Example:
        >>> make_client(LLMConfig(model="m", base_url="http://127.0.0.1:1/v1"), "k").max_retries
        0
    """
    return openai.AsyncOpenAI(
        api_key=api_key, base_url=config.base_url, timeout=config.timeout, max_retries=0
    )


# --------------------------------------------------------------------------- extraction


def _result(
    report_id: str,
    entry: CachedAnswer,
    questions: QuestionSet,
    cached: bool,
) -> LLMResult:
    """An ``LLMResult`` from a finished answer: fields from the normalizer."""
    fields, status = normalize_answer(entry.answer, questions)
    if entry.status == STATUS_NEEDS_REVIEW:
        # A needs-review answer stays so even if the normalizer reads some of it.
        status = STATUS_NEEDS_REVIEW
    return LLMResult(report_id, entry.answer, fields, status, entry.error, cached)


def _failed(report_id: str, error: str, questions: QuestionSet) -> LLMResult:
    return LLMResult(report_id, "", unknown_answers(questions.keys), STATUS_FAILED, error)


async def _answer_one(run: _Run, report_id: str, text: str, key: str) -> LLMResult:
    """One report, from the cache or the server; the answer is cached once finished."""
    if run.cache is not None:
        hit = run.cache.get(key)
        if hit is not None:
            run.stats.cache_hits += 1
            return _result(report_id, hit, run.questions, cached=True)
    try:
        reply = await run.answer(text)
    except LLMRequestError as exc:
        if exc.fatal and not run.fatal:
            run.fatal = str(exc)
            log.error("LLM request failed: %s; failing the remaining reports", exc)
        return _failed(report_id, str(exc), run.questions)
    except Exception as exc:  # one odd reply must not end a long run
        return _failed(report_id, redact(describe_error(exc), run.secret), run.questions)
    entry = CachedAnswer(
        reply.text,
        reply.status,
        reply.error,
        report_id,
        reply.prompt_tokens,
        reply.completion_tokens,
    )
    if run.cache is not None and reply.cacheable:
        run.cache.put(key, entry)
    return _result(report_id, entry, run.questions, cached=False)


async def extract_llm_async(
    reports: list[tuple[str, str]],
    questions: QuestionSet,
    config: LLMConfig,
    progress: bool = True,
) -> tuple[list[LLMResult], LLMStats]:
    """Like :func:`extract_llm`, for callers already inside an event loop.

    Example:
        >>> import asyncio
        >>> from fivewsi.reports import load_question_set
        >>> cfg = LLMConfig(base_url="http://127.0.0.1:1/v1", model="m")
        >>> asyncio.run(extract_llm_async([], load_question_set("lung"), cfg))[0]
        []
    """
    started = time.perf_counter()
    secret = resolve_api_key(config)
    cache = AnswerCache(config.cache) if config.cache is not None else None
    client = make_client(config, secret)
    run = _Run(client, questions, config, secret, cache, asyncio.Semaphore(config.concurrency))
    try:
        results = await _answer_all(run, reports, progress)
    finally:
        await client.close()
        if cache is not None:
            cache.close()
    run.stats.seconds = time.perf_counter() - started
    _count_outcomes(run.stats, results)
    log.info("%s", run.stats.summary())
    return results, run.stats


async def _answer_all(run: _Run, reports: list[tuple[str, str]], progress: bool) -> list[LLMResult]:
    """Every report, concurrently, in input order; identical texts are asked once."""
    version = prompt_version(run.questions, run.config.examples)
    base_url = str(run.client.base_url)
    keys = [
        cache_key(base_url, run.config.model, version, text, run.config.temperature)
        for _, text in reports
    ]
    first_of: dict[str, int] = {}
    for i, key in enumerate(keys):
        first_of.setdefault(key, i)
    with make_progress(progress) as bar:
        task_id = bar.add_task("LLM", total=len(first_of), rate="")
        started = time.perf_counter()
        done = 0

        async def one(i: int) -> LLMResult:
            nonlocal done
            report_id, text = reports[i]
            result = await _answer_one(run, report_id, text, keys[i])
            _log_failure(run, result)
            done += 1
            rate = done / max(time.perf_counter() - started, 1e-9)
            bar.update(task_id, advance=1, rate=f"{rate:.1f} reports/s")
            return result

        unique = await asyncio.gather(*(one(i) for i in first_of.values()))
    by_key = dict(zip(first_of, unique, strict=True))
    return [_with_id(by_key[key], reports[i][0]) for i, key in enumerate(keys)]


def _with_id(result: LLMResult, report_id: str) -> LLMResult:
    # Duplicated report texts share one answer but keep their own ids.
    if result.report_id == report_id:
        return result
    return LLMResult(report_id, result.answer, result.fields, result.status, result.error, True)


def _log_failure(run: _Run, result: LLMResult) -> None:
    # After a fatal error one log line already explains every remaining failure.
    if result.status != STATUS_FAILED or run.fatal:
        return
    run.logged_failures += 1
    if run.logged_failures <= _LOGGED_FAILURES:
        log.warning("report %s failed: %s", result.report_id, result.error)


def _count_outcomes(stats: LLMStats, results: list[LLMResult]) -> None:
    stats.failures = sum(r.status == STATUS_FAILED for r in results)
    stats.needs_review = sum(r.status == STATUS_NEEDS_REVIEW for r in results)


def extract_llm(
    reports: list[tuple[str, str]],
    questions: QuestionSet,
    config: LLMConfig,
    progress: bool = True,
) -> tuple[list[LLMResult], LLMStats]:
    """Ask every ``(report_id, text)`` of an OpenAI-compatible server; results in input order.

    Runs its own event loop (``asyncio.run``), so it must be called from synchronous code; from
    inside a running loop, ``await extract_llm_async(...)`` instead (calling this there raises
    RuntimeError rather than deadlocking).

    Raises:
        LLMConfigError: no API key for the default server.
        RuntimeError: called from inside a running event loop.

    Example:
        >>> from fivewsi.reports import load_question_set
        >>> cfg = LLMConfig(base_url="http://127.0.0.1:1/v1", model="m")
        >>> extract_llm([], load_question_set("lung"), cfg, progress=False)[1].requests
        0
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(extract_llm_async(reports, questions, config, progress))
    raise RuntimeError(
        "extract_llm() runs its own event loop; inside a running loop use "
        "'await extract_llm_async(...)'"
    )


__all__ = [
    "LLMConfig",
    "LLMConfigError",
    "LLMResult",
    "LLMStats",
    "build_messages",
    "extract_llm",
    "extract_llm_async",
    "prompt_version",
]
