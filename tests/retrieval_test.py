"""Exact search: against brute force, and identical on 1 and 4 devices; the automatic inference batch."""

import json
import os

import jax
import numpy as np
import pytest

from interdistill_jax import search, sharding


def _embeddings(n, d, seed):
  x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_exact_search_matches_brute_force():
  docs, queries = _embeddings(1000, 32, 0), _embeddings(37, 32, 1)
  scores, idx = search.ExactIndex(docs, mesh=sharding.make_mesh(), block_size=64).search(queries, 10)
  full = queries @ docs.T
  expected = np.argsort(-full, axis=1, kind="stable")[:, :10]
  np.testing.assert_array_equal(idx, expected)
  np.testing.assert_allclose(scores, np.take_along_axis(full, expected, 1), atol=1e-5)


@pytest.mark.parametrize("block_size", [64, 2048])
def test_search_is_identical_on_one_and_four_devices(block_size):
  assert jax.device_count() == 4, "tests run on 4 simulated CPU devices (see conftest.py)"
  docs, queries = _embeddings(5183, 48, 2), _embeddings(300, 48, 3)
  docs[17] = docs[4000]  # an exact tie across device shards: the lower index must win
  one = search.ExactIndex(docs, mesh=sharding.make_mesh(jax.devices()[:1]), block_size=block_size)
  four = search.ExactIndex(docs, mesh=sharding.make_mesh(), block_size=block_size)
  s1, i1 = one.search(queries, 100)
  s4, i4 = four.search(queries, 100)
  np.testing.assert_array_equal(i1, i4)
  np.testing.assert_array_equal(s1, s4)


def test_k_larger_than_corpus_returns_every_document_once():
  docs = _embeddings(5, 8, 4)
  _, idx = search.ExactIndex(docs, mesh=sharding.make_mesh()).search(_embeddings(3, 8, 5), 100)
  assert idx.shape == (3, 5)
  assert all(sorted(row) == list(range(5)) for row in idx.tolist())


def test_search_run_maps_indices_to_docids():
  docs = _embeddings(20, 8, 6)
  run = search.search_run(search.ExactIndex(docs, mesh=sharding.make_mesh()), [f"d{i}" for i in range(20)],
                          ["q"], docs[7:8], 3)
  best = max(run["q"], key=run["q"].get)
  assert best == "d7" and len(run["q"]) == 3


