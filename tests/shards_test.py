"""On-disk embedding shards: same embeddings as in memory, per-shard resume, streamed exact search
equal to in-memory search, FAISS indexes built from the shards."""

import json
import os

import numpy as np
import pytest

from interdistill_jax import data as data_lib
from interdistill_jax import assets, corpus, defaults, retrieval, search, sharding, shards
from tests import fixtures


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  root = tmp_path_factory.mktemp("shards")
  bert = fixtures.tiny_bert(root / "bert", layers=1, hidden=16, heads=2)
  data_dir = fixtures.tiny_beir(root / "data", num_docs=50)
  config = defaults.base_config()
  config.data.dir = str(data_dir)
  config.data.cache_dir = str(root / "cache")  # the corpus index
  config.model.init = str(bert)
  config.model.max_doc_length = 32
  config.encode.buckets = (16, 32)
  config.encode.batch_size = 8
  return config


def _store(config, workdir, shard_size=12, dtype="float32"):
  config = config.copy_and_resolve_references()
  config.encode.shard_size, config.encode.shard_dtype = shard_size, dtype
  encoder = retrieval.Encoder.from_config(config, mesh=sharding.make_mesh())
  dataset = assets.load_dataset(config.data)
  return retrieval.corpus_shards(str(workdir), encoder, dataset, encode_config=config.encode,
                                 data_config=config.data), encoder, dataset


def test_shards_hold_the_in_memory_embeddings(tiny, tmp_path):
  store, encoder, dataset = _store(tiny, tmp_path)
  docids, emb = retrieval.corpus_embeddings(str(tmp_path / "mem"), encoder, dataset,
                                            encode_config=tiny.encode, data_config=tiny.data)
  assert store.num_shards == 5 and store.num_docs == 50  # 4 x 12 + 2
  assert store.docids() == docids
  full = np.concatenate([np.asarray(store.embeddings(i)) for i in range(store.num_shards)])
  np.testing.assert_allclose(full, emb, atol=1e-6)
  np.testing.assert_allclose(store.rows(np.array([49, 0, 13, 12])), emb[[49, 0, 13, 12]], atol=1e-6)


def test_corpus_encoding_streamed_in_chunks_equals_one_pass(tiny, tmp_path, monkeypatch):
  encoder = retrieval.Encoder.from_config(tiny, mesh=sharding.make_mesh())
  dataset = assets.load_dataset(tiny.data)
  whole = encoder.encode([doc.full_text() for doc in dataset.corpus.values()], tower="doc")
  monkeypatch.setattr(retrieval, "CORPUS_CHUNK", 16)  # 50 passages: chunks of 16, 16, 16, 2
  docids, emb = encoder.encode_corpus(dataset.corpus, None, "tiny")
  assert docids == list(dataset.corpus) and emb.shape == whole.shape
  np.testing.assert_allclose(emb, whole, atol=1e-6)


def test_float16_shards_rank_like_float32(tiny, tmp_path):
  store16, encoder, _ = _store(tiny, tmp_path / "a", dtype="float16")
  store32, _, _ = _store(tiny, tmp_path / "b", dtype="float32")
  assert store16.embeddings(0).dtype == np.float16
  q = encoder.encode(["protein gene cell", "virus brain"], tower="query")
  _, i16 = shards.ShardedExactIndex(store16, mesh=encoder.mesh).search(q, 5)
  _, i32 = shards.ShardedExactIndex(store32, mesh=encoder.mesh).search(q, 5)
  assert (i16[:, 0] == i32[:, 0]).all()


