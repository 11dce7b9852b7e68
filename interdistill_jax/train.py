"""The trainer shared by both stages: optimizer, jitted step, loop, exact resume.

The step is a pure function of (state, rest, batch): the train state (params, optimizer state,
step) goes in and comes out, donated; the model is rebuilt inside it with `nnx.merge` from the
params and the untrained rest; randomness is `fold_in(seed key, step)`, and the data order is a
function of (seed, epoch). A checkpoint therefore only needs params, optimizer state and the
step for a resumed run to continue exactly as an uninterrupted one (`checkpoints.py` keeps them
on disk).

Layout: one mesh (the task's, from `config.mesh`); every global batch holds `batch_size`
examples padded with zero-weight rows to split over the `data` axis; params, rest and optimizer
state are placed by `config.mesh.param_rules` (replicated by default). The loop leaves the step's
metrics on the devices and fetches them every `log_every` steps.

Resume order: an existing checkpoint in the stage's directory > the stage's init > scratch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import nnx
from tqdm import tqdm

from interdistill_jax import data as data_lib
from interdistill_jax import checkpoints, checks, files, sharding
from interdistill_jax import events as events_lib


class NonFiniteLossError(FloatingPointError):
  pass


def make_optimizer(optim_config, total_steps: int) -> tuple[optax.GradientTransformation, Any]:
  """(AdamW with warmup, decay and global-norm clipping, its learning-rate schedule)."""
  warmup = int(round(optim_config.warmup_fraction * total_steps))
  lr = optim_config.learning_rate
  if optim_config.schedule == "cosine":
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, max(warmup, 1), max(total_steps, 2))
  elif optim_config.schedule == "linear":
    schedule = optax.join_schedules([
        optax.linear_schedule(0.0, lr, max(warmup, 1)),
        optax.linear_schedule(lr, 0.0, max(total_steps - warmup, 1))], [max(warmup, 1)])
  elif optim_config.schedule == "constant":
    schedule = optax.constant_schedule(lr)
  else:
    checks.require_one_of("optim.schedule", optim_config.schedule, checks.SCHEDULES)
  return optax.chain(
      optax.clip_by_global_norm(optim_config.max_grad_norm),
      optax.adamw(schedule, b1=0.9, b2=0.999, eps=1e-8, weight_decay=optim_config.weight_decay),
  ), schedule


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
  """What a step updates: the trainable parameters, the optimizer state and the step count
  (an int32 scalar on the devices, seeding the step's randomness)."""

  params: Any
  opt_state: Any
  step: Any


def state_shardings(params, tx, mesh, param_rules=()) -> TrainState:
  """Where each leaf of the train state lives: parameters by the rules, each optimizer moment
  like its parameter, everything else (counts, the step) replicated."""
  params_sharding = sharding.param_shardings(params, mesh, param_rules)
  opt_sharding = optax.tree_map_params(
      tx, lambda _, s: s, jax.eval_shape(tx.init, params), params_sharding,
      transform_non_params=lambda _: sharding.replicated(mesh))
  return TrainState(params_sharding, opt_sharding, sharding.replicated(mesh))


def make_train_step(graphdef, tx, loss_fn: Callable, *, mesh, shardings: TrainState, rest_sharding,
                    seed: int):
  """A jitted step: (state, rest, batch) -> (state, metrics); its randomness is
  `fold_in(key(seed), state.step)`.

  `rest` is the model's state that is not trained (passed in, not captured as a constant).
  `loss_fn(model, batch, rng) -> [B] per-example losses`; the mean is taken over the rows of
  weight 1 of the global batch, so padding rows count for nothing and the gradient is the same
  on 1 or N devices (XLA all-reduces it). The batch is split over `data`; the state keeps the
  layout of `shardings` and is donated: the step updates it in place.
  """

  def step_fn(state, rest, batch):
    # The key is built inside the step: a key array made on the host could not be placed on a
    # mesh that spans several processes.
    rng = jax.random.fold_in(jax.random.key(seed), state.step)

    def loss(p):
      model = nnx.merge(graphdef, p, rest)
      per_example = loss_fn(model, batch, rng)
      weights = batch["weight"]
      return (per_example * weights).sum() / jnp.maximum(weights.sum(), 1.0)

    value, grads = jax.value_and_grad(loss)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": value, "grad_norm": optax.tree.norm(grads)}
    return TrainState(params, opt_state, state.step + 1), metrics

  replicated = sharding.replicated(mesh)
  return jax.jit(step_fn, donate_argnums=0,
                 in_shardings=(shardings, rest_sharding, sharding.batch_sharding(mesh)),
                 out_shardings=(shardings, replicated))


def make_eval_step(graphdef, loss_fn: Callable, *, mesh, params_sharding, rest_sharding):
  """A jitted (params, rest, batch) -> (sum of weighted losses, sum of weights)."""

  def eval_fn(params, rest, batch):
    per_example = loss_fn(nnx.merge(graphdef, params, rest), batch, None)
    return (per_example * batch["weight"]).sum(), batch["weight"].sum()

  replicated = sharding.replicated(mesh)
  return jax.jit(eval_fn, in_shardings=(params_sharding, rest_sharding, sharding.batch_sharding(mesh)),
                 out_shardings=(replicated, replicated))


def epoch_order(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """The example order of one epoch: a function of (seed, epoch) only, so resume is exact."""
  return np.random.default_rng([seed, epoch]).permutation(num_examples)


def padded_batch_size(batch_size: int, mesh) -> int:
  """Rows of a global batch on `mesh`: `batch_size` examples, then zero-weight padding rows up to
  a multiple of the device count (the batch splits evenly over `data`)."""
  return sharding.round_up(batch_size, sharding.global_batch_multiple(mesh))


def padded_indices(idx: np.ndarray, rows: int) -> np.ndarray:
  """Example indices padded with -1 (a zero-weight row in every `batch`) to `rows`."""
  return np.pad(idx, (0, rows - len(idx)), constant_values=-1)


@dataclasses.dataclass
class LoopConfig:
  """What the loop needs from a stage's config section."""

  batch_size: int
  epochs: float
  eval_every: int
  checkpoint_every: int
  keep_checkpoints: int
  seed: int
  log_every: int  # steps between fetches of the train metrics from the devices


class _Metrics:
  """Train metrics left on the devices, fetched every `log_every` steps (one host sync for many
  steps), written one line per step to metrics.jsonl and to TensorBoard event files beside it,
  and checked for a non-finite loss."""

  def __init__(self, path: str, schedule, steps_per_epoch: int, out_dir: str, resumed_step: int):
    self.path, self.schedule, self.steps_per_epoch, self.out_dir = path, schedule, steps_per_epoch, out_dir
    self.pending: list[tuple[int, dict]] = []
    self.examples, self.t_last = 0, time.perf_counter()
    self.events = (events_lib.EventWriter(out_dir, resumed_step=resumed_step)
                   if jax.process_index() == 0 and events_lib.writes_events(out_dir) else None)

  def add(self, step: int, metrics: dict, examples: int):
    self.pending.append((step, metrics))
    self.examples += examples

  def fetch(self) -> tuple[list[dict], float]:
    """(the pending steps' records, examples/s since the last fetch), in one host sync. A
    non-finite loss raises, after the records of the steps before it are written."""
    steps, values = [s for s, _ in self.pending], jax.device_get([m for _, m in self.pending])
    self.pending = []
    records = []
    for step, m in zip(steps, values):
      loss = float(m["loss"])
      if not math.isfinite(loss):
        self.write(records)
        raise NonFiniteLossError(f"{self.out_dir}: non-finite loss {loss} at step {step}; "
                                 "lower optim.learning_rate or check the inputs")
      records.append({"step": step, "train/loss": loss, "train/grad_norm": float(m["grad_norm"]),
                      "train/lr": float(self.schedule(step - 1)), "epoch": step / self.steps_per_epoch})
    rate = self.examples / max(time.perf_counter() - self.t_last, 1e-9)
    self.examples = 0
    return records, rate

  def restart_clock(self):
    self.t_last = time.perf_counter()

  def write(self, records: list[dict]):
    if records and jax.process_index() == 0:
      data_lib.append_jsonl(self.path, records)
      if self.events is not None:
        self.events.write(records)

  def close(self):
    if self.events is not None:
      self.events.close()


def train_loop(*, model: nnx.Module, loss_fn: Callable, make_batch: Callable[[np.ndarray], dict],
               num_examples: int, dev_batches: Callable[[], Iterator[dict]] | None,
               loop: LoopConfig, optim_config, out_dir: str, mesh, param_rules=(),
               trainable: Any = nnx.Param) -> tuple[nnx.Module, dict]:
  """Trains `model` in place and returns it with the best dev-loss parameters loaded.

  Args:
    model: the NNX module; only its `trainable` variables are optimised.
    loss_fn: (model, batch, rng) -> [B] per-example losses (rng None = deterministic).
    make_batch: example indices [B] (-1 = padding) -> host batch dict of [B, ...] arrays,
      with a `weight` [B] float32 entry (0 for padding rows).
    num_examples: size of the training set; an epoch is ceil(num_examples / loop.batch_size) steps.
    dev_batches: yields dev batches (same format) for the dev loss, or None.
    out_dir: the stage directory: `checkpoints/`, `metrics.jsonl`, `done.json` go there.
    mesh: the task's mesh; each step's `loop.batch_size` examples are padded with zero-weight
      rows to a multiple of its device count.
    param_rules: `config.mesh.param_rules`, where the model state lives on the mesh.

  Returns:
    (model with the selected parameters, summary dict).
  """
  if loop.log_every < 1:
    raise ValueError(f"{out_dir}: log_every must be at least 1, got {loop.log_every}")
  batch_size = loop.batch_size
  rows = padded_batch_size(batch_size, mesh)
  if rows > batch_size:
    logging.info("%s: %d examples per step padded with %d zero-weight rows to split over %d "
                 "devices", out_dir, batch_size, rows - batch_size, mesh.devices.size)
  steps_per_epoch = max(1, math.ceil(num_examples / batch_size))
  total_steps = max(1, math.ceil(loop.epochs * steps_per_epoch))
  tx, schedule = make_optimizer(optim_config, total_steps)

  graphdef, params, rest = nnx.split(model, trainable, ...)
  shardings = state_shardings(params, tx, mesh, param_rules)
  rest_sharding = sharding.param_shardings(rest, mesh, param_rules)
  params = jax.device_put(params, shardings.params)
  rest = jax.device_put(rest, rest_sharding)
  opt_state = jax.jit(tx.init, out_shardings=shardings.opt_state)(params)
  state = TrainState(params, opt_state, jax.device_put(np.int32(0), shardings.step))
  abstract = checkpoints.restore_target(state, shardings)
  step = 0

  ckpts = checkpoints.Checkpoints(os.path.join(out_dir, "checkpoints"), keep=loop.keep_checkpoints,
                                  interval=loop.checkpoint_every)
  restored = ckpts.restore_latest(abstract)
  if restored is not None:
    step, state = restored
    logging.info("Resuming from step %d in %s", step, out_dir)

  step_fn = make_train_step(graphdef, tx, loss_fn, mesh=mesh, shardings=shardings,
                            rest_sharding=rest_sharding, seed=loop.seed)
  eval_fn = make_eval_step(graphdef, loss_fn, mesh=mesh, params_sharding=shardings.params,
                           rest_sharding=rest_sharding)
  metrics_path = os.path.join(out_dir, "metrics.jsonl")
  _truncate_metrics(metrics_path, step)
  metrics = _Metrics(metrics_path, schedule, steps_per_epoch, out_dir, resumed_step=step)

  def dev_loss(params):
    if dev_batches is None:
      return None
    total, count = 0.0, 0.0
    for batch in dev_batches():
      s, c = eval_fn(params, rest, sharding.put_batch(batch, mesh))
      total, count = total + float(s), count + float(c)
    return total / max(count, 1.0)

  pbar = tqdm(total=total_steps, initial=step, desc=f"train {os.path.basename(out_dir)}",
              unit="step")
  try:
    while step < total_steps:
      epoch, offset = divmod(step, steps_per_epoch)
      order = epoch_order(num_examples, loop.seed, epoch)
      idx = padded_indices(order[offset * batch_size:(offset + 1) * batch_size], rows)
      batch = sharding.put_batch(make_batch(idx), mesh)
      state, m = step_fn(state, rest, batch)
      step += 1
      metrics.add(step, m, int((idx >= 0).sum()))
      pbar.update(1)
      last = step == total_steps
      evaluate = bool(loop.eval_every) and (step % loop.eval_every == 0 or last)
      checkpoint = step % loop.checkpoint_every == 0 or last or (evaluate and dev_batches is not None)
      if not (step % loop.log_every == 0 or evaluate or checkpoint):
        continue
      # Checked before anything is evaluated or saved: no checkpoint holds a non-finite step.
      records, examples_per_s = metrics.fetch()
      pbar.set_postfix(loss=f"{records[-1]['train/loss']:.4f}")
      dev = dev_loss(state.params) if evaluate else None
      if dev is not None:
        records[-1]["dev/loss"] = dev
      # Measured over the steps since the last fetch: on the last of them only.
      records[-1]["train/examples_per_s"] = examples_per_s
      if last and dev is None:
        dev = 0.0  # No dev set: the final parameters are the selected ones.
      metrics.write(records)  # before the save: a resumed run drops lines past its checkpoint
      if checkpoint:
        ckpts.save(step, state, force=last, dev_loss=dev)
      metrics.restart_clock()
  finally:
    pbar.close()
    metrics.close()
    ckpts.close()
  best, best_step = ckpts.best_params(abstract.params)
  nnx.update(model, jax.device_get(best))
  summary = {"total_steps": total_steps, "selected_step": int(best_step), "batch_size": batch_size,
             "num_examples": num_examples}
  return model, summary


def _truncate_metrics(path: str, step: int) -> None:
  """Drops metric lines past the resumed step, so a resumed run's log has no duplicates, and a
  last line a kill cut short (no newline: it was being written, before any save of its step)."""
  if jax.process_index() != 0 or not files.exists(path):
    return
  with files.open_file(path, "r") as f:
    lines = f.readlines()
  if lines and not lines[-1].endswith("\n"):
    logging.warning("%s: dropping an unfinished last line left by an interrupted run", path)
    lines.pop()
  keep = []
  for lineno, line in enumerate(lines, start=1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise data_lib.DataError(path, lineno, f"invalid JSON ({e.msg} at column {e.colno}); move "
                               "the file away to resume without its log") from None
    if record.get("step", 0) <= step:
      keep.append(line)
  data_lib.atomic_write_text(path, "".join(keep))


def loop_config(section, seed: int) -> LoopConfig:
  """The loop settings of a training section (`ranker` or `distill`)."""
  return LoopConfig(batch_size=section.batch_size, epochs=section.epochs,
                    eval_every=section.eval_every, checkpoint_every=section.checkpoint_every,
                    keep_checkpoints=section.keep_checkpoints, seed=seed,
                    log_every=section.log_every)


def dev_batches_fn(examples, batch_size: int, mesh):
  """Dev batches of `examples`, `batch_size` at a time (each padded with -1 rows to split over
  the mesh), or None."""
  rows = padded_batch_size(batch_size, mesh)

  def batches():
    for start in range(0, len(examples), batch_size):
      idx = np.arange(start, min(start + batch_size, len(examples)))
      yield examples.batch(padded_indices(idx, rows))

  return batches if len(examples) else None


def dev_split(qids: Sequence[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
  """(train, dev) qids: a seeded slice of the *training* queries for checkpoint selection."""
  qids = sorted(qids)
  n_dev = int(round(fraction * len(qids)))
  perm = np.random.default_rng(seed).permutation(len(qids))
  dev = {qids[i] for i in perm[:n_dev]}
  return [q for q in qids if q not in dev], [q for q in qids if q in dev]
