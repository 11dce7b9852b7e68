"""The trainer shared by both stages: optimizer, jitted step, loop, checkpoints, exact resume.

The step is a pure function of (state, rest, batch): the train state (params, optimizer state,
step) goes in and comes out, donated; the model is rebuilt inside it with `nnx.merge` from the
params and the untrained rest; randomness is `fold_in(seed key, step)`, and the data order is a
function of (seed, epoch). A checkpoint therefore only needs params, optimizer state and the
step for a resumed run to continue exactly as an uninterrupted one.

Layout: one mesh (the task's, from `config.mesh`); every global batch holds `batch_size`
examples padded with zero-weight rows to split over the `data` axis; params, rest and optimizer
state are placed by `config.mesh.param_rules` (replicated by default). The loop leaves the step's
metrics on the devices and fetches them every `log_every` steps.

Resume order: an existing checkpoint in the stage's directory > the stage's init > scratch.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx
from tqdm import tqdm

from interdistill_jax import data as data_lib
from interdistill_jax import checks, files, layout, sharding
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


class Checkpoints:
  """Orbax checkpoints of one stage: `latest/` for resume and `best/` by the dev metric."""

  def __init__(self, directory: str, *, keep: int, interval: int):
    self.directory = files.absolute(directory)  # Orbax reads it through etils.epath
    self._keep, self._interval = keep, interval
    self.latest = self._latest_manager()
    self.best = self._best_manager()

  def _best_manager(self) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        os.path.join(self.directory, "best"),
        options=ocp.CheckpointManagerOptions(max_to_keep=1, best_fn=_dev_loss, best_mode="min",
                                             multiprocessing_options=_sync("best")))

  def _latest_manager(self) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        os.path.join(self.directory, "latest"),
        options=ocp.CheckpointManagerOptions(max_to_keep=self._keep,
                                             save_interval_steps=self._interval,
                                             multiprocessing_options=_sync("latest")))

  def save(self, step: int, state: TrainState, *, force=False, dev_loss: float | None = None):
    """Saves `step` to `best/` (with its `dev_loss`, when given), then to `latest/`.

    Both commit in the background, so a kill can fall between the two commits. `best/` goes
    first and is waited for: `latest/` never holds a step whose dev loss `best/` has not weighed
    (the resumed run starts after it and would never evaluate it again). The other way round, a
    `best/` step past `latest/` is replayed by the resumed run with the same dev loss and
    parameters, and kept as it is.
    """
    if dev_loss is not None:
      if step not in self.best.all_steps():
        self.best.save(step, args=ocp.args.StandardSave({"params": state.params}),
                       metrics={"dev_loss": float(dev_loss)}, force=True)
      self.best.wait_until_finished()
    tree = {"params": state.params, "opt_state": state.opt_state}
    self.latest.save(step, args=ocp.args.StandardSave(tree), force=force)

  def restore_latest(self, abstract: TrainState) -> tuple[int, TrainState] | None:
    """(step, state laid out as `abstract`) of the latest readable checkpoint, or None.

    A damaged one (a run killed while saving, a disk error) is moved to `aside/` beside
    `latest/`, with a warning, and the one before it is taken: resuming earlier costs some
    training steps, never a result.

    Best-of-dev checkpoints past the resumed step (a run killed between its two saves of a
    step, or resumed earlier as above) are moved aside too: the resumed run retraces the same
    steps exactly and saves them again as they were.
    """
    _quiet_closed_loop()
    while (step := self.latest.latest_step()) is not None:
      try:
        tree = self.latest.restore(step, args=ocp.args.StandardRestore(
            {"params": abstract.params, "opt_state": abstract.opt_state}))
      except Exception as e:  # noqa: BLE001 (damage shows as any error of tensorstore, JSON, files)
        self._move_aside("latest", [step], f"a damaged checkpoint ({_short(e)})")
        continue
      break
    later = [s for s in self.best.all_steps() if s > (step or 0)]
    if later:
      self._move_aside("best", later, f"past the step resumed from ({step or 0}); it is retraced")
    if step is None:
      return None
    return int(step), TrainState(tree["params"], tree["opt_state"],
                                 jax.device_put(np.int32(step), abstract.step.sharding))

  def _move_aside(self, kind: str, steps: Sequence[int], why: str) -> None:
    """Moves steps of `latest/` or `best/` to `aside/{kind}-{step}-{time}/` (nothing is deleted)."""
    getattr(self, kind).close()
    if jax.process_count() > 1:  # every process has tried to read them before any is moved
      from jax.experimental import multihost_utils  # noqa: PLC0415
      multihost_utils.sync_global_devices(f"checkpoints-read:{self.directory}/{kind}")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for step in steps:
      source = os.path.join(self.directory, kind, str(step))
      dest = os.path.join(self.directory, "aside", f"{kind}-{step}-{stamp}")
      if jax.process_index() == 0:
        files.move(source, dest)
      logging.warning("%s: %s; moved to %s", source, why, dest)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"checkpoints-aside:{self.directory}/{kind}")
    setattr(self, kind, self._latest_manager() if kind == "latest" else self._best_manager())

  def best_params(self, abstract_params):
    step = self.best.best_step()
    try:
      tree = self.best.restore(step, args=ocp.args.StandardRestore({"params": abstract_params}))
    except Exception as e:  # noqa: BLE001 (as in restore_latest)
      where = os.path.join(self.directory, "best", str(step))
      raise ValueError(f"{where}: the selected checkpoint cannot be read ({_short(e)}); move "
                       f"{self.directory} away and run the stage again") from e
    return tree["params"], step

  def close(self):
    self.latest.wait_until_finished()
    self.best.wait_until_finished()
    self.latest.close()
    self.best.close()


def _dev_loss(metrics: dict) -> float:
  return metrics["dev_loss"]


def _quiet_closed_loop() -> None:
  """Reads still in flight when a restore fails call back into orbax's closed event loop, even
  after the process has moved on; each is reported as a traceback that says nothing about the
  checkpoint (the failure itself is reported). Only that report is silenced, for the process."""
  previous = sys.unraisablehook
  if getattr(previous, "func", None) is _unless_closed_loop:
    return
  sys.unraisablehook = functools.partial(_unless_closed_loop, previous=previous)


def _unless_closed_loop(unraisable, *, previous) -> None:
  if not (isinstance(unraisable.exc_value, RuntimeError)
          and str(unraisable.exc_value) == "Event loop is closed"):
    previous(unraisable)


def _sync(name: str):
  # Two managers save at the same step: on several hosts each needs its own barrier names.
  return ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=name)


def _short(error: Exception) -> str:
  """An error's first words: tensorstore appends its whole spec to every message."""
  text = str(error).split(" [tensorstore_spec")[0].splitlines()[0] if str(error) else repr(error)
  return text if len(text) <= 240 else text[:237] + "..."