def test_a_killed_encoding_resumes_with_the_missing_shards_only(tiny, tmp_path):
  store, _, _ = _store(tiny, tmp_path)
  manifest = json.loads(open(os.path.join(store.directory, "manifest.json")).read())
  # Simulate a run killed while writing shard 3: the manifest is not complete, shard 3 is absent
  # (a half-written one only ever exists under a temporary name).
  del manifest["complete"]
  data_lib.write_json(os.path.join(store.directory, "manifest.json"), manifest)
  os.remove(os.path.join(store.directory, "shard-00003.npy"))
  open(os.path.join(store.directory, "shard-00003.tmp.npy"), "wb").write(b"partial")
  mtimes = {i: os.stat(os.path.join(store.directory, f"shard-{i:05d}.npy")).st_mtime_ns
            for i in (0, 1, 2, 4)}
  again, _, _ = _store(tiny, tmp_path)
  assert again.num_docs == 50 and os.path.exists(os.path.join(store.directory, "shard-00003.npy"))
  for i, t in mtimes.items():  # the finished shards were not encoded again
    assert os.stat(os.path.join(store.directory, f"shard-{i:05d}.npy")).st_mtime_ns == t
  np.testing.assert_array_equal(np.asarray(again.embeddings(3)), np.asarray(store.embeddings(3)))


def test_settings_mismatch_is_an_error(tiny, tmp_path):
  store, encoder, _ = _store(tiny, tmp_path)
  meta = {k: store.manifest[k] for k in ("model", "corpus")}
  with pytest.raises(ValueError, match="other settings.*shard_size"):
    shards.encode_to_shards(encoder, os.path.join(tiny.data.dir, "corpus.jsonl"), store.directory,
                            shard_size=7, dtype="float32", meta=meta)


@pytest.mark.parametrize("backend", ["faiss", "jax"])
@pytest.mark.parametrize("k", [1, 10, 50])
def test_streamed_exact_search_equals_in_memory_search(tiny, tmp_path, k, backend):
  store, encoder, dataset = _store(tiny, tmp_path, shard_size=7)
  _, emb = retrieval.corpus_embeddings(str(tmp_path / "mem"), encoder, dataset,
                                       encode_config=tiny.encode, data_config=tiny.data)
  q = encoder.encode([x.text for x in dataset.queries.values()], tower="query")
  s_mem, i_mem = search.ExactIndex(emb, mesh=encoder.mesh).search(q, k)  # JAX, in memory
  index = shards.ShardedExactIndex(store, mesh=encoder.mesh, backend=backend)
  assert index.backend == backend
  s_sh, i_sh = index.search(q, k)
  np.testing.assert_array_equal(i_sh, i_mem)
  np.testing.assert_allclose(s_sh, s_mem, atol=1e-6)


def test_the_task_searches_with_faiss_on_cpu_unless_told_otherwise(tiny, tmp_path):
  config = tiny.copy_and_resolve_references()
  config.encode.shard_dtype = "float32"  # the same embeddings in memory and on disk
  encoder = retrieval.Encoder.from_config(config, mesh=sharding.make_mesh())
  dataset = assets.load_dataset(config.data)
  q = encoder.encode([x.text for x in dataset.queries.values()], tower="query")
  results = {}
  for shard_size in (0, 12):
    for backend in ("auto", "jax"):
      config.encode.shard_size, config.retrieve.exact_backend = shard_size, backend
      docids, index = retrieval.corpus_index(str(tmp_path), encoder, dataset,
                                             retrieve_config=config.retrieve,
                                             encode_config=config.encode, data_config=config.data,
                                             seed=config.seed)
      uses_faiss = (isinstance(index, search.FaissExactIndex) if shard_size == 0
                    else index.backend == "faiss")
      assert uses_faiss == (backend == "auto"), (shard_size, backend)
      results[shard_size, backend] = search.search_run(index, docids, list(dataset.queries), q, 10)
  first = results[0, "jax"]
  for run in results.values():
    assert run.keys() == first.keys()
    for qid, docs in run.items():
      assert list(docs) == list(first[qid])
      np.testing.assert_allclose(list(docs.values()), list(first[qid].values()), atol=1e-6)


def test_merge_top_k_breaks_ties_by_lower_index():
  s, i = search.merge_top_k([np.array([[1.0, 0.5]]), np.array([[1.0, 0.7]])],
                            [np.array([[7, 1]]), np.array([[3, 2]])], 3)
  assert i.tolist() == [[3, 7, 2]] and s.tolist() == [[1.0, 1.0, 0.7]]


