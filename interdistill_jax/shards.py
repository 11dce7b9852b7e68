"""Corpus embeddings too large for memory: on-disk shards, streamed exact search, FAISS indexes.

A shard store is one directory per (model, corpus, passage length, storage dtype):

  manifest.json        what was encoded (model, corpus, dim, dtype, shard_size); `num_docs` and
                       `num_shards` once every shard exists
  shard-00000.npy      [<= shard_size, dim] float16 or float32 embeddings
  shard-00000.ids      the shard's docids, one per line

A shard is written to a temporary name and renamed, ids first, so one that exists is complete and
a killed run re-encodes at most the shards it was writing. A shard found damaged (cut short,
unreadable, its rows not matching its ids), in a finished store too, is encoded again with a
warning naming it: the corpus is at hand and no LLM call is involved. Process p of n encodes shards p, p+n, ...
on its own devices: memory holds one shard's texts and embeddings at a time, whatever the corpus.
On several hosts the directory must be on storage every host sees (process 0 checks that every
shard exists before it marks the store complete; FAISS builds read them all). In a bucket
(`gs://...`, through `files.py`) shards are read whole instead of memory-mapped.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterable, Iterator, Sequence

import jax
import numpy as np
from absl import logging

from interdistill_jax import checks, files
from interdistill_jax import data as data_lib
from interdistill_jax import peers
from interdistill_jax import search as search_lib

DTYPES = {name: np.dtype(name).type for name in checks.SHARD_DTYPES}


def _shard_name(i: int) -> str:
  return f"shard-{i:05d}"


def iter_chunks(corpus_path: str, size: int) -> Iterator[tuple[int, list[data_lib.Document]]]:
  """(shard index, documents) of the corpus file, streamed `size` documents at a time."""
  docs = data_lib.iter_corpus(corpus_path)
  for i in itertools.count():
    chunk = list(itertools.islice(docs, size))
    if not chunk:
      return
    yield i, chunk


class ShardStore:
  """A directory of embedding shards (see the module docstring)."""

  def __init__(self, directory: str):
    self.directory = directory
    self.manifest = data_lib.read_json(os.path.join(directory, "manifest.json"))
    if not self.manifest.get("complete"):
      raise ValueError(f"{directory}: shard store is incomplete; rerun the encoding to finish it")
    self.num_shards = self.manifest["num_shards"]
    self.num_docs = self.manifest["num_docs"]
    self.dim = self.manifest["dim"]
    self.offsets = np.asarray(self.manifest["offsets"], np.int64)  # first row of each shard

  def embeddings(self, i: int) -> np.ndarray:
    """Shard i, memory-mapped (read on use, not held; a shard in a bucket is read whole)."""
    return files.load_npy(os.path.join(self.directory, _shard_name(i) + ".npy"), mmap=True)

  def ids(self, i: int) -> list[str]:
    return files.read_text(os.path.join(self.directory, _shard_name(i) + ".ids")).split("\n")[:-1]

  def docids(self) -> list[str]:
    """Every docid, in row order, as a list (small stores; `check_docids` for large ones)."""
    return [d for i in range(self.num_shards) for d in self.ids(i)]

  def check_docids(self, docids: Sequence[str], source: str) -> None:
    """Checks that row r of the store embeds `docids[r]` (the corpus's `corpus.DocidTable`):
    the number of rows, and each shard's first and last docid. Raises ValueError otherwise."""
    if self.num_docs != len(docids):
      raise ValueError(f"{self.directory} holds {self.num_docs} passages, {source} has "
                       f"{len(docids)}: the store was written from another corpus; remove it to "
                       "encode this one")
    bounds = np.append(self.offsets, self.num_docs)
    for i in range(self.num_shards):
      first, last = _first_and_last_line(os.path.join(self.directory, _shard_name(i) + ".ids"))
      want = (docids[int(bounds[i])], docids[int(bounds[i + 1]) - 1])
      if (first, last) != want:
        raise ValueError(f"{self.directory}/{_shard_name(i)}.ids holds {first!r}..{last!r} where "
                         f"{source} has {want[0]!r}..{want[1]!r}: the store was written from "
                         "another corpus; remove it to encode this one")

  def rows(self, indices: np.ndarray) -> np.ndarray:
    """Embeddings [len(indices), dim] float32 of the given global rows."""
    indices = np.asarray(indices, np.int64)
    shard = np.searchsorted(self.offsets, indices, side="right") - 1
    out = np.zeros((len(indices), self.dim), np.float32)
    for s in np.unique(shard):
      where = shard == s
      out[where] = self.embeddings(int(s))[indices[where] - self.offsets[s]]
    return out


def _first_and_last_line(path: str) -> tuple[str, str]:
  """The first and last lines of a text file of short lines, without reading the rest."""
  if not files.is_local(path):  # an object is read whole
    lines = files.read_text(path).rstrip("\n").split("\n")
    return lines[0], lines[-1]
  with open(path, "rb") as f:
    first = f.readline()
    size = f.seek(0, os.SEEK_END)
    f.seek(max(0, size - 4096))
    last = f.read().rstrip(b"\n").rsplit(b"\n", 1)[-1]
  return first.rstrip(b"\n").decode("utf-8"), last.decode("utf-8")


def _shard_problem(base: str, rows: int | None, dim: int | None) -> str | None:
  """What is wrong with a shard on disk (None: complete and readable)."""
  try:
    emb = files.load_npy(base + ".npy", mmap=True)
  except (ValueError, OSError, EOFError) as e:
    return f"not a readable array ({e})"
  if emb.ndim != 2 or (dim is not None and emb.shape[1] != dim):
    return f"holds {emb.shape}, not [rows, {dim}]"
  if not files.exists(base + ".ids"):
    return "its .ids file is missing"
  ids = files.read_bytes(base + ".ids").count(b"\n")
  if ids != emb.shape[0] or (rows is not None and ids != rows):
    return f"holds {emb.shape[0]} rows and {ids} ids, not {rows if rows is not None else ids}"
  return None


def _drop_damaged(directory: str, manifest: dict) -> bool:
  """Removes the damaged shards of a finished store, so they are encoded again (the corpus is
  at hand, no LLM call is involved) and marks the store unfinished. Returns whether any was."""
  offsets = manifest["offsets"] + [manifest["num_docs"]]
  damaged = []
  for i in range(manifest["num_shards"]):
    base = os.path.join(directory, _shard_name(i))
    problem = _shard_problem(base, offsets[i + 1] - offsets[i], manifest["dim"])
    if problem:
      damaged.append(i)
      logging.warning("%s.npy: %s; encoding this shard again", base, problem)
  if damaged and jax.process_index() == 0:
    for i in damaged:
      for suffix in (".npy", ".ids"):
        files.remove(os.path.join(directory, _shard_name(i) + suffix))
    data_lib.write_json(os.path.join(directory, "manifest.json"),
                        {k: v for k, v in manifest.items()
                         if k not in ("complete", "dim", "num_docs", "num_shards", "offsets")})
  return bool(damaged)


def encode_to_shards(encoder, corpus_path: str, directory: str, *, shard_size: int,
                     dtype: str = "float16", meta: dict | None = None, tokens=None) -> ShardStore:
  """Encodes the corpus file into `directory` (resuming), and returns the finished store.

  `tokens` (a `token_cache.TokenCache`, optional): where each shard's token ids are read from
  when kept, and kept when not (`Encoder.encode_passages`).

  `encoder` must live on this process's devices only (`Encoder(..., mesh=local mesh)`): the
  processes encode different shards at the same time and never wait for one another until the end.
  """
  checks.require_one_of("encode.shard_dtype", dtype, checks.SHARD_DTYPES)
  files.makedirs(directory)
  manifest_path = os.path.join(directory, "manifest.json")
  want = store_settings(dtype=dtype, shard_size=shard_size, meta=meta)
  if files.exists(manifest_path):
    have = data_lib.read_json(manifest_path)
    diff = {k: (have.get(k), v) for k, v in want.items() if have.get(k) != v}
    if diff:
      raise ValueError(f"{manifest_path} was written for other settings {diff}; remove {directory} "
                       "or choose another workdir")
    if have.get("complete") and not _drop_damaged(directory, have):
      return ShardStore(directory)
  elif jax.process_index() == 0:
    data_lib.write_json(manifest_path, want)
  n, p = jax.process_count(), jax.process_index()
  if n > 1:  # no process looks for the shards to encode before process 0 has dropped damaged ones
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("shards-checked:" + directory)
  counts = []
  for i, docs in iter_chunks(corpus_path, shard_size):
    counts.append(len(docs))
    base = os.path.join(directory, _shard_name(i))
    if i % n != p:
      continue
    if files.exists(base + ".npy"):
      problem = _shard_problem(base, len(docs), None)
      if problem is None:
        continue
      logging.warning("%s.npy: %s; encoding this shard again", base, problem)
    emb = encoder.encode_passages(lambda docs=docs: [d.full_text() for d in docs], sum(counts[:-1]),
                                  len(docs), tokens, desc=f"encode shard {i}")
    write_shard(directory, i, [d.docid for d in docs], emb, dtype)
  if not counts:
    raise data_lib.DataError(corpus_path, None, "no documents")
  peers.barrier("shards:" + directory)
  if p == 0:
    missing = [i for i in range(len(counts))
               if not files.exists(os.path.join(directory, _shard_name(i) + ".npy"))]
    if missing:
      raise RuntimeError(f"{directory}: shards {missing[:5]} are missing after encoding")
    _mark_complete(directory, want, counts)
  peers.barrier("shards-done:" + directory)
  return ShardStore(directory)


def store_settings(*, dtype: str, shard_size: int, meta: dict | None = None) -> dict:
  """What a store's manifest records it was written with: a store found with other settings is
  not reused (`meta`: the model and the corpus, `retrieval.corpus_shards`)."""
  return {"format": 1, "dtype": dtype, "shard_size": shard_size, **(meta or {})}


def write_shard(directory: str, i: int, docids: Sequence[str], emb: np.ndarray, dtype: str) -> None:
  """Writes shard i: its ids, then its embeddings [len(docids), dim] under a temporary name
  renamed into place, so a shard whose .npy exists is complete."""
  base = os.path.join(directory, _shard_name(i))
  data_lib.atomic_write_text(base + ".ids", "".join(d + "\n" for d in docids))
  files.save_npy(base + ".npy", np.asarray(emb).astype(DTYPES[dtype]))
  logging.info("Wrote %s.npy (%d passages)", base, len(docids))


def _mark_complete(directory: str, settings: dict, counts: Sequence[int]) -> None:
  dim = int(files.load_npy(os.path.join(directory, _shard_name(0) + ".npy"), mmap=True).shape[1])
  data_lib.write_json(os.path.join(directory, "manifest.json"), dict(
      settings, complete=True, dim=dim, num_docs=int(sum(counts)), num_shards=len(counts),
      offsets=np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(int).tolist()))


def write_store(directory: str, chunks: Iterable[tuple[Sequence[str], np.ndarray]], *,
                settings: dict) -> ShardStore:
  """A finished store from embeddings computed elsewhere, one (docids, [n, dim]) shard at a
  time (`store_settings`: `encode_to_shards` then finds it complete and encodes nothing)."""
  checks.require_one_of("encode.shard_dtype", settings["dtype"], checks.SHARD_DTYPES)
  files.makedirs(directory)
  data_lib.write_json(os.path.join(directory, "manifest.json"), settings)
  counts = []
  for i, (docids, emb) in enumerate(chunks):
    if len(docids) != len(emb) or not 0 < len(docids) <= settings["shard_size"]:
      raise ValueError(f"shard {i}: {len(docids)} docids and {len(emb)} embeddings (at most "
                       f"shard_size={settings['shard_size']}, equal, not 0)")
    write_shard(directory, i, docids, emb, settings["dtype"])
    counts.append(len(docids))
  if not counts:
    raise ValueError(f"{directory}: no shards to write")
  _mark_complete(directory, settings, counts)
  return ShardStore(directory)


# --- search ---------------------------------------------------------------------------------

class ShardedExactIndex:
  """Exact inner-product search streamed over a shard store, one shard searched at a time.

  Each shard is searched by the kernel `backend` chooses (`search.exact_backend`: FAISS on CPU,
  on the devices through JAX elsewhere) and the per-shard top-k lists merged. With several
  processes each searches its own shards; the per-process top-k lists are then gathered and
  merged, so every process returns the same global result.
  """

  def __init__(self, store: ShardStore, *, mesh, block_size: int = 4096, backend: str = "auto"):
    self.store = store
    self.mesh = mesh  # this process's devices only (sharding.local_mesh)
    self.block_size = block_size
    self.backend = search_lib.exact_backend(backend, mesh)
    self.num_docs = store.num_docs

  def search(self, query_emb: np.ndarray, k: int):
    k = min(k, self.num_docs)
    n, p = jax.process_count(), jax.process_index()
    best_s = np.zeros((len(query_emb), 0), np.float32)  # no candidates yet
    best_i = np.zeros((len(query_emb), 0), np.int64)
    for s in range(p, self.store.num_shards, n):
      emb = np.asarray(self.store.embeddings(s), np.float32)
      index = search_lib.exact_index(emb, mesh=self.mesh, block_size=self.block_size,
                                     backend=self.backend)
      scores, idx = index.search(query_emb, min(k, len(emb)))
      best_s, best_i = search_lib.merge_top_k([best_s, scores], [best_i, idx + self.store.offsets[s]], k)
      del index, emb
    if best_s.shape[1] < k:  # this process's shards hold fewer than k: pad, gathers need one shape
      pad = k - best_s.shape[1]
      best_s = np.pad(best_s, ((0, 0), (0, pad)), constant_values=-np.inf)
      best_i = np.pad(best_i, ((0, 0), (0, pad)), constant_values=np.iinfo(np.int64).max)
    if n > 1:
      from jax.experimental import multihost_utils
      all_s = multihost_utils.process_allgather(best_s)  # [n, Q, k]
      all_i = multihost_utils.process_allgather(best_i)
      best_s, best_i = search_lib.merge_top_k(list(all_s), list(all_i), k)
    return best_s, best_i


# --- FAISS ----------------------------------------------------------------------------------

_faiss = search_lib.import_faiss


def _sample(store: ShardStore, n: int, seed: int) -> np.ndarray:
  rows = np.sort(np.random.default_rng(seed).choice(store.num_docs, min(n, store.num_docs),
                                                    replace=False))
  return store.rows(rows)


def build_faiss(store: ShardStore, kind: str, *, nlist: int = 0, pq_m: int = 48, pq_bits: int = 8,
                hnsw_m: int = 32, ef_construction: int = 80, train_size: int = 0, seed: int = 0):
  """A FAISS inner-product index over the store, added shard by shard (bounded memory).

  kind "ivfpq": IVF with `nlist` lists (0 = 4 sqrt(N)) and PQ codes of `pq_m` x `pq_bits` bits,
  trained on `train_size` sampled rows (0 = enough for both k-means). kind "hnsw": an HNSW graph over float16
  vectors (half the memory of float32 ones) with `hnsw_m` links per node.
  """
  faiss = _faiss()
  d = store.dim
  if kind == "ivfpq":
    nlist = nlist or max(16, int(4 * np.sqrt(store.num_docs)))
    index = faiss.IndexIVFPQ(faiss.IndexFlatIP(d), d, nlist, pq_m, pq_bits, faiss.METRIC_INNER_PRODUCT)
    # k-means wants ~40 points per centroid: the IVF lists and the 2^bits PQ codes.
    index.train(_sample(store, train_size or max(64 * nlist, 40 * 2 ** pq_bits), seed))
  elif kind == "hnsw":
    index = faiss.IndexHNSWSQ(d, faiss.ScalarQuantizer.QT_fp16, hnsw_m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_construction
  else:
    checks.require_one_of("retrieve.index", kind, checks.FAISS_INDEXES)
  for s in range(store.num_shards):
    index.add(np.ascontiguousarray(store.embeddings(s), dtype=np.float32))
  return index


def load_or_build_faiss(store: ShardStore, kind: str, *, nlist: int = 0, pq_m: int = 48,
                        hnsw_m: int = 32, seed: int = 0):
  """The store's FAISS index of this kind, built once (by process 0) and kept beside the shards."""
  faiss = _faiss()
  path = os.path.join(store.directory, f"faiss-{kind}-nlist{nlist}-m{pq_m}-hnsw{hnsw_m}-s{seed}.index")
  if not files.exists(path) and jax.process_index() == 0:
    t = time.perf_counter()
    index = build_faiss(store, kind, nlist=nlist, pq_m=pq_m, hnsw_m=hnsw_m, seed=seed)
    if files.is_local(path):
      faiss.write_index(index, path + ".tmp")
      os.replace(path + ".tmp", path)
    else:  # FAISS writes local files only; its serialized form is the same bytes
      files.atomic_write_bytes(path, faiss.serialize_index(index).tobytes())
    logging.info("Built %s in %.1f s", path, time.perf_counter() - t)
  peers.barrier("faiss:" + path)
  if files.is_local(path):
    return faiss.read_index(path)
  return faiss.deserialize_index(np.frombuffer(files.read_bytes(path), np.uint8))


class FaissIndex:
  """A FAISS index with ExactIndex's `search` signature.

  With `store` and `refine` > 1, the index proposes `refine` x k candidates per query and their
  exact scores, read from the memory-mapped shards, pick the k returned: PQ's coarse codes find
  the neighbourhood, the stored embeddings order it.
  """

  def __init__(self, index, *, nprobe: int = 32, ef_search: int = 128,
               store: ShardStore | None = None, refine: int = 0, query_block: int = 64):
    self.index = index
    self.num_docs = index.ntotal
    self.store, self.refine, self.query_block = store, refine, query_block
    faiss = _faiss()
    if hasattr(index, "nprobe"):
      index.nprobe = nprobe
    hnsw = getattr(faiss.downcast_index(index), "hnsw", None)
    if hnsw is not None:
      hnsw.efSearch = max(ef_search, 1)

  def search(self, query_emb: np.ndarray, k: int):
    query_emb = np.ascontiguousarray(query_emb, dtype=np.float32)
    k = min(k, self.num_docs)
    if self.store is None or self.refine <= 1:
      scores, idx = self.index.search(query_emb, k)
      return scores, idx.astype(np.int64)
    wide = min(k * self.refine, self.num_docs)
    _, cand = self.index.search(query_emb, wide)
    out_s = np.zeros((len(query_emb), k), np.float32)
    out_i = np.zeros((len(query_emb), k), np.int64)
    for start in range(0, len(query_emb), self.query_block):
      c = cand[start:start + self.query_block].astype(np.int64)
      q = query_emb[start:start + self.query_block]
      found = c >= 0  # FAISS pads with -1 when it finds fewer than asked
      emb = self.store.rows(np.where(found, c, 0).ravel()).reshape(*c.shape, -1)
      exact = np.where(found, np.einsum("qh,qch->qc", q, emb), -np.inf)
      s, i = search_lib.merge_top_k([exact], [np.where(found, c, np.iinfo(np.int64).max)], k)
      out_s[start:start + len(q)], out_i[start:start + len(q)] = s, i
    return out_s, out_i


def recall_at_k(approx: np.ndarray, exact: np.ndarray, k: int) -> float:
  """Mean fraction of the exact top-k found in the approximate top-k."""
  return float(np.mean([len(set(a[:k]) & set(e[:k])) / k for a, e in zip(approx, exact)]))
