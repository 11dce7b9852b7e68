"""The Markdown report of a sweep (`aggregate`): a table per setting, the gain against the
teacher's quality, the dev loss against the test metric, the dev figures, then the plots.

Like `aggregate_plots`, it reads only the summary `aggregate.aggregate` builds (summary.json);
what it needs of the reading side (the dev figures' systems, the seed's field) it is given.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from interdistill_jax import metrics


def _teacher_markdown(curves: Sequence[dict], metric: str) -> list[str]:
  lines = ["## Gain against the teacher's quality", "",
           f"Each cell's gain in {metric} over the baseline (mean over its seeds), from the weakest "
           "teacher to the strongest (the teacher's nDCG@10 on its training lists against the "
           "initial order's); a system pays where every seed's 95% CI is above 0 (marked *).", ""]
  for curve in curves:
    if curve["fixed"]:
      lines += ["With " + ", ".join(f"{k}={v}" for k, v in curve["fixed"].items()) + ":", ""]
    names = list(curve["pays_from"])
    head = ["teacher", "teacher nDCG@10", "initial order", *names]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in curve["rows"]:
      initial = "" if row["initial_ndcg@10"] is None else f"{row['initial_ndcg@10']:.4f}"
      gains = []
      for system in names:
        s = row["systems"].get(system)
        gains.append("" if s is None else f"{s['gain']:+.4f}{' *' if s['pays'] else ''}")
      label = ", ".join(f"{k}={v}" for k, v in row["values"].items())
      lines.append("| " + " | ".join([label, f"{row['teacher_ndcg@10']:.4f}", initial, *gains]) + " |")
    lines.append("")
    weakest = curve["rows"][0]["teacher_ndcg@10"]
    for system, p in curve["pays_from"].items():
      if p["teacher_ndcg@10"] is None:
        lines.append(f"- {system}: does not pay with the strongest teacher measured "
                     f"({p['not_at']:.4f}).")
      elif p["pays_everywhere"]:
        lines.append(f"- {system}: pays at every level measured, down to the weakest teacher "
                     f"({weakest:.4f}): where it stops paying is below this range.")
      else:
        lines.append(f"- {system}: pays from teacher {p['teacher_ndcg@10']:.4f} up; not at "
                     f"{p['not_at']:.4f}.")
    lines.append("")
  return lines


def _fmt(stats: dict | None, signed: bool = False) -> str:
  if not stats:
    return ""
  mean = f"{stats['mean']:+.4f}" if signed else f"{stats['mean']:.4f}"
  return mean if stats["sd"] is None else f"{mean} ± {stats['sd']:.4f}"


def markdown(summary: dict, plots: Sequence[str], *, dev_systems: Sequence[str], seed: str) -> str:
  """The report: one table per cell, then the plots. `dev_systems`: the dev figures' systems in
  their order (`aggregate.DEV_FIGURES`); `seed`: the seed's field, left out of setting names."""
  metric = summary["metric"]
  shown = [m for m in metrics.HEADLINE if any(m in s for c in summary["cells"] for s in c["systems"].values())]
  lines = [f"# Sweep: {summary['root']}", "",
           f"{len(summary['points'])} finished points in {len(summary['cells'])} settings; each "
           "metric is the mean ± sd over the seeds (sample sd), and each seed's paired bootstrap "
           "(10,000 resamples) against the baseline gives its 95% CI.", ""]
  if summary["dev_only"]:
    lines[-2] += (f" {len(summary['dev_only'])} more points end before `evaluate` (their "
                  "`pipeline.stages`): they have dev figures only (the last section).")
  if summary["unfinished"]:
    lines += [f"Not finished (left out): {', '.join(summary['unfinished'])}.", ""]
  varying = summary["varying"]
  for cell in summary["cells"]:
    title = ", ".join(f"{k}={v}" for k, v in cell["values"].items() if k in varying) or "all points"
    seeds = ", ".join(str(s) for s in cell["seeds"])
    lines += [f"## {title}", "", f"Seeds: {seeds}."]
    if cell["labelled"]:
      lines[-1] += f" Labelled queries: {cell['labelled']['mean']:.0f}."
    t = cell["teacher"]
    if "teacher_ndcg@10" in t:
      lines[-1] += (f" Teacher nDCG@10 on its training lists {_fmt(t['teacher_ndcg@10'])} "
                    f"(initial order {_fmt(t.get('initial_ndcg@10'))}).")
    head = ["system", "seeds", *shown, f"Δ {metric}", f"{metric} 95% CI per seed", "CI above 0"]
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for system, s in cell["systems"].items():
      cis = "; ".join(f"[{c['ci_low']:+.4f}, {c['ci_high']:+.4f}]"
                      for c in s.get("vs_baseline", {}).get(metric, []))
      row = [system, str(s["seeds"]), *(_fmt(s.get(m)) for m in shown),
             _fmt(s.get("gain", {}).get(metric), signed=True), cis,
             s.get(f"{metric}_ci_low_above_0_in", "")]
      lines.append("| " + " | ".join(row) + " |")
    lines.append("")
  if summary.get("teacher_curves"):
    lines += _teacher_markdown(summary["teacher_curves"], metric)
  if summary["dev_vs_test"]:
    lines += ["## Dev loss against the test metric", "",
              "Spearman's rank correlation, per system, within each set of at least 3 points "
              "whose dev figures compare: the same seed (it draws the dev queries) and the same "
              "data, teacher and label settings (the labels the dev loss is computed against), "
              "so that they differ in recipe alone; the mean over those sets, weighted by their "
              f"points (dev figure: done.json; lower is better, so a dev figure that predicts "
              f"{metric} correlates negatively)."]
    if not any(c["groups"] for c in summary["dev_vs_test"].values()):
      lines[-1] += (" No 3 points here share their dev queries and labels (they differ in seed, "
                    "data, teacher or labelled set), so no correlation is computed: their dev "
                    "losses do not compare, though the plot shows them.")
    lines += ["", "| system | points | sets compared | Spearman rho |", "|---|---|---|---|"]
    for system, c in summary["dev_vs_test"].items():
      rho = "" if c["spearman"] is None else f"{c['spearman']:+.3f}"
      lines.append(f"| {system} | {len(c['points'])} | {len(c['groups'])} | {rho} |")
    lines.append("")
  if summary["dev_cells"]:
    lines += _dev_markdown(summary["dev_cells"], summary["dev_varying"], dev_systems, seed)
  lines += [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in plots]
  return "\n".join(lines) + "\n"


def _dev_markdown(dev_cells_: Sequence[dict], varying: Sequence[str], dev_systems: Sequence[str],
                  seed: str) -> list[str]:
  systems = [s for s in dev_systems if any(s in c["dev"] for c in dev_cells_)]
  names = {"baseline": "initial order"}
  lines = ["## Dev figures", "",
           "Each setting's dev figures (done.json: the ranker's ListMLE of the teacher's dev "
           "rankings, alone, fused and the initial order's; each retriever's after training; "
           "lower is better), mean ± sd over its seeds. Settings compare where they hold the "
           "same seeds and the same data, teacher and label settings.", ""]
  head = ["setting", "seeds", *(names.get(s, s) for s in systems), "ranker's selected steps"]
  lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for cell in dev_cells_:
    title = ", ".join(f"{k}={v}" for k, v in cell["values"].items()
                      if k in varying and k != seed) or "all points"
    steps = ", ".join(str(s) for s in cell["ranker_selected_step"] or [])
    row = [title, ", ".join(str(s) for s in cell["seeds"]),
           *(_fmt(cell["dev"].get(s)) for s in systems), steps]
    lines.append("| " + " | ".join(row) + " |")
  lines.append("")
  return lines
