"""The Flax BERT against PyTorch transformers on the same weights."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from interdistill_jax import assets, defaults, hf_weights, models, retrieval, sharding, tokenization
from tests.conftest import run_reference

TEXTS = [
    "0-dimensional biomaterials show inductive properties.",
    "A short one.",
    "Alterations of the architecture of cerebral white matter in the developing human brain can "
    "affect cortical development and result in functional disabilities. " * 12,  # > 256 tokens
    "Café naïve façade — unicode, punctuation!? and numbers 12,345.67",
    "",
] + [f"query number {i} about protein folding and gene {i * 7}" for i in range(11)]

_REFERENCE = r"""
import json, sys, numpy as np, torch
from transformers import AutoTokenizer, BertModel
directory, texts_file, max_len = sys.argv[1], sys.argv[2], int(sys.argv[3])
texts = json.load(open(texts_file))
tok = AutoTokenizer.from_pretrained(directory)
model = BertModel.from_pretrained(directory).eval()
with torch.no_grad():
  enc = tok(texts, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
  hidden = model(**enc).last_hidden_state
  m = enc["attention_mask"].unsqueeze(-1).float()
  emb = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
  emb = torch.nn.functional.normalize(emb, dim=-1)
print(json.dumps(emb.numpy().tolist()))
"""


@pytest.fixture(scope="module")
def encoder():
  config = defaults.base_config()
  config.encode.batch_size = 8
  config.encode.buckets = (16, 64, 128)
  model, ckpt = hf_weights.load_dual_encoder(config.model)
  return retrieval.Encoder(model, tokenization.Tokenizer(ckpt.dir), encode_config=config.encode,
                           model_config=config.model, mesh=sharding.make_mesh())


@pytest.mark.slow  # PyTorch in a subprocess
def test_pooled_embeddings_match_pytorch_bert(encoder, tmp_path):
  texts_file = tmp_path / "texts.json"
  texts_file.write_text(json.dumps(TEXTS))
  ours = encoder.encode(TEXTS, tower="doc")
  ref = np.asarray(json.loads(run_reference(_REFERENCE, assets.packaged_encoder_dir(),
                                            str(texts_file), "256")))
  assert ours.shape == ref.shape == (len(TEXTS), 384)
  assert np.abs(ours - ref).max() <= 1e-4


def test_encoding_is_independent_of_batch_and_bucket(encoder):
  one_by_one = np.concatenate([encoder.encode([t], tower="doc") for t in TEXTS[:4]])
  together = encoder.encode(TEXTS[:4], tower="doc")
  np.testing.assert_allclose(one_by_one, together, atol=1e-5)


def test_checkpoint_settings_follow_sentence_transformers_files():
  ckpt = hf_weights.resolve_checkpoint("")
  assert (ckpt.pooling, ckpt.normalize) == ("mean", True)
  assert ckpt.config.num_hidden_layers == 6 and ckpt.config.hidden_size == 384


def test_missing_weight_names_the_checkpoint_and_tensor(tmp_path):
  tensors = hf_weights.read_safetensors(assets.packaged_encoder_dir())
  del tensors["encoder.layer.3.output.dense.weight"]
  bert = models.Bert(hf_weights.resolve_checkpoint("").config, rngs=models.nnx.Rngs(0))
  with pytest.raises(KeyError, match="encoder.layer.3.output.dense.weight"):
    hf_weights.load_bert_weights(bert, tensors, source="ckpt-dir")


def test_tokenizer_file_padding_and_truncation_are_reset():
  tok = tokenization.Tokenizer(assets.packaged_encoder_dir())
  (short,) = tok.encode(["hi"], 256)
  (long,) = tok.encode(["word " * 400], 256)
  assert len(short) == 3 and len(long) == 256  # not the file's fixed 128
  assert long[0] == tok.cls_id and long[-1] == tok.sep_id


def test_the_tokenizer_gives_each_thread_its_own_length():
  """Calls from two threads at once, at lengths 8 and 64: each result keeps its call's length
  (truncation is set per call on a shared tokenizer)."""
  import concurrent.futures
  tok = tokenization.Tokenizer(assets.packaged_encoder_dir())
  texts = ["word " * 200] * 64

  def lengths(n):
    return {len(x) for _ in range(20) for x in tok.encode(texts, n)}

  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    short, long = pool.map(lengths, [8, 64])
  assert short == {8} and long == {64}


def test_fused_attention_path_matches_the_xla_path(monkeypatch):
  """The cuDNN branch (length-based padding mask) computes the same attention as the XLA branch.

  cuDNN needs a GPU, so here `jax.nn.dot_product_attention` runs its XLA implementation with the
  same arguments: this checks what the branch passes (layout, scale, lengths from the mask).
  """
  from flax import nnx

  cfg = models.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=64, max_position_embeddings=32)
  ids = jnp.asarray(np.random.default_rng(0).integers(1, 50, (3, 12)), jnp.int32)
  lengths = np.array([12, 7, 3])
  mask = jnp.asarray(np.arange(12)[None] < lengths[:, None], jnp.int32)
  xla = models.Bert(cfg, rngs=nnx.Rngs(0), attention="xla")
  fused = models.Bert(cfg, rngs=nnx.Rngs(0), attention="cudnn")
  real = jax.nn.dot_product_attention
  calls = []

  def as_xla(*args, **kwargs):
    calls.append(kwargs)
    return real(*args, **dict(kwargs, implementation="xla"))

  monkeypatch.setattr(jax.nn, "dot_product_attention", as_xla)
  want, got = xla(ids, jnp.zeros_like(ids), mask), fused(ids, jnp.zeros_like(ids), mask)
  assert len(calls) == cfg.num_hidden_layers and calls[0]["implementation"] == "cudnn"
  np.testing.assert_array_equal(calls[0]["key_value_seq_lengths"], lengths)
  for i, n in enumerate(lengths):  # padded positions are ignored downstream (pooling masks them)
    np.testing.assert_allclose(got[i, :n], want[i, :n], atol=2e-5)
  # Training with attention dropout keeps the XLA branch (dropout is not available there).
  calls.clear()
  fused(ids, jnp.zeros_like(ids), mask, jax.random.key(0))
  assert not calls


def test_cudnn_dropout_trains_through_the_fused_kernel_with_a_stream_per_layer(monkeypatch):
  """`cudnn_dropout`: with a dropout key, every layer calls cuDNN's attention with dropout (its
  rate, the layer's own seed, lengths from the mask); without one, the plain fused branch.
  Here both stand in with XLA's attention (cuDNN needs a GPU)."""
  from flax import nnx

  cfg = models.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                          intermediate_size=64, max_position_embeddings=32)
  ids = jnp.asarray(np.random.default_rng(0).integers(1, 50, (2, 10)), jnp.int32)
  lengths = np.array([10, 4])
  mask = jnp.asarray(np.arange(10)[None] < lengths[:, None], jnp.int32)
  bert = models.Bert(cfg, rngs=nnx.Rngs(0), attention="cudnn_dropout")
  real, fused, plain = jax.nn.dot_product_attention, [], []

  def with_dropout(q, k, v, lens, rate, seed):
    fused.append((np.asarray(lens), rate, seed))
    return real(q, k, v, query_seq_lengths=lens, key_value_seq_lengths=lens, implementation="xla")

  def without(*args, **kwargs):
    plain.append(kwargs["implementation"])
    return real(*args, **dict(kwargs, implementation="xla"))

  monkeypatch.setattr(models, "_cudnn_attention_with_dropout", with_dropout)
  monkeypatch.setattr(jax.nn, "dot_product_attention", without)
  bert(ids, jnp.zeros_like(ids), mask, jax.random.key(0))
  assert [(r, s) for _, r, s in fused] == [(cfg.attention_probs_dropout_prob, i) for i in range(3)]
  np.testing.assert_array_equal(fused[0][0], lengths)
  assert not plain
  fused.clear()
  bert(ids, jnp.zeros_like(ids), mask)  # inference: no dropout
  assert not fused and plain == ["cudnn"] * 3


