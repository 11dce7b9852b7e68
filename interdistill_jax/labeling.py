"""Task `label`: each query's candidates re-ranked by the teacher, into `labels/labels.jsonl`.

Reads `{workdir}/candidates/{label.split}.trec` (top `label.num_candidates` per query) and the
corpus and queries of `config.data.dir`; writes under `{workdir}/labels/`:
  - `labels.jsonl`: one line per query as DESIGN.md specifies, appended as each query finishes;
  - `llm_cache.sqlite`: every answered call, committed before it is used;
  - `stats.json`: calls, cache hits, retries by cause, windows parsed / repaired / failed, repairs
    by kind, tokens and estimated cost. Written last, and only when every query was labelled or
    dropped, so it marks the stage complete; otherwise the same report goes to `stats.partial.json`.
A killed run resumes: queries already in labels.jsonl are skipped, and the calls of unfinished
queries come back from the cache, so nothing answered is paid for twice and the labels equal an
uninterrupted run's. Queries whose calls fail after every retry are left out and reported; run
again to retry them.

  OPENAI_API_KEY=... python -m interdistill_jax.main --config=configs/scifact.py --config.task=label \
      --config.teacher.backend=openai --config.teacher.model=gpt-4o-mini --workdir=runs/scifact
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime
import time
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np
from absl import logging
from tqdm import tqdm

from interdistill_jax import assets, checks, data, files, layout, metrics, peers, provenance
from interdistill_jax import teachers
from interdistill_jax.teachers import pricing
from interdistill_jax.teachers.cache import Cache, open_cache

# Provenance fields that must match for a resumed run to extend existing labels.
_RESUME_FIELDS = ("backend", "model", "prompt_version", "mode")


def select_queries(qids: Sequence[str], *, max_queries: int, sample_seed: int = -1) -> list[str]:
  """The queries `label` labels, in `qids`' order: all of them (`max_queries` 0), or
  `max_queries` of them: the first ones (`sample_seed` < 0), or the first ones of a permutation
  seeded by `sample_seed`. Either way a smaller selection is a subset of a larger one over the same
  `qids` (nested learning curves)."""
  if max_queries <= 0:
    return list(qids)
  if sample_seed < 0:
    return list(qids)[:max_queries]
  chosen = np.random.default_rng(sample_seed).permutation(len(qids))[:max_queries]
  return [qids[i] for i in sorted(chosen)]


def load_candidates(path: str, num_candidates: int, max_queries: int = 0,
                    sample_seed: int = -1) -> dict[str, list[str]]:
  """qid -> its top `num_candidates` docids, best first, in the run file's query order, for the
  queries `select_queries` picks."""
  if not files.exists(path):
    raise FileNotFoundError(f"{path} not found: run the `retrieve` task first")
  run = data.read_trec_run(path)
  if not run:
    raise data.DataError(path, None, "no candidates")
  qids = select_queries(list(run), max_queries=max_queries, sample_seed=sample_seed)
  return {qid: data.ranked(run[qid])[:num_candidates] for qid in qids}


def recover_labels(path: str) -> None:
  """Drops a last line cut short by a kill (no trailing newline); earlier lines are left alone."""
  if not files.exists(path):
    return
  blob = files.read_bytes(path)
  if not blob or blob.endswith(b"\n"):
    return
  keep = blob[:blob.rfind(b"\n") + 1]
  logging.warning("%s: dropping an unfinished last line (%d bytes) left by an interrupted run",
                  path, len(blob) - len(keep))
  data.atomic_write_text(path, keep.decode("utf-8"))


def _check_resumable(path: str, existing: list[dict], candidates: Mapping[str, list[str]],
                     provenance: Mapping[str, Any]) -> None:
  for record in existing:
    qid = record["qid"]
    if qid in candidates and list(record["docids"]) != candidates[qid]:
      raise data.DataError(path, None, f"query {qid!r} was labelled over other candidates than "
                           "candidates/ now holds; move labels/ away to relabel")
    old = record.get("teacher", {})
    for field in _RESUME_FIELDS:
      if old.get(field) != provenance.get(field):
        raise data.DataError(path, None, f"query {qid!r} was labelled with teacher {field}="
                             f"{old.get(field)!r}, this run uses {provenance.get(field)!r}; "
                             "move labels/ away or use another workdir")


def _relevance(dataset: data.Dataset, split: str,
               candidates: Mapping[str, list[str]]) -> dict[str, dict[str, int]]:
  """Query text -> docid -> grade, what the simulated teacher ranks by.

  From the split's qrels; for a question set without them, DPR's rule: a candidate that contains
  an answer string is relevant (grade 1).
  """
  if dataset.has_qrels(split):
    qrels = dataset.qrels(split)
  else:
    qrels = {qid: {d: 1 for d in docids
                   if metrics.has_answer(dataset.queries[qid].answers, dataset.corpus[d].full_text())}
             for qid, docids in candidates.items()}
  relevance: dict[str, dict[str, int]] = {}
  for qid in candidates:
    relevance.setdefault(dataset.queries[qid].text, {}).update(qrels.get(qid, {}))
  return relevance


def _aggregate(records: list[dict]) -> dict[str, Any]:
  """Totals over every line of labels.jsonl, whichever run wrote it."""
  windows: collections.Counter = collections.Counter()
  repairs: collections.Counter = collections.Counter()
  prompt_tokens = completion_tokens = full = 0
  for r in records:
    t = r.get("teacher", {})
    windows.update(t.get("windows", {}))
    repairs.update(t.get("repairs", {}))
    prompt_tokens += t.get("prompt_tokens", 0)
    completion_tokens += t.get("completion_tokens", 0)
    full += r["ranked_prefix"] == len(r["ranking"])
  n = len(records)
  return {
      "queries": n,
      "repaired": sum(bool(r["repaired"]) for r in records),
      "fully_ranked": full,
      "mean_ranked_prefix": round(sum(r["ranked_prefix"] for r in records) / n, 3) if n else 0.0,
      "windows": dict(sorted(windows.items())),
      "repairs": dict(sorted(repairs.items())),
      "prompt_tokens": prompt_tokens,
      "completion_tokens": completion_tokens,
  }


@dataclasses.dataclass
class _Tally:
  """What this run did, query by query."""
  labelled: int = 0
  reasks: int = 0
  windows: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  repairs: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  dropped: list[str] = dataclasses.field(default_factory=list)
  failed: dict[str, str] = dataclasses.field(default_factory=dict)
  fatal: list[BaseException] = dataclasses.field(default_factory=list)
  seconds: float = 0.0


def _record(qid: str, docids: list[str], result: teachers.QueryRanking,
            provenance: Mapping[str, Any]) -> dict[str, Any]:
  """One labels.jsonl line (DESIGN.md)."""
  return {
      "qid": qid,
      "docids": list(docids),
      "ranking": [docids[i] for i in result.order],
      "ranked_prefix": result.ranked_prefix,
      "repaired": result.repaired,
      # No wall-clock time here: two runs that agree write the same file (the call cache keeps
      # each answer's time, stats.json the run's).
      "teacher": dict(provenance) | result.summary(),
  }


async def _label_queries(teacher: teachers.Teacher, pending: list[str], dataset: data.Dataset,
                         candidates: Mapping[str, list[str]], labels_path: str, workers: int,
                         tally: _Tally) -> None:
  """Ranks `pending` queries with `workers` running at once, appending each line as it is done."""
  provenance = teacher.provenance()
  queue = collections.deque(pending)
  write_lock = asyncio.Lock()  # One writer at a time; the fsync runs off the event loop.
  bar = tqdm(total=len(pending), unit="query", desc=f"label ({teacher.backend.name})")

  async def worker():
    while queue and not tally.fatal:
      qid = queue.popleft()
      docids = candidates[qid]
      passages = [teachers.Passage(d, dataset.corpus[d].full_text()) for d in docids]
      try:
        result = await teacher.rank(dataset.queries[qid].text, passages)
      except teachers.CallFailed as e:
        if e.fatal:
          tally.fatal.append(e)
          return
        tally.failed[qid] = str(e)
        logging.error("query %s not labelled: %s", qid, e)
      else:
        tally.windows.update(result.windows)
        tally.repairs.update(result.repairs)
        tally.reasks += result.reasks
        if result.dropped:
          tally.dropped.append(qid)
          logging.info("query %s dropped (label.on_failure=drop): %s", qid, dict(result.repairs))
        else:
          async with write_lock:
            await asyncio.to_thread(data.append_jsonl, labels_path,
                                    [_record(qid, docids, result, provenance)])
          tally.labelled += 1
      bar.update(1)
      bar.set_postfix(calls=teacher.runner.stats.answered, cached=teacher.runner.stats.cache_hits,
                      refresh=False)

  start = time.monotonic()
  try:
    await asyncio.gather(*(worker() for _ in range(max(1, workers))))
  finally:
    bar.close()
    tally.seconds = time.monotonic() - start


def _kendall_tau(order: list[int]) -> float:
  """Kendall's tau between candidate order (0, 1, ...) and `order` (candidate indices, best first)."""
  n = len(order)
  if n < 2:
    return 1.0
  pos = np.empty(n, np.int64)
  pos[np.asarray(order)] = np.arange(n)
  upper = np.triu_indices(n, 1)
  concordant = np.sign(pos[upper[1]] - pos[upper[0]])  # i < j in candidate order
  return float(concordant.sum() / len(concordant))


