"""Should each run pick its ranker's peak learning rate on its dev queries? Dev data only.

  # per trained ranker: each dev query's teacher list, with the ranker's and the initial
  # retriever's scores of its candidates
  python benchmarks/rate_rule.py --config=configs/scifact.py \
      --config.data.dir=../shared/data/scifact --config.seed=S \
      --config.ranker.optim.learning_rate=R --workdir=W --run=NAME --group=TEACHER --out=F.json
  # then: the rule against each fixed rate on held-out halves of the dev queries
  python benchmarks/rate_rule.py --analyse=F1.json,F2.json,...

A fixed `ranker.optim.learning_rate` serves every run alike. A rule "train the ranker at each
candidate rate and keep the one whose fused dev ListMLE (`ranker/done.json`, the figure the
distilled retriever learns from) is lowest" adapts to each run and teacher, at the price of a
ranker per candidate, and picks on the dev slice (81 queries on SciFact), whose noise it may
follow. Whether it helps is measured without test queries: each run's dev queries are halved at
random; on one half the fusion with the initial retriever is fitted for each rate and the rule
picks; every rate, the picked one included, is scored on the other half with the fusion fitted on
the first. The checkpoint each ranker kept was itself selected on the whole dev slice, for every
rate alike. Prints JSON: per run and per group (teacher), the held-out fused ListMLE of the rule
and of each fixed rate, how often the rule picks each rate and how often it beats each fixed
rate.

The decision, fixed before the analysis ran: each run chooses its rate from {5e-5, 1e-4} on its
dev slice (replacing the fixed 1e-4 of configs/scifact.py) if, for each SciFact teacher of
configs/sweeps/ranker_schedule.py (noise 0.38 and 0.43), the rule's held-out fused ListMLE,
averaged over seeds 0, 1 and 2, is lower than the fixed 1e-4's.
"""

import collections
import json
import os

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from interdistill_jax import data as data_lib
from interdistill_jax import assets, fusion, layout, ranker, sharding


def _define_flags() -> None:
  """Defined only when the script runs: the tests import `held_out` beside modules whose flags
  share these names."""
  config_flags.DEFINE_config_file("config", None, "The config the ranker was trained with.")
  flags.DEFINE_string("workdir", None, "The run's workdir (its ranker/ is scored).")
  flags.DEFINE_string("run", None, "Names the run (teacher and seed): rankers of one run compete.")
  flags.DEFINE_string("group", "", "Pools runs in the summary (e.g. the teacher).")
  flags.DEFINE_string("out", None, "Where to write the per-query lists (JSON).")
  flags.DEFINE_list("analyse", [], "Per-query files to compare the rule on.")
  flags.DEFINE_integer("splits", 500, "Random halvings of each run's dev queries.")


def dev_lists(config, workdir: str) -> dict:
  """The dev queries' teacher lists, as `train_ranker` fits its fusion on them, with the trained
  ranker's own scores and the initial retriever's: {"ce", "initial", "ranking", "mask",
  "prefix"} ([Q, L] lists, [Q] prefix), "qids", and "done_fused", the fused dev ListMLE the
  ranker's done.json records (`main` fits the fusion on these lists again and prints both, a
  check that they are the lists train_ranker scored: both are made by `ranker.dev_lists`)."""
  section = config.ranker
  mesh = sharding.mesh_from_config(config.mesh)
  dataset = assets.load_dataset(config.data)
  labels = data_lib.load_labels(layout.labels(workdir), dataset)
  _, dev_labels = ranker.split_labels(labels, section, config.seed)
  # The initial retriever's scores of every labelled pair, as train_ranker computes them.
  doc_embeddings, initial = ranker.initial_side(config, workdir, dataset, labels, mesh=mesh)
  model, tokenizer = ranker.load_trained_ranker(section.model, workdir, mesh=mesh, seed=config.seed,
                                                param_rules=config.mesh.param_rules)
  lists = ranker.dev_lists(dataset, model, tokenizer, dev_labels, initial,
                           doc_embeddings if model.residual else None, ranker_config=section,
                           encode_config=config.encode, mesh=mesh,
                           param_rules=config.mesh.param_rules)
  done = layout.read_done(layout.ranker_dir(workdir))
  return {"qids": [r["qid"] for r in dev_labels], "ce": lists.ce.tolist(),
          "initial": lists.initial.tolist(), "ranking": np.asarray(lists.ranking).tolist(),
          "mask": np.asarray(lists.mask).tolist(), "prefix": np.asarray(lists.prefix).tolist(),
          "done_fused": done["dev_listmle"]["fused"]}


