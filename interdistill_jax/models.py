"""Flax NNX BERT, the dual-encoder retriever and the cross-encoder ranker, and how attention runs.

The modules hold no knowledge of checkpoint files: `hf_weights` loads Hugging Face weights into
them (and back out for export).
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

from interdistill_jax import checks


@dataclasses.dataclass(frozen=True)
class BertConfig:
  vocab_size: int = 30522
  hidden_size: int = 384
  num_hidden_layers: int = 6
  num_attention_heads: int = 12
  intermediate_size: int = 1536
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  hidden_dropout_prob: float = 0.1
  attention_probs_dropout_prob: float = 0.1
  hidden_act: str = "gelu"

  @classmethod
  def from_json(cls, path: str | os.PathLike) -> "BertConfig":
    with open(path) as f:
      raw = json.load(f)
    if raw.get("model_type", "bert") not in ("bert",):
      raise ValueError(f"{path}: model_type {raw.get('model_type')!r} is not BERT")
    if raw.get("position_embedding_type", "absolute") != "absolute":
      raise ValueError(f"{path}: only absolute position embeddings are supported")
    if raw.get("hidden_act", "gelu") not in ("gelu", "gelu_new", "gelu_pytorch_tanh"):
      raise ValueError(f"{path}: unsupported hidden_act {raw.get('hidden_act')!r}")
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in raw.items() if k in fields})

  def to_hf_dict(self) -> dict:
    return dict(dataclasses.asdict(self), model_type="bert", architectures=["BertModel"],
                position_embedding_type="absolute", pad_token_id=0, initializer_range=0.02)


def _mix32(x):
  """murmur3's 32-bit finaliser: a bijection of uint32 whose output bits each depend on all inputs."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x85EBCA6B)
  x = x ^ (x >> 13)
  x = x * jnp.uint32(0xC2B2AE35)
  return x ^ (x >> 16)


def _dropout(x, rate: float, rng):
  """Inverted dropout, with masks from a counter-based hash keyed by `rng`.

  Two words are drawn from `rng` (threefry); each element's 32 random bits are then two rounds
  of murmur3's finaliser over its index and those words, about ten integer operations fused into
  the masking. Drawing every element from threefry instead cost 0.8 s of a 6.3 s ranker step on
  2 CPU cores (attention dropout draws B*H*T*T numbers per layer): far more than the masking.
  The same key gives the same mask; the keep rate is 1 - round(rate * 2^32) / 2^32. Indices
  wrap past 2^32 elements per call, so tensors that large would repeat their mask.
  """
  if rng is None or rate == 0.0:
    return x
  seed = jax.random.bits(rng, (2,), jnp.uint32)
  index = jax.lax.iota(jnp.uint32, x.size).reshape(x.shape)
  bits = _mix32(_mix32(index ^ seed[0]) + seed[1])
  keep = bits >= jnp.uint32(min(round(rate * 2.0 ** 32), 2 ** 32 - 1))
  return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


def _cudnn_attention_with_dropout(q, k, v, lengths, rate: float, seed: int):
  """Fused attention on cuDNN that applies attention dropout inside the kernel.

  q, k, v: [B, T, N, D]; lengths: [B] valid (right-padded) positions. jax.nn does not expose
  dropout for cuDNN, so this calls JAX's cuDNN lowering directly (jax._src, a private module:
  checked on JAX 0.11.2 by benchmarks/accelerator.py's `cudnn_dropout_check`). cuDNN draws the
  masks from its Philox generator with the static `seed`; XLA advances the generator's offset at
  every execution, so each step gets new masks, but they do not follow the run's dropout key.
  """
  from jax._src.cudnn import fused_attention_stablehlo as cudnn  # noqa: PLC0415 (GPU only)
  return cudnn.dot_product_attention(
      q, k, v, q_seqlen=lengths, kv_seqlen=lengths, scale=float(1 / np.sqrt(q.shape[-1])),
      mask_type=cudnn.MaskType.PADDING, seed=seed, dropout_rate=rate)


def _split(rng, n):
  return (None,) * n if rng is None else tuple(jax.random.split(rng, n))


