"""The LLM backend against a real HTTP server on 127.0.0.1, through the real openai client."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fake_llm_server import FakeLLMServer, expected_answer
from fivewsi.reports import load_question_set
from fivewsi.reports.cache import AnswerCache
from fivewsi.reports.llm import (
    LLMConfig,
    LLMConfigError,
    backoff_delay,
    build_messages,
    extract_llm,
    extract_llm_async,
    parse_retry_after,
    prompt_version,
    user_turn,
)
from fivewsi.reports.questions import QuestionSet

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def qs() -> QuestionSet:
    return load_question_set("lung")


@pytest.fixture
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as fake:
        yield fake


def make_config(server: FakeLLMServer, **overrides: object) -> LLMConfig:
    """Fast settings for tests: tiny backoff, short timeout, no key variable set."""
    settings: dict[str, object] = {
        "base_url": server.url,
        "model": "fake-model",
        "api_key_env": "FIVEWSI_TEST_UNSET_KEY",
        "backoff": 0.01,
        "timeout": 2.0,
    }
    settings.update(overrides)
    return LLMConfig(**settings)  # type: ignore[arg-type]


def reports(n: int, tag: str = "case") -> list[tuple[str, str]]:
    """``n`` distinct reports whose texts carry unique markers ``[tag-0001]`` ..."""
    return [
        (f"{tag}{i}", f"[{tag}-{i:04d}] Lobectomy: adenocarcinoma, {i + 1} cm.") for i in range(n)
    ]


def answer_for(report: str, qs: QuestionSet) -> str:
    return expected_answer(user_turn(report, qs))


# --------------------------------------------------------------------------- prompt


def test_request_body_has_instruction_examples_and_temperature_zero(server, qs):
    (rid, text), *_ = reports(1)
    results, stats = extract_llm([(rid, text)], qs, make_config(server), progress=False)
    assert results[0].status == "ok" and stats.requests == 1
    body = server.bodies[0]
    assert body["temperature"] == 0
    assert body["model"] == "fake-model"
    assert "response_format" not in body and "tools" not in body
    roles = [m["role"] for m in body["messages"]]
    assert roles == ["system"] + ["user", "assistant"] * len(qs.examples) + ["user"]
    assert body["messages"][0]["content"] == qs.instruction.strip()
    answers = [m["content"] for m in body["messages"] if m["role"] == "assistant"]
    assert answers == [e.answer.strip() for e in qs.examples]
    last = body["messages"][-1]["content"]
    assert text in last
    assert all(f"{i}. {q.question.strip()}" in last for i, q in enumerate(qs.questions, 1))


def test_examples_option_limits_few_shot_turns(qs):
    assert [m["role"] for m in build_messages("x", qs, 0)] == ["system", "user"]
    assert len(build_messages("x", qs, 1)) == 4
    assert len(build_messages("x", qs)) == 2 + 2 * len(qs.examples)


def test_prompt_version_tracks_prompt_text_only(qs):
    edited = qs.model_copy(update={"instruction": qs.instruction + " Be brief."})
    assert prompt_version(qs) == prompt_version(load_question_set("lung"))
    assert prompt_version(qs) != prompt_version(edited)
    assert prompt_version(qs) != prompt_version(qs, 2)
    bumped = qs.model_copy(update={"version": "lung-2"})
    assert prompt_version(qs) != prompt_version(bumped)


def test_results_in_input_order_and_fields_normalized(server, qs):
    items = reports(12)
    results, _ = extract_llm(items, qs, make_config(server, concurrency=5), progress=False)
    assert [r.report_id for r in results] == [rid for rid, _ in items]
    for (_, text), result in zip(items, results, strict=True):
        assert result.answer == answer_for(text, qs)
        assert set(result.fields) == set(qs.keys)
    assert any(f.category != "unknown" for r in results for f in r.fields.values())


# --------------------------------------------------------------------------- retries


def test_retries_succeed_after_429_and_500(server, qs):
    server.script("[case-0000]", "429", "500", "503")
    results, stats = extract_llm(reports(1), qs, make_config(server), progress=False)
    assert results[0].status == "ok"
    assert server.count == 4 and stats.requests == 4 and stats.retries == 3


def test_retry_after_is_honoured(server, qs):
    server.script("[case-0000]", "429:0.3")
    results, stats = extract_llm(reports(1), qs, make_config(server), progress=False)
    assert results[0].status == "ok" and stats.retries == 1
    # The backoff alone would wait ~0.01 s; the header asked for 0.3 s.
    assert server.arrivals[1] - server.arrivals[0] >= 0.3


def test_parse_retry_after_seconds_and_http_date():
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412490.0) == 0.0
    assert parse_retry_after("later") is None and parse_retry_after(None) is None


def test_backoff_grows_and_is_capped():
    cfg = LLMConfig(model="m", backoff=1.0, max_backoff=5.0)
    assert all(0.5 <= backoff_delay(0, cfg) <= 1.0 for _ in range(50))
    assert all(2.5 <= backoff_delay(10, cfg) <= 5.0 for _ in range(50))
    assert backoff_delay(0, cfg, retry_after=100.0) == 5.0


def test_timeout_is_retried(qs):
    with FakeLLMServer(slow_seconds=1.5) as server:
        server.script("[case-0000]", "slow")
        cfg = make_config(server, timeout=0.3)
        started = time.perf_counter()
        results, stats = extract_llm(reports(1), qs, cfg, progress=False)
        assert results[0].status == "ok" and stats.retries == 1 and server.count == 2
        assert time.perf_counter() - started < 1.5  # did not wait for the slow answer


def test_out_of_retries_fails_with_readable_error(server, qs):
    server.script("[case-0000]", *["500"] * 3)
    results, stats = extract_llm(reports(1), qs, make_config(server, max_retries=2), False)
    assert results[0].status == "failed" and server.count == 3
    assert "HTTP 500" in results[0].error and "3 attempts" in results[0].error
    assert stats.failures == 1 and set(results[0].fields) == set(qs.keys)


def test_400_fails_fast_without_retry(server, qs):
    server.script("[case-0000]", "400")
    started = time.perf_counter()
    results, stats = extract_llm(reports(2), qs, make_config(server, backoff=5.0), False)
    assert time.perf_counter() - started < 2.0
    assert results[0].status == "failed" and results[0].error.startswith("HTTP 400")
    assert "Invalid request" in results[0].error
    assert results[1].status == "ok" and stats.retries == 0 and server.count == 2


def test_401_stops_the_run(server, qs):
    server.script("Pathology report:", *["401"] * 10)
    results, stats = extract_llm(reports(5), qs, make_config(server, concurrency=1), False)
    assert [r.status for r in results] == ["failed"] * 5
    assert server.count == 1 and stats.failures == 5


def test_non_json_reply_fails_readably(server, qs):
    server.script("[case-0000]", "garbage")
    results, _ = extract_llm(reports(2), qs, make_config(server), progress=False)
    assert results[0].status == "failed" and "did not answer with a chat completion" in (
        results[0].error
    )
    assert results[1].status == "ok"


def test_connection_refused_is_retried_then_failed(qs):
    with FakeLLMServer() as dead:
        url = dead.url
    cfg = LLMConfig(base_url=url, model="m", api_key_env="FIVEWSI_TEST_UNSET_KEY", backoff=0.01)
    results, stats = extract_llm(reports(1), qs, cfg.model_copy(update={"max_retries": 2}), False)
    assert results[0].status == "failed" and "connection error" in results[0].error
    assert stats.requests == 3 and stats.retries == 2


# --------------------------------------------------------------------------- parsing / repair


def test_malformed_answer_is_repaired(server, qs):
    server.script("[case-0000]", "malformed")
    results, stats = extract_llm(reports(1), qs, make_config(server), progress=False)
    assert results[0].status == "ok" and stats.repairs == 1 and server.count == 2
    repair = server.bodies[1]["messages"]
    assert repair[-2]["role"] == "assistant" and len(repair[-2]["content"].split(";")) == 5
    assert "exactly 6 parts" in repair[-1]["content"]


def test_malformed_twice_needs_review_with_raw_answer_kept(server, qs):
    server.script("[case-0000]", "malformed", "malformed")
    (rid, text), *_ = reports(1)
    results, stats = extract_llm([(rid, text)], qs, make_config(server), progress=False)
    result = results[0]
    assert result.status == "needs_review" and stats.needs_review == 1
    assert result.answer == "; ".join(answer_for(text, qs).split("; ")[:5])
    assert "first answer" in result.error and server.count == 2


@pytest.mark.parametrize("behaviour", ["fenced", "prose"])
def test_wrapped_answers_parse_without_repair(server, qs, behaviour):
    server.script("[case-0000]", behaviour)
    (rid, text), *_ = reports(1)
    results, stats = extract_llm([(rid, text)], qs, make_config(server), progress=False)
    assert results[0].status == "ok" and stats.repairs == 0
    assert results[0].answer != answer_for(text, qs)  # the raw text is kept as received
    fields = [results[0].fields[k].evidence for k in qs.keys]
    assert "; ".join(fields) == answer_for(text, qs)


def test_empty_answer_gets_repaired(server, qs):
    server.script("[case-0000]", "empty")
    results, stats = extract_llm(reports(1), qs, make_config(server), progress=False)
    assert results[0].status == "ok" and stats.repairs == 1


# --------------------------------------------------------------------------- concurrency


def test_concurrency_bound_is_respected(qs):
    with FakeLLMServer(latency=0.05) as server:
        results, stats = extract_llm(reports(24), qs, make_config(server, concurrency=4), False)
        assert all(r.status == "ok" for r in results)
        assert server.max_in_flight == 4 and stats.requests == 24


def test_identical_reports_are_asked_once(server, qs):
    items = [("a", "Same text."), ("b", "Same text."), ("c", "Other text.")]
    results, _ = extract_llm(items, qs, make_config(server), progress=False)
    assert server.count == 2 and [r.report_id for r in results] == ["a", "b", "c"]
    assert results[0].answer == results[1].answer


def test_sync_entry_refuses_a_running_loop(server, qs):
    async def inside() -> None:
        with pytest.raises(RuntimeError, match="extract_llm_async"):
            extract_llm(reports(1), qs, make_config(server), progress=False)
        results, _ = await extract_llm_async(reports(1), qs, make_config(server), False)
        assert results[0].status == "ok"

    asyncio.run(inside())


# --------------------------------------------------------------------------- cache


def test_rerun_with_cache_sends_zero_requests(server, qs, tmp_path):
    cfg = make_config(server, cache=tmp_path / "llm.sqlite")
    first, stats1 = extract_llm(reports(8), qs, cfg, progress=False)
    assert stats1.requests == 8 and server.count == 8
    second, stats2 = extract_llm(reports(8), qs, cfg, progress=False)
    assert server.count == 8 and stats2.requests == 0 and stats2.cache_hits == 8
    assert [r.answer for r in first] == [r.answer for r in second]
    assert [r.fields for r in first] == [r.fields for r in second]
    assert all(r.cached for r in second)


def test_cache_keys_on_model_and_prompt(server, qs, tmp_path):
    cfg = make_config(server, cache=tmp_path / "llm.sqlite")
    extract_llm(reports(2), qs, cfg, progress=False)
    extract_llm(reports(2), qs, cfg.model_copy(update={"model": "other"}), progress=False)
    extract_llm(reports(2), qs, cfg.model_copy(update={"examples": 1}), progress=False)
    assert server.count == 6


def test_needs_review_is_cached_and_failed_is_not(server, qs, tmp_path):
    server.script("[case-0000]", "malformed", "malformed")
    server.script("[case-0001]", "400")
    cfg = make_config(server, cache=tmp_path / "llm.sqlite")
    first, _ = extract_llm(reports(2), qs, cfg, progress=False)
    assert [r.status for r in first] == ["needs_review", "failed"]
    before = server.count
    second, stats = extract_llm(reports(2), qs, cfg, progress=False)
    assert server.count == before + 1 and stats.cache_hits == 1  # only the failed one again
    assert second[0].status == "needs_review" and second[0].answer == first[0].answer
    assert second[0].error == first[0].error and second[1].status == "ok"


def test_cancelled_run_keeps_finished_answers(qs, tmp_path):
    cache = tmp_path / "llm.sqlite"
    items = reports(30)
    with FakeLLMServer(latency=0.05) as server:
        cfg = make_config(server, cache=cache, concurrency=2)

        async def cancel_midway() -> None:
            task = asyncio.ensure_future(extract_llm_async(items, qs, cfg, progress=False))
            deadline = time.monotonic() + 10
            while _rows(cache) < 4 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(cancel_midway())
        with AnswerCache(cache) as stored:
            kept = len(stored)
        assert 0 < kept < len(items)
        before = server.count
        results, stats = extract_llm(items, qs, cfg, progress=False)
        assert stats.cache_hits == kept and server.count - before == len(items) - kept
        assert all(r.answer == answer_for(t, qs) for (_, t), r in zip(items, results, strict=True))


_CRASH_CHILD = """
import sys
from fivewsi.reports import load_question_set
from fivewsi.reports.llm import LLMConfig, extract_llm
url, cache, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
items = [(f"case{i}", f"[case-{i:04d}] Lobectomy: adenocarcinoma, {i + 1} cm.") for i in range(n)]
cfg = LLMConfig(base_url=url, model="fake-model", api_key_env="FIVEWSI_TEST_UNSET_KEY",
                cache=cache, concurrency=2)
