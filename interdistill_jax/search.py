"""Exact inner-product top-k search, top-k merging, and runs from search results.

Two kernels compute the same result (up to the order of exactly tied scores and float rounding):
`ExactIndex`, blocked matmuls and `lax.top_k` sharded over the mesh, for GPU and TPU; and
`FaissExactIndex`, FAISS's exact search (BLAS matmuls and per-query heaps, `faiss.knn`), which on
CPU is about twice as fast as the same work through XLA. `exact_index` picks one by the mesh's
platform (`retrieve.exact_backend` "auto") or as configured. Both return ties lower index first.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from interdistill_jax import data as data_lib
from interdistill_jax import sharding


@functools.lru_cache(maxsize=None)
def _search_fn(mesh, k: int, block: int):
  """Per-device running top-k over corpus blocks, then a merge across devices."""

  def local(q, d, valid):
    # q: [Q, H] replicated; d: [N_local, H] and valid: [N_local], this device's rows.
    n_local, h = d.shape
    num_blocks = n_local // block
    base = jax.lax.axis_index(sharding.DATA_AXIS) * n_local

    def body(carry, xs):
      best_s, best_i = carry
      d_blk, v_blk, b = xs
      s = jnp.where(v_blk[None, :], q @ d_blk.T, -jnp.inf)
      idx = jnp.broadcast_to(base + b * block + jnp.arange(block), s.shape)
      # Earlier (lower-index) entries come first, so ties keep the lower index.
      top_s, pos = jax.lax.top_k(jnp.concatenate([best_s, s], 1), k)
      return (top_s, jnp.take_along_axis(jnp.concatenate([best_i, idx], 1), pos, 1)), None

    init = (jnp.full((q.shape[0], k), -jnp.inf, jnp.float32), jnp.full((q.shape[0], k), -1))
    # The running top-k differs per device: mark it as varying over the mesh axis.
    init = jax.lax.pcast(init, (sharding.DATA_AXIS,), to="varying")
    xs = (d.reshape(num_blocks, block, h), valid.reshape(num_blocks, block), jnp.arange(num_blocks))
    (s, i), _ = jax.lax.scan(body, init, xs)
    return s[None], i[None]

  shard = jax.shard_map(local, mesh=mesh, in_specs=(P(), P(sharding.DATA_AXIS), P(sharding.DATA_AXIS)),
                        out_specs=(P(sharding.DATA_AXIS), P(sharding.DATA_AXIS)))

  @jax.jit
  def search(q, d, valid):
    s, i = shard(q, d, valid)  # [devices, Q, k], devices in corpus order.
    s = jnp.moveaxis(s, 0, 1).reshape(q.shape[0], -1)
    i = jnp.moveaxis(i, 0, 1).reshape(q.shape[0], -1)
    top_s, pos = jax.lax.top_k(s, k)
    return top_s, jnp.take_along_axis(i, pos, 1)

  return search


class ExactIndex:
  """Exact inner-product search over embeddings sharded by rows across the mesh (JAX)."""

  def __init__(self, doc_emb: np.ndarray, *, mesh, block_size: int = 2048):
    self.mesh = mesh
    self.num_docs = doc_emb.shape[0]
    ndev = self.mesh.devices.size
    self.block = min(block_size, sharding.round_up(max(1, -(-self.num_docs // ndev)), 8))
    rows = sharding.round_up(self.num_docs, ndev * self.block)
    padded = np.zeros((rows, doc_emb.shape[1]), np.float32)
    padded[:self.num_docs] = doc_emb
    valid = np.arange(rows) < self.num_docs
    spec = sharding.batch_sharding(self.mesh)
    self._docs = jax.device_put(padded, spec)
    self._valid = jax.device_put(valid, spec)

  def search(self, query_emb: np.ndarray, k: int, query_block: int = 1024):
    """query_emb: [Q, H] -> (scores [Q, k], doc indices [Q, k]), best first."""
    k = min(k, self.num_docs)
    fn = _search_fn(self.mesh, k, self.block)
    scores, indices = [], []
    for start in range(0, len(query_emb), query_block):
      q = query_emb[start:start + query_block]
      n = len(q)
      # Pad to a multiple of 128 rows: few distinct shapes to compile, little wasted work.
      q = np.pad(q, ((0, min(sharding.round_up(n, 128), query_block) - n), (0, 0)))
      s, i = fn(sharding.put_replicated(q, self.mesh), self._docs, self._valid)
      scores.append(np.asarray(s)[:n])
      indices.append(np.asarray(i)[:n])
    return np.concatenate(scores), np.concatenate(indices)


BACKENDS = ("auto", "faiss", "jax")


def exact_backend(name: str, mesh) -> str:
  """The exact-search kernel `retrieve.exact_backend` names: "faiss" or "jax" as given, and
  "auto" FAISS when the mesh's devices are CPUs, JAX on GPU and TPU."""
  if name not in BACKENDS:
    raise ValueError(f"retrieve.exact_backend must be one of {list(BACKENDS)}, got {name!r}")
  if name != "auto":
    return name
  return "faiss" if mesh.devices.flat[0].platform == "cpu" else "jax"


