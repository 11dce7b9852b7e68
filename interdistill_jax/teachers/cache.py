"""SQLite cache of answered calls: a killed run resumes without paying again, a rerun pays nothing.

The key is a sha256 over the backend's identity (backend, model, prompt version, sampling
parameters) and the request (query, passages as shown, earlier corrections). An answer is committed
before the caller sees it. WAL journaling with synchronous=NORMAL survives the process being killed
at any point (only an OS crash or power loss can roll back the last commits).

SQLite needs a file on local disk: a workdir in a bucket keeps its caches in a local mirror that
is filled from the bucket and uploaded back (`open_cache`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from typing import Any

from absl import logging

from interdistill_jax import files, layout
from interdistill_jax.teachers.base import Answer, Request

_SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
  key TEXT PRIMARY KEY,
  backend TEXT NOT NULL,
  model TEXT NOT NULL,
  answer TEXT NOT NULL,
  prompt_tokens INTEGER NOT NULL,
  completion_tokens INTEGER NOT NULL,
  created REAL NOT NULL
)
"""


def cache_key(identity: dict[str, Any], request: Request) -> str:
  """sha256 hex digest of the canonical JSON of (identity, request)."""
  blob = json.dumps({"identity": identity, "request": request.key_fields()},
                    sort_keys=True, ensure_ascii=False, separators=(",", ":"))
  return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class CacheError(ValueError):
  """A call cache that cannot be read (damaged, or not SQLite): names the file."""


class Cache:
  """Answers by key, in one SQLite file. Used from one event loop thread."""

  def __init__(self, path: str | os.PathLike):
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    self.path = path
    try:
      self._db = sqlite3.connect(path, timeout=30.0, isolation_level=None)
      self._db.execute("PRAGMA journal_mode=WAL")
      self._db.execute("PRAGMA synchronous=NORMAL")
      self._db.execute(_SCHEMA)
      self._db.execute("SELECT count(*) FROM answers").fetchone()
    except sqlite3.DatabaseError as e:
      raise CacheError(f"{path}: not a readable call cache ({e}). Move it away to start an empty "
                       "one (the calls it held are paid again), or restore it from a copy") from None

  def get(self, key: str) -> Answer | None:
    row = self._db.execute("SELECT answer FROM answers WHERE key = ?", (key,)).fetchone()
    return Answer.from_json(json.loads(row[0])) if row else None

  def put(self, key: str, answer: Answer, *, backend: str, model: str) -> None:
    """Stores and commits (autocommit mode) before returning."""
    self._db.execute(
        "INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?, ?, ?)",
        (key, backend, model, json.dumps(answer.to_json(), ensure_ascii=False),
         answer.prompt_tokens, answer.completion_tokens, time.time()))

  def __len__(self) -> int:
    return self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]

  def ledger(self) -> list[dict[str, Any]]:
    """Every answer ever paid for, summed by backend and model."""
    rows = self._db.execute(
        "SELECT backend, model, COUNT(*), SUM(prompt_tokens), SUM(completion_tokens) "
        "FROM answers GROUP BY backend, model ORDER BY backend, model").fetchall()
    return [{"backend": b, "model": m, "answers": n, "prompt_tokens": p or 0,
             "completion_tokens": c or 0} for b, m, n, p, c in rows]

  def close(self) -> None:
    self._db.close()

  def add_from(self, other: "Cache") -> int:
    """Adds every answer of `other` this cache lacks (another workdir's answers to the same
    prompts: a sweep's points share what was paid for once); returns how many were added."""
    rows = other._db.execute("SELECT key, backend, model, answer, prompt_tokens, completion_tokens, "
                             "created FROM answers").fetchall()
    before = len(self)
    self._db.execute("BEGIN")
    self._db.executemany("INSERT OR IGNORE INTO answers VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    self._db.execute("COMMIT")
    return len(self) - before


@contextlib.contextmanager
def open_cache(path: str, *, local_dir: str | None = None) -> Iterator[Cache]:
  """The call cache kept at `path` (a workdir file), open for the block and closed after it.

  A local `path` is the SQLite file itself. For one in a bucket (`gs://...`) the cache is a local
  mirror, `layout.local_mirror(local_dir, path)` (`local_dir`: `data.cache_dir`): the bucket's
  copy's answers are added to it as the block starts (a mirror a killed run left keeps its own),
  and the mirror is uploaded over `path` as the block ends, failed or not. A run killed outright
  uploads nothing: its answers wait in the mirror and reach the bucket at the end of the next
  run on this host (one on another host pays for them again).
  """
  if files.is_local(path):
    cache = Cache(path)
    try:
      yield cache
    finally:
      cache.close()
    return
  if not local_dir:
    raise ValueError(f"{path}: a call cache in a bucket needs a local directory (data.cache_dir)")
  mirror = layout.local_mirror(local_dir, path)
  cache = Cache(mirror)
  try:
    if files.exists(path):
      _add_remote(cache, path)
    logging.info("Call cache %s: kept in %s while in use (SQLite needs a local file)", path, mirror)
    yield cache
  finally:
    cache.close()
    files.copy_file(mirror, path)


def _add_remote(cache: Cache, path: str) -> None:
  with tempfile.TemporaryDirectory(prefix="interdistill-cache-") as tmp:
    local = os.path.join(tmp, os.path.basename(path))
    files.copy_file(path, local)
    other = Cache(local)
    try:
      cache.add_from(other)
    finally:
      other.close()
