"""The device mesh and how arrays are laid out on it.

One mesh with a single `data` axis over every device of every host. Batches are split
along it (`P('data')`), parameters are replicated (`P()`), and XLA inserts the gradient
all-reduce: this is what `pmap` lowers to today. On several hosts each process holds only
its slice of a global batch and `jax.make_array_from_process_local_data` assembles it.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(devices=None) -> Mesh:
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def global_batch_multiple(mesh: Mesh) -> int:
  """A global batch must split evenly over the mesh."""
  return mesh.devices.size


def round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


# On CPU an inference batch of about this many tokens per device keeps a BERT layer's largest
# activations (the [B, T, 4H] FFN input and the [B, heads, T, T] attention scores: 6 and 12 MB
# for MiniLM at 4 x 256 tokens) in cache. On 2 cores, 4 x 256 tokens encoded 28.5 docs/s, 8 x 256
# 26.5 and 32 x 256 24.4; at 96 tokens per pair, 8 or 16 pairs 85/s and 64 pairs 72/s.
CPU_BATCH_TOKENS = 1024
# On GPU and TPU large batches keep the device busy.
ACCELERATOR_BATCH = 64


def inference_batch_size(requested: int, max_length: int, mesh: Mesh) -> int:
  """The global batch for encoding or scoring sequences of up to `max_length` tokens.

  `requested` > 0 is taken as given; 0 chooses: on CPU, CPU_BATCH_TOKENS // max_length
  sequences per device (at least one), elsewhere ACCELERATOR_BATCH. Either is rounded up to a
  multiple of the mesh size.
  """
  if requested < 0:
    raise ValueError(f"batch size {requested} is negative; 0 chooses one for the platform")
  n = global_batch_multiple(mesh)
  if requested == 0:
    if mesh.devices.flat[0].platform == "cpu":
      requested = max(1, CPU_BATCH_TOKENS // max_length) * n
    else:
      requested = ACCELERATOR_BATCH
  return round_up(requested, n)


def put_batch(tree, mesh: Mesh):
  """A global host batch (numpy, the same on every process) -> arrays sharded over `data`.

  Every process builds the same global batch (the data order is a function of the seed), and
  hands over only its own rows: with several processes, process i's slice is rows
  [i * B / n, (i + 1) * B / n), the rows its devices hold in the mesh.
  """
  sharding = batch_sharding(mesh)
  if jax.process_count() == 1 or is_process_local(mesh):
    return jax.device_put(tree, sharding)
  n, i = jax.process_count(), jax.process_index()

  def put(x):
    rows = x.shape[0] // n
    return jax.make_array_from_process_local_data(sharding, x[i * rows:(i + 1) * rows], x.shape)

  return jax.tree.map(put, tree)


def is_process_local(mesh: Mesh) -> bool:
  """Whether every device of the mesh belongs to this process (a per-host mesh)."""
  return all(d.process_index == jax.process_index() for d in mesh.devices.flat)


def put_replicated(tree, mesh: Mesh):
  return jax.device_put(tree, replicated(mesh))


def to_host(tree):
  """Arrays of this process's devices, or sharded over every host, -> numpy on this host."""
  if jax.process_count() > 1 and not all(x.is_fully_addressable for x in jax.tree.leaves(tree)):
    from jax.experimental import multihost_utils
    tree = multihost_utils.process_allgather(tree, tiled=True)
  return jax.device_get(tree)
