"""Task `export`: the retriever and the ranker as Hugging Face directories, and the Hub upload.

Written under `{workdir}/export/`:

  retriever/  a sentence-transformers model (BertModel weights, Pooling, Normalize when the model
              normalises) that `SentenceTransformer`, `transformers.AutoModel` and our own
              `model.init` load. When the two towers differ (`distill.towers="query"` trains
              the query tower only), `retriever/` holds two complete models instead, `query/`
              and `doc/`: encode queries with one and passages with the other.
  ranker/     a one-label `BertForSequenceClassification` that `sentence_transformers.CrossEncoder`
              and `hf_weights.load_cross_encoder` load. Its config names Identity as the CrossEncoder
              activation, so `predict` returns the raw logit, the score our `CrossEncoder` gives
              (sentence-transformers would otherwise apply a sigmoid, which keeps every ranking).
  labels/     labels.jsonl, stats.json and a data set card, when the workdir has labels.

The sentence-transformers files use the long-standing layout (modules.json naming
`sentence_transformers.models.*`, `pooling_mode_*` flags in 1_Pooling/config.json, max_seq_length in
sentence_bert_config.json), which sentence-transformers 2 to 6 load and `hf_weights.resolve_checkpoint`
reads. Each directory is written beside its destination and renamed into place, so an interrupted
export never leaves half a model behind. In a workdir in a bucket (`gs://...`) it is written in a
local temporary directory and then uploaded over the destination, file by file: an interrupted
upload can leave a mix there, which `export/done.json` (written last) does not vouch for.
"""

from __future__ import annotations

import contextlib
import dataclasses
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
from interdistill_jax import (checks, files, hf_weights, layout, model_cards, models, provenance,
                              sharding)

_IDENTITY = "torch.nn.modules.linear.Identity"
_TOKENIZER_FILES = ("vocab.txt", "special_tokens_map.json")


@dataclasses.dataclass(frozen=True)
class Exported:
  """One exported folder: `kind` is "retriever", "ranker" or "labels"."""

  kind: str
  path: str
  trained: bool


# --- files ----------------------------------------------------------------------------------