def teacher_audit(records: list[dict], qrels=None) -> dict[str, Any] | None:
  """What the teacher teaches, against the initial retriever's order of the same candidates.

  Always: Kendall's tau between the two orders (mean over queries), how often the teacher keeps
  the initial top 1, and where in the initial order the teacher's top 1 was. With qrels for the
  labelled queries: nDCG@10 of both orders, their difference, and whether the teacher is better.
  """
  if not records:
    return None
  taus, same_top1, top1_pos = [], [], []
  for r in records:
    pos = {d: i for i, d in enumerate(r["docids"])}
    order = [pos[d] for d in r["ranking"]]
    taus.append(_kendall_tau(order))
    same_top1.append(order[0] == 0)
    top1_pos.append(order[0] + 1)
  out: dict[str, Any] = {"queries": len(records), "kendall_tau": round(float(np.mean(taus)), 4),
                         "top1_agreement": round(float(np.mean(same_top1)), 4),
                         "teacher_top1_initial_rank": round(float(np.mean(top1_pos)), 3)}
  judged = [r for r in records if qrels and r["qid"] in qrels]
  if judged:
    as_run = lambda key: {r["qid"]: {d: -float(i) for i, d in enumerate(r[key])} for r in judged}  # noqa: E731
    subset = {r["qid"]: qrels[r["qid"]] for r in judged}
    out["judged_queries"] = len(judged)
    for name, key in (("initial", "docids"), ("teacher", "ranking")):
      agg, _ = metrics.evaluate_run(subset, as_run(key), k_values=(10,))
      out[f"{name}_ndcg@10"] = round(agg["ndcg@10"], 4)
    out["teacher_gain_ndcg@10"] = round(out["teacher_ndcg@10"] - out["initial_ndcg@10"], 4)
    out["teacher_better"] = out["teacher_gain_ndcg@10"] > 0
  return out


