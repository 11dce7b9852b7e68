"""Task `evaluate`: every available system on the held-out queries, compared with the baseline.

Systems (each only when its stage has finished in the workdir):
- `baseline`: the untrained initial retriever (`config.model.init`);
- `ranker`: the trained ranker alone re-ranking the baseline's top `eval.rerank_depth`, and
  `ranker_fused` its fusion with the initial retriever fitted on the dev queries;
- `distilled`: the retriever distilled from the ranker (`retriever/`);
- `direct`: the ablation trained on the LLM rankings without the ranker (`retriever_direct/`);
- `supervised`: the same trainer on the gold qrels of the same training queries
  (`retriever_supervised/`): what gold labels would buy.

Writes `eval/{system}.json`, `eval/{system}.trec`, `eval/per_query/{system}.json`,
`eval/compare.json` (paired bootstrap of each system against the baseline) and
`eval/report.md` with PNG plots. With `reader.enabled`, a reader LLM answers the questions from each
system's top-k passages (`reader.py`): `rag.em@{k}` and `rag.f1@{k}`, and `eval/rag/{system}.jsonl`.
"""

from __future__ import annotations

import json
import os

import jax
from absl import logging

from interdistill_jax import data as data_lib
from interdistill_jax import assets, corpus, files, layout, metrics, provenance, reader, report, retrieval
from interdistill_jax import search
from interdistill_jax import sharding, tokenization


def system_result(dataset: data_lib.Dataset, dataset_name: str, split: str, system: str,
                  run: data_lib.Run, eval_config) -> tuple[dict, dict]:
  """(eval/{system}.json content, per-query values) for one system's run.

  A split with qrels gets the IR metrics; one with answers gets `top{k}_acc` (a question set with
  answers and no qrels, such as NQ-open, gets only those).
  """
  queries = dataset.split_queries(split)
  aggregate, per_query = {}, {}
  if dataset.has_qrels(split):
    aggregate, per_query = metrics.evaluate_run(dataset.qrels(split), run, eval_config.k_values)
  answers = {qid: q.answers for qid, q in queries.items() if q.answers}
  if not answers and not dataset.has_qrels(split):
    raise ValueError(f"split {split!r} of {dataset.root} has neither qrels nor answers to score")
  if answers:
    # Only the passages answer_accuracy looks at are read (each query's top k, to its first hit).
    acc, acc_per_query = metrics.answer_accuracy(run, corpus.FullTexts(dataset.corpus), answers,
                                                 eval_config.answer_ks)
    aggregate.update({k: v for k, v in acc.items() if k.endswith("_acc")})
    per_query.update(acc_per_query)
  result = {"dataset": dataset_name, "split": split, "system": system,
            "num_queries": len(queries), "metrics": aggregate}
  return result, per_query


def dataset_name(data_config, dataset: data_lib.Dataset) -> str:
  return data_config.name or os.path.basename(os.path.normpath(dataset.root))


def write_system(workdir: str, result: dict, per_query: dict, run: data_lib.Run) -> None:
  system = result["system"]
  data_lib.write_json(layout.eval_file(workdir, f"{system}.json"), result)
  data_lib.write_json(layout.eval_file(workdir, os.path.join("per_query", f"{system}.json")), per_query)
  data_lib.write_trec_run(layout.eval_file(workdir, f"{system}.trec"), run, tag=system)


def compare(per_query: dict[str, dict], baseline: str = "baseline", seed: int = 0) -> dict:
  """Paired bootstrap (95% CI, p-value) of each system against the baseline, per metric."""
  out = {}
  for system, values in per_query.items():
    if system == baseline:
      continue
    names = [*metrics.HEADLINE, *sorted(m for m in values if m.startswith("rag."))]
    out[system] = {m: metrics.paired_bootstrap(per_query[baseline][m], values[m], seed=seed)
                   for m in names if m in values and m in per_query[baseline]}
  return out


# The method against its ablations (system, reference): what the intermediate ranker buys over
# learning the LLM's rankings directly, how far the gold labels of the same queries are, and
# what the fusion with the initial retriever adds to the ranker.
ABLATIONS = (("distilled", "direct"), ("distilled", "supervised"), ("ranker_fused", "ranker"))


def ablations(per_query: dict[str, dict], seed: int = 0) -> dict:
  """Paired bootstrap of each ABLATIONS pair both systems of which were evaluated, per metric:
  "SYSTEM vs REFERENCE" -> metric -> stats, `diff` = SYSTEM - REFERENCE."""
  out = {}
  for system, reference in ABLATIONS:
    if system in per_query and reference in per_query:
      a, b = per_query[reference], per_query[system]
      out[f"{system} vs {reference}"] = {
          m: metrics.paired_bootstrap(a[m], b[m], seed=seed) for m in metrics.HEADLINE
          if m in a and m in b}
  return out


