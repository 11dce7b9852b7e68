"""Should each run pick its own `distill.interpolation` on its dev queries? Dev data only.

  # per run: each dev query's nDCG@10 and Recall@100 over the whole corpus at each interpolation
  python benchmarks/interpolation_rule.py --config=configs/scifact.py \
      --config.data.dir=../shared/data/scifact --config.seed=S --workdir=W --out=W.dev.json
  # then: the rule against fixed interpolations on held-out halves of the dev queries
  python benchmarks/interpolation_rule.py --analyse=W0.dev.json,W1.dev.json,...

A run's distilled retriever is used with its trainable weights at (1 - a) x initial + a x trained
(`distill.interpolation`). A fixed `a` serves every run alike; a rule "take the `a` of the best dev
nDCG@10 among the ones `distill` records" (0.25, 0.5, 0.75 and the trained weights, 1) adapts to
each run, but picks on 81 queries (SciFact's dev slices) and may follow their noise. Whether it
helps is measured without test queries: the dev queries are split in two halves at random, the
rule picks on one half and is scored on the other, against the fixed choices scored on the same
half. Prints JSON: per run and pooled, the held-out nDCG@10 and Recall@100 of the rule and of each
fixed `a`, and how often the rule beats the fixed 0.5.
"""

import json
import os

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from interdistill_jax import data as data_lib
from interdistill_jax import assets, layout, retrieval, retrievers, sharding, tokenization, train


def _define_flags() -> None:
  """Defined only when the script runs: the tests import `held_out` beside modules whose flags
  share these names."""
  config_flags.DEFINE_config_file("config", None, "The config the run was trained with.")
  flags.DEFINE_string("workdir", None, "The run's workdir (its retriever/ is scored).")
  flags.DEFINE_string("system", "retriever", "The retriever directory in the workdir.")
  flags.DEFINE_list("alphas", ["0", "0.1", "0.2", "0.25", "0.3", "0.4", "0.5", "0.6", "0.7", "0.75",
                               "0.8", "0.9", "1"], "Interpolations scored.")
  flags.DEFINE_string("out", None, "Where to write the per-query figures (JSON).")
  flags.DEFINE_list("analyse", [], "Per-query files to compare the rule on.")
  flags.DEFINE_list("choices", ["0.25", "0.5", "0.75", "1"], "What the rule picks from.")
  flags.DEFINE_integer("splits", 2000, "Random halvings of each run's dev queries.")


METRICS = ("ndcg@10", "recall@100")


def per_query_figures(config, workdir: str, system: str, alphas) -> dict:
  """{"workdir", "system", "qids", "figures": {alpha: {metric: [per dev query, in qids' order]}}}
  of the retriever in `workdir/system` at each interpolation of `alphas`."""
  dataset = assets.load_dataset(config.data)
  labels = data_lib.load_labels(layout.labels(workdir))
  _, dev_qids = train.dev_split([r["qid"] for r in labels], config.distill.dev_fraction, config.seed)
  mesh = sharding.mesh_from_config(config.mesh)
  initial = retrieval.Encoder.from_config(config, mesh=mesh)
  tokenizer = tokenization.Tokenizer(assets.model_dir(config.model.init))
  dev = retrievers.DevRetrieval(config, workdir, dataset, initial, tokenizer, dev_qids, mesh=mesh)
  if not dev.available:
    raise SystemExit(f"{workdir}: no dev queries with qrels to score")
  qids = sorted(dev.qrels)  # every one has a relevant passage (train qrels)
  out = {"workdir": workdir, "system": system, "qids": qids, "figures": {}}
  model, _, info = retrievers.load_distilled(config.model, os.path.join(workdir, system), mesh=mesh,
                                             param_rules=config.mesh.param_rules, seed=config.seed)
  start, trainable = retrievers.initial_weights(config.model, info["towers"], seed=config.seed)
  for alpha in retrievers.interpolations(model, start, trainable, alphas):
    per_query = dev.per_query(model)
    figures = out["figures"][f"{alpha:g}"] = {m: [per_query[m][q] for q in qids] for m in METRICS}
    print(json.dumps({"alpha": alpha, **{m: float(np.mean(v)) for m, v in figures.items()}}),
          flush=True)
  return out


def held_out(files, choices, splits: int) -> dict:
  """The rule (best dev nDCG@10 among `choices` on one half) against each fixed choice, scored on
  the other half, over `splits` random halvings per run."""
  rng = np.random.default_rng(0)
  report, pooled = {}, {"rule": {m: [] for m in METRICS}, "wins": [], "ties": []}
  fixed_pooled = {c: {m: [] for m in METRICS} for c in choices}
  for path in files:
    with open(path) as f:
      run = json.load(f)
    fig = {c: {m: np.asarray(run["figures"][c][m]) for m in METRICS} for c in choices}
    n = len(run["qids"])
    rule, fixed, picks, wins, ties = {m: [] for m in METRICS}, {c: {m: [] for m in METRICS} for c in choices}, [], 0, 0
    for _ in range(splits):
      perm = rng.permutation(n)
      a, b = perm[: n // 2], perm[n // 2:]
      best = max(choices, key=lambda c: (fig[c]["ndcg@10"][a].mean(), -abs(float(c) - 0.5)))
      picks.append(best)
      for m in METRICS:
        rule[m].append(fig[best][m][b].mean())
        for c in choices:
          fixed[c][m].append(fig[c][m][b].mean())
      diff = rule["ndcg@10"][-1] - fixed["0.5"]["ndcg@10"][-1]
      wins += diff > 1e-12
      ties += abs(diff) <= 1e-12
    report[os.path.basename(path)] = {
        "dev_queries": n,
        "whole_dev": {c: {m: float(np.mean(v[m])) for m in METRICS} for c, v in run["figures"].items()},
        "picks": {c: picks.count(c) / splits for c in choices},
        "held_out": {"rule": {m: float(np.mean(rule[m])) for m in METRICS},
                     **{f"fixed {c}": {m: float(np.mean(fixed[c][m])) for m in METRICS} for c in choices}},
        "rule_beats_fixed_0.5": wins / splits, "rule_ties_fixed_0.5": ties / splits,
    }
    for m in METRICS:
      pooled["rule"][m].append(np.mean(rule[m]))
      for c in choices:
        fixed_pooled[c][m].append(np.mean(fixed[c][m]))
    pooled["wins"].append(wins / splits)
    pooled["ties"].append(ties / splits)
  summary = {"rule": {m: float(np.mean(pooled["rule"][m])) for m in METRICS},
             **{f"fixed {c}": {m: float(np.mean(fixed_pooled[c][m])) for m in METRICS} for c in choices},
             "rule_beats_fixed_0.5": float(np.mean(pooled["wins"])),
             "rule_ties_fixed_0.5": float(np.mean(pooled["ties"]))}
  return {"choices": list(choices), "splits": splits, "runs": report, "mean_over_runs": summary}


def main(_):
  f = flags.FLAGS
  if f.analyse:
    print(json.dumps(held_out(f.analyse, f.choices, f.splits), indent=1))
    return
  out = per_query_figures(f.config, f.workdir, f.system, [float(a) for a in f.alphas])
  with open(f.out, "w") as fp:
    json.dump(out, fp)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
