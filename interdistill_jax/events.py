"""TensorBoard event files beside a stage's metrics.jsonl, so training can be watched live:

  tensorboard --logdir runs/scifact     # one run per stage directory (ranker, retriever, ...)

Written through tensorboardX, which needs no TensorFlow. Tags are metrics.jsonl's names
(`train/loss`, `train/lr`, `train/grad_norm`, `train/examples_per_s`, `dev/loss`, and
`train/epoch`).

Local only: tensorboardX writes to a bucket only with extra packages, so a stage directory in a
bucket (`gs://...`) gets no event files (`writes_events`, which says so once); its metrics.jsonl
holds the same numbers.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from absl import logging

from interdistill_jax import files


def writes_events(out_dir: str) -> bool:
  """Whether `out_dir` gets TensorBoard event files: a local directory does, one in a bucket not."""
  if files.is_local(out_dir):
    return True
  logging.warning("%s is in a bucket: no TensorBoard events are written there (tensorboardX "
                  "needs extra packages for it); metrics.jsonl holds the same numbers", out_dir)
  return False


class EventWriter:
  """Scalars of metrics.jsonl records into `out_dir`'s event files.

  Each run (a resumed one too) writes a new event file whose first event purges everything
  logged past the step it starts from (TensorBoard drops those points when it reads), as
  metrics.jsonl drops the lines past it: the curves then show each step once.
  """

  def __init__(self, out_dir: str, *, resumed_step: int = 0):
    from tensorboardX import SummaryWriter  # noqa: PLC0415 (only training writes events)
    # The file name holds the time in seconds: the suffix keeps a run restarted within the same
    # second from overwriting the last one's file (and sorts after it, as TensorBoard reads).
    self._writer = SummaryWriter(logdir=out_dir, purge_step=resumed_step + 1,
                                 filename_suffix=f".{time.time_ns()}")

  @staticmethod
  def tag(name: str) -> str:
    """A metrics.jsonl name as a namespaced tag (`epoch` -> `train/epoch`)."""
    return name if "/" in name else f"train/{name}"

  def write(self, records: Iterable[dict]) -> None:
    """Each record's numbers at its "step", then a flush (records come every `log_every` steps)."""
    for record in records:
      step = int(record["step"])
      for name, value in record.items():
        if name != "step" and isinstance(value, (int, float)):
          self._writer.add_scalar(self.tag(name), float(value), step)
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()
