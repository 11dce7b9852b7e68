"""Hugging Face BERT checkpoints: their weights into our modules and back.

One explicit name table (`hf_name_table`) is the single place that knows how BERT's tensor names
map onto `models.Bert`; loading reads a checkpoint's safetensors through it and the exporter
(`hf_export`) writes through it in reverse. `resolve_checkpoint` reads what a checkpoint
directory says (its config, the sentence-transformers pooling and normalisation), and
`load_dual_encoder` / `load_cross_encoder` build the retriever and the ranker from one.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from interdistill_jax import assets, checks, models


def hf_name_table(cfg: models.BertConfig) -> list[tuple[str, tuple, bool]]:
  """(HF BertModel name, path in our `Bert`, transpose?) for every weight.

  Torch `Linear.weight` is [out, in]; our kernels are [in, out], hence the transposes.
  """
  table = [
      ("embeddings.word_embeddings.weight", ("word_emb", "embedding"), False),
      ("embeddings.position_embeddings.weight", ("pos_emb", "embedding"), False),
      ("embeddings.token_type_embeddings.weight", ("type_emb", "embedding"), False),
      ("embeddings.LayerNorm.weight", ("emb_norm", "scale"), False),
      ("embeddings.LayerNorm.bias", ("emb_norm", "bias"), False),
  ]
  per_layer = [
      ("attention.self.query", "query"), ("attention.self.key", "key"),
      ("attention.self.value", "value"), ("attention.output.dense", "attn_out"),
      ("intermediate.dense", "ffn_in"), ("output.dense", "ffn_out"),
  ]
  norms = [("attention.output.LayerNorm", "attn_norm"), ("output.LayerNorm", "ffn_norm")]
  for i in range(cfg.num_hidden_layers):
    for hf, ours in per_layer:
      table.append((f"encoder.layer.{i}.{hf}.weight", ("layers", i, ours, "kernel"), True))
      table.append((f"encoder.layer.{i}.{hf}.bias", ("layers", i, ours, "bias"), False))
    for hf, ours in norms:
      table.append((f"encoder.layer.{i}.{hf}.weight", ("layers", i, ours, "scale"), False))
      table.append((f"encoder.layer.{i}.{hf}.bias", ("layers", i, ours, "bias"), False))
  return table


def cross_encoder_head_table(prefix: str = "bert.") -> list[tuple[str, tuple, bool]]:
  """(HF BertForSequenceClassification name, path in our `CrossEncoder`, transpose?) of the head
  above the encoder: BERT's pooler (under the encoder's `prefix`) and the one-label classifier."""
  return [(prefix + "pooler.dense.weight", ("pooler", "kernel"), True),
          (prefix + "pooler.dense.bias", ("pooler", "bias"), False),
          ("classifier.weight", ("classifier", "kernel"), True),
          ("classifier.bias", ("classifier", "bias"), False)]


def cross_encoder_tensors(model: models.CrossEncoder) -> dict[str, np.ndarray]:
  """The ranker's joint encoder and head as HF BertForSequenceClassification tensors."""
  tensors = bert_tensors(model.bert, prefix="bert.")
  for hf_name, path, transpose in cross_encoder_head_table():
    value = np.asarray(jax.device_get(_get_path(model, path)[...]), np.float32)
    tensors[hf_name] = np.ascontiguousarray(value.T if transpose else value)
  return tensors


def _get_path(module, path):
  node = module
  for p in path:
    node = node[p] if isinstance(p, int) else getattr(node, p)
  return node


def load_bert_weights(bert: models.Bert, tensors: dict[str, np.ndarray], *,
                      prefix: str | None = None, source: str = "") -> None:
  """Copies HF BERT tensors into `bert` by the name table; every name must be present."""
  if prefix is None:
    prefix = "bert." if "bert.embeddings.word_embeddings.weight" in tensors else ""
  for hf_name, path, transpose in hf_name_table(bert.cfg):
    name = prefix + hf_name
    if name not in tensors:
      raise KeyError(f"{source}: weight {name!r} missing from the checkpoint")
    value = np.asarray(tensors[name], np.float32)
    if transpose:
      value = value.T
    param = _get_path(bert, path)
    if param.shape != value.shape:
      raise ValueError(f"{source}: {name} has shape {value.shape}, expected {param.shape}")
    param[...] = jnp.asarray(value)


def bert_tensors(bert: models.Bert, *, prefix: str = "") -> dict[str, np.ndarray]:
  """`bert`'s weights as HF BERT tensors (float32, torch layout): `load_bert_weights` in reverse."""
  tensors = {}
  for hf_name, path, transpose in hf_name_table(bert.cfg):
    value = np.asarray(jax.device_get(_get_path(bert, path)[...]), np.float32)
    tensors[prefix + hf_name] = np.ascontiguousarray(value.T if transpose else value)
  return tensors


def read_safetensors(directory: str) -> dict[str, np.ndarray]:
  from safetensors.numpy import load_file
  path = os.path.join(directory, "model.safetensors")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found (only safetensors checkpoints are supported)")
  return load_file(path)


@dataclasses.dataclass(frozen=True)
class Checkpoint:
  """A resolved Hugging Face model directory and what its files say."""

  dir: str
  config: models.BertConfig
  pooling: str        # "mean" or "cls" (sentence-transformers 1_Pooling), default "cls".
  normalize: bool     # whether sentence-transformers appends a Normalize module.