def recorded_audit(workdir: str) -> dict[str, Any] | None:
  """The teacher audit `label` recorded in labels/stats.json (None when absent)."""
  path = layout.label_stats(workdir)
  if not files.exists(path):
    return None
  return data.read_json(path).get("quality")


def _quality(dataset: data.Dataset, split: str, labels_path: str) -> dict[str, Any] | None:
  """The teacher audit of every line of labels.jsonl (`teacher_audit`)."""
  if not files.exists(labels_path):
    return None
  qrels = dataset.qrels(split) if dataset.has_qrels(split) else None
  return teacher_audit(data.read_jsonl(labels_path), qrels)


def check_teacher(quality: dict[str, Any] | None, policy: str, where: str) -> None:
  """Says loudly what the teacher teaches; `label.weak_teacher="stop"` stops on a teacher that is
  not better than the initial retriever on the judged training lists."""
  checks.require_one_of("label.weak_teacher", policy, checks.WEAK_TEACHER)
  if not quality or policy == "ignore":
    return
  agreement = (f"Kendall tau with the initial order {quality['kendall_tau']:.3f}, keeps the initial "
               f"top 1 on {100 * quality['top1_agreement']:.1f}% of {quality['queries']} queries")
  if "teacher_better" not in quality:
    logging.info("Teacher audit (no qrels for the labelled queries): %s", agreement)
    return
  verdict = (f"teacher nDCG@10 {quality['teacher_ndcg@10']:.4f} vs initial retriever "
             f"{quality['initial_ndcg@10']:.4f} on the {quality['judged_queries']} judged training "
             f"lists ({quality['teacher_gain_ndcg@10']:+.4f}); {agreement}")
  if quality["teacher_better"]:
    logging.info("Teacher audit: %s", verdict)
    return
  message = (f"The teacher is NOT better than the initial retriever: {verdict}. Distilling it is "
             f"likely to make the retriever worse ({where}).")
  if policy == "stop":
    raise RuntimeError(message + " Stopped by label.weak_teacher='stop'; set it to 'warn' to go on.")
  logging.warning("%s Set label.weak_teacher='stop' to stop here instead.", message)


