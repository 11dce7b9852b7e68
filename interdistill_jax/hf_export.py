"""Task `export`: the retriever and the ranker as Hugging Face directories, and the Hub upload.

Written under `{workdir}/export/`:

  retriever/  a sentence-transformers model (BertModel weights, Pooling, Normalize when the model
              normalises) that `SentenceTransformer`, `transformers.AutoModel` and our own
              `model.init` load. When the two towers differ (`distill.towers="query"` trains
              the query tower only), `retriever/` holds two complete models instead, `query/`
              and `doc/`: encode queries with one and passages with the other.
  ranker/     a one-label `BertForSequenceClassification` that `sentence_transformers.CrossEncoder`
              and `models.load_cross_encoder` load. Its config names Identity as the CrossEncoder
              activation, so `predict` returns the raw logit, the score our `CrossEncoder` gives
              (sentence-transformers would otherwise apply a sigmoid, which keeps every ranking).
  labels/     labels.jsonl, stats.json and a data set card, when the workdir has labels.

The sentence-transformers files use the long-standing layout (modules.json naming
`sentence_transformers.models.*`, `pooling_mode_*` flags in 1_Pooling/config.json, max_seq_length in
sentence_bert_config.json), which sentence-transformers 2 to 6 load and `models.resolve_checkpoint`
reads. Each directory is written beside its destination and renamed into place, so an interrupted
export never leaves half a model behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from absl import logging

from interdistill_jax import data as data_lib
from interdistill_jax import models

PAPER = "https://arxiv.org/abs/2406.12169"
PACKAGED_BASE_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
_IDENTITY = "torch.nn.modules.linear.Identity"
_TOKENIZER_FILES = ("vocab.txt", "special_tokens_map.json")
_CARD_METRICS = ("ndcg@10", "recall@100", "mrr@10", "map@10", "top1_acc", "top5_acc",
                 "top20_acc", "top100_acc")
_STATS_NOT_IN_CARD = ("cache", "teacher")  # The ledger is long; the teacher has its own rows.


@dataclasses.dataclass(frozen=True)
class Exported:
  """One exported folder: `kind` is "retriever", "ranker" or "labels"."""

  kind: str
  path: str
  trained: bool


# --- files ----------------------------------------------------------------------------------

@contextlib.contextmanager
def _staged_dir(out_dir: str) -> Iterator[str]:
  """A fresh sibling directory that replaces `out_dir` when the block succeeds."""
  out_dir = os.path.abspath(out_dir)
  parent = os.path.dirname(out_dir)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(out_dir)}-")
  try:
    yield tmp
    os.chmod(tmp, 0o755)
    old = None
    if os.path.exists(out_dir):
      old = tmp + ".old"
      os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    if old:
      shutil.rmtree(old)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def _write_json(path: str, obj: Any) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=2, ensure_ascii=False)
    f.write("\n")


def _write_safetensors(path: str, tensors: Mapping[str, np.ndarray]) -> None:
  from safetensors.numpy import save_file
  # transformers refuses safetensors files without a `format` entry in their metadata.
  save_file({k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()}, path,
            metadata={"format": "pt"})


def _source_pooler(source_dir: str) -> dict[str, np.ndarray]:
  """The source checkpoint's BERT pooler (`pooler.dense.*`), or {} when it has none."""
  path = os.path.join(source_dir, "model.safetensors")
  if not os.path.exists(path):
    return {}
  from safetensors import safe_open
  with safe_open(path, framework="numpy") as f:
    keys = set(f.keys())
    for prefix in ("", "bert."):
      names = (prefix + "pooler.dense.weight", prefix + "pooler.dense.bias")
      if all(n in keys for n in names):
        return {"pooler.dense.weight": f.get_tensor(names[0]),
                "pooler.dense.bias": f.get_tensor(names[1])}
  return {}


