"""The in-process llama.cpp backend on the packaged SmolLM2-135M-Instruct (skips without them)."""

import asyncio

import pytest

llama_cpp = pytest.importorskip("llama_cpp")
pytestmark = pytest.mark.slow  # llama.cpp

from interdistill_jax import defaults  # noqa: E402
from interdistill_jax import teachers  # noqa: E402
from interdistill_jax.teachers import llamacpp_backend  # noqa: E402
from interdistill_jax.teachers.cache import Cache  # noqa: E402

PASSAGES = [
    teachers.Passage("stocks", "The stock market closed higher on Tuesday after strong earnings reports."),
    teachers.Passage("sky", "The sky appears blue because air molecules scatter blue sunlight more "
                             "than red light, an effect called Rayleigh scattering."),
    teachers.Passage("banana", "Bananas are rich in potassium and grow in tropical climates."),
]
QUERY = "why is the sky blue"


@pytest.fixture(scope="module")
def model_path():
  try:
    return llamacpp_backend.packaged_model_path()
  except FileNotFoundError as e:
    pytest.skip(str(e))


def _config(mode, **overrides):
  cfg = defaults.teacher_config()
  cfg.update(dict(backend="llamacpp", mode=mode, max_passage_tokens=64, n_threads=2), **overrides)
  return cfg


def _rank_twice(cfg, cache_path):
  async def go():
    cache = Cache(cache_path)
    teacher = teachers.make_teacher(cfg, cache=cache)
    try:
      first = await teacher.rank(QUERY, PASSAGES)
      second = await teacher.rank(QUERY, PASSAGES)
    finally:
      await teacher.aclose()
      cache.close()
    return teacher, first, second

  return asyncio.run(go())


def test_query_likelihood_ranks_the_answering_passage_first(model_path, tmp_path):
  teacher, first, second = _rank_twice(_config("query_likelihood"), tmp_path / "c.sqlite")
  assert first.order[0] == 1
  assert sorted(first.order) == [0, 1, 2] and first.ranked_prefix == 3 and not first.repaired
  assert second.order == first.order
  stats = teacher.runner.stats
  assert stats.answered == 3 and stats.cache_hits == 3
  prov = teacher.provenance()
  assert prov["backend"] == "llamacpp" and prov["llamacpp_mode"] == "query_likelihood"
  assert prov["prompt_version"].startswith("upr-query-likelihood")
  assert "SmolLM2-135M-Instruct" in prov["model"]


def test_listwise_generation_always_yields_a_permutation(model_path, tmp_path):
  # SmolLM2-135M rarely writes a valid permutation; whatever it writes must parse into one.
  cfg = _config("listwise", max_output_tokens=10, max_passage_tokens=12, n_ctx=512)
  teacher, first, second = _rank_twice(cfg, tmp_path / "c.sqlite")
  assert sorted(first.order) == [0, 1, 2]
  assert sum(first.windows.values()) == 1
  assert second.order == first.order and teacher.runner.stats.answered == 1


def test_passage_budget_uses_the_model_tokenizer(model_path):
  backend = llamacpp_backend.LlamaCppBackend(model_path, mode="query_likelihood", n_threads=1)
  counter = backend.token_counter()
  text = PASSAGES[1].text
  assert counter.count(text) > 10
  cut = counter.truncate(text, 10)
  assert text.startswith(cut) and counter.count(cut) <= 10
  asyncio.run(backend.aclose())