def _summary(teacher: teachers.Teacher, cache: Cache, labels_path: str, num_selected: int,
             num_pending: int, tally: _Tally, *, teacher_config: ml_collections.ConfigDict,
             label_config: ml_collections.ConfigDict) -> dict[str, Any]:
  """stats.json: this run's counts, and totals over every line of labels.jsonl."""
  calls = teacher.runner.stats
  price = pricing.price_for(teacher_config.backend, teacher_config.model,
                            input_override=teacher_config.price_input_per_mtok,
                            output_override=teacher_config.price_output_per_mtok)
  labels = _aggregate(data.read_jsonl(labels_path) if files.exists(labels_path) else [])
  ledger = [row | {"cost_usd": pricing.cost(price, row["prompt_tokens"], row["completion_tokens"])}
            for row in cache.ledger()]
  return {
      "teacher": teacher.provenance(),
      "split": label_config.split,
      "num_candidates": label_config.num_candidates,
      "on_failure": label_config.on_failure,
      "queries": {"selected": num_selected, "already_labelled": num_selected - num_pending,
                  "labelled": tally.labelled, "dropped": len(tally.dropped),
                  "failed": len(tally.failed)},
      "windows": dict(sorted(tally.windows.items())),
      "repairs": dict(sorted(tally.repairs.items())),
      "reasks": tally.reasks,
      "calls": calls.to_json(),
      "cost_usd": {
          "price": price,
          "this_run": pricing.cost(price, calls.prompt_tokens, calls.completion_tokens),
          "labels": pricing.cost(price, labels["prompt_tokens"], labels["completion_tokens"]),
      },
      "labels": labels,
      "cache": {"answers": len(cache), "ledger": ledger},
      "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "seconds": round(tally.seconds, 3),
      "queries_per_second": round(num_pending / tally.seconds, 3) if tally.seconds > 0 else None,
      "dropped_qids": tally.dropped,
      "failed_qids": tally.failed,
      "stopped_by": str(tally.fatal[0]) if tally.fatal else None,
  }


async def _label(paths: Mapping[str, str], dataset: data.Dataset,
                 candidates: Mapping[str, list[str]], *, teacher_config: ml_collections.ConfigDict,
                 label_config: ml_collections.ConfigDict, cache_dir: str,
                 seed: int) -> tuple[dict[str, Any], _Tally]:
  """Labels `candidates` with the teacher `teacher_config` describes; `cache_dir`
  (`data.cache_dir`) holds the call cache's local mirror when the workdir is a bucket."""
  relevance = None
  if teacher_config.backend == "simulated":
    relevance = _relevance(dataset, label_config.split, candidates)
  with open_cache(paths["cache"], local_dir=cache_dir) as cache:
    teacher = teachers.make_teacher(teacher_config, cache=cache, on_failure=label_config.on_failure,
                                    reasks=label_config.reasks, relevance=relevance, seed=seed)
    try:
      return await _label_with(paths, dataset, candidates, teacher, cache,
                               teacher_config=teacher_config, label_config=label_config)
    finally:
      await teacher.aclose()


