"""Multi-host code paths on one machine: 2 JAX processes x 2 CPU devices against 1 process x 4 devices.

Both runs go through `python -m interdistill_jax.main`; the 2-process run through `launch/local.sh`,
which joins the processes with `jax.distributed` over 127.0.0.1 (gloo collectives on CPU). The
failure tests start local.sh's processes themselves (from its --dry_run), since local.sh would stop
the others itself: they check that the processes stop one another.
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx

from interdistill_jax import checkpoints, hf_weights, sharding
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
  model, _ = hf_weights.load_cross_encoder(ml_collections.ConfigDict(dict(init=str(bert), dtype="float32")),
                                       head=head)
  step = checkpoints.restore_params(model, str(out_dir), mesh=sharding.make_mesh())
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
  # evaluate and export read the same trained models in both runs: a copy of the 2-process workdir.
  one = root / "multi_one"
  shutil.copytree(multi, one)
  for task in ("evaluate", "export"):
    _run_single(config_file, one, task)
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


def _assert_close(a, b, where=""):
  """Equal JSON values, numbers to float round-off."""
  if isinstance(a, dict):
    assert isinstance(b, dict) and a.keys() == b.keys(), where
    for key in a:
      _assert_close(a[key], b[key], f"{where}.{key}")
  elif isinstance(a, list):
    assert isinstance(b, list) and len(a) == len(b), where
    for i, (x, y) in enumerate(zip(a, b)):
      _assert_close(x, y, f"{where}[{i}]")
  elif isinstance(a, float):
    np.testing.assert_allclose(a, b, atol=1e-6, err_msg=where)
  else:
    assert a == b, where


def test_evaluate_writes_the_same_metrics(runs):
  _, multi, _ = runs
  one = multi.parent / "multi_one"
  names = sorted(str(p.relative_to(one / "eval")) for p in (one / "eval").rglob("*.json"))
  assert {"baseline.json", "ranker.json", "compare.json", "done.json"} <= set(names)
  assert sorted(str(p.relative_to(multi / "eval")) for p in (multi / "eval").rglob("*.json")) == names
  for name in names:
    _assert_close(*(json.loads((wd / "eval" / name).read_text()) for wd in (one, multi)), name)
  assert json.loads((multi / "eval" / "ranker.json").read_text())["metrics"]["ndcg@10"] > 0
  assert (one / "eval" / "ranker.trec").read_text() == (multi / "eval" / "ranker.trec").read_text()


def test_export_writes_the_same_files(runs):
  _, multi, _ = runs
  one = multi.parent / "multi_one"
  files = sorted(p.relative_to(one / "export") for p in (one / "export").rglob("*") if p.is_file())
  assert files == sorted(p.relative_to(multi / "export") for p in (multi / "export").rglob("*")
                         if p.is_file())
  assert any(f.name == "model.safetensors" for f in files) and len(files) > 10
  for f in files:
    a, b = ((wd / "export" / f).read_bytes() for wd in (one, multi))
    if f.name == "done.json":  # it names the workdir
      a = a.replace(str(one).encode(), str(multi).encode())
    assert a == b, f
  done = json.loads((multi / "export" / "done.json").read_text())
  assert done["exported"]["ranker"]["trained"] is True


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
  # One file in the shared workdir, written by process 0 alone.
  assert len(a) == 12 and a == b
  stats = [json.loads((wd / "label_run" / "labels" / "stats.json").read_text()) for wd in (single, multi)]
  # The same number of prompts answered as by one process: none was sent twice.
  assert stats[1]["calls"]["answered"] == stats[0]["calls"]["answered"] == 12
  log1 = (multi.parent / "logs_label" / "interdistill_proc1.log").read_text()
  assert "leaves the teacher to process 0" in log1


# --- failures: every process stops, within a bounded time, saying why --------------------------

PEER_TIMEOUT = 5  # --peer_timeout of the failure tests: the bound they check


def _start_processes(main_args, tmp_path, workdirs=None):
  """local.sh's 2 processes x 2 devices, started here (not by local.sh, which would stop the others
  when one fails); `workdirs` gives each process its own. Returns [(Popen, log path)]."""
  env = dict(os.environ, PYTHON=sys.executable, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  dry = subprocess.run([str(REPO / "launch" / "local.sh"), "--num_processes", "2",
                        "--devices_per_process", "2", "--dry_run", "--", *main_args],
                       capture_output=True, text=True, env=env, cwd=REPO, timeout=60, check=True)
  commands = [shlex.split(line[2:]) for line in dry.stdout.splitlines() if line.startswith("+ ")]
  assert len(commands) == 2
  procs = []
  for i, cmd in enumerate(commands):
    if workdirs:
      cmd = [f"--workdir={workdirs[i]}" if w.startswith("--workdir=") else w for w in cmd]
    log = tmp_path / f"proc{i}.log"
    with open(log, "w") as out:
      procs.append((subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO),
                    log))
  return procs


def _wait_all(procs, timeout):
  for proc, _ in procs:
    try:
      proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
      for p, _ in procs:
        p.kill()
      pytest.fail(f"a process still ran {timeout} s later: " + " | ".join(
          log.read_text()[-1500:] for _, log in procs))


def _wait_for_line(log, text, timeout=120):
  deadline = time.monotonic() + timeout
  while text not in log.read_text():
    assert time.monotonic() < deadline, f"{text!r} never appeared: {log.read_text()[-2000:]}"
    time.sleep(0.1)


@pytest.fixture(scope="module")
def label_setup(tmp_path_factory):
  """A config whose `label` task needs no model: the simulated teacher over a data set."""
  root = tmp_path_factory.mktemp("failures")
  data_dir = fixtures.tiny_beir(root / "data", num_train=12)
  config = fixtures.small_config(root / "no-model", data_dir)
  config.teacher.backend = "simulated"
  config.label.num_candidates = 8
  config_file = root / "cfg.py"
  fixtures.write_config_file(config_file, config)
  return config_file, data_dir


def _label_args(config_file, workdir):
  return [f"--config={config_file}", "--config.task=label", f"--workdir={workdir}",
          f"--peer_timeout={PEER_TIMEOUT}"]


def test_a_failure_of_process_0_stops_the_other_with_its_error(label_setup, tmp_path):
  config_file, _ = label_setup
  # No candidates: process 0 fails in `label` while process 1 waits for its labels.
  procs = _start_processes(_label_args(config_file, tmp_path / "work"), tmp_path)
  _wait_all(procs, timeout=120)
  logs = [log.read_text() for _, log in procs]
  assert [p.returncode for p, _ in procs] == [1, 1], logs
  cause = f"{tmp_path / 'work' / 'candidates' / 'train.trec'} not found: run the `retrieve` task first"
  assert f"error: {cause}" in logs[0]
  assert f"error: process 0 of 2 failed: {cause}" in logs[1]
  assert "Traceback" not in logs[1]


def _write_candidates(path, data_dir):
  """A TREC run of every training query over the first 8 documents."""
  qids = [line.split("\t")[0] for line in (data_dir / "qrels" / "train.tsv").read_text().splitlines()[1:]]
  docids = [json.loads(line)["_id"] for line in (data_dir / "corpus.jsonl").read_text().splitlines()]
  path.parent.mkdir(parents=True)
  path.write_text("".join(f"{q} Q0 {d} {r + 1} {10.0 - r} initial\n"
                          for q in dict.fromkeys(qids) for r, d in enumerate(docids[:8])))


@pytest.mark.parametrize("killed", [0, 1])
def test_a_killed_process_stops_the_other_within_the_peer_timeout(label_setup, tmp_path, killed):
  config_file, data_dir = label_setup
  _write_candidates(tmp_path / "work" / "candidates" / "train.trec", data_dir)
  procs = _start_processes(_label_args(config_file, tmp_path / "work"), tmp_path)
  # Process 1 is past start-up and waits for process 0's labels: one of them dies by SIGKILL.
  _wait_for_line(procs[1][1], "leaves the teacher to process 0")
  procs[killed][0].kill()
  killed_at = time.monotonic()
  survivor, log = procs[1 - killed]
  _wait_all([(survivor, log)], timeout=PEER_TIMEOUT + 60)
  assert time.monotonic() - killed_at < PEER_TIMEOUT + 60
  text = log.read_text()
  if killed == 0:
    # Process 0 hosts JAX's coordination service: its loss aborts the other at once, in JAX's words.
    assert survivor.returncode not in (0, None), text[-3000:]
    assert "another task died" in text, text[-3000:]
  else:
    # Process 0 names the silent process in its own words after the timeout; on a loaded machine
    # JAX's backstop (twice the timeout) can still end it first, in JAX's words.
    assert survivor.returncode not in (0, None), text[-3000:]
    pid = procs[killed][0].pid
    ours = re.search(rf"error: process 1 of 2 \(host \S+ pid {pid}\) stopped answering", text)
    assert ours or "another task died" in text, text[-3000:]
    if ours:
      assert survivor.returncode == 1, text[-3000:]
  procs[killed][0].wait()


def test_processes_that_do_not_share_the_workdir_are_refused(label_setup, tmp_path):
  config_file, _ = label_setup
  workdirs = [tmp_path / "host0" / "work", tmp_path / "host1" / "work"]
  procs = _start_processes(_label_args(config_file, workdirs[0]), tmp_path, workdirs=workdirs)
  _wait_all(procs, timeout=120)
  logs = [log.read_text() for _, log in procs]
  assert [p.returncode for p, _ in procs] == [1, 1], logs
  for i in range(2):
    line = next(l for l in logs[i].splitlines() if l.startswith("error: "))
    assert line.startswith(f"error: the workdir is not shared between the processes: process {i} "
                           f"does not see process {1 - i}'s {workdirs[i] / '.peers'}"), line
    assert f"after {PEER_TIMEOUT} s (a disk per host?)" in line
  assert not (workdirs[0] / "labels").exists()  # refused before anything ran
