"""Every system over the points of a sweep: mean ± sd over seeds, each seed's bootstrap CI.

  python -m interdistill_jax.aggregate --root=runs/learning_curve [--metric=ndcg@10]

Reads the points of `ROOT/sweep.json` (`interdistill_jax.sweep`) whose `evaluate` finished, and
groups them into cells: the points with the same swept values but the seed. For each cell and
system: each metric's mean ± sd over the seeds, the gain over the baseline (mean ± sd), and each
seed's paired-bootstrap 95% CI against the baseline (`eval/compare.json`). Writes
`ROOT/aggregate/`: `report.md` (`aggregate_report`), `summary.json`, and the plots
(`aggregate_plots`): the metric against the number of labelled queries, the distilled gain
against the teacher's own quality on its training lists (labels/stats.json "quality"), and each
system's dev loss (done.json) against its test metric. Where the teacher varies, the report says from which teacher quality on each
system pays (`teacher_curves`). The dev losses are correlated with the test metric only among
points whose dev figures compare: those with the same seed (it draws the dev queries) and the
same data, teacher and label settings (they make the labels the dev loss is computed against),
which differ in recipe alone: the question a selection by dev loss answers. Points whose
`pipeline.stages` end before `evaluate` (a sweep that compares rankers on dev, say) count as
finished when their last stage is: the report's "Dev figures" gives every setting's dev figures,
mean ± sd over seeds (`dev_cells`), theirs and the evaluated points' alike.

`read_run` and `over_seeds` are also what `benchmarks/seeds.py` reports over seed workdirs.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence

import ml_collections
import numpy as np
from absl import app, flags

from interdistill_jax import data as data_lib
from interdistill_jax import aggregate_report, files, layout, metrics

SEED = "seed"
# evaluate's systems in the order its report lists them.
SYSTEM_ORDER = ("baseline", "ranker", "ranker_fused", *layout.SYSTEMS)
# Where each system's dev figure is in a `read_run` record's "dev" (lower is better): the
# ranker's ListMLE of the teacher's dev rankings (alone, fused with the initial retriever, and
# the initial retriever's own, each at its best scale), each retriever's after training.
DEV_FIGURES = {"baseline": ("ranker", "initial"), "ranker": ("ranker", "ranker"),
               "ranker_fused": ("ranker", "fused"),
               **{s: (s, "dev_llm_listmle", "trained") for s in layout.SYSTEMS}}
# Swept fields that change the dev queries or the labels a dev figure is computed against: two
# points' dev figures compare only when these are equal.
DEV_DATA_PREFIXES = ("data.", "teacher.", "label.")


def _json(path: str):
  if not files.exists(path):
    return None
  with files.open_file(path, "r") as f:
    return json.load(f)


def read_run(workdir: str) -> dict:
  """One finished workdir: each system's headline metrics, its bootstrap comparison with the
  baseline and against its ablations, the dev figures of done.json (of the retrievers' weights as
  evaluated, `distill.interpolation`), the teacher audit and how many queries were labelled."""
  out = {"workdir": workdir, "systems": {}, "vs_baseline": {}, "dev": {}}
  evaluated = _json(layout.done(layout.eval_dir(workdir))) or {}
  names = [f"{s}.json" for s in evaluated.get("systems", [])] or sorted(
      n for n in (files.listdir(layout.eval_dir(workdir)) if files.exists(layout.eval_dir(workdir))
                  else []) if n.endswith(".json"))
  for name in names:
    r = _json(layout.eval_file(workdir, name))
    if r and "system" in r and "metrics" in r:  # not compare.json, ablations.json, done.json, inputs.json
      out["systems"][r["system"]] = {m: r["metrics"][m] for m in metrics.HEADLINE if m in r["metrics"]}
  for key, name in (("vs_baseline", "compare.json"), ("ablations", "ablations.json")):
    out[key] = {system: {m: {k: c[k] for k in ("diff", "ci_low", "ci_high", "p_value")}
                         for m, c in per_metric.items()}
                for system, per_metric in (_json(layout.eval_file(workdir, name)) or {}).items()}
  ranker = _json(layout.done(layout.ranker_dir(workdir))) or {}
  if "dev_listmle" in ranker:
    out["dev"]["ranker"] = dict(ranker["dev_listmle"], head=ranker.get("head"),
                                selected_step=ranker.get("selected_step"))
  alpha = evaluated.get("interpolation", 1.0)
  for system in layout.SYSTEMS:
    done = _json(layout.done(layout.system_dir(workdir, system)))
    if done:
      out["dev"][system] = {k: done.get(k) for k in ("dev_llm_listmle", "teacher", "llm_loss",
                                                     "list_size", "teacher_temperature", "selected_step")}
      if alpha != 1.0:  # the dev figure of the weights evaluated (None where none was recorded)
        row = next((r for r in done.get("dev_interpolation") or [] if r["alpha"] == alpha), None)
        out["dev"][system]["dev_llm_listmle"] = row and dict(done["dev_llm_listmle"],
                                                             trained=row["dev_llm_listmle"])
        out["dev"][system]["interpolation"] = alpha
  stats = _json(layout.label_stats(workdir)) or {}
  out["teacher_audit"] = stats.get("quality")
  out["labelled"] = (stats.get("labels") or {}).get("queries")
  return out


def dev_figure(run: dict, system: str) -> float | None:
  """`system`'s dev figure in a `read_run` record (DEV_FIGURES), or None."""
  node = run["dev"]
  for key in DEV_FIGURES.get(system, ("-",)):
    node = node.get(key) if isinstance(node, dict) else None
  return float(node) if isinstance(node, (int, float)) else None