class BertLayer(nnx.Module):
  """Post-LayerNorm transformer block, as in BERT."""

  def __init__(self, cfg: BertConfig, *, dtype, rngs: nnx.Rngs, attention: str = "xla",
               dropout_seed: int = 0):
    h, i = cfg.hidden_size, cfg.intermediate_size
    dense = lambda a, b: nnx.Linear(a, b, dtype=dtype, rngs=rngs)  # noqa: E731
    self.query, self.key, self.value = dense(h, h), dense(h, h), dense(h, h)
    self.attn_out = dense(h, h)
    self.attn_norm = nnx.LayerNorm(h, epsilon=cfg.layer_norm_eps, rngs=rngs)
    self.ffn_in = dense(h, i)
    self.ffn_out = dense(i, h)
    self.ffn_norm = nnx.LayerNorm(h, epsilon=cfg.layer_norm_eps, rngs=rngs)
    self.num_heads = cfg.num_attention_heads
    self.approximate_gelu = cfg.hidden_act != "gelu"
    self.hidden_dropout = cfg.hidden_dropout_prob
    self.attn_dropout = cfg.attention_probs_dropout_prob
    self.attention = attention
    self.dropout_seed = dropout_seed  # cuDNN's attention dropout only: one stream per layer

  def _gelu(self, h):
    """GELU of the first FFN matmul's output, materialised on both sides when on CPU.

    XLA:CPU otherwise fuses the bias add and the GELU's pieces into the neighbouring matmuls
    (into the second one's operand, where they run per tile). With the two barriers each
    matmul stays a plain matmul: about 12% less time per layer at 32 x 256 tokens, the same
    numbers (`benchmarks/encode.py`).
    """
    if jax.default_backend() != "cpu":
      return jax.nn.gelu(h, approximate=self.approximate_gelu)
    h = jax.lax.optimization_barrier(h)
    return jax.lax.optimization_barrier(jax.nn.gelu(h, approximate=self.approximate_gelu))

  def __call__(self, x, mask, dropout_rng=None):
    """x: [B, T, H]; mask: [B, 1, 1, T] bool, the keys each position may attend to."""
    b, t, h = x.shape
    heads = lambda y: y.reshape(b, t, self.num_heads, h // self.num_heads)  # noqa: E731
    q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
    r_attn, r_out, r_ffn = _split(dropout_rng, 3)
    dropping = r_attn is not None and self.attn_dropout > 0.0
    if self.attention == "cudnn_dropout" and dropping:
      # cuDNN's fused attention with its own attention dropout (see `attention_impl`).
      lengths = mask[:, 0, 0, :].sum(-1, dtype=jnp.int32)
      ctx = _cudnn_attention_with_dropout(q, k, v, lengths, self.attn_dropout,
                                          self.dropout_seed).reshape(b, t, h)
    elif self.attention in ("cudnn", "cudnn_dropout") and not dropping:
      # cuDNN's fused (flash) attention: no [B, H, T, T] scores in memory. Attention dropout
      # is not available through jax.nn, so training with it takes the path below.
      # Its padding mask takes lengths: attention masks here are right-padded prefixes.
      lengths = mask[:, 0, 0, :].sum(-1, dtype=jnp.int32)
      ctx = jax.nn.dot_product_attention(q, k, v, query_seq_lengths=lengths, key_value_seq_lengths=lengths,
                                         implementation="cudnn").reshape(b, t, h)
    else:
      bias = jnp.where(mask, 0.0, jnp.finfo(jnp.float32).min)
      # Scaling q (B*T*H numbers) rather than the logits (B*H*T*T) costs less.
      logits = jnp.einsum("bqhd,bkhd->bhqk", q * np.asarray(1 / np.sqrt(h // self.num_heads), q.dtype), k)
      probs = jax.nn.softmax(logits.astype(jnp.float32) + bias, axis=-1).astype(x.dtype)
      probs = _dropout(probs, self.attn_dropout, r_attn)
      ctx = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, t, h)
    x = self.attn_norm(x + _dropout(self.attn_out(ctx), self.hidden_dropout, r_out))
    ffn = self.ffn_out(self._gelu(self.ffn_in(x)))
    return self.ffn_norm(x + _dropout(ffn, self.hidden_dropout, r_ffn))


class Bert(nnx.Module):
  """BERT encoder: token ids -> contextual token states [B, T, H]."""

  def __init__(self, cfg: BertConfig, *, dtype=jnp.float32, rngs: nnx.Rngs, attention: str = "xla"):
    self.cfg = cfg
    self.dtype = dtype
    h = cfg.hidden_size
    self.word_emb = nnx.Embed(cfg.vocab_size, h, rngs=rngs)
    self.pos_emb = nnx.Embed(cfg.max_position_embeddings, h, rngs=rngs)
    self.type_emb = nnx.Embed(cfg.type_vocab_size, h, rngs=rngs)
    self.emb_norm = nnx.LayerNorm(h, epsilon=cfg.layer_norm_eps, rngs=rngs)
    self.layers = nnx.List([BertLayer(cfg, dtype=dtype, rngs=rngs, attention=attention, dropout_seed=i)
                            for i in range(cfg.num_hidden_layers)])

  def __call__(self, input_ids, token_type_ids, attention_mask, dropout_rng=None):
    """input_ids, token_type_ids, attention_mask: [B, T] int -> [B, T, H]."""
    t = input_ids.shape[1]
    x = self.word_emb(input_ids) + self.pos_emb(jnp.arange(t)[None]) + self.type_emb(token_type_ids)
    rngs = _split(dropout_rng, len(self.layers) + 1)
    x = _dropout(self.emb_norm(x), self.cfg.hidden_dropout_prob, rngs[0]).astype(self.dtype)
    mask = attention_mask[:, None, None, :] > 0
    for layer, r in zip(self.layers, rngs[1:]):
      x = layer(x, mask, r)
    return x


def pool(hidden, attention_mask, mode: str, normalize: bool):
  """hidden: [B, T, H], attention_mask: [B, T] -> [B, H] float32."""
  hidden = hidden.astype(jnp.float32)
  if mode == "mean":
    m = attention_mask.astype(jnp.float32)[..., None]
    out = (hidden * m).sum(1) / jnp.maximum(m.sum(1), 1e-9)
  elif mode == "cls":
    out = hidden[:, 0]
  else:
    raise ValueError(f"unknown pooling {mode!r}; expected 'mean' or 'cls'")
  if normalize:
    out = out / jnp.maximum(jnp.linalg.norm(out, axis=-1, keepdims=True), 1e-12)
  return out


class DualEncoder(nnx.Module):
  """Retriever: query and passage towers (shared by default), pooled embeddings."""

  def __init__(self, cfg: BertConfig, *, pooling="mean", normalize=True, shared=True,
               dtype=jnp.float32, rngs: nnx.Rngs, attention: str = "xla"):
    self.query_tower = Bert(cfg, dtype=dtype, rngs=rngs, attention=attention)
    self.doc_tower = self.query_tower if shared else Bert(cfg, dtype=dtype, rngs=rngs, attention=attention)
    self.shared = shared
    self.pooling = pooling
    self.normalize = normalize

  def encode(self, input_ids, token_type_ids, attention_mask, *, tower="doc", dropout_rng=None):
    """[B, T] ints -> [B, H] float32 embeddings."""
    bert = self.doc_tower if tower == "doc" else self.query_tower
    hidden = bert(input_ids, token_type_ids, attention_mask, dropout_rng)
    return pool(hidden, attention_mask, self.pooling, self.normalize)


class CrossEncoder(nnx.Module):
  """Ranker: `[CLS] q [SEP] p [SEP]` -> scalar, as BertForSequenceClassification (1 label).

  With `residual=True` (`ranker.head="residual"`) the ranker also holds a query tower of its own
  and a log-scale: its score of (q, p) is

      exp(log_scale) * <query_tower(q), e_p>  +  classifier([CLS] of the joint encoding)

  where e_p is the passage's embedding by the initial retriever (frozen, read from the corpus
  embeddings). The classifier starts at zero and the query tower at the checkpoint, so before
  training the ranker IS the initial retriever at its best ListMLE scale; training (end to end:
  query tower, joint encoder, head and scale) learns the interactions on top. A cross-encoder
  that starts from a bi-encoder checkpoint otherwise begins from a random head and, from ~1,000
  queries, stays below the retriever it is meant to teach.
  """

  def __init__(self, cfg: BertConfig, *, dtype=jnp.float32, rngs: nnx.Rngs, attention: str = "xla",
               residual: bool = False, pooling: str = "mean", normalize: bool = True):
    self.bert = Bert(cfg, dtype=dtype, rngs=rngs, attention=attention)
    self.pooler = nnx.Linear(cfg.hidden_size, cfg.hidden_size, rngs=rngs)
    zero_or_normal = nnx.initializers.zeros if residual else nnx.initializers.normal(0.02)
    self.classifier = nnx.Linear(cfg.hidden_size, 1, rngs=rngs, kernel_init=zero_or_normal,
                                 bias_init=nnx.initializers.zeros)
    self.dropout = cfg.hidden_dropout_prob
    self.residual = residual
    if residual:
      self.query_tower = Bert(cfg, dtype=dtype, rngs=rngs, attention=attention)
      self.log_scale = nnx.Param(jnp.zeros((), jnp.float32))
      self.pooling, self.normalize = pooling, normalize

  def __call__(self, input_ids, token_type_ids, attention_mask, dropout_rng=None):
    """[B, T] ints -> [B] float32 scores of the joint encoding (the whole score without residual)."""
    r_bert, r_head = _split(dropout_rng, 2)
    hidden = self.bert(input_ids, token_type_ids, attention_mask, r_bert)
    pooled = jnp.tanh(self.pooler(hidden[:, 0].astype(jnp.float32)))
    return self.classifier(_dropout(pooled, self.dropout, r_head))[:, 0]

  def encode(self, input_ids, token_type_ids, attention_mask, *, tower="query", dropout_rng=None):
    """Residual ranker: [B, T] query ids -> [B, H] query embeddings (`retrieval.Encoder` calls this)."""
    if tower != "query":
      raise ValueError("the ranker's residual has a query tower only; passages keep the initial "
                       "retriever's embeddings")
    hidden = self.query_tower(input_ids, token_type_ids, attention_mask, dropout_rng)
    return pool(hidden, attention_mask, self.pooling, self.normalize)

  def bi_scores(self, query_emb, cand_emb):
    """Residual ranker: query [B, H] and candidate [B, L, H] embeddings -> [B, L] scaled scores."""
    dots = jnp.einsum("bh,blh->bl", query_emb, cand_emb, preferred_element_type=jnp.float32)
    return jnp.exp(self.log_scale[...]) * dots


# XLA records cuDNN's graphs into CUDA command buffers; one with attention dropout aborts the
# process there (JAX 0.11.2 on an H200: "Check failed: local_device_ordinal.has_value()" in
# CudnnGraph::PackOperands). Without command buffers it runs; the ranker step measured the same
# either way with XLA's attention (accelerator_h200_run4.json, _run5_no_command_buffers.json).
NO_COMMAND_BUFFERS = "--xla_gpu_enable_command_buffer="


def uses_cudnn_dropout(config) -> bool:
  """Whether the retriever or the ranker asks for `model.attention="cudnn_dropout"`."""
  sections = [config.get("model")]
  if config.get("ranker") is not None:
    sections.append(config.ranker.get("model"))
  return any(s is not None and s.get("attention") == "cudnn_dropout" for s in sections)


def prepare_backend(config) -> None:
  """What the config's choices need from XLA, set before JAX starts its backends."""
  prepare_attention_backend(cudnn_dropout=uses_cudnn_dropout(config))


def prepare_attention_backend(*, cudnn_dropout: bool) -> None:
  """With cuDNN's attention dropout in the process, no command buffers (unless XLA_FLAGS already
  says whether to use them)."""
  flags = os.environ.get("XLA_FLAGS", "")
  if cudnn_dropout and "--xla_gpu_enable_command_buffer" not in flags:
    os.environ["XLA_FLAGS"] = f"{flags} {NO_COMMAND_BUFFERS}".strip()
    logging.info("model.attention=cudnn_dropout: XLA_FLAGS += %s", NO_COMMAND_BUFFERS)


def attention_impl(model_config) -> str:
  """`model.attention` resolved: "auto" is cuDNN's fused attention on a GPU in bfloat16, else XLA.

  "cudnn" trains with attention dropout through XLA's attention (masks from the dropout key);
  "cudnn_dropout" keeps cuDNN's fused attention while training too, with cuDNN drawing the
  attention dropout masks itself: faster, but those masks are not reproducible from the seed.
  """
  choice = model_config.get("attention", "auto")
  if choice == "auto":
    return "cudnn" if jax.default_backend() == "gpu" and model_config.dtype == "bfloat16" else "xla"
  if choice in ("cudnn", "cudnn_dropout") and jax.default_backend() != "gpu":
    raise ValueError(f"model.attention={choice!r} needs a CUDA GPU; this run's backend is "
                     f"{jax.default_backend()!r} (use 'auto' or 'xla')")
  if choice == "cudnn_dropout" and "--xla_gpu_enable_command_buffer" not in os.environ.get("XLA_FLAGS", ""):
    raise ValueError("model.attention='cudnn_dropout' needs XLA_FLAGS=" + NO_COMMAND_BUFFERS +
                     " set before JAX starts (models.prepare_backend does it for the entry points)")
  return checks.require_one_of("model.attention", choice, checks.ATTENTION)


def inference_attention(model_config) -> str:
  """The attention that computes the model's outputs when no dropout is drawn (inference, and
  so its embeddings): `attention_impl`, where "cudnn_dropout", which differs from "cudnn" only in
  how training drops attention weights, is "cudnn"."""
  impl = attention_impl(model_config)
  return "cudnn" if impl == "cudnn_dropout" else impl
