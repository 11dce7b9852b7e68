"""One JSON record of a finished pipeline run, for benchmarks/results/.

  .venv/bin/python benchmarks/pipeline_result.py --workdir=runs/scifact > benchmarks/results/scifact_pipeline.json

Reads what the stages wrote (eval/*.json, eval/compare.json, labels/stats.json, the stages'
done.json and metrics.jsonl) and the config each stage ran with is not guessed: pass the command
line used with --command so the record says how it was obtained. Prints JSON.
"""

import json
import os
import sys

from absl import app, flags

from interdistill_jax import layout

_WORKDIR = flags.DEFINE_string("workdir", "runs/scifact", "A workdir where `pipeline` finished.")
_COMMAND = flags.DEFINE_string("command", "", "The command line that produced the workdir.")
_NOTE = flags.DEFINE_string("note", "", "Anything else the record should say.")
_METRICS = ("ndcg@10", "recall@100", "mrr@10", "map@10")


def _json(path):
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _stage(stage_dir):
  done = _json(layout.done(stage_dir))
  if done is None:
    return None
  path = os.path.join(stage_dir, "metrics.jsonl")
  dev = []
  if os.path.exists(path):
    with open(path) as f:
      dev = [(r["step"], r["dev/loss"]) for r in map(json.loads, f) if "dev/loss" in r]
  return {"done": done, "dev_loss": dev}


def main(argv):
  del argv
  wd = _WORKDIR.value
  systems = {}
  for system in ("baseline", "ranker", "ranker_fused", "ranker_ce", "distilled", "direct",
                 "supervised"):
    r = _json(layout.eval_file(wd, f"{system}.json"))
    if r is not None:
      systems[system] = {k: r["metrics"][k] for k in _METRICS if k in r["metrics"]}
      systems[system]["num_queries"] = r["num_queries"]
  compare = _json(layout.eval_file(wd, "compare.json")) or {}
  stats = _json(layout.label_stats(wd)) or {}
  print(json.dumps({
      "benchmark": "pipeline", "workdir": wd, "command": _COMMAND.value, "note": _NOTE.value,
      "systems": systems,
      "vs_baseline": {s: {m: compare[s][m] for m in ("ndcg@10", "recall@100") if m in compare[s]}
                      for s in compare},
      "teacher": {k: stats.get(k) for k in ("teacher", "quality") if k in stats},
      "ranker": _stage(layout.ranker_dir(wd)), "ranker_fusion": _json(layout.fusion(wd)),
      "distill": _stage(layout.system_dir(wd, "distilled")),
      "direct": _stage(layout.system_dir(wd, "direct")),
      "supervised": _stage(layout.system_dir(wd, "supervised")),
  }, indent=1))


if __name__ == "__main__":
  sys.exit(app.run(main))