def _stats(values: Sequence[float]) -> dict:
  return {"mean": float(np.mean(values)),
          "sd": float(np.std(values, ddof=1)) if len(values) > 1 else None,
          "values": [float(v) for v in values]}


def over_seeds(runs: Sequence[dict]) -> dict:
  """system -> {"seeds": n, metric: {mean, sd, values}, "gain": {metric: {mean, sd, values}},
  "vs_baseline": {metric: [each seed's diff, ci_low, ci_high, p_value]},
  "{metric}_ci_low_above_0_in": "k/n"} over `read_run` records of one setting's seeds."""
  found = {s for r in runs for s in r["systems"]}
  systems = [s for s in SYSTEM_ORDER if s in found] + sorted(found - set(SYSTEM_ORDER))
  summary = {}
  for system in systems:
    rows = [r["systems"][system] for r in runs if system in r["systems"]]
    out = summary[system] = {"seeds": len(rows)}
    for m in metrics.HEADLINE:
      values = [row[m] for row in rows if m in row]
      if values:
        out[m] = _stats(values)
    comparisons = [r["vs_baseline"][system] for r in runs if system in r["vs_baseline"]]
    if comparisons:
      out["gain"], out["vs_baseline"] = {}, {}
      for m in metrics.HEADLINE:
        per_seed = [c[m] for c in comparisons if m in c]
        if per_seed:
          out["gain"][m] = _stats([c["diff"] for c in per_seed])
          out["vs_baseline"][m] = per_seed
          out[f"{m}_ci_low_above_0_in"] = f"{sum(c['ci_low'] > 0 for c in per_seed)}/{len(per_seed)}"
  return summary


def ablations_over_seeds(runs: Sequence[dict]) -> dict:
  """"SYSTEM vs REFERENCE" -> metric -> {"diff": {mean, sd, values}, "per_seed": [each seed's
  diff, ci_low, ci_high, p_value], "ci_low_above_0_in": "k/n", "ci_high_below_0_in": "k/n"} over
  `read_run` records (eval/ablations.json of each seed)."""
  out = {}
  for pair in dict.fromkeys(p for r in runs for p in r.get("ablations", {})):
    comparisons = [r["ablations"][pair] for r in runs if pair in r.get("ablations", {})]
    out[pair] = {}
    for m in metrics.HEADLINE:
      per_seed = [c[m] for c in comparisons if m in c]
      if per_seed:
        out[pair][m] = {"diff": _stats([c["diff"] for c in per_seed]), "per_seed": per_seed,
                        "ci_low_above_0_in": f"{sum(c['ci_low'] > 0 for c in per_seed)}/{len(per_seed)}",
                        "ci_high_below_0_in": f"{sum(c['ci_high'] < 0 for c in per_seed)}/{len(per_seed)}"}
  return out


