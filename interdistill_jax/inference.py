"""Inference on the mesh in fixed-shape batches, one compiled shape per length bucket.

A model's state is placed on the mesh once (`PlacedModel`). A `BucketedRunner` applies
one jitted function of it to token sequences: sorted by length (within each chunk, when they
come in chunks), cut into batches of `batch_size` rows (the last padded), each padded to the
smallest bucket that holds its longest sequence, dispatched a few ahead of the results read
back, and the rows' outputs put back in input order. The corpus encoder (`retrieval.Encoder`) and the pair
scorer (`ranker.PairScorer`) differ only in how they tokenize and what function they apply.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from tqdm import tqdm

from interdistill_jax import sharding, tokenization

# Batches dispatched to the devices and not yet read back: the host prepares batch i + 1 (and
# more) while batch i computes. Each holds one batch's inputs and outputs in device memory.
IN_FLIGHT = 2


class PlacedModel:
  """A model's state placed on the mesh once (replicated, unless `mesh.param_rules` shard it),
  for runners to share."""

  def __init__(self, model: nnx.Module, mesh: Mesh, param_rules=()):
    self.mesh = mesh
    self.graphdef, self.host_state = nnx.split(model)
    self.state = sharding.put_params(self.host_state, mesh, param_rules)

  def host_model(self) -> nnx.Module:
    """The model again, from the host copy of its state."""
    return nnx.merge(self.graphdef, self.host_state)


class BucketedRunner:
  """`apply(model, ids, types, mask)` -> [B, ...] over token sequences, outputs in input order."""

  def __init__(self, model: PlacedModel, apply: Callable, *, batch_size: int,
               buckets: Sequence[int], pad_id: int, empty_shape: tuple[int, ...]):
    self.model = model
    self.batch_size = batch_size
    self.buckets = list(buckets)
    self.pad_id = pad_id
    self.empty_shape = empty_shape  # what `run` returns for no sequences
    graphdef = model.graphdef

    def fn(state, ids, types, mask):
      return apply(nnx.merge(graphdef, state), ids, types, mask)

    self._fn = jax.jit(fn, out_shardings=sharding.batch_sharding(model.mesh))

  def _dispatch(self, batch: tokenization.Batch):
    """Starts `batch` on the devices and returns at once: the result is still on device."""
    arrays = sharding.put_batch((batch.input_ids, batch.token_type_ids, batch.attention_mask),
                                self.model.mesh)
    return self._fn(self.model.state, *arrays)

  def _batch(self, batch: tokenization.Batch) -> np.ndarray:
    return np.asarray(sharding.to_host(self._dispatch(batch)))

  def compile(self) -> None:
    """Compiles every batch shape `run` can take (one per bucket), e.g. before timing."""
    for length in self.buckets:
      self._batch(tokenization.pad_batch([], [], self.batch_size, length))

  def run(self, seqs: Sequence[np.ndarray], types: Sequence[np.ndarray] | None = None, *,
          desc: str, show_progress: bool = False) -> np.ndarray:
    """Token ids (and token types) of N sequences -> [N, ...] float32 outputs, in input order.

    The progress bar shows from 5 batches on, or always with `show_progress`.
    """
    return self.run_chunks([(seqs, types)], len(seqs), desc=desc, show_progress=show_progress)

  def run_chunks(self, chunks: Iterable[tuple[Sequence[np.ndarray], Sequence[np.ndarray] | None]],
                 total: int, *, desc: str, show_progress: bool = False) -> np.ndarray:
    """`run` over consecutive chunks of the N = `total` sequences, given as (seqs, types or
    None) as they become ready (e.g. tokenized ahead in another thread), outputs in order.

    Each chunk is cut into batches by length on its own. Batches are dispatched without waiting
    for their results: up to `IN_FLIGHT` run on the devices while the host pads and sends the
    next ones, across chunk boundaries too, so the devices do not wait on the host between
    batches.
    """
    out = None
    pending = collections.deque()
    done = 0

    def collect():
      nonlocal out
      batch, y = pending.popleft()
      y = np.asarray(sharding.to_host(y))
      if out is None:
        out = np.zeros((total, *y.shape[1:]), np.float32)
      valid = batch.index >= 0
      out[batch.index[valid]] = y[valid]

    num = tokenization.num_batches(total, self.batch_size)
    with tqdm(total=total, desc=desc, unit="seq", disable=not show_progress and num < 5) as bar:
      for seqs, types in chunks:
        for batch in tokenization.bucketed_batches(seqs, self.batch_size, self.buckets,
                                                   self.pad_id, types):
          batch.index[batch.index >= 0] += done
          pending.append((batch, self._dispatch(batch)))
          if len(pending) > IN_FLIGHT:
            collect()
          bar.update(batch.num_valid)
        done += len(seqs)
      while pending:
        collect()
    if done != total:
      raise ValueError(f"{desc}: chunks held {done} sequences, not the {total} announced")
    return out if out is not None else np.zeros(self.empty_shape, np.float32)