def test_cudnn_dropout_turns_off_command_buffers_before_jax_starts(monkeypatch):
  config = defaults.base_config()
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  models.prepare_backend(config)
  assert "XLA_FLAGS" not in os.environ  # nothing asked for it
  config.ranker.model.attention = "cudnn_dropout"
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
  models.prepare_backend(config)
  assert os.environ["XLA_FLAGS"] == ("--xla_force_host_platform_device_count=2 "
                                     "--xla_gpu_enable_command_buffer=")
  monkeypatch.setenv("XLA_FLAGS", "--xla_gpu_enable_command_buffer=FUSION")  # the user's choice stays
  models.prepare_backend(config)
  assert os.environ["XLA_FLAGS"] == "--xla_gpu_enable_command_buffer=FUSION"
  if jax.default_backend() != "gpu":
    with pytest.raises(ValueError, match="'cudnn_dropout' needs a CUDA GPU"):
      models.attention_impl(config.ranker.model)


def test_attention_auto_is_xla_off_gpu_and_cudnn_is_refused_there():
  config = defaults.base_config()
  assert config.model.attention == "auto"
  if jax.default_backend() != "gpu":
    config.model.dtype = "bfloat16"
    assert models.attention_impl(config.model) == "xla"
    config.model.attention = "cudnn"
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
      models.attention_impl(config.model)
  config.model.attention = "flash"
  with pytest.raises(ValueError, match="model.attention=.flash.: must be one of .auto., .xla., .cudnn., .cudnn_dropout."):
    models.attention_impl(config.model)