def _write_tokenizer(source_dir: str, out_dir: str, max_length: int) -> None:
  """Copies the tokenizer files; lengths are left to the loaders (`max_length` for truncation)."""
  src = os.path.join(source_dir, "tokenizer.json")
  if not os.path.exists(src):
    raise FileNotFoundError(f"{src}: no tokenizer.json to export with the model")
  with open(src, encoding="utf-8") as f:
    tok = json.load(f)
  # A shipped file may fix both (all-MiniLM-L6-v2 pads everything to 128); then it, and not
  # max_seq_length / model_max_length, would decide what the model sees.
  tok["padding"] = None
  tok["truncation"] = None
  with open(os.path.join(out_dir, "tokenizer.json"), "w", encoding="utf-8") as f:
    json.dump(tok, f, ensure_ascii=False)
  for name in _TOKENIZER_FILES:
    if os.path.exists(os.path.join(source_dir, name)):
      shutil.copyfile(os.path.join(source_dir, name), os.path.join(out_dir, name))
  tok_config = {}
  if os.path.exists(os.path.join(source_dir, "tokenizer_config.json")):
    with open(os.path.join(source_dir, "tokenizer_config.json"), encoding="utf-8") as f:
      tok_config = json.load(f)
  for key in ("name_or_path", "max_length"):
    tok_config.pop(key, None)
  tok_config.setdefault("tokenizer_class", "BertTokenizer")
  tok_config["model_max_length"] = int(max_length)
  _write_json(os.path.join(out_dir, "tokenizer_config.json"), tok_config)


def _write_tower(bert: models.Bert, out_dir: str, *, source_dir: str,
                 pooler: Mapping[str, np.ndarray], pooling: str, normalize: bool,
                 max_seq_length: int) -> None:
  """One complete sentence-transformers model of `bert` in `out_dir`."""
  os.makedirs(out_dir, exist_ok=True)
  _write_safetensors(os.path.join(out_dir, "model.safetensors"),
                     {**models.bert_tensors(bert), **pooler})
  _write_json(os.path.join(out_dir, "config.json"), bert.cfg.to_hf_dict())
  _write_tokenizer(source_dir, out_dir, max_seq_length)
  modules = [
      {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
      {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
  ]
  if normalize:
    modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                    "type": "sentence_transformers.models.Normalize"})
  _write_json(os.path.join(out_dir, "modules.json"), modules)
  _write_json(os.path.join(out_dir, "1_Pooling", "config.json"), {
      "word_embedding_dimension": bert.cfg.hidden_size,
      "pooling_mode_cls_token": pooling == "cls",
      "pooling_mode_mean_tokens": pooling == "mean",
      "pooling_mode_max_tokens": False,
      "pooling_mode_mean_sqrt_len_tokens": False,
  })
  _write_json(os.path.join(out_dir, "sentence_bert_config.json"),
              {"max_seq_length": int(max_seq_length), "do_lower_case": False})
  # Our search ranks by dot product, which is the cosine when embeddings are normalised.
  _write_json(os.path.join(out_dir, "config_sentence_transformers.json"), {
      "model_type": "SentenceTransformer", "prompts": {}, "default_prompt_name": None,
      "similarity_fn_name": "cosine" if normalize else "dot"})


