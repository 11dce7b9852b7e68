"""The openai and gemini backends, through the real SDKs, against local fake servers."""

import asyncio
import time

import pytest

from interdistill_jax import defaults
from interdistill_jax import teachers
from interdistill_jax.teachers import testing
from interdistill_jax.teachers.cache import Cache
from interdistill_jax.teachers.testing import Fault, FakeLLMServer

BACKENDS = ["openai", "gemini"]
PASSAGES = [teachers.Passage(f"d{i}", t) for i, t in enumerate([
    "bananas are yellow", "the sky is blue and wide", "apples are red", "blue sky at noon",
    "what color is the sky today"])]
QUERY = "what color is the sky"
EXPECTED = testing.overlap_ranking(QUERY, [p.text for p in PASSAGES])


@pytest.fixture
def server():
  with FakeLLMServer() as s:
    yield s


@pytest.fixture(autouse=True)
def keys(monkeypatch):
  monkeypatch.setenv("OPENAI_API_KEY", "sk-test-openai-key")
  monkeypatch.setenv("GEMINI_API_KEY", "test-gemini-key")
  monkeypatch.delenv("GOOGLE_API_KEY", raising=False)


def _config(backend, server, **overrides):
  cfg = defaults.teacher_config()
  cfg.backend = backend
  cfg.model = "gpt-4o-mini" if backend == "openai" else "gemini-2.0-flash"
  cfg.base_url = server.url + "/v1" if backend == "openai" else server.url
  cfg.api_version = "v1beta"
  cfg.backoff_base = 0.01
  cfg.timeout = 5.0
  cfg.update(overrides)
  return cfg


def _rank(cfg, *, on_failure="prefix", passages=PASSAGES, query=QUERY):
  async def go():
    cache = Cache(":memory:")
    teacher = teachers.make_teacher(cfg, cache=cache, on_failure=on_failure)
    try:
      result = await teacher.rank(query, passages)
    finally:
      await teacher.aclose()
      cache.close()
    return result, teacher.runner.stats

  return asyncio.run(go())


@pytest.mark.parametrize("backend", BACKENDS)
def test_ranks_through_the_sdk_and_sends_the_key_from_the_environment(backend, server):
  result, stats = _rank(_config(backend, server))
  assert result.order == EXPECTED
  assert result.ranked_prefix == len(PASSAGES) and not result.repaired
  assert result.prompt_tokens > 0 and result.completion_tokens == len(PASSAGES) * 2 - 1
  assert (stats.sent, stats.answered) == (1, 1)
  expected_key = "Bearer sk-test-openai-key" if backend == "openai" else "test-gemini-key"
  assert server.auth_headers == [expected_key]


@pytest.mark.parametrize("backend", BACKENDS)
def test_429_waits_for_retry_after(backend, server):
  server.faults.append(Fault(status=429, retry_after="1"))
  t = time.monotonic()
  result, stats = _rank(_config(backend, server))
  assert time.monotonic() - t >= 1.0
  assert result.order == EXPECTED
  assert stats.to_json()["retries"]["rate_limit"] == 1
  assert (stats.sent, stats.answered, server.requests) == (2, 1, 2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_500_and_503_are_retried(backend, server):
  server.faults.extend([Fault(status=500), Fault(status=503)])
  result, stats = _rank(_config(backend, server))
  assert result.order == EXPECTED
  assert stats.to_json()["retries"]["server_error"] == 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_slow_answer_times_out_and_is_retried(backend, server):
  server.faults.append(Fault(delay=1.5))
  t = time.monotonic()
  result, stats = _rank(_config(backend, server, timeout=0.4))
  assert time.monotonic() - t < 1.4  # Did not wait for the slow answer.
  assert result.order == EXPECTED
  assert stats.to_json()["retries"]["timeout"] == 1
  assert sum(server.answered.values()) == 1  # The abandoned request never counted as answered.


@pytest.mark.parametrize("backend", BACKENDS)
def test_malformed_permutation_is_repaired_and_flagged(backend, server):
  server.faults.append(Fault(text="Ranking: [2] > [2] > [9] > [4]"))
  result, _ = _rank(_config(backend, server))
  assert result.order == [1, 3, 0, 2, 4]
  assert result.ranked_prefix == 2 and result.repaired
  assert result.repairs == {"prose": 1, "duplicate": 1, "out_of_range": 1, "missing": 3}
  assert result.windows == {"repaired": 1}


@pytest.mark.parametrize("backend", BACKENDS)
def test_retry_policy_reasks_with_the_mistake_shown(backend, server):
  server.faults.append(Fault(text="[1] > [1]"))
  result, stats = _rank(_config(backend, server), on_failure="retry")
  assert result.order == EXPECTED and not result.repaired
  assert result.reasks == 1 and result.repairs == {"duplicate": 1, "missing": 4}
  assert stats.answered == 2 and len(server.answered) == 2  # Two different prompts.


@pytest.mark.parametrize("backend", BACKENDS)
def test_drop_policy_drops_a_malformed_query(backend, server):
  server.faults.append(Fault(text="no idea"))
  result, _ = _rank(_config(backend, server), on_failure="drop")
  assert result.dropped and result.windows == {"failed": 1}


@pytest.mark.parametrize("backend", BACKENDS)
def test_gives_up_after_max_retries(backend, server):
  server.faults.extend([Fault(status=502)] * 3)
  with pytest.raises(teachers.CallFailed) as e:
    _rank(_config(backend, server, max_retries=2))
  assert e.value.cause == "server_error" and not e.value.fatal
  assert server.requests == 3


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_bad_key_is_fatal_and_not_retried(backend, server):
  server.faults.append(Fault(status=401))
  with pytest.raises(teachers.CallFailed) as e:
    _rank(_config(backend, server))
  assert e.value.fatal and server.requests == 1


def test_sliding_windows_through_the_sdk(server):
  words = [f"w{k}" for k in range(7)]
  passages = [teachers.Passage(f"d{i}", " ".join(words[:i % 7] + ["filler"])) for i in range(30)]
  result, stats = _rank(_config("openai", server, window=10, stride=5), passages=passages,
                        query=" ".join(words))
  assert stats.answered == len(teachers.prompt.window_spans(30, 10, 5))
  # The top five (window - stride) are exact: the four passages with six query words, then the
  # first with five (ties keep candidate order).
  assert result.order[:5] == [6, 13, 20, 27, 5]


def test_missing_key_is_a_clear_error(monkeypatch):
  monkeypatch.delenv("OPENAI_API_KEY")
  cfg = defaults.teacher_config()
  cfg.backend, cfg.model = "openai", "gpt-4o-mini"
  with pytest.raises(ValueError, match="OPENAI_API_KEY"):
    teachers.make_backend(cfg)
