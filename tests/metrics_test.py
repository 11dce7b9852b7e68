"""Tests for interdistill_jax.metrics: pytrec_eval parity, DPR matching, SQuAD scoring, bootstrap."""

import json

import numpy as np
import pytest

from interdistill_jax import data as data_lib
from interdistill_jax import metrics
from tests.conftest import run_reference

K_VALUES = (1, 3, 5, 10, 100, 1000)

# Runs in the reference venv: pytrec_eval on the qrels and run of a JSON file.
_PYTREC_EVAL = """
import json, sys
import pytrec_eval
with open(sys.argv[1]) as f:
  case = json.load(f)
ks = ",".join(str(k) for k in case["k_values"])
measures = {f"ndcg_cut.{ks}", f"recall.{ks}", f"P.{ks}", f"map_cut.{ks}", "recip_rank"}
evaluator = pytrec_eval.RelevanceEvaluator(case["qrels"], measures)
print(json.dumps(evaluator.evaluate(case["run"])))
"""


def _pytrec_eval(tmp_path, qrels, run, k_values=K_VALUES) -> dict[str, dict[str, float]]:
  """pytrec_eval's per-query values under our metric names: name -> qid -> value."""
  path = tmp_path / "case.json"
  path.write_text(json.dumps({"qrels": qrels, "run": run, "k_values": list(k_values)}))
  raw = json.loads(run_reference(_PYTREC_EVAL, str(path)))
  out: dict[str, dict[str, float]] = {}
  for qid, values in raw.items():
    # recip_rank = 1/r of the first relevant doc, so its cut at k is itself when
    # r <= k: this needs no ranking of our own, which is what is under test.
    rr = values["recip_rank"]
    first_rank = round(1 / rr) if rr > 0 else None
    for k in k_values:
      out.setdefault(f"ndcg@{k}", {})[qid] = values[f"ndcg_cut_{k}"]
      out.setdefault(f"recall@{k}", {})[qid] = values[f"recall_{k}"]
      out.setdefault(f"p@{k}", {})[qid] = values[f"P_{k}"]
      out.setdefault(f"map@{k}", {})[qid] = values[f"map_cut_{k}"]
      out.setdefault(f"mrr@{k}", {})[qid] = rr if first_rank is not None and first_rank <= k else 0.0
  return out


def _random_case(seed: int, *, ties: bool, num_queries: int = 30, num_docs: int = 150):
  """Graded qrels with negative and zero judgements, and a run that may hold ties."""
  rng = np.random.default_rng(seed)
  qrels, run = {}, {}
  for i in range(num_queries):
    qid = f"q{i}"
    judged = rng.choice(num_docs, size=int(rng.integers(1, 12)), replace=False)
    # Every tenth query has no relevant document and must be left out of the average.
    choices = [-1, 0] if i % 10 == 3 else [-1, 0, 0, 1, 1, 2]
    qrels[qid] = {f"d{j}": int(rng.choice(choices)) for j in judged}
    retrieved = rng.choice(num_docs, size=int(rng.integers(3, num_docs)), replace=False)
    if ties:
      scores = rng.integers(0, 4, size=len(retrieved)).astype(float)
    else:
      scores = rng.normal(size=len(retrieved))
    run[qid] = {f"d{j}": float(s) for j, s in zip(retrieved, scores)}
  run["q_unjudged"] = {"d1": 1.0, "d2": 0.5}
  return qrels, run


def _assert_matches_reference(ours_per_query, reference, qrels):
  with_relevant = {q for q, docs in qrels.items() if any(r >= 1 for r in docs.values())}
  assert with_relevant and reference
  assert set(ours_per_query) == set(reference)
  for name, values in ours_per_query.items():
    assert set(values) == with_relevant, name
    for qid, value in values.items():
      assert value == pytest.approx(reference[name][qid], abs=1e-6), (name, qid)


def test_metrics_equal_pytrec_eval_on_random_graded_qrels(tmp_path):
  qrels, run = _random_case(0, ties=False)
  aggregate, per_query = metrics.evaluate_run(qrels, run, K_VALUES)
  reference = _pytrec_eval(tmp_path, qrels, run)
  _assert_matches_reference(per_query, reference, qrels)
  for name, values in per_query.items():
    expected = np.mean([reference[name][q] for q in values])
    assert aggregate[name] == pytest.approx(expected, abs=1e-6), name


