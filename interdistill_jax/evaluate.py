"""Task `evaluate`: retrieval metrics (and answer accuracy) of each system on held-out queries.

Systems: `baseline`, the untrained initial retriever (`config.model.init`). Every system
gets `eval/{name}.json` (metrics) and `eval/{name}.trec` (its run), and `eval/report.md`
collects them in one table.
"""

from __future__ import annotations

import json
import os

import jax
from absl import logging

from interdistill_jax import data as data_lib
from interdistill_jax import metrics, retrieval


def system_result(dataset: data_lib.Dataset, dataset_name: str, split: str, system: str,
                  run: data_lib.Run, eval_config) -> tuple[dict, dict]:
  """(eval/{system}.json content, per-query values) for one system's run."""
  qrels = dataset.qrels(split)
  aggregate, per_query = metrics.evaluate_run(qrels, run, eval_config.k_values)
  queries = dataset.split_queries(split)
  answers = {qid: q.answers for qid, q in queries.items() if q.answers}
  if answers:
    texts = {docid: doc.full_text() for docid, doc in dataset.corpus.items()}
    acc, acc_per_query = metrics.answer_accuracy(run, texts, answers, eval_config.answer_ks)
    aggregate.update({k: v for k, v in acc.items() if k.endswith("_acc")})
    per_query.update(acc_per_query)
  result = {"dataset": dataset_name, "split": split, "system": system,
            "num_queries": len(queries), "metrics": aggregate}
  return result, per_query


def dataset_name(config, dataset: data_lib.Dataset) -> str:
  return config.data.name or os.path.basename(os.path.normpath(dataset.root))


def write_system(workdir: str, result: dict, per_query: dict, run: data_lib.Run) -> None:
  out = os.path.join(workdir, "eval")
  data_lib.write_json(os.path.join(out, f"{result['system']}.json"), result)
  data_lib.write_json(os.path.join(out, "per_query", f"{result['system']}.json"), per_query)
  data_lib.write_trec_run(os.path.join(out, f"{result['system']}.trec"), run, tag=result["system"])


def write_report(workdir: str, results: list[dict]) -> str:
  """eval/report.md: one row per system, the metrics users quote."""
  keys = [k for k in ("ndcg@10", "recall@100", "mrr@10", "map@10", "top1_acc", "top5_acc",
                      "top20_acc", "top100_acc") if any(k in r["metrics"] for r in results)]
  lines = [f"# Evaluation: {results[0]['dataset']} / {results[0]['split']}", "",
           "| system | queries | " + " | ".join(keys) + " |",
           "|---|---|" + "---|" * len(keys)]
  for r in results:
    cells = [f"{r['metrics'][k]:.4f}" if k in r["metrics"] else "" for k in keys]
    lines.append(f"| {r['system']} | {r['num_queries']} | " + " | ".join(cells) + " |")
  text = "\n".join(lines) + "\n"
  data_lib.atomic_write_text(os.path.join(workdir, "eval", "report.md"), text)
  return text


def run(config, workdir: str) -> None:
  """Task `evaluate`: writes eval/baseline.json, eval/baseline.trec and eval/report.md."""
  dataset = retrieval.load_dataset(config)
  split = config.eval.split
  encoder = retrieval.Encoder.from_config(config)
  run_ = retrieval.retrieve(config, workdir, encoder, dataset, split, config.eval.depth)
  result, per_query = system_result(dataset, dataset_name(config, dataset), split, "baseline",
                                    run_, config.eval)
  if jax.process_index() == 0:
    write_system(workdir, result, per_query, run_)
    report = write_report(workdir, [result])
    logging.info("%s\n%s", json.dumps(result["metrics"], indent=1), report)