def _abstract(tree, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


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
  abstract = _abstract(state, shardings)
  step = 0

  ckpts = Checkpoints(os.path.join(out_dir, "checkpoints"), keep=loop.keep_checkpoints,
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


def restore_params(model: nnx.Module, out_dir: str, *, mesh, param_rules=(),
                   trainable: Any = nnx.Param) -> int:
  """Loads a finished stage's selected parameters into `model`, placed on `mesh` by the rules;
  returns their step."""
  info = layout.read_done(out_dir)
  _, params, _ = nnx.split(model, trainable, ...)
  # Placed on this run's devices, whatever topology saved them (a pod's checkpoint loads on a laptop).
  abstract = _abstract(params, sharding.param_shardings(params, mesh, param_rules))
  best = os.path.join(files.absolute(out_dir), "checkpoints", "best")
  mngr = ocp.CheckpointManager(best, options=ocp.CheckpointManagerOptions(read_only=True))
  _quiet_closed_loop()
  try:
    tree = mngr.restore(info["selected_step"], args=ocp.args.StandardRestore({"params": abstract}))
  except Exception as e:  # noqa: BLE001 (as in Checkpoints.restore_latest)
    raise ValueError(f"{best}/{info['selected_step']}: the selected checkpoint cannot be read "
                     f"({_short(e)}); move {out_dir} away and run its stage again") from e
  finally:
    mngr.close()
  nnx.update(model, tree["params"])
  return info["selected_step"]


def write_done(out_dir: str, summary: dict, extra: dict | None = None) -> None:
  """Marks a stage finished (last, atomically): the pipeline skips it from then on."""
  info = dict(summary, **(extra or {}))
  if jax.process_index() == 0:
    data_lib.write_json(layout.done(out_dir), info)


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