async def _label_with(paths: Mapping[str, str], dataset: data.Dataset,
                      candidates: Mapping[str, list[str]], teacher: teachers.Teacher, cache: Cache,
                      *, teacher_config: ml_collections.ConfigDict,
                      label_config: ml_collections.ConfigDict) -> tuple[dict[str, Any], _Tally]:
  existing = (data.load_labels(paths["labels"], dataset) if files.exists(paths["labels"])
              else [])
  _check_resumable(paths["labels"], existing, candidates, teacher.provenance())
  done = {r["qid"] for r in existing}
  pending = [qid for qid in candidates if qid not in done]
  logging.info("label: %d queries, %d already labelled, %d to go; teacher %s", len(candidates),
               len(done & set(candidates)), len(pending), teacher.provenance())
  tally = _Tally()
  await _label_queries(teacher, pending, dataset, candidates, paths["labels"],
                       teacher_config.concurrency, tally)
  stats = _summary(teacher, cache, paths["labels"], len(candidates), len(pending), tally,
                   teacher_config=teacher_config, label_config=label_config)
  stats["quality"] = _quality(dataset, label_config.split, paths["labels"])
  return stats, tally


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Task `label` (see the module docstring).

  With several JAX processes only process 0 talks to the teacher, so no prompt is ever sent twice;
  the others wait for it to finish and then read labels/ from the shared workdir.
  """
  import jax
  if jax.process_index() == 0:
    _run(config, workdir)
  else:
    logging.info("label: process %d leaves the teacher to process 0 and waits for its labels",
                 jax.process_index())
  peers.barrier("label")


def _run(config: ml_collections.ConfigDict, workdir: str) -> None:
  inputs = provenance.begin("label", config, workdir, every_process=False)  # process 0 labels
  out = layout.labels_dir(workdir)
  paths = {"labels": layout.labels(workdir), "cache": layout.label_cache(workdir),
           "stats": layout.label_stats(workdir), "partial_stats": layout.label_partial_stats(workdir)}
  dataset = assets.load_dataset(config.data)
  run_path = layout.candidates(workdir, config.label.split)
  candidates = load_candidates(run_path, config.label.num_candidates, config.label.max_queries,
                               config.label.sample_seed)
  for qid, docids in candidates.items():
    if qid not in dataset.queries:
      raise data.DataError(run_path, None, f"query {qid!r} is not in {config.data.dir}/queries.jsonl")
    for d in docids:
      if d not in dataset.corpus:
        raise data.DataError(run_path, None, f"document {d!r} (query {qid!r}) is not in the corpus")
  files.makedirs(out)
  # stats.json marks the stage complete (the pipeline skips it then): written only on success.
  for stale in (paths["stats"], paths["partial_stats"]):
    files.remove(stale)
  recover_labels(paths["labels"])
  stats, tally = asyncio.run(_label(paths, dataset, candidates, teacher_config=config.teacher,
                                    label_config=config.label, cache_dir=config.data.cache_dir,
                                    seed=config.seed))
  complete = not tally.fatal and not tally.failed
  stats_path = paths["stats"] if complete else paths["partial_stats"]
  data.write_json(stats_path, {**stats, **inputs})
  q = stats["queries"]
  logging.info("label: %d labelled this run (%d total), %d dropped, %d failed; %d calls, %d cache hits; "
               "stats in %s", q["labelled"], stats["labels"]["queries"], q["dropped"], q["failed"],
               stats["calls"]["answered"], stats["calls"]["cache_hits"], stats_path)
  if tally.fatal:
    e = tally.fatal[0]
    raise teachers.CallFailed(
        f"label stopped: the {config.teacher.backend} teacher failed ({e}); {q['labelled']} queries "
        f"labelled this run are kept in {paths['labels']}, answered calls in {paths['cache']} "
        f"(report: {stats_path})", cause=e.cause, fatal=True) from e
  if tally.failed:
    raise teachers.CallFailed(
        f"{len(tally.failed)} queries could not be labelled (e.g. {next(iter(tally.failed.values()))}; "
        f"see {stats_path}); run `label` again to retry them: answered calls are cached",
        cause="retries")
  check_teacher(stats["quality"], config.label.weak_teacher, stats_path)
