"""Multi-host code paths on one machine: 2 JAX processes x 2 CPU devices against 1 process x 4 devices.

Both runs go through `python -m interdistill_jax.main`; the 2-process run through `launch/local.sh`,
which joins the processes with `jax.distributed` over 127.0.0.1 (gloo collectives on CPU).
"""

import json
import os
import shutil
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx

from interdistill_jax import models, sharding, train
from tests import fixtures
from tests.conftest import REPO

# Parameters after training may differ by float round-off: the 2-process run sums gradients across
# processes in another order. Adam divides by sqrt(v), which turns round-off in near-zero gradient
# entries into visible steps, hence an absolute tolerance on parameters of O(1e-2) magnitude.
PARAM_ATOL = 1e-5

pytestmark = pytest.mark.slow  # `main` subprocesses, two of them joined by jax.distributed


def _run_single(config_file, workdir, task, timeout=600, extra=()):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-m", "interdistill_jax.main", f"--config={config_file}",
                         f"--config.task={task}", f"--workdir={workdir}", *extra],
                        capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
  assert proc.returncode == 0, proc.stderr[-4000:]


def _run_two_processes(config_file, workdir, task, log_dir, timeout=600, extra=()):
  env = dict(os.environ, PYTHON=sys.executable, LOG_DIR=str(log_dir), JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  proc = subprocess.run([str(REPO / "launch" / "local.sh"), "--num_processes", "2",
                         "--devices_per_process", "2", "--", f"--config={config_file}",
                         f"--config.task={task}", f"--workdir={workdir}", *extra],
                        capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
  assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
  # Both processes took part: each reports 4 global devices, 2 of them its own.
  for i in range(2):
    log = (log_dir / f"interdistill_proc{i}.log").read_text()
    assert f"process {i}/2: 2 local of 4 devices" in log, log[-3000:]


def _selected_params(out_dir, bert):
  """The stage's selected parameters, loaded as later stages load them, onto this process's 4
  devices (whatever topology saved them)."""
  head = json.loads((out_dir / "done.json").read_text())["head"]
  model, _ = models.load_cross_encoder(ml_collections.ConfigDict(dict(init=str(bert), dtype="float32")),
                                       head=head)
  step = train.restore_params(model, str(out_dir), mesh=sharding.make_mesh())
  return step, jax.tree.map(np.asarray, nnx.state(model, nnx.Param))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("multihost")
  bert = fixtures.tiny_bert(root / "bert", layers=1, hidden=16, heads=2)
  data_dir = fixtures.tiny_beir(root / "data", num_train=12)
  config = fixtures.small_config(bert, data_dir)
  config.retrieve.k = 10
  config.encode.batch_size = 8  # several batches per split
  config_file = root / "cfg.py"
  fixtures.write_config_file(config_file, config)
  single, multi = root / "single", root / "multi"
  for wd in (single, multi):
    fixtures.write_labels(wd / "labels" / "labels.jsonl", data_dir, list_size=6)
  for task in ("retrieve", "train_ranker"):
    _run_single(config_file, single, task)
    _run_two_processes(config_file, multi, task, root / f"logs_{task}")
  # Labelling with the simulated teacher, from the candidates just retrieved.
  for wd in (single, multi):
    (wd / "label_run" / "candidates").mkdir(parents=True)
    shutil.copy(wd / "candidates" / "train.trec", wd / "label_run" / "candidates" / "train.trec")
  labelling = ["--config.teacher.backend=simulated", "--config.teacher.sim_noise=0.5",
               "--config.label.num_candidates=8"]
  _run_single(config_file, single / "label_run", "label", extra=labelling)
  _run_two_processes(config_file, multi / "label_run", "label", root / "logs_label", extra=labelling)
  return single, multi, bert


def test_retrieve_writes_the_same_candidates(runs):
  single, multi, bert = runs
  for split in ("train", "test"):
    a = (single / "candidates" / f"{split}.trec").read_text()
    b = (multi / "candidates" / f"{split}.trec").read_text()
    assert a.count("\n") > 0
    # Same documents in the same order; scores agree to float round-off.
    rows_a, rows_b = [line.split() for line in a.splitlines()], [line.split() for line in b.splitlines()]
    assert [r[:4] for r in rows_a] == [r[:4] for r in rows_b]
    np.testing.assert_allclose([float(r[4]) for r in rows_a], [float(r[4]) for r in rows_b], atol=1e-6)


def test_train_ranker_reaches_the_same_parameters(runs):
  single, multi, bert = runs
  step_a, params_a = _selected_params(single / "ranker", bert)
  step_b, params_b = _selected_params(multi / "ranker", bert)
  assert step_a == step_b > 0
  assert jax.tree.leaves(params_a)
  for a, b in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b), strict=True):
    np.testing.assert_allclose(a, b, atol=PARAM_ATOL, rtol=0)
  # Only process 0 wrote the metrics log, each step once, with the same losses.
  metrics = [[json.loads(line) for line in open(wd / "ranker" / "metrics.jsonl")] for wd in (single, multi)]
  done = [json.loads((wd / "ranker" / "done.json").read_text()) for wd in (single, multi)]
  # Fitted figures (the residual head's starting scale, the dev ListMLEs) agree to round-off.
  fitted = [{k: d.pop(k) for k in ("initial_scale", "dev_listmle") if k in d} for d in done]
  assert done[0] == done[1] and done[1]["selected_step"] == step_b
  assert fitted[0].keys() == fitted[1].keys() == {"initial_scale", "dev_listmle"}
  np.testing.assert_allclose(fitted[0]["initial_scale"], fitted[1]["initial_scale"], rtol=1e-4)
  assert fitted[0]["dev_listmle"].keys() == fitted[1]["dev_listmle"].keys() and fitted[0]["dev_listmle"]
  for key, value in fitted[0]["dev_listmle"].items():
    np.testing.assert_allclose(value, fitted[1]["dev_listmle"][key], rtol=1e-3)
  # The selected (best dev) step may come before the last one.
  assert [m["step"] for m in metrics[1]] == list(range(1, done[1]["total_steps"] + 1))
  np.testing.assert_allclose([m["train/loss"] for m in metrics[0]],
                             [m["train/loss"] for m in metrics[1]], rtol=1e-5)


def test_only_process_zero_calls_the_teacher(runs):
  single, multi, _ = runs
  def labels(wd):
    return [json.loads(line) for line in open(wd / "label_run" / "labels" / "labels.jsonl")]
  a, b = labels(single), labels(multi)
  # Process 1 wrote its copy last (from process 0's broadcast), over process 0's file.
  assert len(a) == 12 and a == b
  stats = [json.loads((wd / "label_run" / "labels" / "stats.json").read_text()) for wd in (single, multi)]
  # The same number of prompts answered as by one process: none was sent twice.
  assert stats[1]["calls"]["answered"] == stats[0]["calls"]["answered"] == 12
  log1 = (multi.parent / "logs_label" / "interdistill_proc1.log").read_text()
  assert "leaves the teacher to process 0" in log1
