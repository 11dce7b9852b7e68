"""The sweep report's plots (`aggregate`), each written only when the sweep varies what it shows:

- `learning_curve.png`: each system's test metric (mean ± sd over seeds) against the number of
  labelled queries, one panel per setting of the other swept fields;
- `gain_vs_teacher.png`: each trained system's gain over the baseline against the teacher's
  nDCG@10 on its own training lists (labels/stats.json "quality"), the initial order's marked;
- `dev_vs_test.png`: each system's dev figure (done.json) against its test metric, per point.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence

from interdistill_jax import files, layout

MAX_QUERIES = "label.max_queries"


def _plt():
  import matplotlib  # noqa: PLC0415
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415
  return plt


def _label(values: dict, fields: Sequence[str]) -> str:
  return ", ".join(f"{k.rsplit('.', 1)[-1]}={values[k]}" for k in fields if k in values) or "all"


def learning_curve(root: str, summary: dict) -> str | None:
  metric = summary["metric"]
  families: dict[str, list[dict]] = {}
  others = [f for f in summary["varying"] if f not in (MAX_QUERIES, "seed")]
  for cell in summary["cells"]:
    if cell["labelled"] is None:
      continue
    key = json.dumps({f: cell["values"].get(f) for f in others}, sort_keys=True, default=str)
    families.setdefault(key, []).append(cell)
  families = {k: v for k, v in families.items() if len({c["labelled"]["mean"] for c in v}) > 1}
  if not families:
    return None
  plt = _plt()
  fig, axes = plt.subplots(1, len(families), figsize=(5.5 * len(families), 4), squeeze=False)
  for ax, cells in zip(axes[0], families.values()):
    cells = sorted(cells, key=lambda c: c["labelled"]["mean"])
    systems = list(dict.fromkeys(s for c in cells for s in c["systems"]))
    for system in systems:
      rows = [(c["labelled"]["mean"], c["systems"][system][metric]) for c in cells
              if metric in c["systems"].get(system, {})]
      ax.errorbar([x for x, _ in rows], [s["mean"] for _, s in rows],
                  yerr=[s["sd"] or 0.0 for _, s in rows], marker="o", capsize=3, label=system,
                  ls="--" if system == "baseline" else "-")
    ax.set_xlabel("labelled queries")
    ax.set_ylabel(f"test {metric} (mean ± sd over seeds)")
    ax.set_title(_label(cells[0]["values"], others))
    ax.legend(fontsize=8)
  fig.tight_layout()
  return _save(fig, root, "learning_curve.png")


def gain_vs_teacher(root: str, summary: dict) -> str | None:
  metric = summary["metric"]
  points = [p for p in summary["points"].values()
            if (p.get("teacher_audit") or {}).get("teacher_ndcg@10") is not None]
  if len({p["teacher_audit"]["teacher_ndcg@10"] for p in points}) < 2:
    return None
  plt = _plt()
  fig, ax = plt.subplots(figsize=(6.5, 4.5))
  systems = list(dict.fromkeys(s for p in points for s in p["vs_baseline"]))
  for i, system in enumerate(systems):
    rows = [(p["teacher_audit"]["teacher_ndcg@10"], p["vs_baseline"][system][metric]["diff"])
            for p in points if metric in p["vs_baseline"].get(system, {})]
    color = f"C{i}"
    ax.scatter([x for x, _ in rows], [y for _, y in rows], s=14, alpha=0.4, color=color)
    cells = [c for c in summary["cells"] if "teacher_ndcg@10" in c["teacher"]
             and metric in c["systems"].get(system, {}).get("gain", {})]
    cells = sorted(cells, key=lambda c: c["teacher"]["teacher_ndcg@10"]["mean"])
    ax.errorbar([c["teacher"]["teacher_ndcg@10"]["mean"] for c in cells],
                [c["systems"][system]["gain"][metric]["mean"] for c in cells],
                yerr=[c["systems"][system]["gain"][metric]["sd"] or 0.0 for c in cells],
                marker="o", capsize=3, color=color, label=system)
  initial = [p["teacher_audit"]["initial_ndcg@10"] for p in points
             if "initial_ndcg@10" in p["teacher_audit"]]
  if initial:
    ax.axvline(sum(initial) / len(initial), color="gray", ls=":", label="initial order's nDCG@10")
  ax.axhline(0.0, color="black", lw=0.8)
  ax.set_xlabel("teacher nDCG@10 on its training lists")
  ax.set_ylabel(f"test {metric} gain over the baseline")
  ax.legend(fontsize=8)
  fig.tight_layout()
  return _save(fig, root, "gain_vs_teacher.png")


def dev_vs_test(root: str, summary: dict) -> str | None:
  metric = summary["metric"]
  shown = {s: c for s, c in summary["dev_vs_test"].items() if len(c["points"]) >= 2}
  if not shown:
    return None
  cell_of = {name: i for i, cell in enumerate(summary["cells"]) for name in cell["points"]}
  others = [f for f in summary["varying"] if f != "seed"]
  plt = _plt()
  fig, axes = plt.subplots(1, len(shown), figsize=(4 * len(shown), 3.6), squeeze=False)
  for ax, (system, c) in zip(axes[0], shown.items()):
    for i, cell in enumerate(summary["cells"]):  # one colour per setting, its seeds alike
      rows = [(d, t) for d, t, name in zip(c["dev"], c["test"], c["points"]) if cell_of[name] == i]
      if rows:
        ax.scatter([d for d, _ in rows], [t for _, t in rows], s=18, color=f"C{i % 10}",
                   label=_label(cell["values"], others))
    rho = ("" if c["spearman"] is None else
           f" (Spearman {c['spearman']:+.2f} in {len(c['groups'])} comparable sets)")
    ax.set_title(system + rho, fontsize=10)
    ax.set_xlabel("dev ListMLE (done.json)")
    ax.set_ylabel(f"test {metric}")
  if len(summary["cells"]) > 1:
    axes[0][0].legend(fontsize=7)
  fig.tight_layout()
  return _save(fig, root, "dev_vs_test.png")


def _save(fig, root: str, name: str) -> str:
  path = layout.aggregate_file(root, name)
  buffer = io.BytesIO()
  fig.savefig(buffer, dpi=100, format="png")
  files.write_bytes(path, buffer.getvalue())
  _plt().close(fig)
  return path


def write_all(root: str, summary: dict) -> list[str]:
  """Writes the plots the sweep's points support; returns their paths."""
  files.makedirs(layout.aggregate_dir(root))
  plots = (learning_curve(root, summary), gain_vs_teacher(root, summary), dev_vs_test(root, summary))
  return [p for p in plots if p]