def export_dual_encoder(model: models.DualEncoder, source_dir: str, out_dir: str, *, card: dict,
                        max_seq_length: int = 256, max_query_length: int | None = None) -> str:
  """Writes `model` as a sentence-transformers / transformers directory; returns `out_dir`.

  Args:
    model: the retriever; float32 weights are written whatever its compute dtype.
    source_dir: the checkpoint it was initialised from: tokenizer files, and the BERT pooler (which
      embeddings never use; it is copied so that `AutoModel` finds every weight it expects).
    out_dir: the directory to (re)write. Separate towers go to `out_dir/query` and `out_dir/doc`.
    card: experiment facts for README.md (see `card_info`).
    max_seq_length: sentence-transformers' truncation length (passages; queries too when shared).
    max_query_length: the query tower's length when the towers are separate.
  """
  pooler = _source_pooler(source_dir)
  if not pooler:
    logging.info("%s has no BERT pooler; the export has none either (AutoModel initialises one, "
                 "which embeddings do not use)", source_dir)
  tower = dict(source_dir=source_dir, pooler=pooler, pooling=model.pooling,
               normalize=bool(model.normalize))
  with _staged_dir(out_dir) as tmp:
    if model.shared:
      _write_tower(model.doc_tower, tmp, max_seq_length=max_seq_length, **tower)
    else:
      _write_tower(model.query_tower, os.path.join(tmp, "query"),
                   max_seq_length=max_query_length or max_seq_length, **tower)
      _write_tower(model.doc_tower, os.path.join(tmp, "doc"), max_seq_length=max_seq_length,
                   **tower)
    data_lib.atomic_write_text(os.path.join(tmp, "README.md"), retriever_card(
        card, shared=model.shared, pooling=model.pooling, normalize=bool(model.normalize),
        max_seq_length=max_seq_length, max_query_length=max_query_length))
  logging.info("Exported the retriever (%s towers) to %s", "shared" if model.shared else "separate",
               out_dir)
  return out_dir


def export_cross_encoder(model: models.CrossEncoder, source_dir: str, out_dir: str, *, card: dict,
                         max_length: int = 512) -> str:
  """Writes `model` as a one-label `BertForSequenceClassification` directory; returns `out_dir`.

  Args:
    model: the ranker.
    source_dir: the checkpoint it was initialised from (tokenizer files).
    out_dir: the directory to (re)write.
    card: experiment facts for README.md (see `card_info`).
    max_length: the tokenizer's model_max_length, which CrossEncoder truncates pairs to.
  """
  tensors = models.bert_tensors(model.bert, prefix="bert.")
  host = lambda p: np.asarray(jax.device_get(p[...]), np.float32)  # noqa: E731
  tensors["bert.pooler.dense.weight"] = host(model.pooler.kernel).T
  tensors["bert.pooler.dense.bias"] = host(model.pooler.bias)
  tensors["classifier.weight"] = host(model.classifier.kernel).T  # [1, H]
  tensors["classifier.bias"] = host(model.classifier.bias)        # [1]
  config = model.bert.cfg.to_hf_dict()
  config.update(architectures=["BertForSequenceClassification"], id2label={"0": "LABEL_0"},
                label2id={"LABEL_0": 0}, classifier_dropout=None,
                sentence_transformers={"activation_fn": _IDENTITY})
  with _staged_dir(out_dir) as tmp:
    _write_safetensors(os.path.join(tmp, "model.safetensors"), tensors)
    _write_json(os.path.join(tmp, "config.json"), config)
    _write_tokenizer(source_dir, tmp, max_length)
    data_lib.atomic_write_text(os.path.join(tmp, "README.md"),
                               ranker_card(card, max_length=max_length))
  logging.info("Exported the ranker to %s", out_dir)
  return out_dir


def export_labels(workdir: str, out_dir: str, *, card: dict) -> str | None:
  """labels.jsonl, stats.json and a data set card in `out_dir`; None when there are no labels."""
  src = os.path.join(workdir, "labels", "labels.jsonl")
  if not os.path.exists(src):
    return None
  with _staged_dir(out_dir) as tmp:
    shutil.copyfile(src, os.path.join(tmp, "labels.jsonl"))
    stats = os.path.join(workdir, "labels", "stats.json")
    if os.path.exists(stats):
      shutil.copyfile(stats, os.path.join(tmp, "stats.json"))
    data_lib.atomic_write_text(os.path.join(tmp, "README.md"), labels_card(card))
  logging.info("Exported the labels to %s", out_dir)
  return out_dir


# --- model cards ----------------------------------------------------------------------------

def _read_json(path: str) -> Any:
  try:
    with open(path, encoding="utf-8") as f:
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


