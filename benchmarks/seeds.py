"""Every system over several seeds: mean and sd of each metric, each seed's bootstrap CI.

  .venv/bin/python benchmarks/seeds.py --workdirs=runs/s0,runs/s1,runs/s2 \
      --command="..." > benchmarks/results/scifact_seeds.json

Each workdir is one finished run (`evaluate` done) of the same config with another `--config.seed`;
retrieve and label may be shared between them (the same teacher labels every seed). Reads
eval/*.json, eval/compare.json, ranker/done.json (the ranker's dev ListMLE against the initial
retriever's) and each retriever's done.json (its dev ListMLE of the LLM's rankings). Prints JSON.
"""

import json
import os
import sys

import numpy as np
from absl import app, flags

from interdistill_jax import layout

_WORKDIRS = flags.DEFINE_list("workdirs", [], "Finished workdirs, one per seed.")
_COMMAND = flags.DEFINE_string("command", "", "The command lines that produced the workdirs.")
_NOTE = flags.DEFINE_string("note", "", "Anything else the record should say.")
_METRICS = ("ndcg@10", "recall@100", "mrr@10")


def _json(path):
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _seed(wd: str) -> dict:
  out = {"workdir": wd, "systems": {}, "vs_baseline": {}, "dev": {}}
  for name in sorted(os.listdir(layout.eval_dir(wd))):
    if name.endswith(".json") and name != "compare.json":
      r = _json(layout.eval_file(wd, name))
      out["systems"][r["system"]] = {m: r["metrics"][m] for m in _METRICS if m in r["metrics"]}
  for system, per_metric in (_json(layout.eval_file(wd, "compare.json")) or {}).items():
    out["vs_baseline"][system] = {m: {k: per_metric[m][k] for k in ("diff", "ci_low", "ci_high", "p_value")}
                                  for m in ("ndcg@10", "recall@100") if m in per_metric}
  ranker = _json(layout.done(layout.ranker_dir(wd))) or {}
  if "dev_listmle" in ranker:
    out["dev"]["ranker"] = dict(ranker["dev_listmle"], head=ranker.get("head"))
  for system in layout.SYSTEMS:
    done = _json(layout.done(layout.system_dir(wd, system)))
    if done:
      out["dev"][system] = {k: done.get(k) for k in ("dev_llm_listmle", "teacher", "llm_loss",
                                                     "list_size", "teacher_temperature", "selected_step")}
  stats = _json(layout.label_stats(wd)) or {}
  out["teacher_audit"] = stats.get("quality")
  return out


def main(argv):
  del argv
  seeds = [_seed(wd) for wd in _WORKDIRS.value]
  systems = sorted({s for r in seeds for s in r["systems"]})
  summary = {}
  for system in systems:
    rows = [r["systems"][system] for r in seeds if system in r["systems"]]
    summary[system] = {"seeds": len(rows)}
    for m in _METRICS:
      values = [row[m] for row in rows if m in row]
      if values:
        summary[system][m] = {"mean": float(np.mean(values)),
                              "sd": float(np.std(values, ddof=1)) if len(values) > 1 else None,
                              "values": values}
    cis = [r["vs_baseline"][system]["ndcg@10"] for r in seeds if system in r["vs_baseline"]]
    if cis:
      summary[system]["ndcg@10_ci_low_above_0_in"] = f"{sum(c['ci_low'] > 0 for c in cis)}/{len(cis)}"
  print(json.dumps({"benchmark": "seeds", "command": _COMMAND.value, "note": _NOTE.value,
                    "summary": summary, "per_seed": seeds}, indent=1))


if __name__ == "__main__":
  sys.exit(app.run(main))
