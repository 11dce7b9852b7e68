"""Calls a backend the way paid APIs need: cached, concurrent, rate-limited, retried with care.

- At most `concurrency` calls in flight; at most `rpm` calls started per minute.
- Rate limits (429), server errors (5xx), timeouts and lost connections are retried up to
  `max_retries` times with exponential backoff and jitter; a Retry-After from the server replaces
  the backoff, and after a 429 it pauses every call, not only the one that was refused.
- Every answer is committed to the cache before it is returned; identical requests in flight at
  the same time share one call.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import random
import time
from typing import Any

from absl import logging

from interdistill_jax.teachers.base import Answer, Backend, PermanentError, Request, TransientError
from interdistill_jax.teachers.cache import Cache, cache_key


class CallFailed(RuntimeError):
  """A call that could not be answered: retries exhausted, or a permanent error. What reaches
  the entry point (a fatal error, or calls still failing after every retry) is the user's to fix
  (a key, a quota, a server) and is printed as one line."""

  def __init__(self, message: str, *, cause: str, fatal: bool = False):
    super().__init__(message)
    self.cause, self.fatal = cause, fatal


@dataclasses.dataclass
class CallStats:
  """Counters for one run (JSON-ready through `to_json`)."""
  sent: int = 0              # HTTP requests / model invocations, retries included.
  answered: int = 0          # Answers received and cached (the ones paid for).
  cache_hits: int = 0
  shared_in_flight: int = 0  # Requests that waited for an identical call already in flight.
  failed: int = 0            # Calls given up on.
  retries: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  failures: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  prompt_tokens: int = 0
  completion_tokens: int = 0
  wait_seconds: float = 0.0  # Time spent in backoff or rate-limit pauses.

  def to_json(self) -> dict[str, Any]:
    out = dataclasses.asdict(self)
    out["retries"] = {c: self.retries.get(c, 0) for c in TransientError.CAUSES}
    out["failures"] = dict(self.failures)
    out["wait_seconds"] = round(self.wait_seconds, 3)
    return out


class RateLimiter:
  """Spaces call starts `60 / rpm` seconds apart (rpm <= 0: no spacing) and honours pauses."""

  def __init__(self, rpm: float):
    self.interval = 60.0 / rpm if rpm > 0 else 0.0
    self._next = 0.0
    self._paused_until = 0.0
    self._lock = asyncio.Lock()

  def pause_until(self, t: float) -> None:
    """No call starts before monotonic time `t`."""
    self._paused_until = max(self._paused_until, t)

  async def acquire(self) -> float:
    """Waits for this call's slot; returns the seconds waited."""
    async with self._lock:
      now = time.monotonic()
      start = max(now, self._next, self._paused_until)
      self._next = start + self.interval
    waited = 0.0
    while (delay := max(start, self._paused_until) - time.monotonic()) > 0:
      await asyncio.sleep(delay)
      waited += delay
      start = max(start, self._paused_until)
    return waited


class Runner:
  """Answers requests through `backend`, consulting and filling `cache`."""

  def __init__(self, backend: Backend, cache: Cache, *, concurrency: int = 8, rpm: float = 0,
               max_retries: int = 6, backoff_base: float = 1.0, backoff_max: float = 60.0,
               max_retry_after: float = 600.0, timeout: float = 60.0, seed: int = 0):
    if concurrency < 1:
      raise ValueError(f"teacher.concurrency must be >= 1, got {concurrency}")
    self.backend, self.cache = backend, cache
    self.identity = backend.identity()
    self.max_retries = max_retries
    self.backoff_base, self.backoff_max = backoff_base, backoff_max
    self.max_retry_after = max_retry_after
    self.timeout = timeout
    self.stats = CallStats()
    self._sem = asyncio.Semaphore(concurrency)
    self._limiter = RateLimiter(rpm)
    self._rng = random.Random(seed)  # Jitter only: it changes timing, never answers.
    self._in_flight: dict[str, asyncio.Future] = {}

  @classmethod
  def from_section(cls, backend: Backend, cache: Cache, section, *, seed: int) -> "Runner":
    """A runner with the pacing and retry settings of a client section (`teacher` or `reader`:
    both declare the same client fields)."""
    return cls(backend, cache, concurrency=section.concurrency, rpm=section.rpm,
               max_retries=section.max_retries, backoff_base=section.backoff_base,
               backoff_max=section.backoff_max, max_retry_after=section.max_retry_after,
               timeout=section.timeout, seed=seed)

  def backoff(self, attempt: int, retry_after: float | None) -> float:
    """Seconds to wait before retry number `attempt + 1`."""
    if retry_after is not None and retry_after >= 0:
      return min(retry_after, self.max_retry_after) * self._rng.uniform(1.0, 1.1)
    return min(self.backoff_max, self.backoff_base * 2 ** attempt) * self._rng.uniform(0.5, 1.0)

  async def answer(self, request: Request) -> tuple[Answer, bool]:
    """The answer to `request` and whether it came from the cache. Raises `CallFailed`."""
    key = cache_key(self.identity, request)
    cached = self.cache.get(key)
    if cached is not None:
      self.stats.cache_hits += 1
      return cached, True
    if key in self._in_flight:
      self.stats.shared_in_flight += 1
      return await asyncio.shield(self._in_flight[key]), True
    future = asyncio.get_running_loop().create_future()
    self._in_flight[key] = future
    try:
      answer = await self._call(request, key)
      future.set_result(answer)
      return answer, False
    except BaseException as e:
      future.set_exception(e)
      future.exception()  # Marks it retrieved when nobody else waits on it.
      raise
    finally:
      del self._in_flight[key]

  async def _call(self, request: Request, key: str) -> Answer:
    async with self._sem:
      for attempt in range(self.max_retries + 1):
        self.stats.wait_seconds += await self._limiter.acquire()
        self.stats.sent += 1
        try:
          if self.backend.remote:
            # A backstop for SDKs whose own timeout does not cover every stage of a call.
            answer = await asyncio.wait_for(self.backend.answer(request), self.timeout * 1.5 + 5)
          else:
            answer = await self.backend.answer(request)
        except TimeoutError as e:
          error: TransientError = TransientError("timeout", f"no answer in {self.timeout:.0f}s: {e}")
        except TransientError as e:
          error = e
        except PermanentError as e:
          self.stats.failed += 1
          self.stats.failures["permanent"] += 1
          raise CallFailed(str(e), cause="permanent", fatal=e.fatal) from e
        else:
          self.cache.put(key, answer, backend=self.backend.name, model=self.backend.model)
          self.stats.answered += 1
          self.stats.prompt_tokens += answer.prompt_tokens
          self.stats.completion_tokens += answer.completion_tokens
          return answer
        if attempt == self.max_retries:
          self.stats.failed += 1
          self.stats.failures[error.cause] += 1
          raise CallFailed(f"gave up after {attempt + 1} attempts: {error}", cause=error.cause)
        self.stats.retries[error.cause] += 1
        delay = self.backoff(attempt, error.retry_after)
        if error.cause == "rate_limit":
          self._limiter.pause_until(time.monotonic() + delay)
        logging.warning("%s call failed (%s: %s); retry %d/%d in %.1fs", self.backend.name,
                        error.cause, error, attempt + 1, self.max_retries, delay)
        self.stats.wait_seconds += delay
        await asyncio.sleep(delay)
    raise AssertionError("unreachable")