def test_metrics_equal_pytrec_eval_when_scores_tie(tmp_path):
  qrels, run = _random_case(1, ties=True)
  # Scores that differ only beyond float32 precision tie in trec_eval, which
  # then orders the docids in reverse ("d9" before "d10" before "d1").
  qrels["q_float32"] = {"d1": 2, "d10": 0, "d9": 1}
  run["q_float32"] = {"d1": 1.0 + 1e-12, "d10": 1.0, "d9": 1.0 - 1e-12, "d2": 0.5}
  _, per_query = metrics.evaluate_run(qrels, run, K_VALUES)
  reference = _pytrec_eval(tmp_path, qrels, run)
  _assert_matches_reference(per_query, reference, qrels)
  assert per_query["mrr@10"]["q_float32"] == 1.0


def test_trec_order_breaks_ties_by_docid_descending():
  scores = {"a": 1.0, "b": 1.0, "c": 2.0, "d": 1.0 + 1e-12}
  assert data_lib.ranked(scores) == ["c", "d", "b", "a"]
  assert data_lib.ranked(scores, depth=2) == ["c", "d"]


def test_nan_score_is_rejected():
  with pytest.raises(ValueError, match="NaN"):
    data_lib.ranked({"a": float("nan")})


def test_ignore_identical_ids_drops_the_query_matching_itself():
  qrels = {"q1": {"d1": 1}}
  run = {"q1": {"q1": 10.0, "d1": 5.0, "d2": 1.0}}
  kept, _ = metrics.evaluate_run(qrels, run, k_values=(1, 10))
  assert kept["mrr@1"] == 1.0 and kept["ndcg@10"] == 1.0
  self_ranked, _ = metrics.evaluate_run(qrels, run, k_values=(1, 10), ignore_identical_ids=False)
  assert self_ranked["mrr@1"] == 0.0 and self_ranked["mrr@10"] == 0.5


def test_query_missing_from_run_scores_zero_and_unjudged_queries_are_ignored():
  qrels = {"q1": {"d1": 1}, "q2": {"d2": 2}, "q_no_relevant": {"d3": 0}}
  run = {"q1": {"d1": 1.0, "d3": 0.5}, "q_extra": {"d1": 1.0}}
  aggregate, per_query = metrics.evaluate_run(qrels, run, k_values=(10,))
  assert per_query["ndcg@10"] == {"q1": 1.0, "q2": 0.0}
  assert per_query["recall@10"]["q2"] == 0.0 and per_query["map@10"]["q2"] == 0.0
  assert aggregate["ndcg@10"] == 0.5 and aggregate["p@10"] == pytest.approx(0.05)


def test_evaluate_run_rejects_qrels_without_relevant_documents_and_bad_cutoffs():
  with pytest.raises(ValueError, match="relevant"):
    metrics.evaluate_run({"q1": {"d1": 0}}, {"q1": {"d1": 1.0}})
  with pytest.raises(ValueError, match="k values"):
    metrics.evaluate_run({"q1": {"d1": 1}}, {"q1": {"d1": 1.0}}, k_values=(0, 10))


@pytest.mark.parametrize("answers, text, expected", [
    (["Barack Obama"], "President BARACK obama said", True),
    (["obama"], "Obama's speech", True),
    (["U.S."], "the U.S. army", True),
    (["1,000"], "about 1,000 people", True),
    (["1000"], "about 1,000 people", False),
    (["Beyonce\u0301"], "Beyonc\u00e9 sang", True),  # NFD answer, NFC text
    (["\u00c9cole"], "une \u00e9cole", True),
    (["Beyonce"], "Beyonc\u00e9 sang", False),  # the accent stays part of the token
    (["art"], "a party", False),
    (["art"], "modern art museum", True),
    (["new york"], "york new", False),
    (["nothing", "museum"], "modern art museum", True),
    (["", "  "], "any text", False),
])
def test_has_answer_follows_dpr_token_matching(answers, text, expected):
  assert metrics.has_answer(answers, text) is expected


