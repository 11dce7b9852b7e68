"""The simulated teacher (from qrels, named as simulated) and the price table."""

import asyncio
import collections

import pytest

from interdistill_jax import defaults
from interdistill_jax import teachers
from interdistill_jax.teachers import parsing, pricing
from interdistill_jax.teachers.base import Passage, Request
from interdistill_jax.teachers.cache import Cache
from interdistill_jax.teachers.simulated import SimulatedBackend

DOCS = tuple(Passage(f"d{i}", f"passage {i}") for i in range(10))
RELEVANCE = {"q": {"d7": 2, "d3": 1}}


def _answer(backend, request=Request("q", DOCS)):
  return asyncio.run(backend.answer(request))


def test_noiseless_simulation_ranks_by_relevance_then_position():
  answer = _answer(SimulatedBackend(RELEVANCE))
  assert answer.text.startswith("[8] > [4] > [1] > [2]")
  assert parsing.parse_permutation(answer.text, 10).repairs == {}
  assert answer.prompt_tokens > 0


def test_answers_are_deterministic_per_request_and_seed():
  a = SimulatedBackend(RELEVANCE, noise=1.0, seed=1)
  assert _answer(a) == _answer(SimulatedBackend(RELEVANCE, noise=1.0, seed=1))
  others = {_answer(SimulatedBackend(RELEVANCE, noise=1.0, seed=s)).text for s in range(2, 8)}
  assert len(others) > 1


def test_position_bias_favours_the_first_passages():
  biased = SimulatedBackend({}, position_bias=1.0, noise=0.1)
  firsts = collections.Counter()
  for k in range(200):
    text = _answer(biased, Request(f"q{k}", DOCS))
    firsts[parsing.parse_permutation(text.text, 10).order[0]] += 1
  assert firsts.most_common(1)[0][0] == 0
  assert firsts[0] + firsts[1] > 120


def test_malformed_rate_produces_each_kind_of_repair():
  backend = SimulatedBackend(RELEVANCE, malformed_rate=1.0)
  repairs = collections.Counter()
  for k in range(100):
    repairs.update(parsing.parse_permutation(_answer(backend, Request(f"q{k}", DOCS)).text, 10).repairs)
  assert {"prose", "duplicate", "missing", "out_of_range", "unparsable"} <= set(repairs)
  clean = SimulatedBackend(RELEVANCE, malformed_rate=0.0)
  assert all(not parsing.parse_permutation(_answer(clean, Request(f"q{k}", DOCS)).text, 10).repairs
             for k in range(50))


def test_provenance_and_identity_say_simulated():
  cfg = defaults.teacher_config()
  cfg.sim_noise = 0.5
  teacher = teachers.make_teacher(cfg, cache=Cache(":memory:"), relevance=RELEVANCE)
  prov = teacher.provenance()
  assert prov["backend"] == "simulated" and prov["simulated"] is True
  assert "simulated" in prov["model"] and prov["noise"] == 0.5
  assert teacher.backend.identity()["noise"] == 0.5


def test_simulated_needs_qrels_and_unknown_backends_fail():
  cfg = defaults.teacher_config()
  with pytest.raises(ValueError, match="qrels"):
    teachers.make_backend(cfg)
  cfg.backend = "nope"
  with pytest.raises(ValueError, match="teacher.backend"):
    teachers.make_backend(cfg)
  cfg.backend, cfg.mode = "openai", "query_likelihood"
  with pytest.raises(ValueError, match="llamacpp"):
    teachers.make_backend(cfg)


def test_price_table_matches_snapshots_and_can_be_overridden():
  assert pricing.price_for("openai", "gpt-4o-mini")["input_per_mtok"] == 0.15
  assert pricing.price_for("openai", "gpt-4o-mini-2024-07-18")["output_per_mtok"] == 0.60
  assert pricing.price_for("openai", "gpt-4o-2024-08-06")["input_per_mtok"] == 2.50
  assert pricing.price_for("gemini", "models/gemini-2.0-flash")["input_per_mtok"] == 0.10
  assert pricing.price_for("simulated", "x")["input_per_mtok"] == 0.0
  unknown = pricing.price_for("openai", "my-vllm-model")
  assert unknown["input_per_mtok"] is None and pricing.cost(unknown, 10, 10) is None
  mine = pricing.price_for("openai", "my-vllm-model", input_override=1.0, output_override=3.0)
  assert pricing.cost(mine, 1_000_000, 500_000) == 2.5
