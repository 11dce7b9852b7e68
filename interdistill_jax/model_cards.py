"""Model and data set cards (README.md with YAML front matter) for exported directories.

A card records how the model was made: the base model, the data set, the teacher (backend, model,
prompt version), how many queries were labelled, and the metrics in `eval/`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from absl import logging

from interdistill_jax import data as data_lib
from interdistill_jax import files, layout, metrics

PAPER = "https://arxiv.org/abs/2406.12169"
PACKAGED_BASE_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
# The ledger is long; the teacher has its own rows; the recorded inputs hold local paths.
_STATS_NOT_IN_CARD = ("cache", "teacher", "inputs")


def _read_json(path: str) -> Any:
  try:
    with files.open_file(path, "r") as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    logging.warning("Model card: skipping %s (%s)", path, e)
    return None


def _flatten(obj: Mapping, prefix: str = "", depth: int = 0) -> dict[str, Any]:
  out = {}
  for key, value in obj.items():
    if isinstance(value, Mapping):
      if depth < 2 and not (depth == 0 and key in _STATS_NOT_IN_CARD):
        out.update(_flatten(value, f"{prefix}{key}.", depth + 1))
    elif value is None or isinstance(value, (bool, int, float, str)):
      out[f"{prefix}{key}"] = value
  return out


def hub_id(init: str) -> str:
  """`model.init` as a Hub id for card metadata: "" for a local directory."""
  if not init:
    return PACKAGED_BASE_MODEL
  local = os.path.isdir(os.path.expanduser(init)) or init.startswith((".", "/", "~"))
  return "" if local or init.count("/") != 1 else init


def card_info(workdir: str, *, data_config, teacher_config, label_config, export_config) -> dict:
  """Experiment facts the cards report, from whatever the workdir holds (nothing is required) and
  the config's sections: the data set's name, the teacher and split configured (when the labels
  do not record them), the card's `datasets` and `license`.

  Returns a dict: `dataset` (name), `datasets` (card metadata), `split` (labelled split), `teacher`
  (backend, model, ... or None without labels), `num_labelled_queries` (int or None),
  `label_stats` (flattened scalars of labels/stats.json), `evals` (eval/*.json results), `license`.
  """
  labels_path = layout.labels(workdir)
  stats_path = layout.label_stats(workdir)
  stats = _read_json(stats_path) if files.exists(stats_path) else None
  stats = stats if isinstance(stats, dict) else {}
  num_labelled, teacher = None, stats.get("teacher")
  if files.exists(labels_path):
    records = data_lib.read_jsonl(labels_path)
    num_labelled = len(records)
    if not teacher and records:
      teacher = records[0].get("teacher")
  elif isinstance(stats.get("labels"), Mapping) and isinstance(stats["labels"].get("queries"), int):
    num_labelled = stats["labels"]["queries"]
  if teacher is None and (stats or num_labelled is not None):
    teacher = {"backend": teacher_config.backend, "model": teacher_config.model}
  if isinstance(teacher, Mapping):
    teacher = {k: teacher[k] for k in ("backend", "model", "prompt_version", "mode", "simulated")
               if k in teacher}
  evals = []
  for path in files.glob(layout.eval_dir(workdir), "*.json"):
    result = _read_json(path)
    if isinstance(result, dict) and isinstance(result.get("metrics"), dict):
      evals.append(result)
  name = data_config.name or (os.path.basename(os.path.normpath(data_config.dir))
                              if data_config.dir else "")
  return {
      "dataset": name,
      "datasets": list(export_config.datasets) or ([name] if name else []),
      "split": stats.get("split", label_config.split),
      "teacher": teacher,
      "num_labelled_queries": num_labelled,
      "label_stats": _flatten(stats),
      "teacher_audit": stats.get("quality") if isinstance(stats.get("quality"), Mapping) else None,
      "evals": evals,
      "license": export_config.license,
  }


def _front_matter(meta: Mapping[str, Any]) -> str:
  # JSON scalars are valid YAML scalars, and JSON quoting escapes whatever a string holds.
  lines = ["---"]
  for key, value in meta.items():
    if value is None or value == "" or value == []:
      continue
    if isinstance(value, (list, tuple)):
      lines.append(f"{key}:")
      lines.extend(f"- {json.dumps(v)}" for v in value)
    else:
      lines.append(f"{key}: {json.dumps(value)}")
  return "\n".join(lines + ["---", ""])


def _teacher_text(teacher: Mapping | None) -> str:
  if not teacher:
    return "none (no labels in the experiment directory)"
  model = teacher.get("model") or "(backend default)"
  text = f"backend `{teacher.get('backend', '?')}`, model `{model}`"
  if teacher.get("prompt_version"):
    text += f", prompt {teacher['prompt_version']}"
  if teacher.get("backend") == "simulated" or teacher.get("simulated"):
    text += " (simulated from relevance judgements, not an LLM)"
  return text


def _table(rows) -> list[str]:
  cell = lambda v: str(v).replace("|", "\\|").replace("\n", " ")  # noqa: E731
  return ["| | |", "|---|---|"] + [f"| {cell(k)} | {cell(v)} |" for k, v in rows] + [""]


def _experiment_sections(card: Mapping) -> list[str]:
  rows = [("Weights", card.get("weights", "")),
          ("Base model", card.get("base_model") or card.get("init", "")),
          ("Training data", card.get("dataset") or "unknown"),
          ("Teacher", _teacher_text(card.get("teacher"))),
          ("Labelled queries", card.get("num_labelled_queries")
           if card.get("num_labelled_queries") is not None else "none")]
  out = ["## Training", ""] + _table(rows)
  evals = card.get("evals") or []
  if evals:
    keys = [k for k in metrics.HEADLINE if any(k in e["metrics"] for e in evals)]
    keys += sorted({k for e in evals for k in e["metrics"] if k.startswith("rag.")})
    out += ["## Evaluation", "",
            "Retrieval results of the experiment's systems (`eval/*.json`):", "",
            "| system | data set | split | queries | " + " | ".join(keys) + " |",
            "|---|---|---|---|" + "---|" * len(keys)]
    for e in evals:
      cells = [f"{e['metrics'][k]:.4f}" if isinstance(e["metrics"].get(k), (int, float)) else ""
               for k in keys]
      out.append(f"| {e.get('system', '')} | {e.get('dataset', '')} | {e.get('split', '')} | "
                 f"{e.get('num_queries', '')} | " + " | ".join(cells) + " |")
    out.append("")
  if card.get("teacher_audit"):
    from interdistill_jax import report  # noqa: PLC0415
    out += report.teacher_section(card["teacher_audit"])
  stats = card.get("label_stats") or {}
  if stats:
    out += (["## Labelling statistics", "", "<details><summary>labels/stats.json</summary>", ""]
            + _table(stats.items()) + ["</details>", ""])
  return out


def _untrained_note(card: Mapping) -> list[str]:
  if card.get("trained", True):
    return []
  return ["> **Note:** these are initial weights, not trained in this experiment.", ""]


def retriever_card(card: Mapping, *, shared: bool, pooling: str, normalize: bool,
                   max_seq_length: int, max_query_length: int | None) -> str:
  """README.md of an exported retriever: YAML metadata, usage, training facts, metrics."""
  meta = {"library_name": "sentence-transformers", "pipeline_tag": "sentence-similarity",
          "base_model": card.get("base_model", ""), "license": card.get("license", ""),
          "datasets": card.get("datasets", []),
          "tags": ["sentence-transformers", "feature-extraction", "sentence-similarity",
                   "dense-retrieval", "distillation", "intermediate-distillation"]}
  repo = card.get("repo_id") or "path/to/export/retriever"
  pooled = f"{pooling} pooling" + (", L2-normalised" if normalize else "")
  lines = [_front_matter(meta), f"# {card.get('title', 'Dense retriever')}", "",
           f"A dual-encoder retriever distilled from a black-box LLM's rankings through an "
           f"intermediate cross-encoder ranker ([Intermediate Distillation]({PAPER})). "
           f"BERT encoder, {pooled}; score = dot product.", ""] + _untrained_note(card)
  lines += ["## Usage", "", "```python", "from sentence_transformers import SentenceTransformer", ""]
  if shared:
    lines += [f'model = SentenceTransformer("{repo}")',
              'query = model.encode(["which protein folds first?"])',
              'passages = model.encode(["a passage", "another passage"])',
              "scores = query @ passages.T", "```", "",
              f"Passages are truncated to {max_seq_length} tokens. The training pipeline cut "
              f"queries at {max_query_length or max_seq_length} tokens; `max_seq_length` applies "
              "to both here, which matters only for longer queries.", ""]
  else:
    lines += (["from huggingface_hub import snapshot_download", "",
               f'root = snapshot_download("{repo}")'] if card.get("repo_id")
              else [f'root = "{repo}"'])
    lines += ['query_model = SentenceTransformer(f"{root}/query")',
              'doc_model = SentenceTransformer(f"{root}/doc")',
              'scores = query_model.encode(["a query"]) @ doc_model.encode(["a passage"]).T',
              "```", "",
              "The query and passage towers are separate models: `query/` (queries, "
              f"{max_query_length or max_seq_length} tokens) and `doc/` (passages, "
              f"{max_seq_length} tokens).", ""]
  return "\n".join(lines + _experiment_sections(card))


def ranker_card(card: Mapping, *, max_length: int) -> str:
  """README.md of an exported ranker."""
  meta = {"library_name": "sentence-transformers", "pipeline_tag": "text-ranking",
          "base_model": card.get("base_model", ""), "license": card.get("license", ""),
          "datasets": card.get("datasets", []),
          "tags": ["sentence-transformers", "cross-encoder", "reranker", "listmle",
                   "intermediate-distillation"]}
  repo = card.get("repo_id") or "path/to/export/ranker"
  lines = [_front_matter(meta), f"# {card.get('title', 'Cross-encoder ranker')}", "",
           "A cross-encoder (`[CLS] query [SEP] passage [SEP]` -> one score) trained with "
           "ListMLE on a black-box LLM's rankings: the intermediate ranker of "
           f"[Intermediate Distillation]({PAPER}).", ""] + _untrained_note(card)
  lines += ["## Usage", "", "```python", "from sentence_transformers import CrossEncoder", "",
            f'model = CrossEncoder("{repo}")',
            'scores = model.predict([("a query", "a passage"), ("a query", "another passage")])',
            "```", "",
            "`predict` returns the raw logit, the score the ranker was trained with: the config "
            "sets the activation to Identity. Pass `activation_fn=torch.nn.Sigmoid()` for values in "
            f"(0, 1); rankings are the same. Pairs are truncated to {max_length} tokens. "
            "`transformers.AutoModelForSequenceClassification` gives the same logit.", ""]
  if card.get("residual"):
    r = card["residual"]
    lines += ["## The residual head: the ranker's score has two parts", "",
              "This ranker was trained from a bi-encoder checkpoint, as the bi-encoder score plus "
              "a joint head that started at zero. Its score of (query, passage) is",  "",
              f"    logit(query, passage) + {r['scale']:.6g} * dot(q, e)", "",
              "where `logit` is what `CrossEncoder.predict` above returns, `q` the query's "
              "embedding by `query_tower/` (a sentence-transformers model in this directory, "
              f"{r['pooling']} pooling{', normalised' if r['normalize'] else ''}) and `e` the "
              f"passage's embedding by the initial retriever ({card.get('base_model') or 'its base model'}"
              "). `residual.json` holds the scale. The logit alone is only the correction the "
              "joint head learned; rank with the sum.", ""]
  if card.get("fusion"):
    f = card["fusion"]
    lines += ["## Fusion with the first stage", "",
              f"In this experiment the ranker's score was `{f['ce_weight']:.6g} * logit + "
              f"{f['initial_weight']:.6g} * s`, where `s` is the score of the initial retriever "
              f"({f['initial']}), both weights fitted by ListMLE on held-out "
              "training queries (`fusion.json`). Re-rank with the same sum to reproduce it; the "
              "logit alone is the cross-encoder's own score.", ""]
  return "\n".join(lines + _experiment_sections(card))


def labels_card(card: Mapping) -> str:
  """README.md of the labels data set: format and provenance."""
  meta = {"pretty_name": f"LLM rankings of {card.get('dataset') or 'retrieval'} candidates",
          "license": card.get("license", ""), "task_categories": ["text-retrieval"],
          "tags": ["llm-rankings", "listwise-reranking", "distillation",
                   "intermediate-distillation"]}
  lines = [_front_matter(meta), f"# {meta['pretty_name']}", "",
           f"Listwise rankings from a black-box teacher, the training signal of "
           f"[Intermediate Distillation]({PAPER}).", "",
           "## Format", "",
           "`labels.jsonl`, one line per query: `qid`; `docids`, the candidates in the order the "
           "teacher saw them; `ranking`, a permutation of `docids`, best first; `ranked_prefix`, "
           "how many leading positions of `ranking` come from the teacher (after a repaired answer "
           "the rest keep candidate order); `repaired`; `teacher`, the call's provenance. Ids are "
           "those "
           f"of the {card.get('dataset') or 'source'} corpus and queries "
           f"(split `{card.get('split', '')}`).", "",
           "## Provenance", "",
           f"- Teacher: {_teacher_text(card.get('teacher'))}",
           f"- Labelled queries: {card.get('num_labelled_queries')}",
           "- Full counts (calls, cache hits, retries, repairs, tokens, cost): `stats.json`.", ""]
  stats = card.get("label_stats") or {}
  if stats:
    lines += _table(stats.items())
  return "\n".join(lines)
