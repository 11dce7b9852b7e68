"""The bucketed runner: outputs in input order, one compile per bucket; the encoder and the pair
scorer against the model applied to one unpadded sequence at a time."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from interdistill_jax import (defaults, hf_weights, inference, ranker, retrieval, sharding,
                              tokenization)
from tests import fixtures

# Several lengths (several buckets, one past the longest), 13 items: not a multiple of the batch (8).
TEXTS = ["", "protein", "a short one about genes.", "Café naïve façade — unicode!?"] + [
    " ".join((fixtures.WORDS * 4)[:3 + 9 * i]) for i in range(9)]


class _Weighted(nnx.Module):
  """Row sums of ids, types and mask, weighted by a parameter: exact in float32."""

  def __init__(self):
    self.w = nnx.Param(jnp.array([1.0, 1000.0, 100000.0]))

  def __call__(self, ids, types, mask):
    sums = jnp.stack([(ids * mask).sum(-1), (types * mask).sum(-1), mask.sum(-1)], -1)
    return sums.astype(jnp.float32) * self.w[...]


def test_runner_returns_outputs_in_input_order_with_one_compile_per_bucket():
  rng = np.random.default_rng(0)
  lengths = rng.integers(1, 30, size=21)
  seqs = [rng.integers(1, 50, size=n).astype(np.int32) for n in lengths]
  types = [(np.arange(n) >= n // 2).astype(np.int32) for n in lengths]
  model = inference.PlacedModel(_Weighted(), sharding.make_mesh())
  runner = inference.BucketedRunner(model, lambda m, *a: m(*a), batch_size=8, buckets=(8, 16, 32),
                                    pad_id=0, empty_shape=(0, 3))
  out = runner.run(seqs, types, desc="test")
  want = np.array([[s.sum(), t.sum(), len(s)] for s, t in zip(seqs, types)], np.float32)
  np.testing.assert_array_equal(out, want * np.array([1.0, 1000.0, 100000.0], np.float32))
  used = {tokenization.bucket_length(int(max(lengths[i] for i in chunk)), runner.buckets)
          for chunk in np.array_split(np.argsort(-lengths, kind="stable"), [8, 16])}
  assert runner._fn._cache_size() == len(used)
  runner.compile()
  assert runner._fn._cache_size() == len(runner.buckets)
  runner.run(seqs[::-1], desc="test")
  assert runner._fn._cache_size() == len(runner.buckets)
  empty = runner.run([], desc="test")
  assert empty.shape == (0, 3) and empty.dtype == np.float32


@pytest.mark.parametrize("in_flight", [0, 1, 3])
def test_chunks_in_flight_give_what_one_run_gives(monkeypatch, in_flight):
  """Chunks of 5, 0, 9 and 7 sequences, batches left on the devices up to `in_flight` at a
  time: every output lands in its row of the whole, as with one `run` over all 21."""
  monkeypatch.setattr(inference, "IN_FLIGHT", in_flight)
  rng = np.random.default_rng(1)
  seqs = [rng.integers(1, 50, size=n).astype(np.int32) for n in rng.integers(1, 30, size=21)]
  types = [(np.arange(len(s)) % 2).astype(np.int32) for s in seqs]
  model = inference.PlacedModel(_Weighted(), sharding.make_mesh())
  runner = inference.BucketedRunner(model, lambda m, *a: m(*a), batch_size=4, buckets=(8, 16, 32),
                                    pad_id=0, empty_shape=(0, 3))
  whole = runner.run(seqs, types, desc="test")
  cuts = [0, 5, 5, 14, 21]
  chunks = [(seqs[a:b], types[a:b]) for a, b in zip(cuts, cuts[1:])]
  np.testing.assert_array_equal(runner.run_chunks(iter(chunks), 21, desc="test"), whole)
  with pytest.raises(ValueError, match="held 21 sequences, not the 22"):
    runner.run_chunks(iter(chunks), 22, desc="test")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  bert = fixtures.tiny_bert(tmp_path_factory.mktemp("tiny") / "bert", layers=2, hidden=32, heads=4)
  config = defaults.base_config()
  config.model.init = config.ranker.model.init = str(bert)
  config.model.max_doc_length = 40  # the longest text is cut
  config.encode.batch_size = config.ranker.score_batch_size = 8
  config.encode.buckets = (8, 16, 24)
  config.ranker.max_length = 48
  return config, tokenization.Tokenizer(bert)


def _alone(seqs, types=None):
  """Each sequence as a batch of one, unpadded: (ids, types, mask) [1, n]."""
  for i, s in enumerate(seqs):
    t = np.zeros_like(s) if types is None else types[i]
    yield s[None], t[None], np.ones_like(s)[None]


@pytest.mark.parametrize("tower,ahead", [("doc", 8), ("query", 8), ("doc", 1)])
def test_encoder_matches_the_model_one_text_at_a_time(tiny, tower, ahead, monkeypatch):
  """`ahead` = 1: the 13 texts are tokenized 8 at a time in the worker thread (two chunks)."""
  monkeypatch.setattr(retrieval, "TOKENIZE_AHEAD", ahead)
  monkeypatch.setattr(retrieval, "TOKENIZE_AHEAD_MIN", 1)
  config, tok = tiny
  model, _ = hf_weights.load_dual_encoder(config.model)
  encoder = retrieval.Encoder(model, tok, encode_config=config.encode, model_config=config.model,
                             mesh=sharding.make_mesh())
  ours = encoder.encode(TEXTS, tower=tower)
  seqs = tok.encode(TEXTS, encoder._max_length(tower))
  assert len({tokenization.bucket_length(len(s), encoder._runners[tower].buckets) for s in seqs}) >= 3
  want = np.concatenate([np.asarray(model.encode(*a, tower=tower)) for a in _alone(seqs)])
  assert ours.shape == want.shape == (len(TEXTS), 32) and ours.dtype == np.float32
  np.testing.assert_allclose(ours, want, atol=1e-6, rtol=0)


def test_pair_scorer_matches_the_model_one_pair_at_a_time(tiny):
  config, tok = tiny
  model, _ = hf_weights.load_cross_encoder(config.ranker.model, head="cls")
  scorer = ranker.make_scorer(model, tok, ranker_config=config.ranker, encode_config=config.encode,
                              mesh=sharding.make_mesh(), param_rules=config.mesh.param_rules)
  queries, passages = TEXTS, TEXTS[3:] + TEXTS[:3]
  ours = scorer.score(queries, passages)
  pairs = tok.encode_pairs(queries, passages, config.ranker.max_length)
  seqs, types = [p[0] for p in pairs], [p[1] for p in pairs]
  assert len({tokenization.bucket_length(len(s), scorer.buckets) for s in seqs}) >= 3
  want = np.concatenate([np.asarray(model(*a)) for a in _alone(seqs, types)])
  assert ours.shape == want.shape == (len(TEXTS),) and ours.dtype == np.float32
  np.testing.assert_allclose(ours, want, atol=1e-6, rtol=0)
  assert scorer.score([], []).shape == (0,)
