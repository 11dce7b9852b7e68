"""eval/report.md: the systems side by side, the bootstrap comparison, and PNG plots."""

from __future__ import annotations

import io
import json
import os

from interdistill_jax import data as data_lib
from interdistill_jax import files, layout, metrics


def table(results: list[dict]) -> str:
  """A markdown table: one row per system, the metrics users quote."""
  keys = [k for k in metrics.HEADLINE if any(k in r["metrics"] for r in results)]
  keys += sorted({k for r in results for k in r["metrics"] if k.startswith("rag.") and "@" in k},
                 key=lambda k: (int(k.split("@")[1]), k))
  lines = ["| system | queries | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
  for r in results:
    cells = [f"{r['metrics'][k]:.4f}" if k in r["metrics"] else "" for k in keys]
    lines.append(f"| {r['system']} | {r['num_queries']} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _comparison_table(comparison: dict, columns: tuple[str, str, str] = ("system", "baseline", "system")) -> str:
  lines = ["| {} | metric | {} | {} | diff | 95% CI | p |".format(*columns), "|---|---|---|---|---|---|---|"]
  for system, per_metric in comparison.items():
    for metric, c in per_metric.items():
      lines.append(f"| {system} | {metric} | {c['mean_a']:.4f} | {c['mean_b']:.4f} | "
                   f"{c['diff']:+.4f} | [{c['ci_low']:+.4f}, {c['ci_high']:+.4f}] | {c['p_value']:.4f} |")
  return "\n".join(lines)


def _read_metrics(path: str) -> list[dict]:
  if not files.exists(path):
    return []
  with files.open_file(path, "r") as f:
    return [json.loads(line) for line in f if line.strip()]


def _plots(workdir: str, results: list[dict]) -> list[str]:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  out_dir = layout.eval_dir(workdir)
  written = []
  stage_dirs = [layout.ranker_dir(workdir), *(layout.system_dir(workdir, s) for s in layout.SYSTEMS)]
  curves = {os.path.basename(d): _read_metrics(os.path.join(d, "metrics.jsonl")) for d in stage_dirs}
  curves = {k: v for k, v in curves.items() if v}
  if curves:
    fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 3.5), squeeze=False)
    for ax, (name, rows) in zip(axes[0], curves.items()):
      ax.plot([r["step"] for r in rows], [r["train/loss"] for r in rows], label="train/loss", lw=1)
      dev = [r for r in rows if "dev/loss" in r]
      if dev:
        ax.plot([r["step"] for r in dev], [r["dev/loss"] for r in dev], "o-", label="dev/loss")
      ax.set_title(name)
      ax.set_xlabel("step")
      ax.legend()
    fig.tight_layout()
    path = os.path.join(out_dir, "training_curves.png")
    _save(fig, path)
    plt.close(fig)
    written.append(path)
  keys = [k for k in ("ndcg@10", "recall@100", "mrr@10", "top20_acc") if k in results[0]["metrics"]]
  fig, ax = plt.subplots(figsize=(1.6 * len(keys) * max(1, len(results)) / 2 + 3, 3.5))
  width = 0.8 / len(results)
  for i, r in enumerate(results):
    ax.bar([j + i * width for j in range(len(keys))], [r["metrics"][k] for k in keys], width,
           label=r["system"])
  ax.set_xticks([j + width * (len(results) - 1) / 2 for j in range(len(keys))], keys)
  ax.set_ylim(0, 1)
  ax.legend()
  ax.set_title(f"{results[0]['dataset']} / {results[0]['split']}")
  fig.tight_layout()
  path = os.path.join(out_dir, "before_after.png")
  _save(fig, path)
  plt.close(fig)
  written.append(path)
  return written


def teacher_section(quality: dict | None, ranker_done: dict | None = None) -> list[str]:
  """Markdown lines: what the teacher teaches (labels/stats.json "quality") and what the ranker
  learned of it (ranker/done.json "dev_listmle")."""
  lines = []
  if quality:
    lines += ["## The teacher against the initial retriever (training lists)", ""]
    if "teacher_better" in quality:
      flag = "" if quality["teacher_better"] else (
          " **WARNING: the teacher is not better than the initial retriever; distilling it is "
          "likely to make the retriever worse.**")
      lines.append(f"- nDCG@10 on {quality['judged_queries']} judged lists: teacher "
                   f"{quality['teacher_ndcg@10']:.4f}, initial order {quality['initial_ndcg@10']:.4f} "
                   f"({quality['teacher_gain_ndcg@10']:+.4f}).{flag}")
    lines += [f"- Kendall's tau with the initial order: {quality['kendall_tau']:.3f}; the teacher "
              f"keeps the initial top 1 on {100 * quality['top1_agreement']:.1f}% of "
              f"{quality['queries']} queries; its top 1 was at initial rank "
              f"{quality['teacher_top1_initial_rank']:.2f} on average.", ""]
  dev = (ranker_done or {}).get("dev_listmle")
  if dev:
    lines += ["## The ranker on the dev queries (ListMLE of the teacher's rankings, lower is better)",
              "", f"- Each at its best scale: ranker ({ranker_done.get('head', 'cls')} head) "
              f"{dev['ranker']:.4f}, initial retriever {dev['initial']:.4f}; their fusion "
              f"{dev['fused']:.4f}.", ""]
  return lines


def _save(fig, path: str) -> None:
  buffer = io.BytesIO()
  fig.savefig(buffer, dpi=100, format="png")
  files.write_bytes(path, buffer.getvalue())


def _read_json(path: str) -> dict | None:
  if not files.exists(path):
    return None
  with files.open_file(path, "r") as f:
    return json.load(f)


def write(workdir: str, results: list[dict], comparison: dict, ablations: dict | None = None,
          interpolation: float = 1.0) -> str:
  """Writes eval/report.md (and its plots); returns the markdown. `interpolation`: the weight of
  the trained retrievers' own weights against their initial ones (`distill.interpolation`)."""
  parts = [f"# Evaluation: {results[0]['dataset']} / {results[0]['split']}", "", table(results), ""]
  trained = [r["system"] for r in results if r["system"] in layout.SYSTEMS]
  if trained and interpolation != 1.0:
    parts += [f"The trained retrievers ({', '.join(trained)}) are evaluated with their weights "
              f"interpolated: {interpolation:g} x trained + {1 - interpolation:g} x initial "
              "(`distill.interpolation`).", ""]
  stats = _read_json(layout.label_stats(workdir)) or {}
  parts += teacher_section(stats.get("quality"), _read_json(layout.done(layout.ranker_dir(workdir))))
  if comparison:
    parts += ["## Against the baseline (paired bootstrap, 10,000 resamples)", "",
              _comparison_table(comparison), ""]
  if ablations:
    parts += ["## Against the ablations (paired bootstrap, diff = system - reference)", "",
              "`distilled vs direct` is the method's claim: the retriever taught by the ranker "
              "against the same trainer on the LLM's rankings alone.", "",
              _comparison_table(ablations, ("system vs reference", "reference", "system")), ""]
  for path in _plots(workdir, results):
    parts.append(f"![{os.path.basename(path)}]({os.path.basename(path)})")
  text = "\n".join(parts) + "\n"
  data_lib.atomic_write_text(layout.report(workdir), text)
  return text
