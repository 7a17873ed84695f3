"""A persistent cache of LLM answers: one sqlite file, one row per finished answer.

Each answer is committed the moment it arrives, so a run that crashes or is interrupted keeps
every answer it finished, and rerunning with the same inputs sends no request for them. The
database runs in WAL mode: readers (another process peeking at progress) never block the writer,
and ``synchronous=NORMAL`` makes every commit survive a crash of the process (only a power cut
can lose the last few, which then are simply asked again).

Only finished answers belong here: ``ok`` and ``needs_review`` (the raw answer is kept for a
human); a request that failed is never stored, so the next run tries it again.

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "llm.sqlite"
    >>> key = cache_key("http://127.0.0.1:8000/v1", "m", "p1", "Report text.")
    >>> with AnswerCache(path) as cache:
    ...     cache.put(key, CachedAnswer("Unknown; Unknown", "ok", report_id="r1"))
    >>> with AnswerCache(path) as cache:
    ...     cache.get(key).answer, len(cache)
    ('Unknown; Unknown', 1)
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

_SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    key TEXT PRIMARY KEY,
    answer TEXT NOT NULL,
    status TEXT NOT NULL,
    error TEXT NOT NULL DEFAULT '',
    report_id TEXT NOT NULL DEFAULT '',
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL
)
"""


def text_hash(text: str) -> str:
    """sha256 hex digest of ``text`` (UTF-8).

    Example:
        >>> text_hash("")[:12]
        'e3b0c44298fc'
    """
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def cache_key(
    base_url: str, model: str, prompt_version: str, report: str, temperature: float = 0.0
) -> str:
    """The cache key of one report's answer: a hash of where, what model, which prompt, which text.

    The temperature is part of the key because a different sampling setting is a different
    answer distribution.

    Example:
        >>> cache_key("u", "m", "p", "r") == cache_key("u", "m", "p", "r")
        True
        >>> cache_key("u", "m", "p", "r") == cache_key("u", "m2", "p", "r")
        False
    """
    parts = [base_url.rstrip("/"), model, prompt_version, text_hash(report), float(temperature)]
    return text_hash(json.dumps(parts))


@dataclass(frozen=True)
class CachedAnswer:
    """One finished answer as stored: the raw model text, its status and token counts.

    Example:
        >>> CachedAnswer("a; b", "needs_review").status
        'needs_review'
    """

    answer: str
    status: str
    error: str = ""
    report_id: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0


class AnswerCache:
    """sqlite-backed answer cache; use as a context manager, from one thread.

    The asyncio loop is the single writer: commits are short and happen between awaits, so no
    lock is needed.

    Example:
        >>> with AnswerCache(":memory:") as cache:
        ...     cache.get("missing") is None
        True
    """

    def __init__(self, path: str | Path) -> None:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(str(path), timeout=30.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)
        self._db.commit()

    def get(self, key: str) -> CachedAnswer | None:
        """The stored answer for ``key``, or None."""
        row = self._db.execute(
            "SELECT answer, status, error, report_id, prompt_tokens, completion_tokens "
            "FROM answers WHERE key = ?",
            (key,),
        ).fetchone()
        return None if row is None else CachedAnswer(*row)

    def put(self, key: str, entry: CachedAnswer) -> None:
        """Store (or replace) the answer for ``key`` and commit at once."""
        self._db.execute(
            "INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                key,
                entry.answer,
                entry.status,
                entry.error,
                entry.report_id,
                entry.prompt_tokens,
                entry.completion_tokens,
                time.time(),
            ),
        )
        self._db.commit()

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0])

    def close(self) -> None:
        """Close the database (every answer is already committed)."""
        self._db.close()

    def __enter__(self) -> AnswerCache:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