def test_automatic_inference_batch_follows_length_and_mesh():
  one, four = sharding.make_mesh(jax.devices()[:1]), sharding.make_mesh()
  # CPU: about CPU_BATCH_TOKENS tokens per device, at least one sequence each.
  assert sharding.inference_batch_size(0, 256, one) == sharding.CPU_BATCH_TOKENS // 256
  assert sharding.inference_batch_size(0, 64, one) == sharding.CPU_BATCH_TOKENS // 64
  assert sharding.inference_batch_size(0, 256, four) == 4 * (sharding.CPU_BATCH_TOKENS // 256)
  assert sharding.inference_batch_size(0, 4 * sharding.CPU_BATCH_TOKENS, one) == 1
  # A batch the user asks for is kept, rounded up to split over the mesh.
  assert sharding.inference_batch_size(32, 256, one) == 32
  assert sharding.inference_batch_size(6, 256, four) == 8
  with pytest.raises(ValueError, match="negative"):
    sharding.inference_batch_size(-1, 256, one)


def _well_separated(docs, queries, k):
  """The data has distinct scores around each query's top k (gaps well above float32 rounding)."""
  full = np.sort(queries.astype(np.float64) @ docs.T.astype(np.float64), axis=1)[:, ::-1]
  return np.diff(full[:, :k + 1], axis=1).min() < -1e-5


@pytest.mark.parametrize("num_docs,k", [(1000, 10), (3001, 100), (7, 100)])
def test_faiss_and_jax_exact_search_agree(num_docs, k):
  docs, queries = _embeddings(num_docs, 24, 7), _embeddings(29, 24, 8)
  assert _well_separated(docs, queries, min(k, num_docs - 1))
  mesh = sharding.make_mesh()
  jax_index = search.exact_index(docs, mesh=mesh, block_size=64, backend="jax")
  faiss_index = search.exact_index(docs, mesh=mesh, backend="faiss")
  assert isinstance(jax_index, search.ExactIndex) and isinstance(faiss_index, search.FaissExactIndex)
  s_jax, i_jax = jax_index.search(queries, k)
  s_faiss, i_faiss = faiss_index.search(queries, k)
  assert i_faiss.dtype == np.int64 and i_faiss.shape == (29, min(k, num_docs))
  np.testing.assert_array_equal(i_faiss, i_jax)
  np.testing.assert_allclose(s_faiss, s_jax, atol=1e-5)


def test_faiss_search_puts_tied_scores_lower_index_first_like_jax():
  docs, queries = _embeddings(5183, 48, 2), _embeddings(300, 48, 3)
  docs[17] = docs[4000]
  mesh = sharding.make_mesh()
  s_jax, i_jax = search.exact_index(docs, mesh=mesh, backend="jax").search(queries, 100)
  s_faiss, i_faiss = search.exact_index(docs, mesh=mesh, backend="faiss").search(queries, 100)
  rows = [r for r in range(300) if {17, 4000} <= set(i_faiss[r])]
  assert rows  # the tie occurs inside some query's top 100
  for r in rows:
    for row in (i_faiss[r].tolist(), i_jax[r].tolist()):
      assert row.index(17) + 1 == row.index(4000)
  np.testing.assert_allclose(s_faiss, s_jax, atol=1e-5)


def test_lower_index_first_only_reorders_exact_ties():
  s = np.array([[3.0, 2.0, 2.0, 1.0], [4.0, 3.0, 2.0, 1.0]], np.float32)
  i = np.array([[5, 9, 2, 7], [8, 6, 4, 2]])
  s2, i2 = search.lower_index_first(s, i)
  assert i2.tolist() == [[5, 2, 9, 7], [8, 6, 4, 2]] and s2.tolist() == s.tolist()
  assert i.tolist()[0] == [5, 9, 2, 7]  # the input is left as it was


def test_exact_backend_follows_the_mesh_platform_unless_forced():
  cpu = sharding.make_mesh()
  assert search.exact_backend("auto", cpu) == "faiss"
  assert search.exact_backend("jax", cpu) == "jax" and search.exact_backend("faiss", cpu) == "faiss"

  class FakeDevice:
    platform = "gpu"

  class FakeMesh:
    devices = np.array([FakeDevice()])

  assert search.exact_backend("auto", FakeMesh()) == "jax"
  with pytest.raises(ValueError, match="retrieve.exact_backend must be one of"):
    search.exact_backend("blas", cpu)


class _StubEncoder:
  """What `Encoder.encode_corpus` uses of an encoder, without a model."""

  model_id = "stub"

  def __init__(self):
    self.encoded = 0

  def cache_key(self, corpus_id):
    return corpus_id

  def encode(self, texts, *, tower, desc=None):
    self.encoded += 1
    return np.arange(4 * len(texts), dtype=np.float32).reshape(len(texts), 4)

  def encode_documents(self, corpus, docids, tokens=None):
    from interdistill_jax import retrieval
    return retrieval.Encoder.encode_documents(self, corpus, docids, tokens)

  def encode_passages(self, texts, start, count, tokens, *, desc):
    from interdistill_jax import retrieval
    return retrieval.Encoder.encode_passages(self, texts, start, count, tokens, desc=desc)


def test_the_embedding_cache_is_complete_or_absent_after_a_kill(tmp_path, monkeypatch):
  """The cache's description is written before the embeddings, whose arrival marks it complete:
  a run killed between the two leaves no embeddings, and the rerun writes both (a rerun that
  found embeddings would never write a missing description)."""
  from interdistill_jax import retrieval
  from interdistill_jax.data import Document
  corpus = {f"d{i}": Document(f"d{i}", "", f"text {i}") for i in range(3)}
  landed, real_replace = [], os.replace

  def replace(src, dst):
    if dst.endswith(".npy"):
      raise KeyboardInterrupt("killed before the embeddings landed")
    landed.append(os.path.basename(dst))
    real_replace(src, dst)

  stub = _StubEncoder()
  monkeypatch.setattr(os, "replace", replace)
  with pytest.raises(KeyboardInterrupt):
    retrieval.Encoder.encode_corpus(stub, corpus, str(tmp_path), "c")
  assert landed == ["corpus-c.json"] and not (tmp_path / "corpus-c.npy").exists()
  monkeypatch.setattr(os, "replace", real_replace)
  docids, emb = retrieval.Encoder.encode_corpus(stub, corpus, str(tmp_path), "c")
  assert stub.encoded == 2 and docids == list(corpus)
  np.testing.assert_array_equal(np.load(tmp_path / "corpus-c.npy"), emb)
  assert json.loads((tmp_path / "corpus-c.json").read_text())["num_docs"] == 3
  retrieval.Encoder.encode_corpus(stub, corpus, str(tmp_path), "c")
  assert stub.encoded == 2  # read from the cache


def test_embeddings_cached_under_the_corpus_name_of_older_versions_are_read(tmp_path):
  """A cache written under the legacy name (path, size, mtime) is read while that name holds;
  a new one is written under the content name."""
  from interdistill_jax import retrieval
  from interdistill_jax.data import Document
  corpus = {f"d{i}": Document(f"d{i}", "", f"text {i}") for i in range(3)}
  stub = _StubEncoder()
  _, old = retrieval.Encoder.encode_corpus(stub, corpus, str(tmp_path), "legacy")
  _, emb = retrieval.Encoder.encode_corpus(stub, corpus, str(tmp_path), "sha256:x", "legacy")
  assert stub.encoded == 1 and not (tmp_path / "corpus-sha256:x.npy").exists()
  np.testing.assert_array_equal(emb, old)
  retrieval.Encoder.encode_corpus(stub, corpus, str(tmp_path), "sha256:x", "other")
  assert stub.encoded == 2 and (tmp_path / "corpus-sha256:x.npy").exists()