def resolve_checkpoint(init: str) -> Checkpoint:
  """`init`: "" (packaged all-MiniLM-L6-v2), a local HF directory, or a Hub id."""
  directory = assets.model_dir(init)
  cfg = models.BertConfig.from_json(os.path.join(directory, "config.json"))
  pooling, normalize = "cls", False
  pooling_cfg = os.path.join(directory, "1_Pooling", "config.json")
  if os.path.exists(pooling_cfg):
    with open(pooling_cfg) as f:
      p = json.load(f)
    if p.get("pooling_mode_mean_tokens"):
      pooling = "mean"
    elif p.get("pooling_mode_cls_token"):
      pooling = "cls"
    else:
      raise ValueError(f"{pooling_cfg}: only mean or CLS pooling is supported")
  modules = os.path.join(directory, "modules.json")
  if os.path.exists(modules):
    with open(modules) as f:
      normalize = any(m.get("type", "").endswith("Normalize") for m in json.load(f))
  return Checkpoint(directory, cfg, pooling, normalize)


def _dtype(name: str):
  return getattr(jnp, checks.require_one_of("model.dtype", name, checks.COMPUTE_DTYPES))


def _bert_config(ckpt: Checkpoint, model_config) -> models.BertConfig:
  """The checkpoint's config with `model.attention_dropout` applied (< 0 keeps the checkpoint's)."""
  rate = model_config.get("attention_dropout", -1.0)
  if rate < 0:
    return ckpt.config
  return dataclasses.replace(ckpt.config, attention_probs_dropout_prob=float(rate))


def load_dual_encoder(model_config, *, shared: bool = True,
                      seed: int = 0) -> tuple[models.DualEncoder, Checkpoint]:
  """Builds a DualEncoder from `config.model` and loads its weights."""
  ckpt = resolve_checkpoint(model_config.init)
  pooling = model_config.pooling or ckpt.pooling
  normalize = ckpt.normalize if model_config.normalize < 0 else bool(model_config.normalize)
  model = models.DualEncoder(_bert_config(ckpt, model_config), pooling=pooling,
                             normalize=normalize, shared=shared, dtype=_dtype(model_config.dtype),
                             rngs=nnx.Rngs(seed), attention=models.attention_impl(model_config))
  tensors = read_safetensors(ckpt.dir)
  load_bert_weights(model.query_tower, tensors, source=ckpt.dir)
  if not shared:
    load_bert_weights(model.doc_tower, tensors, source=ckpt.dir)
  logging.info("Loaded %s (pooling=%s, normalize=%s, dtype=%s)", ckpt.dir, pooling, normalize,
               model_config.dtype)
  return model, ckpt


def has_classifier(tensors: dict[str, np.ndarray]) -> bool:
  """Whether a checkpoint holds a one-label sequence-classification head (a real cross-encoder)."""
  return "classifier.weight" in tensors and tensors["classifier.weight"].shape[0] == 1


def ranker_head(head: str, tensors: dict[str, np.ndarray]) -> str:
  """`ranker.head` resolved for a checkpoint's tensors: "auto" is "cls" for a checkpoint with a
  one-label classifier (a cross-encoder), "residual" otherwise (a bi-encoder such as MiniLM)."""
  checks.require_one_of("ranker.head", head, checks.RANKER_HEADS)
  if head != "auto":
    return head
  return "cls" if has_classifier(tensors) else "residual"


def load_cross_encoder(model_config, *, seed: int = 0,
                       head: str = "cls") -> tuple[models.CrossEncoder, Checkpoint]:
  """A CrossEncoder from an HF BERT (head from `pooler`/`classifier` when present).

  `head` is `ranker.head` ("auto", "cls" or "residual"). The residual head (see `CrossEncoder`)
  also loads the checkpoint into the ranker's query tower, pooled as the checkpoint's
  sentence-transformers config says, and keeps its classifier at 0, so the ranker starts as the
  bi-encoder.
  """
  ckpt = resolve_checkpoint(model_config.init)
  tensors = read_safetensors(ckpt.dir)
  residual = ranker_head(head, tensors) == "residual"
  normalize = model_config.get("normalize", -1)
  model = models.CrossEncoder(_bert_config(ckpt, model_config), dtype=_dtype(model_config.dtype),
                              rngs=nnx.Rngs(seed), attention=models.attention_impl(model_config),
                              residual=residual,
                              pooling=model_config.get("pooling", "") or ckpt.pooling,
                              normalize=ckpt.normalize if normalize < 0 else bool(normalize))
  load_bert_weights(model.bert, tensors, source=ckpt.dir)
  if residual:
    load_bert_weights(model.query_tower, tensors, source=ckpt.dir)
  prefix = "bert." if "bert.embeddings.word_embeddings.weight" in tensors else ""
  # The pooler when the checkpoint has one; the classifier only for the plain [CLS] head (the
  # residual head's starts at zero).
  load_classifier = has_classifier(tensors) and not residual
  for hf_name, path, transpose in cross_encoder_head_table(prefix):
    if hf_name not in tensors or (hf_name.startswith("classifier.") and not load_classifier):
      continue
    value = np.asarray(tensors[hf_name], np.float32)
    _get_path(model, path)[...] = jnp.asarray(value.T if transpose else value)
  return model, ckpt