def test_answer_accuracy_on_a_toy_run():
  docs = {"d1": "Paris is the capital of France.", "d2": "Berlin is in Germany.",
          "d3": "Rome, Italy.", "d4": "Madrid"}
  answers = {"q1": ["Paris"], "q2": ["Lisbon"], "q3": [], "q4": ["Rome"], "q5": ["Madrid"],
             "q6": ["Paris"]}
  run = {
      "q1": {"d2": 3.0, "d1": 2.0, "d3": 1.0},  # answer at rank 2
      "q2": {"d1": 1.0, "d2": 0.5},  # answer nowhere
      "q3": {"d1": 1.0},  # no answer: skipped
      "q4": {"d3": 1.0, "d1": 0.5},  # answer at rank 1
      "q5": {"d4": 1.0, "d3": 1.0},  # tie: "d4" > "d3", so rank 1
      "q7": {"d1": 1.0},  # absent from answers: skipped
  }  # q6 is missing from the run and scores 0
  aggregate, per_query = metrics.answer_accuracy(run, docs, answers, ks=(1, 2, 5))
  assert per_query["top1_acc"] == {"q1": 0.0, "q2": 0.0, "q4": 1.0, "q5": 1.0, "q6": 0.0}
  assert per_query["top2_acc"]["q1"] == 1.0
  assert aggregate["top1_acc"] == pytest.approx(2 / 5)
  assert aggregate["top5_acc"] == pytest.approx(3 / 5)
  assert aggregate["num_queries"] == 5 and aggregate["num_skipped"] == 2


def test_answer_accuracy_errors():
  with pytest.raises(ValueError, match="answer"):
    metrics.answer_accuracy({"q1": {"d1": 1.0}}, {"d1": "x"}, {"q1": []})
  with pytest.raises(KeyError, match="d9"):
    metrics.answer_accuracy({"q1": {"d9": 1.0}}, {"d1": "x"}, {"q1": ["x"]})


def test_normalize_answer_drops_case_punctuation_and_articles():
  assert metrics.normalize_answer("  The  Quick, brown fox.  ") == "quick brown fox"
  assert metrics.normalize_answer("An apple a day") == "apple day"
  assert metrics.normalize_answer("the theater") == "theater"


def test_exact_match_and_f1_on_known_examples():
  assert metrics.exact_match("The Eiffel Tower!", ["eiffel tower"]) == 1.0
  assert metrics.exact_match("Eiffel", ["eiffel tower", "la tour"]) == 0.0
  assert metrics.f1_score("the cat sat on the mat", ["a cat sat on a mat"]) == 1.0
  # 2 of 2 predicted tokens are right, 2 of 4 gold tokens are found.
  assert metrics.f1_score("cat sat", ["the cat sat on the mat"]) == pytest.approx(2 / 3)
  assert metrics.f1_score("blue whale", ["whale shark", "blue whale"]) == 1.0
  assert metrics.f1_score("whale whale", ["whale"]) == pytest.approx(2 / 3)
  assert metrics.f1_score("dog", ["cat"]) == 0.0
  with pytest.raises(ValueError):
    metrics.f1_score("dog", [])


def test_bootstrap_of_identical_systems_finds_no_difference():
  a = {f"q{i}": v for i, v in enumerate(np.random.default_rng(0).random(50))}
  result = metrics.paired_bootstrap(a, dict(a))
  assert result["diff"] == 0.0 and result["p_value"] == 1.0
  assert result["ci_low"] == 0.0 and result["ci_high"] == 0.0
  assert result["num_queries"] == 50 and result["num_samples"] == 10000


def test_bootstrap_of_a_system_better_on_every_query_is_significant():
  rng = np.random.default_rng(1)
  a = {f"q{i}": v for i, v in enumerate(rng.random(40))}
  b = {q: v + 0.01 + 0.05 * rng.random() for q, v in a.items()}
  a["only_in_a"] = 1.0
  result = metrics.paired_bootstrap(a, b)
  assert result["num_queries"] == 40
  assert result["ci_low"] > 0 and result["p_value"] < 0.05
  assert result["ci_low"] <= result["diff"] <= result["ci_high"]
  assert result["diff"] == pytest.approx(result["mean_b"] - result["mean_a"])


def test_bootstrap_is_deterministic_given_the_seed():
  rng = np.random.default_rng(2)
  a = {f"q{i}": v for i, v in enumerate(rng.random(30))}
  b = {f"q{i}": v for i, v in enumerate(rng.random(30))}
  assert metrics.paired_bootstrap(a, b, seed=3) == metrics.paired_bootstrap(a, b, seed=3)
  assert metrics.paired_bootstrap(a, b, seed=3) != metrics.paired_bootstrap(a, b, seed=4)
  with pytest.raises(ValueError, match="share no query"):
    metrics.paired_bootstrap({"x": 1.0}, {"y": 1.0})
