"""TensorBoard event files: namespaced tags, and a resumed run's curves with each step once."""

import os
import struct

import pytest

from interdistill_jax import events


def read_scalars(directory) -> dict[str, dict[int, float]]:
  """tag -> step -> value, as TensorBoard shows them: the event files in the order they were
  written, each purge event (a resumed run's first) hiding what was logged at or past its step."""
  from tensorboardX.proto import event_pb2
  scalars: dict[str, dict[int, float]] = {}
  names = sorted(n for n in os.listdir(directory) if n.startswith("events.out.tfevents."))
  for name in names:
    with open(os.path.join(directory, name), "rb") as f:
      while header := f.read(12):
        (length,) = struct.unpack("<Q", header[:8])
        event = event_pb2.Event.FromString(f.read(length))
        f.read(4)
        if event.HasField("session_log") and event.session_log.status == event.session_log.START:
          for values in scalars.values():
            for step in [s for s in values if s >= event.step]:
              del values[step]
        for value in event.summary.value:
          scalars.setdefault(value.tag, {})[event.step] = value.simple_value
  return scalars


def test_records_become_namespaced_scalars(tmp_path):
  writer = events.EventWriter(str(tmp_path))
  writer.write([{"step": 1, "train/loss": 2.0, "train/lr": 1e-4, "epoch": 0.5},
                {"step": 2, "train/loss": 1.5, "epoch": 1.0, "dev/loss": 1.75}])
  writer.close()
  assert read_scalars(tmp_path) == {"train/loss": {1: 2.0, 2: 1.5},
                                    "train/lr": {1: pytest.approx(1e-4)},  # stored as float32
                                    "train/epoch": {1: 0.5, 2: 1.0}, "dev/loss": {2: 1.75}}


def test_a_resumed_run_hides_what_was_logged_past_its_checkpoint(tmp_path):
  first = events.EventWriter(str(tmp_path))
  first.write([{"step": s, "train/loss": float(s)} for s in range(1, 6)])  # killed after step 5
  first.close()
  resumed = events.EventWriter(str(tmp_path), resumed_step=3)  # the checkpoint was at step 3
  resumed.write([{"step": s, "train/loss": 10.0 + s} for s in range(4, 7)])
  resumed.close()
  assert read_scalars(tmp_path) == {"train/loss": {1: 1.0, 2: 2.0, 3: 3.0, 4: 14.0, 5: 15.0, 6: 16.0}}
