"""The runner: cache before use, retries by cause with backoff and Retry-After, limits."""

import asyncio
import collections
import time

import pytest

from interdistill_jax.teachers.base import (Answer, Backend, Passage, PermanentError, Request,
                                            TransientError, parse_retry_after)
from interdistill_jax.teachers.cache import Cache, cache_key
from interdistill_jax.teachers.runner import CallFailed, RateLimiter, Runner


class ScriptedBackend(Backend):
  """Raises the scripted errors in turn, then answers; records when calls start and overlap."""

  name = "scripted"

  def __init__(self, errors=(), latency=0.0, cache_path=None):
    super().__init__("m")
    self.errors = collections.deque(errors)
    self.latency = latency
    self.starts: list[float] = []
    self.in_flight = self.max_in_flight = 0

  async def answer(self, request: Request) -> Answer:
    self.starts.append(time.monotonic())
    self.in_flight += 1
    self.max_in_flight = max(self.max_in_flight, self.in_flight)
    try:
      await asyncio.sleep(self.latency)
      if self.errors:
        raise self.errors.popleft()
      return Answer(text=f"[1] for {request.query}", prompt_tokens=10, completion_tokens=2)
    finally:
      self.in_flight -= 1


def _request(q="q"):
  return Request(q, (Passage("d1", "text"),))


def _run(coro):
  return asyncio.run(coro)


def test_an_answer_is_committed_to_the_cache_before_it_is_returned(tmp_path):
  path = tmp_path / "cache.sqlite"
  backend = ScriptedBackend()
  seen_by_other_connection = []

  async def go():
    cache = Cache(path)
    runner = Runner(backend, cache)
    answer, cached = await runner.answer(_request())
    # A separate connection (another process after a kill) already sees it.
    other = Cache(path)
    seen_by_other_connection.append(other.get(cache_key(backend.identity(), _request())))
    other.close()
    again, cached_again = await runner.answer(_request())
    cache.close()
    return answer, cached, again, cached_again, runner.stats

  answer, cached, again, cached_again, stats = _run(go())
  assert not cached and cached_again
  assert seen_by_other_connection == [answer] and again == answer
  assert (stats.sent, stats.answered, stats.cache_hits) == (1, 1, 1)


def test_retries_count_each_cause_and_honour_retry_after(tmp_path):
  backend = ScriptedBackend(errors=[
      TransientError("rate_limit", "429", retry_after=0.5),
      TransientError("server_error", "500"),
      TransientError("timeout", "slow"),
      TransientError("connection", "reset"),
  ])

  async def go():
    runner = Runner(backend, Cache(tmp_path / "c.sqlite"), backoff_base=0.01, max_retries=5)
    await runner.answer(_request())
    return runner.stats

  stats = _run(go())
  assert stats.to_json()["retries"] == {"rate_limit": 1, "server_error": 1, "timeout": 1, "connection": 1}
  assert (stats.sent, stats.answered) == (5, 1)
  assert backend.starts[1] - backend.starts[0] >= 0.5  # Retry-After honoured.
  assert backend.starts[2] - backend.starts[1] < 0.3   # Backoff, not Retry-After.


def test_backoff_grows_exponentially_with_jitter_and_is_capped():
  runner = Runner(ScriptedBackend(), Cache(":memory:"), backoff_base=1.0, backoff_max=8.0, seed=3)
  delays = [[runner.backoff(a, None) for _ in range(50)] for a in range(6)]
  for attempt, ds in enumerate(delays):
    cap = min(8.0, 2.0 ** attempt)
    assert all(cap / 2 <= d <= cap for d in ds)
    assert len(set(ds)) > 1  # jitter
  assert 30.0 <= runner.backoff(0, 30.0) <= 33.0
  assert runner.backoff(0, 10_000.0) <= runner.max_retry_after * 1.1


def test_gives_up_after_max_retries_and_never_caches_a_failure(tmp_path):
  backend = ScriptedBackend(errors=[TransientError("server_error", "500")] * 3)

  async def go():
    cache = Cache(tmp_path / "c.sqlite")
    runner = Runner(backend, cache, backoff_base=0.001, max_retries=2)
    with pytest.raises(CallFailed) as e:
      await runner.answer(_request())
    return runner.stats, len(cache), e.value

  stats, entries, error = _run(go())
  assert (stats.sent, stats.failed, entries) == (3, 1, 0)
  assert error.cause == "server_error" and not error.fatal


