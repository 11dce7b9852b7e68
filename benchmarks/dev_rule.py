"""A choice between two values of one swept field, by a rule fixed before the points ran. Dev only.

  python benchmarks/dev_rule.py --root=ROOT --field=ranker.epochs --candidate=2.5 --incumbent=1.5 \
      [--system=ranker_fused] [--seeds=0,1,2] [--out=F.json]

The rule: the candidate replaces the incumbent if, in every group of points (the sweep's other
varying fields but the seed: e.g. each teacher), the mean of `--system`'s dev figure
(`aggregate.DEV_FIGURES`, lower is better; by default the fused ranker's dev ListMLE) over the
seeds is lower at the candidate. Both sides of a group must hold every seed of `--seeds`, with the
same dev queries and labels (`aggregate.dev_group`), or the comparison is incomplete and decides
nothing. Reads what `sweep` left under ROOT (`aggregate.read_points`), test figures never. Prints
JSON: per group and seed both figures and the ranker's selected step, the means, the difference,
and the decision.
"""

import json

import numpy as np
from absl import app, flags

from interdistill_jax import aggregate


def _define_flags() -> None:
  flags.DEFINE_string("root", None, "A sweep's root directory.", required=True)
  flags.DEFINE_string("field", None, "The swept field the choice is about.", required=True)
  flags.DEFINE_string("candidate", None, "Its value that would replace the incumbent.", required=True)
  flags.DEFINE_string("incumbent", None, "Its value in the config now.", required=True)
  flags.DEFINE_string("system", "ranker_fused", f"Whose dev figure: one of {sorted(aggregate.DEV_FIGURES)}.")
  flags.DEFINE_list("seeds", ["0", "1", "2"], "The seeds every side must hold.")
  flags.DEFINE_string("out", None, "Also write the JSON here.")


def _parse(text: str):
  """A flag's value as the sweep file wrote it (2.5, 1e-4, "cls", True)."""
  try:
    return json.loads(text)
  except json.JSONDecodeError:
    return text


def decide(points, *, field: str, candidate, incumbent, system: str, seeds) -> dict:
  """The rule over `points` (`aggregate.read_points` records)."""
  if system not in aggregate.DEV_FIGURES:
    raise ValueError(f"--system={system!r}: must be one of {sorted(aggregate.DEV_FIGURES)}")
  groups: dict[str, dict] = {}
  for p in points:
    values = p["values"]
    if field not in values or values[field] not in (candidate, incumbent):
      continue
    rest = {k: v for k, v in values.items() if k not in (field, aggregate.SEED)}
    key = json.dumps(rest, sort_keys=True, default=str)
    side = "candidate" if values[field] == candidate else "incumbent"
    group = groups.setdefault(key, {"values": rest, "candidate": {}, "incumbent": {}})
    group[side][values.get(aggregate.SEED)] = p
  out = {"field": field, "candidate": candidate, "incumbent": incumbent, "system": system,
         "seeds": list(seeds), "groups": []}
  complete = bool(groups)
  for group in groups.values():
    rows, missing = {}, []
    for seed in seeds:
      pair = {side: group[side].get(seed) for side in ("candidate", "incumbent")}
      figures = {side: aggregate.dev_figure(p, system) if p else None for side, p in pair.items()}
      if None in figures.values():
        missing.append(seed)
        continue
      if len({aggregate.dev_group(p["values"] | {field: None}) for p in pair.values()}) != 1:
        raise ValueError(f"seed {seed}: {pair['candidate']['name']} and {pair['incumbent']['name']} "
                         "differ in dev queries or labels; their dev figures do not compare")
      rows[str(seed)] = {side: {"dev": figures[side], "point": pair[side]["name"],
                                "selected_step": (pair[side]["dev"].get("ranker") or {}).get("selected_step")}
                         for side in pair}
    entry = {"values": group["values"], "seeds": rows, "missing_seeds": missing}
    if not missing:
      means = {side: float(np.mean([r[side]["dev"] for r in rows.values()]))
               for side in ("candidate", "incumbent")}
      entry.update(mean=means, difference=means["candidate"] - means["incumbent"],
                   candidate_lower=means["candidate"] < means["incumbent"])
    complete = complete and not missing
    out["groups"].append(entry)
  out["complete"] = complete
  if complete:
    adopt = all(g["candidate_lower"] for g in out["groups"])
    out["adopt"] = adopt
    out["decision"] = (f"{field}={candidate} replaces {incumbent}: its mean dev figure is lower in every group"
                       if adopt else f"{field}={incumbent} stays: the candidate's mean is not lower in every group")
  else:
    out["decision"] = "incomplete: a group lacks a seed on one side; nothing is decided"
  return out


def main(_):
  f = flags.FLAGS
  evaluated, dev_only, _ = aggregate.read_points(f.root)
  result = decide([*evaluated, *dev_only], field=f.field, candidate=_parse(f.candidate),
                  incumbent=_parse(f.incumbent), system=f.system,
                  seeds=[_parse(s) for s in f.seeds])
  result["root"] = f.root
  text = json.dumps(result, indent=1)
  print(text)
  if f.out:
    with open(f.out, "w") as fp:
      fp.write(text + "\n")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