def card_info(config, workdir: str) -> dict:
  """Experiment facts the cards report, from whatever the workdir holds (nothing is required).

  Returns a dict: `dataset` (name), `datasets` (card metadata), `split` (labelled split), `teacher`
  (backend, model, ... or None without labels), `num_labelled_queries` (int or None),
  `label_stats` (flattened scalars of labels/stats.json), `evals` (eval/*.json results), `license`.
  """
  labels_path = os.path.join(workdir, "labels", "labels.jsonl")
  stats_path = os.path.join(workdir, "labels", "stats.json")
  stats = _read_json(stats_path) if os.path.exists(stats_path) else None
  stats = stats if isinstance(stats, dict) else {}
  num_labelled, teacher = None, stats.get("teacher")
  if os.path.exists(labels_path):
    records = data_lib.read_jsonl(labels_path)
    num_labelled = len(records)
    if not teacher and records:
      teacher = records[0].get("teacher")
  elif isinstance(stats.get("labels"), Mapping) and isinstance(stats["labels"].get("queries"), int):
    num_labelled = stats["labels"]["queries"]
  if teacher is None and (stats or num_labelled is not None):
    teacher = {"backend": config.teacher.backend, "model": config.teacher.model}
  if isinstance(teacher, Mapping):
    teacher = {k: teacher[k] for k in ("backend", "model", "prompt_version", "mode", "simulated")
               if k in teacher}
  evals = []
  for path in sorted(glob.glob(os.path.join(workdir, "eval", "*.json"))):
    result = _read_json(path)
    if isinstance(result, dict) and isinstance(result.get("metrics"), dict):
      evals.append(result)
  name = config.data.name or (os.path.basename(os.path.normpath(config.data.dir))
                              if config.data.dir else "")
  return {
      "dataset": name,
      "datasets": list(config.export.datasets) or ([name] if name else []),
      "split": stats.get("split", config.label.split),
      "teacher": teacher,
      "num_labelled_queries": num_labelled,
      "label_stats": _flatten(stats),
      "evals": evals,
      "license": config.export.license,
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
    keys = [k for k in _CARD_METRICS if any(k in e["metrics"] for e in evals)]
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


# --- the Hub --------------------------------------------------------------------------------

def hub_token() -> str | None:
  """The Hub token: the `HF_TOKEN` environment variable, the one place it is read."""
  return os.environ.get("HF_TOKEN") or None


def _repo_ids(export_config) -> dict[str, str]:
  return {"retriever": export_config.repo_id_retriever, "ranker": export_config.repo_id_ranker,
          "labels": export_config.repo_id_labels}


def push_to_hub(export_config, exported: Sequence[Exported]) -> dict[str, str]:
  """Uploads each exported folder whose `export.repo_id_*` is set; returns {kind: repo id}.

  Models exported from initial weights are pushed only with `export.push_untrained`. The token
  goes to the client only: it is never logged or written.
  """
  from huggingface_hub import HfApi

  token = hub_token()
  if token is None:
    logging.info("HF_TOKEN is not set: using the Hugging Face client's stored login, if any")
  api = HfApi(token=token)
  repos = _repo_ids(export_config)
  pushed = {}
  for item in exported:
    repo_id = repos[item.kind]
    if not repo_id:
      logging.info("export.repo_id_%s is empty: %s not pushed", item.kind, item.path)
      continue
    if not item.trained and not export_config.push_untrained:
      logging.warning("Not pushing %s: it holds initial, untrained weights "
                      "(set export.push_untrained=True to push it anyway)", item.path)
      continue
    repo_type = "dataset" if item.kind == "labels" else "model"
    api.create_repo(repo_id, repo_type=repo_type, private=bool(export_config.private), exist_ok=True)
    api.upload_folder(repo_id=repo_id, folder_path=item.path, repo_type=repo_type,
                      commit_message=f"Upload the {item.kind} (Intermediate Distillation export)")
    logging.info("Pushed %s to the Hub %s repo %s", item.path, repo_type, repo_id)
    pushed[item.kind] = repo_id
  return pushed


# --- task -----------------------------------------------------------------------------------

def _trained_model(config, workdir: str,
                   which: str) -> models.DualEncoder | models.CrossEncoder | None:
  """The model trained in `{workdir}/{which}` ("retriever" or "ranker"); None when not trained."""
  out_dir = os.path.join(workdir, which)
  if not os.path.exists(os.path.join(out_dir, "done.json")):
    if os.path.exists(os.path.join(out_dir, "checkpoints")):
      raise RuntimeError(f"{out_dir} has checkpoints but no done.json: the {which} stage did not "
                         "finish; rerun it (it resumes) before exporting")
    return None
  from interdistill_jax import distill, ranker  # noqa: PLC0415 (training code only when trained)
  if which == "ranker":
    return ranker.load_trained_ranker(config, workdir)[0]
  return distill.load_distilled(config, out_dir)[0]


def _init_text(init: str) -> str:
  return f"`{init}`" if init else f"the packaged {PACKAGED_BASE_MODEL}"


def _export_retriever(config, workdir: str, info: dict) -> Exported:
  model = _trained_model(config, workdir, "retriever")
  trained = model is not None
  if trained:
    source = models.resolve_checkpoint(config.model.init).dir
    weights = "trained in this experiment (retriever/checkpoints)"
  else:
    model, ckpt = models.load_dual_encoder(config.model, seed=config.seed)
    source = ckpt.dir
    weights = (f"initial weights of {_init_text(config.model.init)} "
               "(no trained retriever in this experiment)")
    logging.warning("Exporting the retriever's INITIAL weights (%s): %s does not exist", source,
                    os.path.join(workdir, "retriever", "checkpoints"))
  card = dict(info, weights=weights, trained=trained, title="Distilled dense retriever",
              base_model=config.export.base_model or hub_id(config.model.init),
              init=config.model.init, repo_id=config.export.repo_id_retriever)
  path = export_dual_encoder(model, source, os.path.join(workdir, "export", "retriever"), card=card,
                             max_seq_length=config.model.max_doc_length,
                             max_query_length=config.model.max_query_length)
  return Exported("retriever", path, trained)


def _export_ranker(config, workdir: str, info: dict) -> Exported:
  model_config = config.ranker.model
  model = _trained_model(config, workdir, "ranker")
  trained = model is not None
  if trained:
    source = models.resolve_checkpoint(model_config.init).dir
    weights = "trained in this experiment (ranker/checkpoints)"
  else:
    model, ckpt = models.load_cross_encoder(model_config, seed=config.seed)
    source = ckpt.dir
    weights = (f"initial weights of {_init_text(model_config.init)}, classification head "
               "untrained (no trained ranker in this experiment)")
    logging.warning("Exporting the ranker's INITIAL weights (%s; untrained head): %s does not exist",
                    source, os.path.join(workdir, "ranker", "checkpoints"))
  card = dict(info, weights=weights, trained=trained, title="Cross-encoder ranker",
              base_model=config.export.base_model or hub_id(model_config.init),
              init=model_config.init, repo_id=config.export.repo_id_ranker)
  path = export_cross_encoder(model, source, os.path.join(workdir, "export", "ranker"), card=card,
                              max_length=config.ranker.max_length)
  return Exported("ranker", path, trained)


def run(config, workdir: str) -> None:
  """Task `export`: export/retriever, export/ranker, export/labels; then the Hub when asked."""
  if config.export.push_to_hub and not any(_repo_ids(config.export).values()):
    raise ValueError("export.push_to_hub is set but no export.repo_id_retriever / repo_id_ranker / "
                     "repo_id_labels is")
  if jax.process_index() != 0:
    return
  info = card_info(config, workdir)
  exported = [_export_retriever(config, workdir, info), _export_ranker(config, workdir, info)]
  labels = export_labels(workdir, os.path.join(workdir, "export", "labels"),
                         card=dict(info, repo_id=config.export.repo_id_labels))
  if labels:
    exported.append(Exported("labels", labels, True))
  if config.export.push_to_hub:
    pushed = push_to_hub(config.export, exported)
    logging.info("Pushed to the Hub: %s", pushed or "nothing")
