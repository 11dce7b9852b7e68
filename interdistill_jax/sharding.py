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
