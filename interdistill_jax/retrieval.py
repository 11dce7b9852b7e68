"""Corpus encoding (cached), the corpus's search index, and task `retrieve`."""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable, Mapping, Sequence

import jax
import numpy as np
from absl import logging

from interdistill_jax import data as data_lib
from interdistill_jax import (assets, digests, files, hf_weights, inference, layout, models,
                              provenance, search, sharding)
from interdistill_jax import corpus as corpus_lib
from interdistill_jax import shards, token_cache, tokenization

# Passages encoded per step of `Encoder.encode_documents` (SciFact's 5,183 in one).
CORPUS_CHUNK = 1 << 16
# Batches' worth of texts tokenized at a time, ahead of the devices (Encoder.encode).
TOKENIZE_AHEAD = 8
TOKENIZE_AHEAD_MIN = 1024


class Encoder:
  """A dual encoder ready to embed texts on the mesh, one compiled shape per bucket."""

  def __init__(self, model: models.DualEncoder, tokenizer: tokenization.Tokenizer, *,
               encode_config, model_config, mesh, param_rules=(), model_id: str = ""):
    self.mesh = mesh
    self.tokenizer = tokenizer
    self.buckets = tuple(sorted(encode_config.buckets))
    self.max_query_length = model_config.max_query_length
    self.max_doc_length = model_config.max_doc_length
    self.batch_sizes = {
        tower: sharding.inference_batch_size(encode_config.batch_size, self._max_length(tower), self.mesh)
        for tower in ("query", "doc")}
    self.model_id = model_id
    self._encode_config, self._model_config, self._param_rules = encode_config, model_config, param_rules
    self._model = inference.PlacedModel(model, self.mesh, param_rules)
    self._runners = {
        tower: inference.BucketedRunner(
            self._model, functools.partial(_encode, tower=tower), batch_size=self.batch_sizes[tower],
            buckets=self._buckets(tower), pad_id=tokenizer.pad_id, empty_shape=(0, 0))
        for tower in ("query", "doc")}

  def on_local_devices(self) -> "Encoder":
    """The same encoder on this process's devices only: processes can then encode different
    texts at the same time (corpus shards), without waiting for one another."""
    if sharding.is_process_local(self.mesh):
      return self
    return Encoder(self._model.host_model(), self.tokenizer,
                   encode_config=self._encode_config, model_config=self._model_config,
                   mesh=sharding.local_mesh(self.mesh), param_rules=self._param_rules,
                   model_id=self.model_id)

  @classmethod
  def from_config(cls, config, *, mesh) -> "Encoder":
    model, ckpt = hf_weights.load_dual_encoder(config.model, seed=config.seed)
    return cls(model, tokenization.Tokenizer(ckpt.dir), encode_config=config.encode,
               model_config=config.model, mesh=mesh, param_rules=config.mesh.param_rules,
               model_id=_weights_id(ckpt.dir, config.model))

  def _max_length(self, tower: str) -> int:
    return self.max_query_length if tower == "query" else self.max_doc_length

  def _buckets(self, tower: str) -> list[int]:
    return tokenization.buckets_up_to(self.buckets, self._max_length(tower))

  def compile(self, tower: str) -> None:
    """Compiles every batch shape `tower` can take (one per bucket), e.g. before timing."""
    self._runners[tower].compile()

  def encode(self, texts: Sequence[str], *, tower: str, desc: str | None = None) -> np.ndarray:
    """texts -> [N, H] float32 embeddings, in input order.

    Texts are tokenized TOKENIZE_AHEAD batches (at least TOKENIZE_AHEAD_MIN texts) at a time in
    a worker thread (the Rust tokenizer releases the GIL and uses the cores), the next chunk
    while the devices encode this one.
    """
    return self._encode_texts(texts, tower, desc, None)

  def _encode_texts(self, texts: Sequence[str], tower: str, desc: str | None,
                    keep: list[np.ndarray] | None) -> np.ndarray:
    """`encode`, appending the texts' token ids to `keep` (when given) as they pass."""
    # Batches are cut by length within a chunk: at least TOKENIZE_AHEAD_MIN texts keep them as
    # even as one sort of all the texts would (small CPU batches), 8 batches overlap the devices.
    chunk = max(self.batch_sizes[tower] * TOKENIZE_AHEAD, TOKENIZE_AHEAD_MIN)

    def chunks():
      length = self._max_length(tower)
      for seqs in tokenization.tokenized_ahead(self.tokenizer, texts, length, chunk):
        if keep is not None:
          keep.extend(seqs)
        yield seqs, None

    return self._runners[tower].run_chunks(chunks(), len(texts), desc=desc or f"encode {tower}s",
                                           show_progress=desc is not None)

  def encode_passages(self, texts: Callable[[], Sequence[str]], start: int, count: int,
                      tokens: token_cache.TokenCache | None, *, desc: str) -> np.ndarray:
    """[count, H] embeddings of a corpus's rows [start, start + count): from their token ids in
    `tokens` when it holds them (then `texts()`, which reads them, is not called), else from
    `texts()`, whose ids `tokens` then keeps."""
    seqs = tokens.read(start, count) if tokens is not None else None
    if seqs is not None:
      return self._runners["doc"].run(seqs, desc=desc, show_progress=True)
    if tokens is None:
      return self.encode(texts(), tower="doc", desc=desc)
    keep = []
    emb = self._encode_texts(texts(), "doc", desc, keep)
    tokens.write(start, keep)
    return emb

  def cache_key(self, corpus_id: str, *extra: str) -> str:
    """Names this encoder's embeddings of a corpus on disk (model, corpus, passage length, extra)."""
    return embeddings_key(self.model_id, corpus_id, self.max_doc_length, *extra)

  def encode_corpus(self, corpus: Mapping[str, data_lib.Document], cache_dir: str | None,
                    corpus_id: str, legacy_id: str | None = None,
                    tokens: token_cache.TokenCache | None = None) -> tuple[list[str], np.ndarray]:
    """(docids, [N, H] embeddings), read from the cache when this model already encoded it
    (under `corpus_id`, or under `legacy_id`, the corpus's name in older caches); encoded
    from the token ids `tokens` keeps, where it has them."""
    docids = list(corpus)
    path = None
    if cache_dir:
      for cid in (corpus_id, legacy_id) if legacy_id else (corpus_id,):
        path = os.path.join(cache_dir, f"corpus-{self.cache_key(cid)}.npy")
        meta = {"model": self.model_id, "corpus": cid, "num_docs": len(docids)}
        emb, problem = _read_cache(path, meta) if files.exists(path) else (None, None)
        if emb is not None:
          logging.info("Corpus embeddings from cache %s", path)
          return docids, emb
        if problem:  # recomputed from the corpus: safe, and it costs no LLM call
          logging.warning("%s: %s; encoding the corpus again", path, problem)
      path = os.path.join(cache_dir, f"corpus-{self.cache_key(corpus_id)}.npy")
    emb = self.encode_documents(corpus, docids, tokens)
    if path and jax.process_index() == 0:
      # The description first, the embeddings last: their presence is what marks the cache
      # complete, so a killed run leaves both files or none that is read.
      data_lib.write_json(path[:-4] + ".json", {"model": self.model_id, "corpus": corpus_id,
                                                "num_docs": len(docids), "dim": int(emb.shape[1])})
      files.save_npy(path, emb)
    return docids, emb

  def encode_documents(self, corpus: Mapping[str, data_lib.Document], docids: Sequence[str],
                       tokens: token_cache.TokenCache | None = None) -> np.ndarray:
    """[N, H] float32 embeddings of `corpus[d]` for d in `docids`, in order, streamed
    CORPUS_CHUNK at a time: memory holds one chunk's texts, not the corpus's; a chunk whose
    token ids `tokens` holds reads no text."""
    num_docs = len(docids)
    out = np.zeros((num_docs, 0), np.float32)
    chunks = -(-num_docs // CORPUS_CHUNK)
    for i, start in enumerate(range(0, num_docs, CORPUS_CHUNK)):
      ids = docids[start:start + CORPUS_CHUNK]
      desc = "encode corpus" if chunks == 1 else f"encode corpus {i + 1}/{chunks}"
      emb = self.encode_passages(lambda ids=ids: [corpus[d].full_text() for d in ids], start,
                                 len(ids), tokens, desc=desc)
      if i == 0:
        out = np.zeros((num_docs, emb.shape[1]), np.float32)
      out[start:start + len(ids)] = emb
    return out


def embeddings_key(model_id: str, corpus_id: str, max_doc_length: int, *extra: str) -> str:
  """Names a model's embeddings of a corpus on disk (model, corpus, passage length, extra)."""
  fields = "|".join([model_id, corpus_id, str(max_doc_length), *extra])
  return hashlib.sha256(fields.encode()).hexdigest()[:16]


def _read_cache(path: str, meta: dict) -> tuple[np.ndarray | None, str | None]:
  """(embeddings, None) from a cache file that `meta` (model, corpus, num_docs) describes, else
  (None, what is wrong with it): damaged, from another model or corpus, or cut short."""
  record = path[:-len(".npy")] + ".json"
  if not files.exists(record):
    return None, f"no {os.path.basename(record)} says what it holds"
  try:
    recorded = data_lib.read_json(record)
  except data_lib.DataError as e:
    return None, str(e)
  differ = [key for key, value in meta.items() if recorded.get(key) != value]
  if differ:
    return None, f"written for another {', '.join(differ)} ({record})"
  try:
    emb = files.load_npy(path)
  except (ValueError, OSError, EOFError) as e:
    return None, f"not a readable array ({e})"
  if emb.shape != (meta["num_docs"], recorded.get("dim")):
    return None, f"holds {emb.shape}, not ({meta['num_docs']}, {recorded.get('dim')})"
  return emb, None


def _encode(model, ids, types, mask, *, tower: str):
  return model.encode(ids, types, mask, tower=tower)


def _weights_id(directory: str, model_config) -> str:
  """Identifies a checkpoint's weights and everything that changes its embeddings."""
  st = os.stat(os.path.join(directory, "model.safetensors"))
  attention = models.inference_attention(model_config)
  return (f"{os.path.realpath(directory)}|{st.st_size}|{int(st.st_mtime)}|"
          f"{model_config.pooling}|{model_config.normalize}|{model_config.dtype}"
          + ("" if attention == "xla" else f"|{attention}"))


def model_id(model_config) -> str:
  """The id `Encoder.from_config` gives the encoder `model_config` names (what its corpus
  embeddings on disk are keyed by), without loading it."""
  return _weights_id(assets.model_dir(model_config.init), model_config)


def corpus_id(path: str, cache_dir: str | None = None) -> str:
  """What names a version of the corpus file in embedding caches and shard stores: its content
  digest (`digests`; remembered under `cache_dir`), so a copy elsewhere or a fresh mount of the
  same bytes finds the embeddings already computed."""
  return digests.content_id(path, cache_dir)


def legacy_corpus_id(path: str) -> str:
  """How older versions named the corpus file (real path, size, mtime in s): what they cached
  is still found while the file is unchanged."""
  st = os.stat(path)
  return f"{os.path.realpath(path)}|{st.st_size}|{int(st.st_mtime)}"


# --- task `retrieve` ------------------------------------------------------------------------

def corpus_path(data_config, dataset: data_lib.Dataset) -> str:
  f = data_config.corpus_file
  return f if os.path.isabs(f) else os.path.join(dataset.root, f)


def corpus_embeddings(workdir: str, encoder: Encoder, dataset: data_lib.Dataset, *, encode_config,
                      data_config) -> tuple[list[str], np.ndarray]:
  """(docids, [N, H]) of the data set's corpus, through the workdir's embedding cache."""
  cache = layout.embeddings_dir(workdir) if encode_config.cache else None
  path = corpus_path(data_config, dataset)
  cid = corpus_id(path, data_config.cache_dir)
  return encoder.encode_corpus(dataset.corpus, cache, cid, legacy_corpus_id(path),
                               corpus_tokens(encoder, cid, encode_config, data_config))


def corpus_tokens(encoder: Encoder, corpus_id: str, encode_config,
                  data_config) -> token_cache.TokenCache | None:
  """Where `encoder`'s token ids of the corpus are kept (`encode.token_cache`, in
  `data.cache_dir`), or None."""
  if not (encode_config.get("token_cache", True) and data_config.cache_dir):
    return None
  return token_cache.TokenCache.for_corpus(data_config.cache_dir, encoder.tokenizer, corpus_id,
                                           encoder.max_doc_length)


class CorpusEmbeddings:
  """Passage embeddings looked up by docid, from memory or from the on-disk shards.

  Docids are mapped to rows by the corpus's `corpus.DocidTable` (the offset index's arrays), and
  the rows read from the in-memory cache or the memory-mapped shards: only the rows asked for are
  read, and no table of every docid is built.
  """

  def __init__(self, docids: corpus_lib.DocidTable, rows):
    self.docids = docids
    self._rows = rows  # [N] int row indices -> [N, H] float32

  @classmethod
  def of(cls, workdir: str, encoder: Encoder, dataset: data_lib.Dataset, *, encode_config,
         data_config) -> "CorpusEmbeddings":
    """`encoder`'s embeddings of the corpus, through the workdir's cache (`encode.shard_size`)."""
    docids = corpus_lib.docid_table(dataset.corpus)
    if encode_config.shard_size > 0:
      store = corpus_shards(workdir, encoder, dataset, encode_config=encode_config,
                            data_config=data_config)
      store.check_docids(docids, corpus_path(data_config, dataset))
      return cls(docids, store.rows)
    _, emb = corpus_embeddings(workdir, encoder, dataset, encode_config=encode_config,
                               data_config=data_config)
    return cls(docids, lambda idx: emb[idx])

  def __call__(self, docids: Sequence[str]) -> np.ndarray:
    """[N, H] float32 embeddings of `docids`, in order."""
    try:
      idx = self.docids.rows(docids)
    except KeyError as e:
      raise KeyError(f"document {e.args[0]!r} is not in the encoded corpus") from None
    return np.asarray(self._rows(idx), np.float32)


def shard_store_dir(workdir: str, *, model_id: str, corpus_id: str, max_doc_length: int,
                    shard_dtype: str) -> str:
  """Where the embeddings of the corpus `corpus_id` names by the model `model_id` names
  (passages cut to `max_doc_length` tokens, stored as `shard_dtype`) are kept as shards."""
  key = embeddings_key(model_id, corpus_id, max_doc_length, shard_dtype)
  return layout.shard_store(workdir, key)


def corpus_shards(workdir: str, encoder: Encoder, dataset: data_lib.Dataset, *, encode_config,
                  data_config):
  """The corpus encoded into on-disk shards under workdir/embeddings/ (resumed, then reused)."""
  path = corpus_path(data_config, dataset)
  cid, legacy = corpus_id(path, data_config.cache_dir), legacy_corpus_id(path)
  store_dir = functools.partial(shard_store_dir, workdir, model_id=encoder.model_id,
                                max_doc_length=encoder.max_doc_length,
                                shard_dtype=encode_config.shard_dtype)

  def has_store(name: str) -> bool:
    return files.exists(os.path.join(store_dir(corpus_id=name), "manifest.json"))

  if not has_store(cid) and has_store(legacy):
    cid = legacy  # a store an older version wrote for this same file
  directory = store_dir(corpus_id=cid)
  return shards.encode_to_shards(
      encoder.on_local_devices(), path, directory, shard_size=encode_config.shard_size,
      dtype=encode_config.shard_dtype, meta={"model": encoder.model_id, "corpus": cid},
      tokens=corpus_tokens(encoder, corpus_id(path, data_config.cache_dir), encode_config,
                           data_config))


def corpus_index(workdir: str, encoder: Encoder, dataset: data_lib.Dataset, *, retrieve_config,
                 encode_config, data_config, seed: int):
  """(docids, index) of the corpus under `encoder`.

  `encode.shard_size` 0: embeddings in memory, searched exactly. Otherwise on-disk shards
  (bounded memory), searched exactly shard by shard or, with `retrieve.index` "ivfpq" or "hnsw",
  through a FAISS index built from the shards and stored beside them. Exact search runs on the
  kernel `retrieve.exact_backend` chooses (`search.exact_backend`); `seed` seeds the FAISS build.
  """
  if encode_config.shard_size <= 0:
    if retrieve_config.index != "exact":
      raise ValueError(f"retrieve.index={retrieve_config.index!r} needs on-disk shards: set "
                       "encode.shard_size > 0")
    docids, emb = corpus_embeddings(workdir, encoder, dataset, encode_config=encode_config,
                                    data_config=data_config)
    return docids, search.exact_index(emb, mesh=encoder.mesh, block_size=retrieve_config.block_size,
                                      backend=retrieve_config.exact_backend)
  store = corpus_shards(workdir, encoder, dataset, encode_config=encode_config,
                        data_config=data_config)
  # The corpus's docids by row, from its offset index: no list of every docid.
  docids = corpus_lib.docid_table(dataset.corpus)
  store.check_docids(docids, corpus_path(data_config, dataset))
  if retrieve_config.index == "exact":
    return docids, shards.ShardedExactIndex(store, mesh=sharding.local_mesh(encoder.mesh),
                                            block_size=retrieve_config.block_size,
                                            backend=retrieve_config.exact_backend)
  return docids, shards.FaissIndex(
      shards.load_or_build_faiss(store, retrieve_config.index, nlist=retrieve_config.nlist,
                                 pq_m=retrieve_config.pq_m, hnsw_m=retrieve_config.hnsw_m,
                                 seed=seed),
      nprobe=retrieve_config.nprobe, ef_search=retrieve_config.ef_search, store=store,
      refine=retrieve_config.refine)


def run(config, workdir: str) -> None:
  """Task `retrieve`: writes `candidates/{split}.trec` for each split present (qrels or id list),
  then `candidates/done.json`."""
  inputs = provenance.begin("retrieve", config, workdir)
  dataset = assets.load_dataset(config.data)
  encoder = Encoder.from_config(config, mesh=sharding.mesh_from_config(config.mesh))
  splits = [s for s in config.retrieve.splits if dataset.has_split(s)]
  for split in sorted(set(config.retrieve.splits) - set(splits)):
    logging.warning("No qrels/%s.tsv or splits/%s.txt in %s: skipping split %s", split, split,
                    dataset.root, split)
  if not splits:
    return
  docids, index = corpus_index(workdir, encoder, dataset, retrieve_config=config.retrieve,
                               encode_config=config.encode, data_config=config.data,
                               seed=config.seed)  # once, for every split
  for split in splits:
    out = layout.candidates(workdir, split)
    queries = dataset.split_queries(split)
    q_emb = encoder.encode([q.text for q in queries.values()], tower="query",
                           desc=f"encode {split} queries")
    result = search.search_run(index, docids, list(queries), q_emb, config.retrieve.k)
    if jax.process_index() == 0:
      data_lib.write_trec_run(out, result, tag="initial")
      logging.info("Wrote %s (%d queries, top %d)", out, len(result), config.retrieve.k)
  if jax.process_index() == 0:
    data_lib.write_json(provenance.marker("retrieve", workdir), {"splits": splits, **inputs})