def test_merge_top_k_equals_sorting_by_score_then_index():
  rng = np.random.default_rng(3)
  # Few distinct scores: ties everywhere, inside the lists and across them.
  lists = [(-np.sort(-rng.integers(0, 6, (40, n)).astype(np.float32), 1),
            rng.permutation(1000)[:40 * n].reshape(40, n)) for n in (5, 9, 3)]
  s, i = search.merge_top_k([x for x, _ in lists], [y for _, y in lists], 8)
  all_s = np.concatenate([x for x, _ in lists], 1)
  all_i = np.concatenate([y for _, y in lists], 1)
  order = np.lexsort((all_i, -all_s), axis=1)[:, :8]
  np.testing.assert_array_equal(i, np.take_along_axis(all_i, order, 1))
  np.testing.assert_array_equal(s, np.take_along_axis(all_s, order, 1))


def test_faiss_indexes_from_shards_find_the_exact_neighbours(tmp_path):
  rng = np.random.default_rng(0)
  # A clustered corpus, as real embeddings are: IVF needs structure to prune.
  centers = rng.standard_normal((20, 32)).astype(np.float32)
  x = centers[rng.integers(0, 20, 3000)] + 0.3 * rng.standard_normal((3000, 32)).astype(np.float32)
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  directory = tmp_path / "store"
  directory.mkdir()
  offsets = list(range(0, 3000, 1000))
  for s, o in enumerate(offsets):
    np.save(directory / f"shard-{s:05d}.npy", x[o:o + 1000].astype(np.float16))
    (directory / f"shard-{s:05d}.ids").write_text("".join(f"d{j}\n" for j in range(o, o + 1000)))
  data_lib.write_json(directory / "manifest.json", {"complete": True, "num_shards": 3, "num_docs": 3000,
                                                    "dim": 32, "offsets": offsets})
  store = shards.ShardStore(str(directory))
  q = x[:50] + 0.05 * rng.standard_normal((50, 32)).astype(np.float32)
  _, exact = shards.ShardedExactIndex(store, mesh=sharding.make_mesh()).search(q, 10)
  for kind, kwargs in (("ivfpq", dict(nlist=16, pq_m=8)), ("hnsw", dict(hnsw_m=16))):
    built = shards.load_or_build_faiss(store, kind, **kwargs)
    coarse = shards.FaissIndex(built, nprobe=4)
    refined = shards.FaissIndex(built, nprobe=4, store=store, refine=10)
    assert coarse.num_docs == 3000
    recall = {name: shards.recall_at_k(index.search(q, 10)[1], exact, 10)
              for name, index in (("coarse", coarse), ("refined", refined))}
    assert recall["refined"] > 0.9 and recall["refined"] >= recall["coarse"], (kind, recall)
  assert len(list(directory.glob("faiss-*.index"))) == 2  # built once, kept beside the shards


@pytest.mark.parametrize("shard_size", [0, 12])
def test_corpus_embeddings_by_docid_are_the_rows_they_were_before(tiny, tmp_path, shard_size):
  """Docids map to rows through the corpus's offset index, not a dict of every docid: the same
  embeddings as the dict over the store's (or the cache's) docids gave."""
  config = tiny.copy_and_resolve_references()
  config.encode.shard_size = shard_size
  encoder = retrieval.Encoder.from_config(config, mesh=sharding.make_mesh())
  dataset = assets.load_dataset(config.data)
  if shard_size:
    store = retrieval.corpus_shards(str(tmp_path), encoder, dataset, encode_config=config.encode,
                                    data_config=config.data)
    docids, lookup = store.docids(), store.rows
  else:
    docids, emb = retrieval.corpus_embeddings(str(tmp_path), encoder, dataset,
                                              encode_config=config.encode, data_config=config.data)
    lookup = lambda idx: emb[idx]  # noqa: E731
  before = {d: i for i, d in enumerate(docids)}
  embeddings = retrieval.CorpusEmbeddings.of(str(tmp_path), encoder, dataset,
                                             encode_config=config.encode, data_config=config.data)
  asked = [docids[i] for i in np.random.default_rng(0).integers(0, len(docids), 30)]
  want = np.asarray(lookup(np.array([before[d] for d in asked])), np.float32)
  np.testing.assert_array_equal(embeddings(asked), want)
  with pytest.raises(KeyError, match="'d999' is not in the encoded corpus"):
    embeddings(["d1", "d999"])


