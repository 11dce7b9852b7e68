"""The corpus's token ids kept on disk: a second encoding reads no text and gives the same
embeddings, in memory and in shards; damaged files are tokenized again; the key follows the
tokenizer, the corpus and the passage length."""

import logging
import shutil

import numpy as np
import pytest

from interdistill_jax import assets, defaults, retrieval, sharding, token_cache, tokenization
from tests import fixtures


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  root = tmp_path_factory.mktemp("tokens")
  bert = fixtures.tiny_bert(root / "bert", layers=1, hidden=16, heads=2)
  config = defaults.base_config()
  config.data.dir = str(fixtures.tiny_beir(root / "data", num_docs=50))
  config.model.init = str(bert)
  config.model.max_doc_length = 32
  config.encode.buckets = (16, 32)
  config.encode.batch_size = 8
  return config


class _Counting(dict):
  """A corpus that counts the documents read from it."""

  reads = 0

  def __getitem__(self, docid):
    self.reads += 1
    return super().__getitem__(docid)


def _setup(tiny, tmp_path):
  config = tiny.copy_and_resolve_references()
  config.data.cache_dir = str(tmp_path / "cache")
  encoder = retrieval.Encoder.from_config(config, mesh=sharding.make_mesh())
  dataset = assets.load_dataset(config.data)
  corpus = _Counting(dataset.corpus.items())
  return config, encoder, dataset, corpus


def test_a_second_encoding_reads_no_text_and_gives_the_same_embeddings(tiny, tmp_path, monkeypatch):
  config, encoder, dataset, corpus = _setup(tiny, tmp_path)
  monkeypatch.setattr(retrieval, "CORPUS_CHUNK", 16)  # 50 passages: ranges of 16, 16, 16, 2
  cid = retrieval.corpus_id(retrieval.corpus_path(config.data, dataset), config.data.cache_dir)
  tokens = retrieval.corpus_tokens(encoder, cid, config.encode, config.data)
  _, plain = encoder.encode_corpus(corpus, None, cid)  # no token cache: texts every time
  assert corpus.reads == 50 and not (tmp_path / "cache" / "tokens").exists()
  _, first = encoder.encode_corpus(corpus, None, cid, tokens=tokens)
  assert corpus.reads == 100
  kept = sorted(p.name for p in (tmp_path / "cache" / "tokens").glob("*/rows-*.npz"))
  assert kept == [f"rows-{s:012d}-{n}.npz" for s, n in ((0, 16), (16, 16), (32, 16), (48, 2))]
  _, second = encoder.encode_corpus(corpus, None, cid, tokens=tokens)
  assert corpus.reads == 100  # every range from its ids
  np.testing.assert_array_equal(first, plain)
  np.testing.assert_array_equal(second, plain)
  want = encoder.tokenizer.encode([d.full_text() for d in dataset.corpus.values()], 32)
  got = tokens.read(16, 16)
  assert all(np.array_equal(a, b) and a.dtype == np.int32 for a, b in zip(got, want[16:32]))


def test_a_damaged_range_is_tokenized_again_with_a_warning(tiny, tmp_path, caplog):
  config, encoder, dataset, corpus = _setup(tiny, tmp_path)
  tokens = token_cache.TokenCache(str(tmp_path / "t"))
  _, first = encoder.encode_corpus(corpus, None, "c", tokens=tokens)
  (path,) = (tmp_path / "t").glob("rows-*.npz")
  path.write_bytes(path.read_bytes()[:40])
  with caplog.at_level(logging.WARNING):
    _, again = encoder.encode_corpus(corpus, None, "c", tokens=tokens)
  assert corpus.reads == 100 and f"{path}: unreadable" in caplog.text
  np.testing.assert_array_equal(again, first)
  _, third = encoder.encode_corpus(corpus, None, "c", tokens=tokens)  # repaired
  assert corpus.reads == 100 and np.array_equal(third, first)


def test_the_key_follows_tokenizer_corpus_and_length(tiny, tmp_path):
  tok = tokenization.Tokenizer(assets.model_dir(tiny.model.init))
  cache = str(tmp_path / "cache")
  base = token_cache.TokenCache.for_corpus(cache, tok, "sha256:a", 32).directory
  assert token_cache.TokenCache.for_corpus(cache, tok, "sha256:a", 32).directory == base
  assert token_cache.TokenCache.for_corpus(cache, tok, "sha256:b", 32).directory != base
  assert token_cache.TokenCache.for_corpus(cache, tok, "sha256:a", 64).directory != base
  other = tmp_path / "other"
  shutil.copytree(tok.dir, other)
  text = (other / "tokenizer.json").read_text()
  (other / "tokenizer.json").write_text(text.replace('"[UNK]"', '"[UNKNOWN]"', 1))
  changed = tokenization.Tokenizer(other)
  assert token_cache.TokenCache.for_corpus(cache, changed, "sha256:a", 32).directory != base


def test_shards_are_encoded_from_the_kept_ids_too(tiny, tmp_path):
  config, encoder, dataset, _ = _setup(tiny, tmp_path)
  config.encode.shard_size = 12
  calls = []
  real = encoder._encode_texts
  encoder._encode_texts = lambda *a: calls.append(1) or real(*a)  # the path from texts
  first = retrieval.corpus_shards(str(tmp_path / "a"), encoder, dataset, encode_config=config.encode,
                                  data_config=config.data)
  kept = sorted(p.name for p in (tmp_path / "cache" / "tokens").glob("*/rows-*.npz"))
  assert kept == [f"rows-{s:012d}-{n}.npz" for s, n in ((0, 12), (12, 12), (24, 12), (36, 12), (48, 2))]
  assert len(calls) == 5
  second = retrieval.corpus_shards(str(tmp_path / "b"), encoder, dataset, encode_config=config.encode,
                                   data_config=config.data)
  assert len(calls) == 5
  for i in range(first.num_shards):
    np.testing.assert_array_equal(np.asarray(second.embeddings(i)), np.asarray(first.embeddings(i)))


def test_the_token_cache_switch_does_not_make_the_corpus_stale():
  """It changes where ids come from, never an embedding: not among retrieve's recorded inputs."""
  from interdistill_jax import provenance
  config = defaults.base_config()
  fields = provenance.config_fields("retrieve", config)
  assert "encode.buckets" in fields and "encode.token_cache" not in fields
  config.encode.token_cache = False
  assert provenance.config_fields("retrieve", config) == fields