# --- a sweep root ---------------------------------------------------------------------------

def _stages_done(workdir: str, config: dict) -> bool:
  """Whether every stage of the point's recorded `pipeline.stages` left its done marker."""
  cfg = ml_collections.ConfigDict(config)
  return all(files.exists(path) for name in cfg.pipeline.stages
             for path in layout.STAGES[name].outputs(cfg, workdir))


def read_points(root: str) -> tuple[list[dict], list[dict], list[str]]:
  """(points whose `evaluate` finished, points whose stages end before `evaluate` and finished:
  dev figures only, unfinished point names); the points are `read_run` records with "name" and
  "values"."""
  plan = _json(layout.sweep_plan(root))
  if plan is None:
    raise FileNotFoundError(f"{layout.sweep_plan(root)} not found: run `interdistill_jax.sweep "
                            f"--root={root}` first")
  evaluated, dev_only, unfinished = [], [], []
  for name, entry in plan["points"].items():
    workdir = layout.point_dir(root, name)
    config = (_json(layout.point_record(workdir)) or {}).get("config", {})
    stages = _lookup(config, "pipeline.stages") or ()
    if layout.is_done(layout.eval_dir(workdir)):
      kind = evaluated
    elif stages and "evaluate" not in stages and _stages_done(workdir, config):
      kind = dev_only
    else:
      unfinished.append(name)
      continue
    values = dict(entry["values"])
    # A field another sweep over this root varied: this point ran with its config's value.
    for field in plan["axes"]:
      if field not in values:
        values[field] = _lookup(config, field)
    kind.append(read_run(workdir) | {"name": name, "values": values})
  return evaluated, dev_only, unfinished


def _lookup(config: dict, field: str):
  node = config
  for part in field.split("."):
    node = node.get(part) if isinstance(node, dict) else None
  return node


def _by_setting(points: Sequence[dict]) -> list[tuple[dict, list[dict]]]:
  """(values but the seed, the points that have them), in the order the settings first appear."""
  groups: dict[str, tuple[dict, list[dict]]] = {}
  for p in points:
    values = {k: v for k, v in p["values"].items() if k != SEED}
    groups.setdefault(json.dumps(values, sort_keys=True, default=str), (values, []))[1].append(p)
  return list(groups.values())


def cells(points: Sequence[dict]) -> list[dict]:
  """Points grouped by their values but the seed, in the order they first appear."""
  out = []
  for values, runs in _by_setting(points):
    audits = [r["teacher_audit"] for r in runs if r.get("teacher_audit")]
    teacher = {k: _stats([a[k] for a in audits if k in a])
               for k in ("teacher_ndcg@10", "initial_ndcg@10", "kendall_tau")
               if any(k in a for a in audits)}
    labelled = [r["labelled"] for r in runs if r.get("labelled") is not None]
    out.append({"values": values, "points": [r["name"] for r in runs],
                "seeds": [r["values"].get(SEED) for r in runs],
                "labelled": _stats(labelled) if labelled else None,
                "teacher": teacher, "systems": over_seeds(runs),
                "ablations": ablations_over_seeds(runs)})
  return out


