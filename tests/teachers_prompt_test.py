"""The listwise prompt, passage budgets and sliding windows."""

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from interdistill_jax.teachers import prompt, teacher, testing
from interdistill_jax.teachers.base import Answer, Backend, Correction, Passage, Request
from interdistill_jax.teachers.cache import Cache
from interdistill_jax.teachers.runner import Runner
from interdistill_jax.teachers.simulated import SimulatedBackend


class WindowBackend(Backend):
  """Answers a window with `rank_window(candidate ids)` = (an order of the window, how many of it
  the answer names); the parser repairs the rest."""

  name = "window"

  def __init__(self, rank_window):
    super().__init__("m")
    self.rank_window = rank_window

  async def answer(self, request: Request) -> Answer:
    order, prefix = self.rank_window([int(p.docid) for p in request.passages])
    return Answer(text=" > ".join(f"[{j + 1}]" for j in order[:prefix]))


def _listwise_rank(n, window, stride, rank_window) -> teacher.QueryRanking:
  """`ListwiseTeacher.rank` of candidates 0..n-1 (docids "0".."n-1") through a `WindowBackend`."""

  async def go():
    cache = Cache(":memory:")
    t = teacher.ListwiseTeacher(Runner(WindowBackend(rank_window), cache, concurrency=1),
                                window=window, stride=stride, counter=prompt.ApproxTokenCounter(),
                                max_passage_tokens=0)
    result = await t.rank("q", [Passage(str(i), f"text of {i}") for i in range(n)])
    cache.close()
    return result

  return asyncio.run(go())


def test_window_spans_run_back_to_front_and_always_reach_the_front():
  assert prompt.window_spans(100, 20, 10) == [(80, 100), (70, 90), (60, 80), (50, 70), (40, 60),
                                              (30, 50), (20, 40), (10, 30), (0, 20)]
  # RankGPT's own loop would stop after (5, 25) and never re-rank the first five candidates.
  assert prompt.window_spans(25, 20, 10) == [(5, 25), (0, 15)]
  assert prompt.window_spans(7, 20, 10) == [(0, 7)]
  assert prompt.window_spans(0, 20, 10) == []
  with pytest.raises(ValueError):
    prompt.window_spans(50, 20, 0)
  with pytest.raises(ValueError):
    prompt.window_spans(50, 10, 20)


@settings(max_examples=200, deadline=None)
@given(scores=st.permutations(list(range(100))))
def test_sliding_windows_return_the_true_top10_in_order(scores):
  calls = []

  def consistent(ids):
    calls.append(len(ids))
    return sorted(range(len(ids)), key=lambda j: -scores[ids[j]]), len(ids)

  result = _listwise_rank(100, 20, 10, consistent)
  true_top10 = sorted(range(100), key=lambda i: -scores[i])[:10]
  assert result.order[:10] == true_top10
  assert sorted(result.order) == list(range(100))
  assert result.ranked_prefix == 100
  assert calls == [20] * 9


@settings(max_examples=25, deadline=None)
@given(grades=st.permutations(list(range(100))), seed=st.integers(0, 3))
def test_listwise_teacher_with_a_consistent_backend_finds_the_true_top10(grades, seed):
  """The same property with the simulated backend."""
  docids = [f"d{i}" for i in range(100)]
  relevance = {"q": {d: g for d, g in zip(docids, grades)}}

  async def go():
    cache = Cache(":memory:")
    backend = SimulatedBackend(relevance, seed=seed)
    t = teacher.ListwiseTeacher(Runner(backend, cache, concurrency=1), window=20, stride=10,
                                counter=prompt.ApproxTokenCounter(), max_passage_tokens=50)
    result = await t.rank("q", [Passage(d, f"text of {d}") for d in docids])
    cache.close()
    return result

  result = asyncio.run(go())
  true_top10 = sorted(range(100), key=lambda i: -grades[i])[:10]
  assert result.order[:10] == true_top10
  assert result.ranked_prefix == 100 and not result.repaired
  assert result.windows == {"parsed": 9}


def test_a_repaired_window_stops_the_ranked_prefix_where_the_repair_starts():
  def rank_window(ids):
    if ids[0] == 0:  # The front window: only its first 3 positions come from the teacher.
      return list(range(len(ids))), 3
    return list(range(len(ids))), len(ids)

  result = _listwise_rank(30, 20, 10, rank_window)
  assert result.order == list(range(30))
  assert result.ranked_prefix == 3
  assert result.repaired and result.windows == {"parsed": 1, "repaired": 1}


def test_messages_follow_rankgpt_and_round_trip_through_the_fake_server():
  passages = [Passage("a", "first  passage\ntext"), Passage("b", "second one")]
  messages = prompt.build_messages("what is it", passages)
  assert [m["role"] for m in messages] == ["system", "user"]
  assert "\n[1] first passage text\n[2] second one\n" in messages[1]["content"]
  assert "Search Query: what is it." in messages[1]["content"]
  assert "[] > []" in messages[1]["content"]
  query, texts = testing.parse_listwise_prompt([m["content"] for m in messages if m["role"] == "user"])
  assert query == "what is it"
  assert texts == ["first passage text", "second one"]
  again = prompt.build_messages("what is it", passages, [Correction("[1] > [1]", "[2] missing")])
  assert again[:len(messages)] == messages
  assert again[-2] == {"role": "assistant", "content": "[1] > [1]"}
  assert "[2] missing" in again[-1]["content"]
  assert testing.parse_listwise_prompt([m["content"] for m in again if m["role"] == "user"]) == (
      query, texts)


def test_passages_are_cut_to_the_token_budget():
  counter = prompt.ApproxTokenCounter()
  text = "Information retrieval evaluates rankings, with nDCG and recall. " * 20
  cut = prompt.truncate_passages([text, "short"], counter, 30)
  assert counter.count(cut[0]) == 30
  assert text.startswith(cut[0])
  assert cut[1] == "short"
  assert prompt.truncate_passages([text], counter, 0)[0] == " ".join(text.split())


def test_a_tokenizer_file_gives_exact_budgets(tmp_path):
  tokenizers = pytest.importorskip("tokenizers")
  from tokenizers import models, pre_tokenizers
  tok = tokenizers.Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1, "b": 2}, unk_token="[UNK]"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.save(str(tmp_path / "tokenizer.json"))
  counter = prompt.make_token_counter(str(tmp_path / "tokenizer.json"))
  assert counter.count("a b a b c") == 5
  assert counter.truncate("a b a b c", 3) == "a b a"