def test_cudnn_dropout_computes_embeddings_as_cudnn_does(monkeypatch):
  """`cudnn_dropout` differs from `cudnn` only in training: inference (and so the embeddings a
  corpus cache is keyed by) names the same attention."""
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  monkeypatch.setenv("XLA_FLAGS", models.NO_COMMAND_BUFFERS)
  config = defaults.base_config()
  config.model.dtype = "bfloat16"
  seen = {}
  for choice in ("auto", "xla", "cudnn", "cudnn_dropout"):
    config.model.attention = choice
    seen[choice] = (models.attention_impl(config.model), models.inference_attention(config.model))
  assert seen == {"auto": ("cudnn", "cudnn"), "xla": ("xla", "xla"), "cudnn": ("cudnn", "cudnn"),
                  "cudnn_dropout": ("cudnn_dropout", "cudnn")}


def test_attention_dropout_override_reaches_every_layer(tmp_path):
  from tests import fixtures
  config = defaults.base_config()
  config.ranker.model.init = str(fixtures.tiny_bert(tmp_path / "bert", layers=2, hidden=16, heads=2))
  model, ckpt = hf_weights.load_cross_encoder(config.ranker.model)
  assert ckpt.config.attention_probs_dropout_prob > 0
  assert {layer.attn_dropout for layer in model.bert.layers} == {ckpt.config.attention_probs_dropout_prob}
  config.ranker.model.attention_dropout = 0.0
  model, _ = hf_weights.load_cross_encoder(config.ranker.model)
  assert {layer.attn_dropout for layer in model.bert.layers} == {0.0}


def test_dropout_masks_keep_the_rate_and_follow_the_key():
  x = jnp.ones((64, 12, 32, 32), jnp.float32)  # 786,432 elements
  rate = 0.1
  a = models._dropout(x, rate, jax.random.key(0))
  kept = np.asarray(a) != 0
  # Binomial standard deviation of the kept fraction: sqrt(0.09 / 786432) = 3.4e-4.
  assert abs(kept.mean() - (1 - rate)) < 2e-3
  np.testing.assert_allclose(np.asarray(a)[kept], 1 / (1 - rate), rtol=1e-6)
  np.testing.assert_array_equal(a, models._dropout(x, rate, jax.random.key(0)))  # same key, same mask
  other = np.asarray(models._dropout(x, rate, jax.random.key(1))) != 0
  flat = kept.reshape(-1).astype(np.float64)
  for name, y in (("another key", other.reshape(-1)), ("the next element", np.roll(flat, 1)),
                  ("the next row", np.roll(flat, 32))):
    corr = np.corrcoef(flat, y.astype(np.float64))[0, 1]
    assert abs(corr) < 0.01, (name, corr)
  assert models._dropout(x, 0.0, jax.random.key(0)) is x and models._dropout(x, rate, None) is x


def test_compile_covers_every_shape_encode_takes(encoder):
  runner = encoder._runners["doc"]
  encoder.compile("doc")
  assert runner._fn._cache_size() == len(encoder._buckets("doc"))
  encoder.encode(TEXTS, tower="doc")
  assert runner._fn._cache_size() == len(encoder._buckets("doc"))