class Lists:
  """One ranker's dev lists as arrays; fits and scores the fusion on any subset of the queries
  (one shape for every subset: the queries outside it weigh 0)."""

  def __init__(self, run: dict):
    self.feats = [np.asarray(run["ce"], np.float32), np.asarray(run["initial"], np.float32)]
    self.ranking = np.asarray(run["ranking"], np.int32)
    self.mask = np.asarray(run["mask"], bool)
    self.prefix = np.asarray(run["prefix"], np.int32)
    self.n = int(self.mask.shape[0])
    self.all = np.arange(self.n)
    self.x0 = self.fit(self.all, x0=np.ones(2))[0]  # the whole slice's fit: where subsets start

  def _weights(self, rows) -> np.ndarray:
    weights = np.zeros(self.n, np.float32)
    weights[rows] = 1.0
    return weights

  def loss(self, x, rows) -> float:
    """The mean fused ListMLE over the queries `rows` with the fusion weights `x`."""
    return fusion.mixed_listmle(x, self.feats, self.ranking, self.mask, self.prefix,
                                self._weights(rows))

  def fit(self, rows, x0=None) -> tuple[np.ndarray, float]:
    """(weights, loss): the fusion minimising the mean ListMLE over `rows` (convex: L-BFGS)."""
    return fusion.fit_weights(self.feats, self.x0 if x0 is None else x0, self.ranking, self.mask,
                              self.prefix, self._weights(rows))


def held_out(files, splits: int) -> dict:
  """The rule (lowest fused dev ListMLE on one half) against each fixed rate, scored on the other
  half, over `splits` random halvings per run; runs pooled per group."""
  runs = collections.defaultdict(dict)
  groups = {}
  for path in files:
    with open(path) as f:
      one = json.load(f)
    runs[one["run"]][one["rate"]] = one
    groups[one["run"]] = one.get("group", "")
  rng = np.random.default_rng(0)
  report, by_group, skipped = {}, collections.defaultdict(list), {}
  for name in sorted(runs):
    rates = sorted(runs[name])
    if len(rates) < 2:
      skipped[name] = f"one ranker only (rate {rates[0]:g}): nothing to choose"
      continue
    qids = {r: runs[name][r]["qids"] for r in rates}
    if len({tuple(q) for q in qids.values()}) != 1:
      raise ValueError(f"run {name}: its rankers were fitted on different dev queries")
    lists = {r: Lists(runs[name][r]) for r in rates}
    n = lists[rates[0]].n
    rule, fixed, picks = [], {r: [] for r in rates}, []
    for _ in range(splits):
      perm = rng.permutation(n)
      a, b = perm[: n // 2], perm[n // 2:]
      fits = {r: lists[r].fit(a) for r in rates}
      best = min(rates, key=lambda r: fits[r][1])
      picks.append(best)
      scored = {r: lists[r].loss(fits[r][0], b) for r in rates}
      rule.append(scored[best])
      for r in rates:
        fixed[r].append(scored[r])
    rule_arr = np.asarray(rule)
    entry = {
        "group": groups[name], "dev_queries": n,
        "whole_dev_fused": {f"{r:g}": lists[r].fit(lists[r].all)[1] for r in rates},
        "done_fused": {f"{r:g}": runs[name][r]["done_fused"] for r in rates},
        "picks": {f"{r:g}": picks.count(r) / splits for r in rates},
        "held_out": {"rule": float(rule_arr.mean()),
                     **{f"fixed {r:g}": float(np.mean(fixed[r])) for r in rates}},
        "rule_beats": {f"{r:g}": float(np.mean(rule_arr < np.asarray(fixed[r]) - 1e-9))
                       for r in rates},
        "rule_loses": {f"{r:g}": float(np.mean(rule_arr > np.asarray(fixed[r]) + 1e-9))
                       for r in rates},
    }
    report[name] = entry
    by_group[groups[name]].append(entry)
  summary = {}
  for group, entries in sorted(by_group.items()):
    keys = entries[0]["held_out"].keys()
    summary[group or "all"] = {
        "runs": len(entries),
        "held_out": {k: float(np.mean([e["held_out"][k] for e in entries])) for k in keys},
        "rule_beats": {r: float(np.mean([e["rule_beats"][r] for e in entries]))
                       for r in entries[0]["rule_beats"]},
        "rule_loses": {r: float(np.mean([e["rule_loses"][r] for e in entries]))
                       for r in entries[0]["rule_loses"]},
    }
  return {"splits": splits, "lower_is_better": "fused dev ListMLE", "runs": report,
          "by_group": summary, "skipped": skipped}


def main(_):
  f = flags.FLAGS
  if f.analyse:
    print(json.dumps(held_out(f.analyse, f.splits), indent=1))
    return
  if not f.run or not f.out:
    raise app.UsageError("--run and --out name the ranker's per-query file")
  out = dev_lists(f.config, f.workdir)
  out.update(run=f.run, group=f.group, rate=float(f.config.ranker.optim.learning_rate),
             workdir=os.path.abspath(f.workdir))
  lists = Lists(out)
  recomputed = lists.fit(lists.all)[1]
  print(json.dumps({"run": f.run, "rate": out["rate"], "dev_queries": len(out["qids"]),
                    "fused_recomputed": recomputed, "fused_done_json": out["done_fused"]}),
        flush=True)
  with open(f.out, "w") as fp:
    json.dump(out, fp)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