def test_the_search_maps_rows_to_the_docids_the_store_lists(tiny, tmp_path):
  config = tiny.copy_and_resolve_references()
  config.encode.shard_size = 12
  encoder = retrieval.Encoder.from_config(config, mesh=sharding.make_mesh())
  dataset = assets.load_dataset(config.data)
  docids, index = retrieval.corpus_index(str(tmp_path), encoder, dataset,
                                         retrieve_config=config.retrieve,
                                         encode_config=config.encode, data_config=config.data,
                                         seed=config.seed)
  store = retrieval.corpus_shards(str(tmp_path), encoder, dataset, encode_config=config.encode,
                                  data_config=config.data)
  assert not isinstance(docids, list) and list(docids) == store.docids()
  q = encoder.encode([x.text for x in dataset.queries.values()], tower="query")
  run = search.search_run(index, docids, list(dataset.queries), q, 10)
  assert run == search.search_run(index, store.docids(), list(dataset.queries), q, 10)


def test_a_store_of_another_corpus_order_is_refused(tiny, tmp_path):
  store, _, dataset = _store(tiny, tmp_path)
  table = corpus.docid_table(dataset.corpus)
  store.check_docids(table, "corpus.jsonl")
  ids = os.path.join(store.directory, "shard-00002.ids")
  lines = open(ids).read().split("\n")[:-1]
  data_lib.atomic_write_text(ids, "\n".join(lines[1:] + lines[:1]) + "\n")  # same rows, rotated
  with pytest.raises(ValueError, match="shard-00002.ids holds 'd25'..'d24' where corpus.jsonl has "
                     "'d24'..'d35'"):
    store.check_docids(table, "corpus.jsonl")
  with pytest.raises(ValueError, match="holds 50 passages, corpus.jsonl has 49"):
    store.check_docids(list(table)[:49], "corpus.jsonl")


@pytest.mark.parametrize("naming", ["content", "legacy"])
def test_a_store_written_from_outside_is_found_complete(tiny, tmp_path, naming):
  """`write_store` (embeddings computed elsewhere) leaves what `encode_to_shards` would have; a
  store named the way older versions named the corpus (path, size, mtime) is still found."""
  encoded, encoder, dataset = _store(tiny, tmp_path / "encoded", dtype="float16")
  chunks = [(encoded.ids(i), np.asarray(encoded.embeddings(i), np.float32))
            for i in range(encoded.num_shards)]
  config = tiny.copy_and_resolve_references()
  config.encode.shard_size, config.encode.shard_dtype = 12, "float16"
  path = retrieval.corpus_path(config.data, dataset)
  corpus_id = (retrieval.corpus_id(path) if naming == "content"
               else retrieval.legacy_corpus_id(path))
  directory = retrieval.shard_store_dir(str(tmp_path / "written"),
                                        model_id=retrieval.model_id(config.model),
                                        corpus_id=corpus_id,
                                        max_doc_length=config.model.max_doc_length,
                                        shard_dtype=config.encode.shard_dtype)
  assert retrieval.model_id(config.model) == encoder.model_id
  settings = shards.store_settings(dtype="float16", shard_size=12,
                                   meta={"model": encoder.model_id, "corpus": corpus_id})
  shards.write_store(directory, chunks, settings=settings)

  def no_encoding(*args, **kwargs):
    raise AssertionError("a complete store was encoded again")

  encoder.encode = no_encoding
  found = retrieval.corpus_shards(str(tmp_path / "written"), encoder, dataset,
                                  encode_config=config.encode, data_config=config.data)
  assert found.directory == directory
  assert found.manifest == {**encoded.manifest, "corpus": corpus_id}
  for i in range(encoded.num_shards):
    np.testing.assert_array_equal(np.asarray(found.embeddings(i)), np.asarray(encoded.embeddings(i)))