extract_llm(items, load_question_set("lung"), cfg, progress=False)
"""


def test_killed_run_loses_no_finished_answer(qs, tmp_path):
    cache = tmp_path / "llm.sqlite"
    items = reports(40)
    with FakeLLMServer(latency=0.05) as server:
        args = [sys.executable, "-c", _CRASH_CHILD, server.url, str(cache), str(len(items))]
        child = subprocess.Popen(args, env={**os.environ, "PYTHONPATH": str(TESTS)})
        try:
            deadline = time.monotonic() + 15
            while _rows(cache) < 6 and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
        kept = _rows(cache)
        assert 6 <= kept < len(items)
        before = server.count
        results, stats = extract_llm(items, qs, make_config(server, cache=cache), False)
        assert stats.cache_hits == kept and server.count - before == len(items) - kept
        assert all(r.answer == answer_for(t, qs) for (_, t), r in zip(items, results, strict=True))


def _rows(path: Path) -> int:
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(path) as db:
            return int(db.execute("SELECT COUNT(*) FROM answers").fetchone()[0])
    except sqlite3.OperationalError:
        return 0  # table not created yet


# --------------------------------------------------------------------------- the key


SECRET = "sk-fivewsi-test-7d1c0ffee9b2"


def test_key_is_sent_but_never_logged(server, qs, monkeypatch, caplog, capfd):
    monkeypatch.setenv("FIVEWSI_TEST_KEY", SECRET)
    caplog.set_level(logging.DEBUG)  # every logger, the client's and httpx's included
    server.script("[case-0001]", "401")  # its error message echoes the key back
    server.script("[case-0002]", "500", "500", "500")
    cfg = make_config(server, api_key_env="FIVEWSI_TEST_KEY", max_retries=2, concurrency=1)
    results, stats = extract_llm(reports(3), qs, cfg, progress=True)
    assert server.headers[0]["authorization"] == f"Bearer {SECRET}"
    assert results[1].status == "failed" and "[redacted]" in results[1].error
    out, err = capfd.readouterr()
    texts = [caplog.text, out, err, stats.summary(), repr(stats), *map(repr, results)]
    assert all(SECRET not in text for text in texts)


def test_missing_key_for_the_default_server_is_a_clear_error(qs, monkeypatch):
    monkeypatch.delenv("FIVEWSI_TEST_UNSET_KEY", raising=False)
    cfg = LLMConfig(model="gpt-4o", api_key_env="FIVEWSI_TEST_UNSET_KEY")
    with pytest.raises(LLMConfigError, match="FIVEWSI_TEST_UNSET_KEY"):
        extract_llm(reports(1), qs, cfg, progress=False)


def test_local_server_needs_no_key(server, qs):
    results, _ = extract_llm(reports(1), qs, make_config(server), progress=False)
    assert results[0].status == "ok"
    assert server.headers[0]["authorization"] == "Bearer not-needed"


# --------------------------------------------------------------------------- hostile answers


@pytest.mark.parametrize("behaviour", ["error200", "nochoices", "nullchoices", "nullcontent"])
def test_error_body_with_status_200_fails_and_is_not_cached(server, qs, tmp_path, behaviour):
    secret = "sk-test-secret-0123456789"
    os.environ["FIVEWSI_TEST_M2_KEY"] = secret
    try:
        server.script("[case-0000]", *[behaviour] * 10)
        cfg = make_config(server, cache=tmp_path / "llm.sqlite", api_key_env="FIVEWSI_TEST_M2_KEY")
        first, _ = extract_llm(reports(2), qs, cfg, progress=False)
        assert [r.status for r in first] == ["failed", "ok"]
        assert first[0].error and secret not in first[0].error and len(first[0].error) <= 300
        if behaviour == "error200":
            assert "model overloaded" in first[0].error
        with AnswerCache(tmp_path / "llm.sqlite") as cache:
            assert len(cache) == 1  # only the healthy answer
        server.reset()  # the server recovers
        second, stats = extract_llm(reports(2), qs, cfg, progress=False)
        assert server.count == 1 and stats.requests == 1 and stats.cache_hits == 1
        assert [r.status for r in second] == ["ok", "ok"]
    finally:
        del os.environ["FIVEWSI_TEST_M2_KEY"]


def test_timeout_is_a_total_deadline_against_a_trickling_server(qs):
    # The server sends a byte every 0.3 s for ever: no single read ever times out.
    with FakeLLMServer(trickle_seconds=0.3) as server:
        server.script("[case-0000]", *["trickle"] * 10)
        cfg = make_config(server, timeout=1.0, max_retries=1)
        started = time.monotonic()
        results, stats = extract_llm(reports(2), qs, cfg, progress=False)
        elapsed = time.monotonic() - started
    assert [r.status for r in results] == ["failed", "ok"]
    assert "timed out" in results[0].error and stats.retries == 1
    assert elapsed < 6.0  # two attempts of 1 s plus backoff, never the trickle's length


def test_huge_answer_fails_short_and_is_never_stored(server, qs, tmp_path):
    server.huge_chars = 3_000_000
    server.script("[case-0000]", "huge")
    cfg = make_config(server, cache=tmp_path / "llm.sqlite")
    results, _ = extract_llm(reports(2), qs, cfg, progress=False)
    assert [r.status for r in results] == ["failed", "ok"]
    assert "too long" in results[0].error and len(results[0].error) < 300
    assert len(results[0].answer) == 0
    assert all(body["max_tokens"] == cfg.max_tokens for body in server.bodies)
    with AnswerCache(tmp_path / "llm.sqlite") as cache:
        assert len(cache) == 1
    assert (tmp_path / "llm.sqlite").stat().st_size < 1_000_000


def test_key_echoed_inside_an_answer_is_redacted_everywhere(server, qs, tmp_path, monkeypatch):
    secret = "sk-test-echoed-secret-42"
    monkeypatch.setenv("FIVEWSI_TEST_ECHO_KEY", secret)
    server.script("[case-0000]", "echokey", "echokey")  # answer and repair both echo it
    cache_path = tmp_path / "llm.sqlite"
    cfg = make_config(server, cache=cache_path, api_key_env="FIVEWSI_TEST_ECHO_KEY")
    results, _ = extract_llm(reports(1), qs, cfg, progress=False)
    assert results[0].status == "needs_review"
    kept = results[0].answer + results[0].error
    assert "[redacted]" in kept
    assert secret not in kept and "sk-proj-abcdefghijklmnop1234" not in kept
    with sqlite3.connect(cache_path) as db:
        stored = " ".join(str(v) for row in db.execute("SELECT * FROM answers") for v in row)
    assert stored and secret not in stored and "sk-proj-" not in stored
    assert server.headers[0]["authorization"] == f"Bearer {secret}"  # the key was still sent