def dev_cells(points: Sequence[dict]) -> list[dict]:
  """The dev figures (`DEV_FIGURES`, lower is better) of points grouped by their values but the
  seed: per cell and system, mean ± sd over its seeds, and the ranker's selected steps. These are
  what a choice between settings is made on; two cells compare seed by seed where they hold the
  same seeds and the same data, teacher and label settings (`dev_group`)."""
  figures = {p["name"]: {s: f for s in DEV_FIGURES if (f := dev_figure(p, s)) is not None}
             for p in points}
  out = []
  for values, group in _by_setting([p for p in points if figures[p["name"]]]):
    rows = [figures[p["name"]] for p in group]
    systems = [s for s in DEV_FIGURES if any(s in f for f in rows)]
    steps = [step for p in group
             if (step := (p["dev"].get("ranker") or {}).get("selected_step")) is not None]
    out.append({"values": values, "points": [p["name"] for p in group],
                "seeds": [p["values"].get(SEED) for p in group],
                "dev": {s: _stats([f[s] for f in rows if s in f]) for s in systems},
                "ranker_selected_step": steps or None})
  return out


def teacher_curves(cells_: Sequence[dict], metric: str) -> list[dict]:
  """Where distillation starts to pay. Per set of cells that differ in teacher settings alone
  (fields `teacher.*`), with at least two teachers whose quality on their training lists was
  measured (labels/stats.json): the cells from the weakest teacher to the strongest, each
  system's gain and whether it pays there (every seed's CI against the baseline above 0), and per
  system `pays_from`: the weakest teacher from which it pays at every stronger level measured
  (None where it does not pay at the strongest), `not_at`: the next weaker one, where it does
  not, and `pays_everywhere` when there is none (where it stops paying is below the range)."""
  groups: dict[str, tuple[dict, list[dict]]] = {}
  for cell in cells_:
    if "teacher_ndcg@10" not in cell["teacher"]:
      continue
    fixed = {k: v for k, v in cell["values"].items() if not k.startswith("teacher.")}
    groups.setdefault(json.dumps(fixed, sort_keys=True, default=str), (fixed, []))[1].append(cell)
  curves = []
  for fixed, members in groups.values():
    if len({c["teacher"]["teacher_ndcg@10"]["mean"] for c in members}) < 2:
      continue
    members = sorted(members, key=lambda c: c["teacher"]["teacher_ndcg@10"]["mean"])
    rows = []
    for cell in members:
      initial = cell["teacher"].get("initial_ndcg@10")
      systems = {}
      for system, stats in cell["systems"].items():
        per_seed = stats.get("vs_baseline", {}).get(metric)
        if per_seed:
          systems[system] = {"gain": stats["gain"][metric]["mean"], "seeds": len(per_seed),
                             "pays": all(c["ci_low"] > 0 for c in per_seed)}
      rows.append({"values": {k: v for k, v in cell["values"].items() if k.startswith("teacher.")},
                   "teacher_ndcg@10": cell["teacher"]["teacher_ndcg@10"]["mean"],
                   "initial_ndcg@10": initial["mean"] if initial else None, "systems": systems})
    names = list(dict.fromkeys(s for r in rows for s in r["systems"]))
    pays_from = {}
    for system in names:
      level, not_at = None, None
      for row in reversed(rows):  # from the strongest teacher down, while it pays
        if not row["systems"].get(system, {}).get("pays"):
          not_at = row["teacher_ndcg@10"]
          break
        level = row["teacher_ndcg@10"]
      pays_from[system] = {"teacher_ndcg@10": level, "not_at": not_at,
                           "pays_everywhere": level is not None and not_at is None}
    curves.append({"fixed": fixed, "rows": rows, "pays_from": pays_from})
  return curves


def _varying(points: Sequence[dict]) -> list[str]:
  fields = list(dict.fromkeys(k for p in points for k in p["values"]))
  return [f for f in fields
          if len({json.dumps(p["values"].get(f), default=str) for p in points}) > 1]


def dev_group(values: dict) -> str:
  """What two points must share for their dev figures to compare: the seed (the dev queries are
  its draw) and every data, teacher and label setting (the labels)."""
  shared = {k: v for k, v in values.items()
            if k == SEED or k.startswith(DEV_DATA_PREFIXES) or k.endswith("dev_fraction")}
  return json.dumps(shared, sort_keys=True, default=str)


