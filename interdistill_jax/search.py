"""Exact inner-product search sharded over the mesh, top-k merging, and runs from search results."""

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
  """Exact inner-product search over embeddings sharded by rows across the mesh."""

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


def merge_top_k(scores: Sequence[np.ndarray], indices: Sequence[np.ndarray], k: int):
  """Per-query top-k of several candidate lists ([Q, k_i] each); ties go to the lower index."""
  s, i = np.concatenate(scores, 1), np.concatenate(indices, 1)
  order = np.lexsort((i, -s), axis=1)[:, :k]
  return np.take_along_axis(s, order, 1), np.take_along_axis(i, order, 1)


def search_run(index, docids: Sequence[str], qids: Sequence[str],
               query_emb: np.ndarray, k: int) -> data_lib.Run:
  scores, indices = index.search(query_emb, k)
  return {qid: {docids[j]: float(s) for s, j in zip(scores[r], indices[r])}
          for r, qid in enumerate(qids)}