def test_permanent_errors_are_not_retried(tmp_path):
  backend = ScriptedBackend(errors=[PermanentError("401 bad key", fatal=True)])

  async def go():
    runner = Runner(backend, Cache(tmp_path / "c.sqlite"), backoff_base=0.001)
    with pytest.raises(CallFailed) as e:
      await runner.answer(_request())
    return runner.stats, e.value

  stats, error = _run(go())
  assert stats.sent == 1 and error.fatal


def test_concurrency_cap_and_identical_requests_share_one_call(tmp_path):
  backend = ScriptedBackend(latency=0.05)

  async def go():
    runner = Runner(backend, Cache(tmp_path / "c.sqlite"), concurrency=3)
    requests = [_request(f"q{i}") for i in range(12)] + [_request("q0")] * 3
    await asyncio.gather(*(runner.answer(r) for r in requests))
    return runner.stats

  stats = _run(go())
  assert backend.max_in_flight == 3
  assert stats.answered == 12 and stats.shared_in_flight == 3


def test_rpm_spaces_call_starts(tmp_path):
  backend = ScriptedBackend()

  async def go():
    runner = Runner(backend, Cache(tmp_path / "c.sqlite"), concurrency=8, rpm=600)  # one per 0.1 s
    await asyncio.gather(*(runner.answer(_request(f"q{i}")) for i in range(5)))

  _run(go())
  assert len(backend.starts) == 5
  gaps = [b - a for a, b in zip(backend.starts, backend.starts[1:])]
  assert all(g >= 0.09 for g in gaps), gaps


def test_a_pause_holds_every_caller():
  async def go():
    limiter = RateLimiter(0)
    limiter.pause_until(time.monotonic() + 0.3)
    t = time.monotonic()
    await asyncio.gather(limiter.acquire(), limiter.acquire())
    return time.monotonic() - t

  assert _run(go()) >= 0.29


def test_retry_after_forms():
  assert parse_retry_after({"retry-after": "3"}) == 3.0
  assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
  assert parse_retry_after({}) is None
  assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
  assert parse_retry_after({"retry-after": "soon"}) is None


def test_cache_key_changes_with_every_component():
  ident = {"backend": "openai", "model": "m", "prompt_version": "v1", "temperature": 0.0,
           "max_output_tokens": 0}
  base = cache_key(ident, Request("q", (Passage("d", "t"),)))
  variants = [
      cache_key(ident | {"backend": "gemini"}, Request("q", (Passage("d", "t"),))),
      cache_key(ident | {"model": "m2"}, Request("q", (Passage("d", "t"),))),
      cache_key(ident | {"prompt_version": "v2"}, Request("q", (Passage("d", "t"),))),
      cache_key(ident | {"temperature": 0.5}, Request("q", (Passage("d", "t"),))),
      cache_key(ident, Request("q2", (Passage("d", "t"),))),
      cache_key(ident, Request("q", (Passage("d", "t2"),))),
      cache_key(ident, Request("q", (Passage("d", "t"), Passage("e", "u")))),
  ]
  assert len({base, *variants}) == len(variants) + 1
  assert base == cache_key(dict(reversed(list(ident.items()))), Request("q", (Passage("d", "t"),)))


def test_cache_survives_reopening_and_keeps_a_ledger(tmp_path):
  cache = Cache(tmp_path / "c.sqlite")
  cache.put("k", Answer(text="[1]", prompt_tokens=5, completion_tokens=1), backend="b", model="m")
  cache.put("k2", Answer(scores=(-1.5,), prompt_tokens=7), backend="b", model="m")
  cache.close()
  cache = Cache(tmp_path / "c.sqlite")
  assert cache.get("k") == Answer(text="[1]", prompt_tokens=5, completion_tokens=1)
  assert cache.get("k2").scores == (-1.5,)
  assert cache.get("nope") is None
  assert cache.ledger() == [{"backend": "b", "model": "m", "answers": 2, "prompt_tokens": 12,
                             "completion_tokens": 1}]
