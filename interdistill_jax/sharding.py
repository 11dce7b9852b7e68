"""The device mesh and how arrays are laid out on it.

One mesh with a single `data` axis, built once per task from `config.mesh` (`mesh_from_config`)
and passed down. Batches are split along it (`P('data')`); parameters are placed by the rules
of `config.mesh.param_rules` (`param_shardings`): by default replicated (`P()`), and XLA inserts
the gradient all-reduce; with the rule `(".*", "fsdp")` each parameter (and its optimizer
moments) is split over `data` instead, and XLA gathers it where it is used. On several hosts
each process holds only its slice of a global batch and `jax.make_array_from_process_local_data`
assembles it.
"""

from __future__ import annotations

import re

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from interdistill_jax import checks

DATA_AXIS, = checks.MESH_AXES


def make_mesh(devices=None) -> Mesh:
  """A mesh with one `data` axis over `devices` (default: every device of every host)."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def mesh_from_config(mesh_config, devices=None) -> Mesh:
  """The mesh of `config.mesh`: `data` -1 spans every device; n > 0 takes the first n devices.

  Fewer devices than there are is honoured on one process only: with several processes every
  process must hold part of the mesh (each feeds its slice of every batch), so the mesh spans
  every device. The parameter rules are checked here, before any work starts.
  """
  devices = list(jax.devices() if devices is None else devices)
  n = mesh_config.data
  if n == -1:
    n = len(devices)
  if not 0 < n <= len(devices):
    raise ValueError(f"mesh.data={mesh_config.data}: there are {len(devices)} devices; set -1 "
                     f"(all of them) or a number from 1 to {len(devices)}")
  if n < len(devices) and jax.process_count() > 1:
    raise ValueError(f"mesh.data={n}: with {jax.process_count()} processes the mesh must span "
                     f"all {len(devices)} devices (set mesh.data=-1)")
  mesh = make_mesh(devices[:n])
  rules = _parse_rules(mesh_config.param_rules, mesh)
  logging.info("Mesh: %s=%d (%d processes); parameters: %s", DATA_AXIS, n, jax.process_count(),
               ", ".join(f"{pattern.pattern} -> {layout}" for pattern, layout in rules) or "replicated")
  return mesh


def local_mesh(mesh: Mesh) -> Mesh:
  """The devices of `mesh` that belong to this process, as a mesh of their own."""
  return make_mesh([d for d in mesh.devices.flat if d.process_index == jax.process_index()])


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
  """Data every device needs whole (query embeddings, a random key); parameters: `put_params`."""
  return jax.device_put(tree, replicated(mesh))


# --- parameter placement ---------------------------------------------------------------------

REPLICATE, FSDP = checks.PARAM_LAYOUTS


def _parse_rules(rules, mesh: Mesh) -> list[tuple[re.Pattern, str | tuple]]:
  """`config.mesh.param_rules` -> [(compiled regex, "replicate" | "fsdp" | spec tuple)]."""
  out = []
  for rule in rules:
    checks.require(checks.param_rule_problem(rule, mesh.axis_names))
    pattern, layout = rule
    out.append((re.compile(pattern), layout if isinstance(layout, str) else tuple(layout)))
  return out


def param_path(path) -> str:
  """A parameter's name for the rules: its key path joined by "/", e.g. "bert/layers/0/ffn_in/kernel"."""
  names = []
  for key in path:
    if isinstance(key, jax.tree_util.DictKey):
      names.append(str(key.key))
    elif isinstance(key, jax.tree_util.SequenceKey):
      names.append(str(key.idx))
    elif isinstance(key, jax.tree_util.GetAttrKey):
      names.append(key.name)
    else:
      names.append(str(key))
  if names and names[-1] == "value":  # an nnx Variable's array
    names.pop()
  return "/".join(names)


def _spec(name: str, shape: tuple, layout, mesh: Mesh) -> P:
  size = mesh.shape[DATA_AXIS]
  if layout == REPLICATE or not shape:
    return P()
  if layout == FSDP:
    # The largest dimension that splits evenly over the data axis; none: replicated.
    dims = [i for i in sorted(range(len(shape)), key=lambda i: -shape[i]) if shape[i] % size == 0]
    if size == 1 or not dims:
      return P()
    spec = [None] * len(shape)
    spec[dims[0]] = DATA_AXIS
    return P(*spec)
  if len(layout) > len(shape):
    raise ValueError(f"mesh.param_rules: spec {layout} has more entries than {name} has "
                     f"dimensions {shape}")
  for dim, axis in zip(shape, layout):
    if axis is not None and dim % mesh.shape[axis]:
      raise ValueError(f"mesh.param_rules: {name} {shape} cannot be split by {layout}: {dim} is "
                       f"not a multiple of the {mesh.shape[axis]} devices of axis {axis!r}")
  return P(*layout)


def param_shardings(tree, mesh: Mesh, rules=()):
  """A NamedSharding per leaf of a parameter tree, by `rules` (`config.mesh.param_rules`).

  The first rule whose regex `re.search`es the leaf's path (`param_path`) places it:
  "replicate"; "fsdp", split along its largest dimension that is a multiple of the data axis
  (replicated if none is); or a spec tuple with one entry per leading dimension (None or an axis
  name). Scalars, and leaves no rule matches, are replicated: `()` replicates everything.
  """
  parsed = _parse_rules(rules, mesh)

  def place(path, x):
    name = param_path(path)
    layout = next((layout for pattern, layout in parsed if pattern.search(name)), REPLICATE)
    return NamedSharding(mesh, _spec(name, tuple(x.shape), layout, mesh))

  return jax.tree_util.tree_map_with_path(place, tree)


def put_params(tree, mesh: Mesh, rules=()):
  """Model state placed on the mesh by the parameter rules (default: replicated)."""
  return jax.device_put(tree, param_shardings(tree, mesh, rules))


def to_host(tree):
  """Arrays of this process's devices, or sharded over every host, -> numpy on this host."""
  if jax.process_count() > 1 and not all(x.is_fully_addressable for x in jax.tree.leaves(tree)):
    from jax.experimental import multihost_utils
    tree = multihost_utils.process_allgather(tree, tiled=True)
  return jax.device_get(tree)
