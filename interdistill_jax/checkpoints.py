"""A training stage's checkpoints on disk: the `latest/` and `best/` Orbax managers, resumption
from the latest readable step, moving a damaged or stale step aside, and the done marker.

`latest/` holds params and optimizer state for an exact resume (`train.py`'s loop), `best/` the
params of the step with the lowest dev loss; a finished stage's selected params are read back by
`restore_params` once its done marker (`write_done`) names their step. Nothing is deleted: a step
that cannot be resumed from goes to `aside/` beside them.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx

from interdistill_jax import data as data_lib
from interdistill_jax import files, layout, sharding


class Checkpoints:
  """Orbax checkpoints of one stage: `latest/` for resume and `best/` by the dev metric.

  The states saved and restored are `train.TrainState`s (params, opt_state, step).
  """

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

  def save(self, step: int, state, *, force=False, dev_loss: float | None = None):
    """Saves `step` to `best/` (with its `dev_loss`, when given), then to `latest/`.

    Both commit in the background, so a kill can fall between the two commits. `best/` goes
    first and is waited for: `latest/` never holds a step whose dev loss `best/` has not weighed
    (the resumed run starts after it and would never evaluate it again). The other way round, a
    `best/` step past `latest/` is moved aside by `restore_latest`, and the resumed run, which
    retraces it exactly, saves it again here.
    """
    if dev_loss is not None:
      self.best.save(step, args=ocp.args.StandardSave({"params": state.params}),
                     metrics={"dev_loss": float(dev_loss)}, force=True)
      self.best.wait_until_finished()
    tree = {"params": state.params, "opt_state": state.opt_state}
    self.latest.save(step, args=ocp.args.StandardSave(tree), force=force)

  def restore_latest(self, abstract):
    """(step, state laid out as `abstract`, a `train.TrainState`) of the latest readable
    checkpoint, or None.

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
    return int(step), dataclasses.replace(
        abstract, params=tree["params"], opt_state=tree["opt_state"],
        step=jax.device_put(np.int32(step), abstract.step.sharding))

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


def restore_target(tree, shardings):
  """What a restore reads `tree` into: each leaf's shape and dtype, placed by `shardings`."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def restore_params(model: nnx.Module, out_dir: str, *, mesh, param_rules=(),
                   trainable: Any = nnx.Param) -> int:
  """Loads a finished stage's selected parameters into `model`, placed on `mesh` by the rules;
  returns their step."""
  info = layout.read_done(out_dir)
  _, params, _ = nnx.split(model, trainable, ...)
  # Placed on this run's devices, whatever topology saved them (a pod's checkpoint loads on a laptop).
  abstract = restore_target(params, sharding.param_shardings(params, mesh, param_rules))
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
