"""The teacher audit and the reference systems' targets: what each teacher teaches, said loudly."""

import logging
import os

import numpy as np
import pytest

from interdistill_jax import defaults, distill, labeling, layout, report


def _record(qid, docids, ranking, prefix=None):
  return {"qid": qid, "docids": docids, "ranking": ranking,
          "ranked_prefix": len(ranking) if prefix is None else prefix}


def test_kendall_tau_of_orders():
  assert labeling._kendall_tau([0, 1, 2, 3]) == 1.0
  assert labeling._kendall_tau([3, 2, 1, 0]) == -1.0
  # one swapped adjacent pair out of 6 pairs: (5 - 1) / 6
  assert labeling._kendall_tau([1, 0, 2, 3]) == pytest.approx(4 / 6)


def test_audit_compares_the_teacher_with_the_initial_order_on_judged_lists():
  d = ["a", "b", "c", "d"]
  records = [_record("q1", d, ["c", "a", "b", "d"]), _record("q2", d, d)]
  qrels = {"q1": {"c": 1}, "q2": {"a": 1}}
  audit = labeling.teacher_audit(records, qrels)
  assert audit["queries"] == 2 and audit["judged_queries"] == 2
  assert audit["top1_agreement"] == 0.5 and audit["teacher_top1_initial_rank"] == 2.0
  # q1: initial puts c third (1/log2(4) = 0.5), the teacher first (1); q2: both first
  assert audit["initial_ndcg@10"] == pytest.approx(0.75) and audit["teacher_ndcg@10"] == 1.0
  assert audit["teacher_better"] and audit["teacher_gain_ndcg@10"] == pytest.approx(0.25)
  worse = labeling.teacher_audit([_record("q1", d, ["b", "a", "c", "d"])], {"q1": {"a": 1}})
  assert not worse["teacher_better"] and worse["teacher_gain_ndcg@10"] < 0
  unjudged = labeling.teacher_audit(records, None)
  assert "teacher_better" not in unjudged and unjudged["kendall_tau"] < 1


def test_a_weak_teacher_warns_or_stops_by_config(caplog):
  d = ["a", "b", "c"]
  weak = labeling.teacher_audit([_record("q1", d, ["b", "a", "c"])], {"q1": {"a": 1}})
  with caplog.at_level(logging.WARNING):
    labeling.check_teacher(weak, "warn", "stats.json")
  assert "NOT better than the initial retriever" in caplog.text
  with pytest.raises(RuntimeError, match="NOT better.*weak_teacher='stop'"):
    labeling.check_teacher(weak, "stop", "stats.json")
  labeling.check_teacher(weak, "ignore", "stats.json")
  good = labeling.teacher_audit([_record("q1", d, ["a", "b", "c"])], {"q1": {"a": 1}})
  good["teacher_better"] = True  # equal orders: not better, but a better one passes silently
  labeling.check_teacher(good, "stop", "stats.json")
  with pytest.raises(ValueError, match="weak_teacher"):
    labeling.check_teacher(weak, "loud", "stats.json")
  text = "\n".join(report.teacher_section(weak))
  assert "WARNING: the teacher is not better" in text and "Kendall's tau" in text


def test_rank_based_target_trusts_only_the_ranked_prefix():
  r = _record("q", ["a", "b", "c", "d"], ["c", "a", "b", "d"], prefix=2)
  scores = distill.rank_scores([r], list_size=4)
  assert scores == {("q", "c"): 0.0, ("q", "a"): -1.0, ("q", "b"): -2.0, ("q", "d"): -2.0}
  # Cut to its first two candidates: a is the teacher's best of them, and the only trusted one.
  assert distill.rank_scores([r], list_size=2) == {("q", "a"): 0.0, ("q", "b"): -1.0}
  # Cut to the teacher's first choice (the ranker's trust at ranker.top_k=1): the rest tie.
  assert distill.rank_scores([r], list_size=4, top_k=1) == {
      ("q", "c"): 0.0, ("q", "a"): -1.0, ("q", "b"): -1.0, ("q", "d"): -1.0}


def test_the_no_ranker_reference_takes_the_rankers_trust_by_default():
  section = defaults.distill_config()
  assert section.llm_top_k == -1 and distill.llm_top_k(section, ranker_top_k=1) == 1
  section.llm_top_k = 0  # the whole trusted prefix
  assert distill.llm_top_k(section, ranker_top_k=1) == 0
  section.llm_top_k = -2
  with pytest.raises(ValueError, match="distill.llm_top_k"):
    distill.llm_top_k(section, ranker_top_k=1)


def test_qrels_target_grades_and_drops_lists_without_a_judged_candidate():
  records = [_record("q1", ["a", "b", "c"], ["a", "b", "c"]),
             _record("q2", ["a", "b", "c"], ["a", "b", "c"])]
  scores, kept = distill.qrels_scores(records, {"q1": {"b": 2, "z": 1}, "q2": {"z": 1}}, list_size=3)
  assert [r["qid"] for r in kept] == ["q1"]
  assert scores[("q1", "b")] == 2.0 and scores[("q1", "a")] == 0.0 and scores[("q2", "a")] == 0.0
  with pytest.raises(ValueError, match="distill.teacher"):
    distill.check_teacher(type("S", (), {"teacher": "gold", "llm_loss": "kl"})())
  assert layout.retriever_dir("w", "qrels") == os.path.join("w", "retriever_supervised")