def _rerank(config, workdir, dataset, queries, base_run, mesh) -> dict[str, data_lib.Run]:
  """System "ranker": the baseline's top `eval.rerank_depth` re-ranked by the trained ranker
  alone; "ranker_fused": by its fusion with the initial retriever fitted on the dev queries
  (`ranker/fusion.json`), which is the distillation's teacher when `ranker.fuse_initial="fit"`.
  """
  from interdistill_jax import fusion as fusion_lib, ranker as ranker_lib
  fusion = fusion_lib.read_fusion(workdir)
  depth = config.eval.rerank_depth
  pairs = [(qid, d) for qid in queries for d in data_lib.ranked(base_run[qid])[:depth]]
  scores = ranker_lib.cached_pair_scores(config, workdir, dataset, pairs,
                                         name=f"rerank_scores_{config.eval.split}",
                                         desc="ranker re-ranking", mesh=mesh)
  systems = {"ranker": scores}
  if fusion is not None:
    initial = fusion_lib.InitialScores(base_run, "the baseline run")(pairs)
    systems["ranker_fused"] = fusion(scores, initial)
  runs = {}
  for system, values in systems.items():
    run: data_lib.Run = {qid: {} for qid in queries}
    for (qid, d), s in zip(pairs, values.tolist()):
      run[qid][d] = s
    for qid in queries:  # Below the re-ranked head, the baseline's order continues.
      floor = min(run[qid].values(), default=0.0)
      for i, d in enumerate(data_lib.ranked(base_run[qid])[depth:]):
        run[qid][d] = floor - 1.0 - i
    runs[system] = run
  return runs


def _distilled_run(config, workdir, out_dir, dataset, queries, base_encoder, base_index):
  from interdistill_jax import retrievers
  alpha = config.distill.interpolation
  model, ckpt, info = retrievers.load_distilled(config.model, out_dir, mesh=base_encoder.mesh,
                                                param_rules=config.mesh.param_rules, seed=config.seed,
                                                interpolation=alpha)
  encoder = retrieval.Encoder(model, tokenization.Tokenizer(ckpt.dir), encode_config=config.encode,
                              model_config=config.model, mesh=base_encoder.mesh,
                              param_rules=config.mesh.param_rules,
                              model_id=f"{files.absolute(out_dir)}|step{info['selected_step']}|a{alpha:g}")
  docids, index = base_index
  if info["towers"] != "query":  # the passage tower changed: the corpus must be re-encoded
    docids, index = retrieval.corpus_index(workdir, encoder, dataset, retrieve_config=config.retrieve,
                                           encode_config=config.encode, data_config=config.data,
                                           seed=config.seed)
  q = encoder.encode([x.text for x in queries.values()], tower="query")
  return search.search_run(index, docids, list(queries), q, config.eval.depth)


def run(config, workdir: str) -> None:
  """Task `evaluate`: eval/*.json, eval/*.trec, eval/compare.json, eval/report.md (+ PNGs)."""
  inputs = provenance.begin("evaluate", config, workdir)
  dataset = assets.load_dataset(config.data)
  split, name = config.eval.split, dataset_name(config.data, dataset)
  queries = dataset.split_queries(split)
  mesh = sharding.mesh_from_config(config.mesh)
  encoder = retrieval.Encoder.from_config(config, mesh=mesh)
  docids, index = retrieval.corpus_index(workdir, encoder, dataset, retrieve_config=config.retrieve,
                                         encode_config=config.encode, data_config=config.data,
                                         seed=config.seed)
  q = encoder.encode([x.text for x in queries.values()], tower="query", desc=f"encode {split} queries")
  runs = {"baseline": search.search_run(index, docids, list(queries), q, config.eval.depth)}
  if layout.is_done(layout.ranker_dir(workdir)):
    runs.update(_rerank(config, workdir, dataset, queries, runs["baseline"], mesh))
  for system in layout.SYSTEMS:
    if layout.is_done(layout.system_dir(workdir, system)):
      runs[system] = _distilled_run(config, workdir, layout.system_dir(workdir, system), dataset,
                                    queries, encoder, (docids, index))
  results, per_query = [], {}
  for system, run_ in runs.items():
    result, per_query[system] = system_result(dataset, name, split, system, run_, config.eval)
    if config.reader.enabled and jax.process_index() == 0:
      rag, rag_per_query = reader.rag_metrics(config.reader, workdir, dataset, queries, run_, system,
                                              seed=config.seed, cache_dir=config.data.cache_dir)
      result["metrics"].update(rag)
      per_query[system].update(rag_per_query)
    results.append(result)
    if jax.process_index() == 0:
      write_system(workdir, result, per_query[system], run_)
  comparison = compare(per_query, seed=config.seed)
  against = ablations(per_query, seed=config.seed)
  if jax.process_index() == 0:
    data_lib.write_json(layout.eval_file(workdir, "compare.json"), comparison)
    data_lib.write_json(layout.eval_file(workdir, "ablations.json"), against)
    text = report.write(workdir, results, comparison, against,
                        interpolation=config.distill.interpolation)
    logging.info("Wrote %s\n%s", layout.report(workdir), text)
    data_lib.write_json(layout.done(layout.eval_dir(workdir)),
                        {"systems": [r["system"] for r in results],
                         "interpolation": config.distill.interpolation, **inputs})
  logging.info("%s", json.dumps({r["system"]: r["metrics"].get("ndcg@10") for r in results}))