@contextlib.contextmanager
def _staged_dir(out_dir: str) -> Iterator[str]:
  """A fresh local directory whose files replace `out_dir` when the block succeeds: a sibling
  renamed into place, or for a bucket a temporary directory uploaded over it."""
  if not files.is_local(out_dir):
    with tempfile.TemporaryDirectory(prefix="interdistill-export-") as tmp:
      yield tmp
      files.remove_tree(out_dir)
      files.copy_tree(tmp, out_dir)
    return
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
  files.write_bytes(path, (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


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
                     {**hf_weights.bert_tensors(bert), **pooler})
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
    data_lib.atomic_write_text(os.path.join(tmp, "README.md"), model_cards.retriever_card(
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
  tensors = hf_weights.cross_encoder_tensors(model)
  host = lambda p: np.asarray(jax.device_get(p[...]), np.float32)  # noqa: E731
  config = model.bert.cfg.to_hf_dict()
  config.update(architectures=["BertForSequenceClassification"], id2label={"0": "LABEL_0"},
                label2id={"LABEL_0": 0}, classifier_dropout=None,
                sentence_transformers={"activation_fn": _IDENTITY})
  if model.residual:
    scale = float(np.exp(host(model.log_scale)))
    card = dict(card, residual={"scale": scale, "pooling": model.pooling,
                                "normalize": bool(model.normalize)})
  with _staged_dir(out_dir) as tmp:
    _write_safetensors(os.path.join(tmp, "model.safetensors"), tensors)
    _write_json(os.path.join(tmp, "config.json"), config)
    _write_tokenizer(source_dir, tmp, max_length)
    if model.residual:  # the rest of the ranker's score: its own query tower and scale
      _write_tower(model.query_tower, os.path.join(tmp, RESIDUAL_QUERY_TOWER), source_dir=source_dir,
                   pooler=_source_pooler(source_dir), pooling=model.pooling,
                   normalize=bool(model.normalize), max_seq_length=max_length)
      _write_json(os.path.join(tmp, "residual.json"), {
          "scale": scale, "query_tower": RESIDUAL_QUERY_TOWER,
          "score": "logit(query, passage) + scale * dot(query_tower(query), e(passage)), e = the "
                   "initial retriever's passage embedding"})
    data_lib.atomic_write_text(os.path.join(tmp, "README.md"),
                               model_cards.ranker_card(card, max_length=max_length))
  logging.info("Exported the ranker to %s", out_dir)
  return out_dir


RESIDUAL_QUERY_TOWER = "query_tower"


def export_labels(workdir: str, out_dir: str, *, card: dict) -> str | None:
  """labels.jsonl, stats.json and a data set card in `out_dir`; None when there are no labels."""
  src = layout.labels(workdir)
  if not files.exists(src):
    return None
  with _staged_dir(out_dir) as tmp:
    files.copy_file(src, os.path.join(tmp, "labels.jsonl"))
    stats = layout.label_stats(workdir)
    if files.exists(stats):
      with files.open_file(stats, "r") as f:
        recorded = json.load(f)
      # The recorded inputs name this machine's paths; the fingerprint still identifies them.
      recorded.pop("inputs", None)
      _write_json(os.path.join(tmp, "stats.json"), recorded)
    data_lib.atomic_write_text(os.path.join(tmp, "README.md"), model_cards.labels_card(card))
  logging.info("Exported the labels to %s", out_dir)
  return out_dir


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
    with files.local_dir(item.path) as folder:  # the client uploads local folders only
      api.upload_folder(repo_id=repo_id, folder_path=folder, repo_type=repo_type,
                        commit_message=f"Upload the {item.kind} (Intermediate Distillation export)")
    logging.info("Pushed %s to the Hub %s repo %s", item.path, repo_type, repo_id)
    pushed[item.kind] = repo_id
  return pushed


# --- task -----------------------------------------------------------------------------------

def _trained_model(model_config, workdir: str, which: str, *, mesh, param_rules, seed: int,
                   interpolation: float = 1.0) -> models.DualEncoder | models.CrossEncoder | None:
  """The model trained in this workdir, `which` "retriever" (the distilled one, interpolated with
  its initial weights as `distill.interpolation` says) or "ranker", from the checkpoint
  `model_config` names (`model` or `ranker.model`); None when not trained."""
  out_dir = layout.ranker_dir(workdir) if which == "ranker" else layout.system_dir(workdir, "distilled")
  if not layout.is_done(out_dir):
    if files.exists(os.path.join(out_dir, "checkpoints")):
      raise RuntimeError(f"{out_dir} has checkpoints but no done.json: the {which} stage did not "
                         "finish; rerun it (it resumes) before exporting")
    return None
  from interdistill_jax import ranker, retrievers  # noqa: PLC0415 (training code only when trained)
  if which == "ranker":
    return ranker.load_trained_ranker(model_config, workdir, mesh=mesh, param_rules=param_rules,
                                      seed=seed)[0]
  return retrievers.load_distilled(model_config, out_dir, mesh=mesh, param_rules=param_rules,
                                   seed=seed, interpolation=interpolation)[0]


def _init_text(init: str) -> str:
  return f"`{init}`" if init else f"the packaged {model_cards.PACKAGED_BASE_MODEL}"


@dataclasses.dataclass
class _Loaded:
  """A model to export, with where its tokenizer comes from and what its card says of its weights."""
  model: Any
  trained: bool
  source: str
  weights: str


def _load(which: str, model_config, workdir: str, *, mesh, param_rules, seed: int,
          interpolation: float = 1.0) -> _Loaded:
  """The model to export as `which` ("retriever" or "ranker"): the one trained in this workdir,
  else its initial weights, with a warning and a card that says so."""
  model = _trained_model(model_config, workdir, which, mesh=mesh, param_rules=param_rules,
                         seed=seed, interpolation=interpolation)
  if model is not None:
    weights = f"trained in this experiment ({which}/checkpoints)"
    if which == "retriever" and interpolation != 1.0:
      weights += (f", interpolated with the initial weights: {interpolation:g} x trained + "
                  f"{1 - interpolation:g} x initial (`distill.interpolation`)")
    return _Loaded(model, True, hf_weights.resolve_checkpoint(model_config.init).dir, weights)
  if which == "ranker":
    model, ckpt = hf_weights.load_cross_encoder(model_config, seed=seed)
    trained_dir, head = layout.ranker_dir(workdir), ", classification head untrained"
  else:
    model, ckpt = hf_weights.load_dual_encoder(model_config, seed=seed)
    trained_dir, head = layout.system_dir(workdir, "distilled"), ""
  logging.warning("Exporting the %s's INITIAL weights (%s%s): %s does not exist", which, ckpt.dir,
                  head, os.path.join(trained_dir, "checkpoints"))
  return _Loaded(model, False, ckpt.dir, f"initial weights of {_init_text(model_config.init)}{head} "
                 f"(no trained {which} in this experiment)")


def _export_retriever(workdir: str, info: dict, loaded: _Loaded, *, model_config,
                      export_config) -> Exported:
  card = dict(info, weights=loaded.weights, trained=loaded.trained, title="Distilled dense retriever",
              base_model=export_config.base_model or model_cards.hub_id(model_config.init),
              init=model_config.init, repo_id=export_config.repo_id_retriever)
  path = export_dual_encoder(loaded.model, loaded.source, layout.export_dir(workdir, "retriever"),
                             card=card, max_seq_length=model_config.max_doc_length,
                             max_query_length=model_config.max_query_length)
  return Exported("retriever", path, loaded.trained)


def _export_ranker(workdir: str, info: dict, loaded: _Loaded, *, ranker_config, export_config,
                   retriever_init: str) -> Exported:
  """export/ranker; `retriever_init` (`model.init`) names the initial retriever its fitted fusion
  adds."""
  model_config = ranker_config.model
  card = dict(info, weights=loaded.weights, trained=loaded.trained, title="Cross-encoder ranker",
              base_model=export_config.base_model or model_cards.hub_id(model_config.init),
              init=model_config.init, repo_id=export_config.repo_id_ranker)
  fusion = None
  if loaded.trained:
    from interdistill_jax import fusion as fusion_lib  # noqa: PLC0415 (training code only when trained)
    fusion = fusion_lib.load_fusion(workdir, ranker_config.fuse_initial)
  if fusion is not None:
    card["fusion"] = {"ce_weight": fusion.ce_weight, "initial_weight": fusion.initial_weight,
                      "initial": _init_text(retriever_init)}
  out_dir = layout.export_dir(workdir, "ranker")
  path = export_cross_encoder(loaded.model, loaded.source, out_dir, card=card,
                              max_length=ranker_config.max_length)
  if fusion is not None:
    with files.open_file(layout.fusion(workdir), "r") as f:
      fit = json.load(f)
    if isinstance(fit.get("initial_run"), str):  # a path of this machine: relative to the workdir
      fit["initial_run"] = _relative(fit["initial_run"], workdir)
    _write_json(os.path.join(out_dir, "fusion.json"), fit)
  return Exported("ranker", path, loaded.trained)


def _relative(path: str, workdir: str) -> str:
  """A path of this machine (or bucket) inside `workdir`, relative to it; any other as it is."""
  if files.is_local(path) and os.path.isabs(path):
    return os.path.relpath(path, workdir)
  prefix = workdir.rstrip("/") + "/"
  return path[len(prefix):] if not files.is_local(path) and path.startswith(prefix) else path


def run(config, workdir: str) -> None:
  """Task `export`: export/retriever, export/ranker, export/labels; then the Hub when asked.

  Every process restores the models (a checkpoint restore takes them all), each onto its own
  devices so that it holds them whole; process 0 alone writes and pushes.
  """
  checks.require(checks.push_target(config.export))
  inputs = provenance.begin("export", config, workdir)
  mesh = sharding.local_mesh(sharding.mesh_from_config(config.mesh))
  retriever, ranker = (_load(which, model_config, workdir, mesh=mesh,
                              param_rules=config.mesh.param_rules, seed=config.seed,
                              interpolation=config.distill.interpolation)
                        for which, model_config in (("retriever", config.model),
                                                    ("ranker", config.ranker.model)))
  if jax.process_index() != 0:
    return
  info = model_cards.card_info(workdir, data_config=config.data, teacher_config=config.teacher,
                               label_config=config.label, export_config=config.export)
  exported = [_export_retriever(workdir, info, retriever, model_config=config.model,
                                export_config=config.export),
              _export_ranker(workdir, info, ranker, ranker_config=config.ranker,
                             export_config=config.export, retriever_init=config.model.init)]
  labels = export_labels(workdir, layout.export_dir(workdir, "labels"),
                         card=dict(info, repo_id=config.export.repo_id_labels))
  if labels:
    exported.append(Exported("labels", labels, True))
  pushed = {}
  if config.export.push_to_hub:
    pushed = push_to_hub(config.export, exported)
    logging.info("Pushed to the Hub: %s", pushed or "nothing")
  data_lib.write_json(layout.done(layout.export_dir(workdir)), {
      "exported": {item.kind: {"path": item.path, "trained": item.trained} for item in exported},
      "pushed": pushed, **inputs})
