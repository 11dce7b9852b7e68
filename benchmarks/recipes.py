"""Dev figures of trained retrievers, to choose recipes without the test queries.

  .venv/bin/python benchmarks/recipes.py --config=configs/scifact.py \
      --config.data.dir=../shared/data/scifact --config.seed=0 \
      --runs=distilled:runs/s0/retriever:depth0,distilled:runs/s0_d50/retriever:depth50

For each run (system:retriever directory:recipe name) the ListMLE of the LLM's rankings of the
dev queries (the seed's dev slice of labels/labels.jsonl in the directory's workdir) under the
retriever's scores, at their best scale, over the prefix `ranker.top_k` trusts
(`retrievers.dev_llm_listmle`), before and after training, as `distill` records it in done.json; and
per system the recipe with the lowest. Beside it, where the training split has qrels, the dev
queries' nDCG@10 and Recall@100 over the whole corpus (`retrievers.DevRetrieval`), which show what
the lists' loss cannot: relevant passages lost below the lists. Prints JSON.

`--interpolate=0,0.1,...,1` adds, per run, the same dev figures for retrievers whose trainable
weights are interpolated between the initial (0) and the trained (1) ones (weight-space
ensembling, as WiSE-FT does for fine-tuned models): one training, a family of retrievers between
what the initial retriever finds and what the teacher taught.
"""

import json
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from interdistill_jax import data as data_lib
from interdistill_jax import assets, distill, layout, retrieval, retrievers, sharding, tokenization, train

_CONFIG = config_flags.DEFINE_config_file("config", None, "The config the runs were trained with.")
_RUNS = flags.DEFINE_list("runs", [], "system:retriever_dir:recipe, ...")
_INTERPOLATE = flags.DEFINE_list("interpolate", [], "Weights of the trained parameters (0: the "
                                 "initial retriever, 1: the trained one) to report as well.")


def dev_figures(config, out_dir: str, alphas=()) -> dict:
  workdir = os.path.dirname(os.path.abspath(out_dir))
  dataset = assets.load_dataset(config.data)
  labels = data_lib.load_labels(layout.labels(workdir))
  done = layout.read_done(out_dir)
  kept = labels
  if done["teacher"] == "qrels":  # its dev slice was drawn from the queries it kept
    _, kept = distill.qrels_scores(labels, dataset.qrels(config.label.split), config.distill.list_size)
  _, dev_qids = train.dev_split([r["qid"] for r in kept], config.distill.dev_fraction, config.seed)
  by_qid = {r["qid"]: r for r in labels}
  mesh = sharding.mesh_from_config(config.mesh)
  encoder = retrieval.Encoder.from_config(config, mesh=mesh)
  docids, doc_emb = retrieval.corpus_embeddings(workdir, encoder, dataset,
                                                encode_config=config.encode,
                                                data_config=config.data)
  tokenizer = tokenization.Tokenizer(assets.model_dir(config.model.init))
  lists = distill.CandidateLists(
      [by_qid[q] for q in dev_qids], dataset, tokenizer, list_size=config.distill.list_size,
      max_query_length=config.model.max_query_length, doc_index={d: i for i, d in enumerate(docids)},
      doc_emb=doc_emb, teacher_scores=None, doc_tokens=None, buckets=config.encode.buckets)
  initial, _, trainable = retrievers.build_student(config.model, done["towers"], seed=config.seed)
  trained, _, _ = retrievers.load_distilled(config.model, out_dir, mesh=mesh,
                                            param_rules=config.mesh.param_rules, seed=config.seed)
  dev_retrieval = retrievers.DevRetrieval(config, workdir, dataset, encoder, tokenizer, dev_qids,
                                          mesh=mesh)
  out = {"dev_llm_listmle": {"initial": retrievers.dev_llm_listmle(initial, lists, config.ranker.top_k),
                             "trained": retrievers.dev_llm_listmle(trained, lists, config.ranker.top_k)},
         "dev_retrieval": dev_retrieval(trained)}
  if alphas:
    start = retrievers.host_weights(initial, trainable)
    out["interpolation"] = []
    for alpha in retrievers.interpolations(trained, start, trainable, alphas):
      dev = dev_retrieval(trained, report=False)
      out["interpolation"].append({
          "alpha": alpha,
          "dev_llm_listmle": retrievers.dev_llm_listmle(trained, lists, config.ranker.top_k),
          "dev_retrieval": dev and dev["trained"]})
  return out


def main(argv):
  del argv
  config = _CONFIG.value
  rows = []
  for run in _RUNS.value:
    system, out_dir, recipe = run.split(":")
    rows.append({"system": system, "recipe": recipe, "dir": out_dir,
                 **dev_figures(config, out_dir, [float(a) for a in _INTERPOLATE.value])})
  chosen = {}
  for r in rows:
    best = chosen.get(r["system"])
    if best is None or r["dev_llm_listmle"]["trained"] < best["dev_llm_listmle"]["trained"]:
      chosen[r["system"]] = r
  print(json.dumps({"benchmark": "recipes", "seed": config.seed, "runs": rows,
                    "chosen": {s: r["recipe"] for s, r in chosen.items()}}, indent=1))


if __name__ == "__main__":
  sys.exit(app.run(main))