def import_faiss():
  try:
    import faiss
  except ImportError as e:
    raise ImportError("faiss is not installed: pip install faiss-cpu (pinned in requirements.txt)"
                      ) from e
  return faiss


class FaissExactIndex:
  """Exact inner-product search on the host's CPU cores through FAISS (`faiss.knn`).

  The embeddings are searched where they lie (a memory-mapped shard is read, not copied, when it
  is float32 already); each process searches all of them itself.
  """

  def __init__(self, doc_emb: np.ndarray):
    self._docs = np.ascontiguousarray(doc_emb, dtype=np.float32)
    self.num_docs = self._docs.shape[0]
    self._faiss = import_faiss()

  def search(self, query_emb: np.ndarray, k: int):
    """query_emb: [Q, H] -> (scores [Q, k], doc indices [Q, k]), best first."""
    k = min(k, self.num_docs)
    q = np.ascontiguousarray(query_emb, dtype=np.float32)
    if len(q) == 0 or k == 0:
      return np.zeros((len(q), k), np.float32), np.zeros((len(q), k), np.int64)
    scores, idx = self._faiss.knn(q, self._docs, k, metric=self._faiss.METRIC_INNER_PRODUCT)
    return lower_index_first(scores, idx.astype(np.int64))


def exact_index(doc_emb: np.ndarray, *, mesh, block_size: int = 2048, backend: str = "auto"):
  """Exact search over `doc_emb` [N, H] by the kernel `backend` chooses (`exact_backend`)."""
  if exact_backend(backend, mesh) == "faiss":
    return FaissExactIndex(doc_emb)
  return ExactIndex(doc_emb, mesh=mesh, block_size=block_size)


def lower_index_first(scores: np.ndarray, indices: np.ndarray):
  """Rows of best-first top-k lists [Q, k] with exactly tied scores put lower index first (FAISS
  keeps the higher one first); only the rows that hold a tie are sorted again."""
  tied = np.flatnonzero((scores[:, 1:] == scores[:, :-1]).any(1))
  if len(tied):
    order = np.lexsort((indices[tied], -scores[tied]), axis=1)
    scores, indices = scores.copy(), indices.copy()
    scores[tied] = np.take_along_axis(scores[tied], order, 1)
    indices[tied] = np.take_along_axis(indices[tied], order, 1)
  return scores, indices


def merge_top_k(scores: Sequence[np.ndarray], indices: Sequence[np.ndarray], k: int):
  """Per-query top-k of several candidate lists ([Q, k_i] each); ties go to the lower index.

  A stable sort by score (linear for lists already sorted best first: it merges the runs), then
  the rows that hold an exact tie sorted again by index: the same result as sorting every row by
  (score, index), about twice as fast (2 x 100 candidates of 1,109 queries: 7 ms against 16).
  """
  s, i = np.concatenate(scores, 1), np.concatenate(indices, 1)
  order = np.argsort(-s, axis=1, kind="stable")
  s, i = lower_index_first(np.take_along_axis(s, order, 1), np.take_along_axis(i, order, 1))
  return s[:, :k], i[:, :k]


def search_run(index, docids: Sequence[str], qids: Sequence[str],
               query_emb: np.ndarray, k: int) -> data_lib.Run:
  scores, indices = index.search(query_emb, k)
  return {qid: {docids[j]: float(s) for s, j in zip(scores[r], indices[r])}
          for r, qid in enumerate(qids)}
