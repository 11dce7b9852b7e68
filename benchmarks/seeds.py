"""Every system over several seeds: mean and sd of each metric, each seed's bootstrap CI.

  .venv/bin/python benchmarks/seeds.py --workdirs=runs/s0,runs/s1,runs/s2 \
      --command="..." > benchmarks/results/scifact_seeds.json

Each workdir is one finished run (`evaluate` done) of the same config with another `--config.seed`;
retrieve and label may be shared between them (the same teacher labels every seed). Reads
eval/*.json, eval/compare.json, eval/ablations.json (the method against its ablations, per seed
and as mean ± sd of the differences), ranker/done.json (the ranker's dev ListMLE against the initial
retriever's) and each retriever's done.json (its dev ListMLE of the LLM's rankings). Prints JSON.
The reading and the statistics are `interdistill_jax.aggregate`'s (`read_run`, `over_seeds`),
which reports a whole sweep the same way.
"""

import json
import sys

from absl import app, flags

from interdistill_jax import aggregate

_WORKDIRS = flags.DEFINE_list("workdirs", [], "Finished workdirs, one per seed.")
_COMMAND = flags.DEFINE_string("command", "", "The command lines that produced the workdirs.")
_NOTE = flags.DEFINE_string("note", "", "Anything else the record should say.")


def main(argv):
  del argv
  seeds = [aggregate.read_run(wd) for wd in _WORKDIRS.value]
  print(json.dumps({"benchmark": "seeds", "command": _COMMAND.value, "note": _NOTE.value,
                    "summary": aggregate.over_seeds(seeds),
                    "ablations": aggregate.ablations_over_seeds(seeds), "per_seed": seeds}, indent=1))


if __name__ == "__main__":
  sys.exit(app.run(main))