def _dev_vs_test(points: Sequence[dict], metric: str) -> dict:
  """Per system: every point's (dev figure, test metric), and Spearman's rho within each group
  of at least 3 points whose dev figures compare (`dev_group`); "spearman" is the groups' mean,
  weighted by their points, None where no group has 3."""
  from scipy import stats  # noqa: PLC0415
  out = {}
  for system in DEV_FIGURES:
    pairs = [(dev_figure(p, system), p["systems"][system][metric], p["name"], dev_group(p["values"]))
             for p in points if system in p["systems"] and metric in p["systems"][system]]
    pairs = [x for x in pairs if x[0] is not None]
    if not pairs:
      continue
    groups = []
    for key in dict.fromkeys(x[3] for x in pairs):
      rows = [x for x in pairs if x[3] == key]
      if len(rows) >= 3 and len({x[0] for x in rows}) > 1 and len({x[1] for x in rows}) > 1:
        rho = float(stats.spearmanr([x[0] for x in rows], [x[1] for x in rows]).statistic)
        groups.append({"points": [x[2] for x in rows], "spearman": rho})
    rho = (float(np.average([g["spearman"] for g in groups], weights=[len(g["points"]) for g in groups]))
           if groups else None)
    out[system] = {"spearman": rho, "groups": groups, "points": [x[2] for x in pairs],
                   "dev": [x[0] for x in pairs], "test": [x[1] for x in pairs]}
  return out


def aggregate(root: str, *, metric: str = "ndcg@10") -> dict:
  """Writes ROOT/aggregate/{report.md, summary.json, *.png}; returns the summary."""
  from interdistill_jax import aggregate_plots  # noqa: PLC0415 (matplotlib only here)
  points, dev_only, unfinished = read_points(root)
  if not points and not dev_only:
    raise ValueError(f"{root}: no point has finished yet ({len(unfinished)} unfinished)")
  available = sorted({m for p in points for s in p["systems"].values() for m in s})
  if points and metric not in available:
    raise ValueError(f"--metric={metric!r} is not in the points' results; they have {available}")
  grouped = cells(points)
  summary = {"root": root, "metric": metric, "varying": _varying(points), "cells": grouped,
             "points": {p["name"]: p for p in points}, "unfinished": unfinished,
             "teacher_curves": teacher_curves(grouped, metric),
             "dev_vs_test": _dev_vs_test(points, metric),
             "dev_only": {p["name"]: p for p in dev_only},
             "dev_cells": dev_cells([*points, *dev_only]),
             "dev_varying": _varying([*points, *dev_only])}
  files.makedirs(layout.aggregate_dir(root))
  plots = aggregate_plots.write_all(root, summary)
  summary["plots"] = [os.path.basename(p) for p in plots]
  data_lib.write_json(layout.aggregate_file(root, "summary.json"), summary)
  report = aggregate_report.markdown(summary, plots, dev_systems=tuple(DEV_FIGURES), seed=SEED)
  data_lib.atomic_write_text(layout.aggregate_file(root, "report.md"), report)
  return summary


def _define_flags() -> None:
  flags.DEFINE_string("root", None, "A sweep's root directory (interdistill_jax.sweep --root).")
  flags.DEFINE_string("metric", "ndcg@10", "The test metric of the plots and the CI column.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    summary = aggregate(flags.FLAGS.root, metric=flags.FLAGS.metric)
  except (ValueError, FileNotFoundError) as e:
    sys.stderr.write(f"error: {e}\n")
    sys.exit(1)
  dev_only = f" (and {len(summary['dev_only'])} with dev figures only)" if summary["dev_only"] else ""
  print(f"{len(summary['points'])} points, {len(summary['cells'])} settings{dev_only}: "  # noqa: T201
        f"{layout.aggregate_file(flags.FLAGS.root, 'report.md')}")


if __name__ == "__main__":
  _define_flags()
  flags.mark_flag_as_required("root")
  app.run(main)
