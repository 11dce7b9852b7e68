"""Retrieval and QA metrics, and a paired bootstrap comparison (no JAX).

Retrieval metrics follow BEIR, which reports pytrec_eval (trec_eval) numbers, so
every convention here is trec_eval's: a document is relevant when its qrels
level is >= 1, a run is ranked by score descending with ties broken by docid
descending, and scores are compared at float32 precision because trec_eval
stores them as C floats. Answer matching follows DPR (`has_answer`) and reader
scoring follows the SQuAD v1.1 evaluation script.
"""

from __future__ import annotations

import collections
import math
import re
import string
import unicodedata
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import regex

from interdistill_jax import data as data_lib


DEFAULT_K_VALUES = (1, 3, 5, 10, 100, 1000)
# The metrics users quote: the report's and model cards' columns, and what `evaluate` compares
# with the baseline (each present one; QA sets have the accuracies, BEIR sets the rest).
HEADLINE = ("ndcg@10", "recall@100", "mrr@10", "map@10", "top1_acc", "top5_acc", "top20_acc",
            "top100_acc")
_IR_METRICS = ("ndcg", "recall", "mrr", "map", "p")


def _check_k_values(k_values: Iterable[int]) -> tuple[int, ...]:
  ks = tuple(int(k) for k in k_values)
  if not ks or any(k < 1 for k in ks) or len(set(ks)) != len(ks):
    raise ValueError(f"k values must be distinct positive integers, got {ks}")
  return tuple(sorted(ks))


def _query_metrics(ranked_rels: np.ndarray, ideal_gains: np.ndarray, num_rel: int,
                   ks: Sequence[int]) -> dict[str, float]:
  """All retrieval metrics of one query at every cutoff.

  Args:
    ranked_rels: [n] int, qrels level of the run's documents in rank order
      (0 for unjudged), n <= max(ks).
    ideal_gains: [m] float, positive qrels levels sorted descending.
    num_rel: number of relevant (level >= 1) documents in the qrels, >= 1.
    ks: ascending cutoffs.

  Returns:
    "{metric}@{k}" -> value for metric in ndcg, recall, mrr, map, p.
  """
  depth = ks[-1]
  # Pad to the deepest cutoff so a run shorter than k reads its last value.
  rels = np.zeros(depth, dtype=np.float64)
  rels[:len(ranked_rels)] = ranked_rels
  ideal = np.zeros(depth, dtype=np.float64)
  ideal[:min(len(ideal_gains), depth)] = ideal_gains[:depth]
  ranks = np.arange(1, depth + 1, dtype=np.float64)
  discount = 1.0 / np.log2(ranks + 1.0)

  relevant = rels >= 1
  hits = np.cumsum(relevant)
  dcg = np.cumsum(np.where(rels > 0, rels, 0.0) * discount)
  idcg = np.cumsum(ideal * discount)
  # map_cut divides by all relevant documents, not by those reachable in k.
  ap = np.cumsum(np.where(relevant, hits / ranks, 0.0)) / num_rel
  first = int(np.argmax(relevant)) + 1 if relevant.any() else math.inf

  out = {}
  for k in ks:
    i = k - 1
    out[f"ndcg@{k}"] = float(dcg[i] / idcg[i])
    out[f"recall@{k}"] = float(hits[i] / num_rel)
    out[f"mrr@{k}"] = 1.0 / first if first <= k else 0.0
    out[f"map@{k}"] = float(ap[i])
    out[f"p@{k}"] = float(hits[i] / k)
  return out


def evaluate_run(
    qrels: data_lib.Qrels,
    run: data_lib.Run,
    k_values: Iterable[int] = DEFAULT_K_VALUES,
    ignore_identical_ids: bool = True,
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
  """nDCG, recall, MRR, MAP and precision at each cutoff, as BEIR/pytrec_eval.

  Measures equal trec_eval's `ndcg_cut` (gain = qrels level, log2 discount,
  ideal from the qrels), `recall_k`, `P_k` and `map_cut_k`; `mrr@k` is
  `recip_rank` on the run cut to its top k.

  The average runs over the qrels queries that have at least one relevant
  document. A qrels query missing from the run scores 0 on every metric; this is
  stricter than pytrec_eval, which silently leaves it out of the average, so a
  run that drops queries cannot look better than it is. Run queries absent from
  the qrels are ignored.

  Args:
    qrels: qid -> docid -> integer relevance level.
    run: qid -> docid -> score, higher is better.
    k_values: cutoffs.
    ignore_identical_ids: drop run entries whose docid equals the qid, as BEIR
      does (a query that is also a corpus document would otherwise find itself).

  Returns:
    (aggregate, per_query): aggregate["ndcg@10"] is the mean over queries and
    per_query["ndcg@10"][qid] the value of one query.
  """
  ks = _check_k_values(k_values)
  per_query: dict[str, dict[str, float]] = {
      f"{m}@{k}": {} for m in _IR_METRICS for k in ks}
  for qid, judged in qrels.items():
    levels = np.fromiter(judged.values(), dtype=np.float64, count=len(judged))
    num_rel = int(np.count_nonzero(levels >= 1))
    if num_rel == 0:
      continue
    ideal = -np.sort(-levels[levels > 0])
    scores = run.get(qid, {})
    if ignore_identical_ids and qid in scores:
      scores = {d: s for d, s in scores.items() if d != qid}
    ranked_docs = data_lib.ranked(scores, depth=ks[-1])
    ranked_rels = np.fromiter((judged.get(d, 0) for d in ranked_docs), dtype=np.float64,
                              count=len(ranked_docs))
    for name, value in _query_metrics(ranked_rels, ideal, num_rel, ks).items():
      per_query[name][qid] = value
  num_queries = len(per_query[f"ndcg@{ks[0]}"])
  if num_queries == 0:
    raise ValueError("no qrels query has a relevant document (level >= 1)")
  aggregate = {name: math.fsum(values.values()) / num_queries
               for name, values in per_query.items()}
  return aggregate, per_query


# DPR's SimpleTokenizer: runs of letters/digits/marks, or any single other
# visible character.
_DPR_TOKEN = regex.compile(r"([\p{L}\p{N}\p{M}]+)|([^\p{Z}\p{C}])",
                           flags=regex.IGNORECASE | regex.UNICODE | regex.MULTILINE)


def _dpr_tokens(text: str) -> list[str]:
  text = unicodedata.normalize("NFD", text)
  return [m.group().lower() for m in _DPR_TOKEN.finditer(text)]


def _contains(tokens: Sequence[str], answer: Sequence[str]) -> bool:
  n = len(answer)
  return any(tokens[i:i + n] == answer for i in range(len(tokens) - n + 1))


def _answer_tokens(answers: Iterable[str]) -> list[list[str]]:
  # DPR would let an answer with no tokens match every passage; drop it instead.
  return [t for t in (_dpr_tokens(a) for a in answers) if t]


def has_answer(answers: Iterable[str], text: str) -> bool:
  """Whether `text` contains one of `answers`, by DPR's string-match rule.

  Both sides are NFD-normalised, split into DPR SimpleTokenizer tokens and
  lowercased; an answer matches when its tokens occur contiguously in the
  text's tokens, so "art" does not match "party" and accents are significant.
  Answers that have no token (empty or blank strings) never match.
  """
  tokens = _dpr_tokens(text)
  return any(_contains(tokens, a) for a in _answer_tokens(answers))


def answer_accuracy(
    run: data_lib.Run,
    doc_texts: Mapping[str, str],
    answers: Mapping[str, Sequence[str]],
    ks: Iterable[int] = (1, 5, 20, 100),
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
  """Top-k retrieval accuracy for open-domain QA (DPR's `top{k}_acc`).

  A query scores 1 at k when one of its top-k documents (trec_eval order, see
  `data.ranked`) contains an answer by `has_answer`. Queries with no usable
  answer are skipped and counted; a query with answers but missing from the run
  scores 0.

  Args:
    run: qid -> docid -> score.
    doc_texts: docid -> passage text (title included if it should be searched).
    answers: qid -> gold answer strings.
    ks: cutoffs.

  Returns:
    (aggregate, per_query): aggregate holds "top{k}_acc" (mean over evaluated
    queries) plus the counts "num_queries" (evaluated) and "num_skipped" (no
    answer); per_query["top{k}_acc"][qid] is 0.0 or 1.0.
  """
  ks = _check_k_values(ks)
  per_query: dict[str, dict[str, float]] = {f"top{k}_acc": {} for k in ks}
  token_cache: dict[str, list[str]] = {}
  skipped = 0
  for qid in dict.fromkeys([*answers, *run]):
    gold = _answer_tokens(answers.get(qid, ()))
    if not gold:
      skipped += 1
      continue
    first_hit = math.inf
    for rank, docid in enumerate(data_lib.ranked(run.get(qid, {}), depth=ks[-1]), start=1):
      if docid not in token_cache:
        if docid not in doc_texts:
          raise KeyError(f"document {docid!r} ranked for query {qid!r} has no text")
        token_cache[docid] = _dpr_tokens(doc_texts[docid])
      if any(_contains(token_cache[docid], a) for a in gold):
        first_hit = rank
        break
    for k in ks:
      per_query[f"top{k}_acc"][qid] = 1.0 if first_hit <= k else 0.0
  num_queries = len(per_query[f"top{ks[0]}_acc"])
  if num_queries == 0:
    raise ValueError(f"none of the {skipped} queries has an answer")
  aggregate: dict[str, float] = {
      name: sum(values.values()) / num_queries for name, values in per_query.items()}
  aggregate["num_queries"] = num_queries
  aggregate["num_skipped"] = skipped
  return aggregate, per_query


_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(s: str) -> str:
  """SQuAD v1.1 normalisation: lowercase, drop punctuation and articles, squeeze spaces."""
  s = s.lower()
  s = "".join(ch for ch in s if ch not in _PUNCTUATION)
  s = re.sub(r"\b(a|an|the)\b", " ", s)
  return " ".join(s.split())



def _check_gold(answers: Sequence[str]) -> None:
  if isinstance(answers, str):
    raise TypeError("answers must be a list of strings, not a string")
  if not answers:
    raise ValueError("no gold answers to score against")


def exact_match(prediction: str, answers: Sequence[str]) -> float:
  """1.0 when the normalised prediction equals a normalised gold answer, else 0.0."""
  _check_gold(answers)
  pred = normalize_answer(prediction)
  return float(any(pred == normalize_answer(a) for a in answers))


def _token_f1(prediction: str, answer: str) -> float:
  pred = normalize_answer(prediction).split()
  gold = normalize_answer(answer).split()
  same = sum((collections.Counter(pred) & collections.Counter(gold)).values())
  if same == 0:
    return 0.0
  precision, recall = same / len(pred), same / len(gold)
  return 2 * precision * recall / (precision + recall)


def f1_score(prediction: str, answers: Sequence[str]) -> float:
  """SQuAD v1.1 token-level F1 against the best-matching gold answer."""
  _check_gold(answers)
  return max(_token_f1(prediction, a) for a in answers)


def paired_bootstrap(
    a: Mapping[str, float],
    b: Mapping[str, float],
    num_samples: int = 10000,
    seed: int = 0,
) -> dict[str, float]:
  """Paired bootstrap test of system b against system a over shared queries.

  Queries are resampled with replacement `num_samples` times; each resample
  gives a mean per-query difference b - a.

  Args:
    a, b: qid -> per-query metric of each system; only common qids are used.
    num_samples: bootstrap resamples.
    seed: seeds the numpy Generator, so a comparison is reproducible.

  Returns:
    {"mean_a", "mean_b", "diff" (mean b - mean a), "ci_low", "ci_high" (95%
    percentile interval of the resampled difference), "p_value" (two-sided,
    2 * min(P(diff* <= 0), P(diff* >= 0)), at most 1), "num_queries",
    "num_samples"}.
  """
  qids = sorted(a.keys() & b.keys())
  if not qids:
    raise ValueError("the two systems share no query")
  if num_samples < 1:
    raise ValueError(f"num_samples must be positive, got {num_samples}")
  xa = np.array([a[q] for q in qids], dtype=np.float64)
  xb = np.array([b[q] for q in qids], dtype=np.float64)
  diff = xb - xa
  n = len(qids)
  rng = np.random.default_rng(seed)
  # Resample in blocks so thousands of queries do not need a [num_samples, n] array.
  block = max(1, (1 << 22) // n)
  means = np.concatenate([
      diff[rng.integers(0, n, size=(min(block, num_samples - start), n))].mean(axis=1)
      for start in range(0, num_samples, block)])
  ci_low, ci_high = np.percentile(means, [2.5, 97.5])
  p_value = min(1.0, 2.0 * min(np.mean(means <= 0), np.mean(means >= 0)))
  return {
      "mean_a": float(xa.mean()),
      "mean_b": float(xb.mean()),
      "diff": float(diff.mean()),
      "ci_low": float(ci_low),
      "ci_high": float(ci_high),
      "p_value": float(p_value),
      "num_queries": n,
      "num_samples": int(num_samples),
  }
