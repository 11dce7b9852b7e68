"""Crash-anywhere resume: a pipeline SIGKILLed at random moments of every stage, again and again,
then rerun to the end, holds exactly the artifacts of one uninterrupted run.

  .venv/bin/python -m benchmarks.kill_loop [--kills_per_stage=3] [--seed=0] [--model=tiny] \
      [--data_dir=../shared/data] [--out=benchmarks/results/kill_loop.json]

(from the repository root: `-m`, so that this checkout's package is the one run.)

Builds a small BEIR subset of SciFact in a temporary directory (train and test queries, their
judged documents and seeded others) and runs a small config on it (`SMALL`: the `simulated`
teacher with noise and malformed answers, short lists and lengths, dozens of training steps with a
checkpoint every 3; a tiny BERT by default, `model_flags`), so that one whole `pipeline`
(retrieve, label, train_ranker, distill, evaluate) takes about a minute on 2 cores. Then:

1. reference: `python -m interdistill_jax.main --config.task=pipeline` into workdir A, uninterrupted;
   each stage's duration is read from its markers (started: `inputs.json`, finished: done marker);
2. kill loop: the same command into workdir B, in its own process group. For each stage in turn,
   `--kills_per_stage` times: start the command, wait until that stage has started in this attempt
   (its `inputs.json` is rewritten), sleep a seeded random delay (`kill_loop`), SIGKILL the group,
   and record where the kill landed and what was on disk. Each training stage also gets
   `--commit_kills` kills the moment its `best/` checkpoints gain a step, the narrow window
   between that commit and `latest/`'s. Then run B to completion;
3. compare A and B artifact by artifact (`workdir_compare.compare_workdirs`).

Prints the record as JSON and writes it to --out; exits with status 1 when an artifact differs or
a resumed run fails.
"""

from __future__ import annotations

import json
import os
import pathlib
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence

from absl import app, flags, logging

from benchmarks import workdir_compare
from interdistill_jax import layout, provenance

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_DATA = os.environ.get("INTERDISTILL_DATA_DIR", str(REPO.parent / "shared" / "data"))

_DATA = flags.DEFINE_string("data_dir", DEFAULT_DATA, "Directory holding scifact/ (BEIR layout).")
_KILLS = flags.DEFINE_integer("kills_per_stage", 3, "SIGKILLs at random moments of each stage.")
_COMMIT_KILLS = flags.DEFINE_integer("commit_kills", 1, "SIGKILLs of each training stage the "
                                     "moment a best/ checkpoint commits.")
_SEED = flags.DEFINE_integer("seed", 0, "Seeds the subset and the kill delays.")
_NUM_TRAIN = flags.DEFINE_integer("num_train", 40, "Training queries in the subset.")
_NUM_TEST = flags.DEFINE_integer("num_test", 20, "Test queries in the subset.")
_NUM_DOCS = flags.DEFINE_integer("num_docs", 300, "Documents in the subset (judged ones first).")
_NICE = flags.DEFINE_integer("nice", 10, "Niceness of the pipeline processes (a shared machine).")
_TIMEOUT = flags.DEFINE_float("timeout", 900.0, "Seconds one pipeline process may take.")
_MODEL = flags.DEFINE_enum("model", "tiny", ["tiny", "minilm"], "Encoder and ranker weights "
                           "(`model_flags`).")
_KEEP = flags.DEFINE_string("keep", "", "Keep the data and workdirs in this directory.")
_NOTE = flags.DEFINE_string("note", "", "Anything else the record should say.")
_OUT = flags.DEFINE_string("out", str(REPO / "benchmarks" / "results" / "kill_loop.json"),
                           "Where the JSON record goes ('' prints it only).")

STAGES = ("retrieve", "label", "train_ranker", "distill", "evaluate")
# Kill delays stay below this fraction of a stage's reference duration (a rerun can be faster).
DELAY_FRACTION = 0.9

# Small enough that one pipeline takes about a minute on 2 cores, with a checkpoint every few
# steps (and dozens of steps) so that a killed training stage has something to resume from.
SMALL = (
    "--config.retrieve.k=20",
    "--config.model.max_query_length=32",
    "--config.model.max_doc_length=48",
    "--config.encode.buckets=(32,)",
    "--config.label.num_candidates=6",
    "--config.teacher.sim_noise=0.5",
    "--config.teacher.sim_malformed_rate=0.1",
    "--config.ranker.max_length=64",
    "--config.ranker.model.max_query_length=32",
    "--config.ranker.list_size=6",
    "--config.ranker.batch_size=2",
    "--config.ranker.epochs=3",
    "--config.ranker.eval_every=3",
    "--config.ranker.checkpoint_every=3",
    "--config.ranker.log_every=2",
    "--config.ranker.optim.learning_rate=1e-3",
    "--config.distill.list_size=6",
    "--config.distill.batch_size=4",
    "--config.distill.epochs=6",
    "--config.distill.eval_every=3",
    "--config.distill.checkpoint_every=3",
    "--config.distill.log_every=2",
    "--config.distill.optim.learning_rate=1e-3",
    "--config.eval.depth=100",
    "--config.eval.rerank_depth=10",
    "--config.eval.k_values=(1,3,5,10,100)",
)


def model_flags(model: str, root: pathlib.Path) -> list[str]:
  """Config overrides for `model`: "tiny", a 2-layer, 32-wide BERT with random weights and
  MiniLM's tokenizer (written under `root`, as the tests build it: steps take milliseconds and
  checkpoints a few MB), or "minilm", the packaged all-MiniLM-L6-v2 (real weights, about 0.7 GB
  per training checkpoint and minutes per pipeline on 2 cores)."""
  if model == "minilm":
    return []
  if model != "tiny":
    raise ValueError(f"--model must be 'tiny' or 'minilm', got {model!r}")
  from tests import fixtures  # noqa: PLC0415
  bert = fixtures.tiny_bert(root / "bert", layers=2, hidden=32, heads=4)
  return [f"--config.model.init={bert}", f"--config.ranker.model.init={bert}"]


# --- data and command -----------------------------------------------------------------------

def build_subset(source: pathlib.Path, dest: pathlib.Path, *, num_train: int, num_test: int,
                 num_docs: int, seed: int) -> pathlib.Path:
  """A BEIR directory with `num_train` train and `num_test` test queries of `source` (a seeded
  sample of the judged ones), their judged documents, and seeded other documents up to
  `num_docs`, in `source`'s order."""
  rng = random.Random(seed)
  qrels = {}
  for split in ("train", "test"):
    rows = (source / "qrels" / f"{split}.tsv").read_text(encoding="utf-8").splitlines()
    header, body = rows[0], [r.split("\t") for r in rows[1:] if r.strip()]
    qrels[split] = (header, body)
  picked = {}
  for split, n in (("train", num_train), ("test", num_test)):
    qids = sorted({r[0] for r in qrels[split][1]})
    picked[split] = set(rng.sample(qids, min(n, len(qids))))
  judged = {r[1] for split in picked for r in qrels[split][1] if r[0] in picked[split]}
  with open(source / "corpus.jsonl", encoding="utf-8") as f:
    lines = f.readlines()
  ids = [json.loads(line)["_id"] for line in lines]
  others = [d for d in ids if d not in judged]
  keep = judged | set(rng.sample(others, max(0, min(len(others), num_docs - len(judged)))))
  (dest / "qrels").mkdir(parents=True, exist_ok=True)
  (dest / "corpus.jsonl").write_text("".join(line for line, d in zip(lines, ids) if d in keep),
                                     encoding="utf-8")
  wanted = picked["train"] | picked["test"]
  with open(source / "queries.jsonl", encoding="utf-8") as f:
    (dest / "queries.jsonl").write_text(
        "".join(line for line in f if json.loads(line)["_id"] in wanted), encoding="utf-8")
  for split, (header, body) in qrels.items():
    rows = [r for r in body if r[0] in picked[split]]
    (dest / "qrels" / f"{split}.tsv").write_text(
        "\n".join([header, *("\t".join(r) for r in rows)]) + "\n", encoding="utf-8")
  return dest


def pipeline_command(data_dir: str | os.PathLike, workdir: str | os.PathLike,
                     *, extra: Sequence[str] = ()) -> list[str]:
  """`python -m interdistill_jax.main` running the whole pipeline of STAGES on `data_dir`."""
  stages = ",".join(f'"{s}"' for s in STAGES)
  return [sys.executable, "-m", "interdistill_jax.main",
          f"--config={REPO / 'configs' / 'beir.py'}:{data_dir}", "--config.task=pipeline",
          f"--config.pipeline.stages=({stages})", *SMALL, *extra, f"--workdir={workdir}"]


def _env() -> dict:
  env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
  env.setdefault("JAX_PLATFORMS", "cpu")
  return env


def start(cmd: Sequence[str], log: pathlib.Path, *, niceness: int = 0) -> subprocess.Popen:
  """The command in its own process group (so a kill takes every process it started), its output
  appended to `log`."""
  with open(log, "ab") as out:
    return subprocess.Popen(list(cmd), cwd=REPO, env=_env(), stdout=out, stderr=subprocess.STDOUT,
                            process_group=0, preexec_fn=(lambda: os.nice(niceness)) if niceness else None)


class RunFailed(RuntimeError):
  """A pipeline process (reference, resumed or final) failed: the resume is broken."""


def run_to_end(cmd: Sequence[str], log: pathlib.Path, *, niceness: int = 0, timeout: float) -> float:
  """Runs the command to completion; its wall time. Raises with the log's tail when it fails."""
  t0 = time.monotonic()
  proc = start(cmd, log, niceness=niceness)
  try:
    rc = proc.wait(timeout)
  except subprocess.TimeoutExpired:
    _kill_group(proc)
    raise RunFailed(f"timed out after {timeout} s: {tail(log)}") from None
  if rc != 0:
    raise RunFailed(f"exit status {rc}: {tail(log)}")
  return time.monotonic() - t0


def tail(log: pathlib.Path, n: int = 3000) -> str:
  return log.read_text(encoding="utf-8", errors="replace")[-n:]


def _kill_group(proc: subprocess.Popen) -> None:
  try:
    os.killpg(proc.pid, signal.SIGKILL)
  except ProcessLookupError:
    pass
  proc.wait()


# --- stages on disk -------------------------------------------------------------------------

def _provenance_name(stage: str) -> str:
  return "distilled" if stage == "distill" else stage  # the pipeline's distill has teacher=ranker


def started_marker(stage: str, workdir: str | os.PathLike) -> str:
  return provenance.started(_provenance_name(stage), os.fspath(workdir))


def done_marker(stage: str, workdir: str | os.PathLike) -> str:
  return provenance.marker(_provenance_name(stage), os.fspath(workdir))


def _stamp(path: str) -> tuple[int, int] | None:
  try:
    st = os.stat(path)
  except FileNotFoundError:
    return None
  return st.st_ino, st.st_mtime_ns


def stage_durations(workdir: str | os.PathLike, stages: Sequence[str] = STAGES) -> dict[str, float]:
  """Seconds from each stage's start (inputs.json written) to its done marker, in a finished run."""
  return {s: (os.stat(done_marker(s, workdir)).st_mtime_ns
              - os.stat(started_marker(s, workdir)).st_mtime_ns) / 1e9 for s in stages}


def disk_state(workdir: str | os.PathLike, stages: Sequence[str] = STAGES) -> dict:
  """What a killed run left: each stage's markers, labels written, checkpoints committed."""
  wd = os.fspath(workdir)
  out = {"started": [s for s in stages if os.path.exists(started_marker(s, wd))],
         "done": [s for s in stages if os.path.exists(done_marker(s, wd))]}
  if os.path.exists(layout.labels(wd)):
    with open(layout.labels(wd), "rb") as f:
      out["label_lines"] = f.read().count(b"\n")
  for name, directory in (("ranker", layout.ranker_dir(wd)),
                          ("retriever", layout.retriever_dir(wd, "ranker"))):
    for kind in ("latest", "best"):
      ckpts = os.path.join(directory, "checkpoints", kind)
      steps, unfinished = workdir_compare.checkpoint_steps(ckpts)
      if steps or unfinished:
        out[f"{name}_{kind}"] = steps + ([f"+{unfinished} unfinished"] if unfinished else [])
  if os.path.isdir(layout.eval_dir(wd)):
    out["eval_files"] = sum(len(f) for _, _, f in os.walk(layout.eval_dir(wd)))
  if os.path.isdir(os.path.join(wd, "stale")):
    out["stale"] = sorted(os.listdir(os.path.join(wd, "stale")))
  return out


_LOG_EVENTS = (
    ("resumed", re.compile(r"Resuming from step (\d+) in (\S+)")),
    ("labels", re.compile(r"label: (\d+) queries, (\d+) already labelled")),
    ("skipped", re.compile(r"pipeline: (\w+) already complete")),
    ("ran", re.compile(r"pipeline: running (\w+)")),
    ("moved_aside", re.compile(r"came from other settings .*moved to (\S+)")),
    ("error", re.compile(r"^error: (.*)$", re.M)),
)


def log_events(text: str) -> dict:
  """What one attempt's log says it did: stages skipped and run, resumed steps and labels."""
  out = {}
  for name, pattern in _LOG_EVENTS:
    found = pattern.findall(text)
    if found:
      out[name] = [list(f) if isinstance(f, tuple) else f for f in found]
  return out


def best_dir(stage: str, workdir: str | os.PathLike) -> str | None:
  """The `best/` checkpoint directory of a training stage (None for the others)."""
  wd = os.fspath(workdir)
  stage_dir = {"train_ranker": layout.ranker_dir(wd),
               "distill": layout.retriever_dir(wd, "ranker")}.get(stage)
  return stage_dir and os.path.join(stage_dir, "checkpoints", "best")


def kill_during(cmd: Sequence[str], workdir: pathlib.Path, stage: str, log: pathlib.Path, *,
                delay: float = 0.0, on_commit: bool = False, niceness: int = 0,
                timeout: float = 900.0) -> dict:
  """Starts `cmd`, waits until `stage` starts in this attempt, then SIGKILLs the process group
  `delay` seconds later or, with `on_commit`, the moment the stage's `best/` checkpoints gain a
  committed step (while `latest/` may still be committing the same step). Returns the record of
  the attempt: where the kill landed, what the attempt did (from its log), what was on disk."""
  wd = os.fspath(workdir)
  marker = started_marker(stage, wd)
  stamps = {s: _stamp(started_marker(s, wd)) for s in STAGES}
  done_stamps = {s: _stamp(done_marker(s, wd)) for s in STAGES}
  watch = best_dir(stage, wd) if on_commit else None
  committed = set(workdir_compare.checkpoint_steps(watch)[0]) if watch else set()
  offset = log.stat().st_size if log.exists() else 0
  record = {"target": stage, "trigger": "best/ commit" if on_commit else "delay",
            "delay_s": round(delay, 3)}
  t0 = time.monotonic()
  proc = start(cmd, log, niceness=niceness)

  def wait_for(event: Callable[[], bool], what: str) -> bool:
    while not event():
      if proc.poll() is not None:
        return False
      if time.monotonic() - t0 > timeout:
        _kill_group(proc)
        raise RunFailed(f"{what} did not happen within {timeout} s: {tail(log)}")
      time.sleep(0.005)
    return True

  try:
    if wait_for(lambda: _stamp(marker) != stamps[stage], f"{stage} starting"):
      record["stage_started_after_s"] = round(time.monotonic() - t0, 3)
      if watch:
        new = lambda: set(workdir_compare.checkpoint_steps(watch)[0]) - committed  # noqa: E731
        # The stage can finish without a new best/ step (resumed past its last evaluation).
        if wait_for(lambda: new() or os.path.exists(done_marker(stage, wd)), "a best/ commit"):
          record["best_committed"] = sorted(new())
      time.sleep(delay)
    record["killed"] = proc.poll() is None
    if not record["killed"]:
      record["exit_status"] = proc.returncode
  finally:
    if proc.poll() is None:
      _kill_group(proc)
  record["elapsed_s"] = round(time.monotonic() - t0, 3)
  began = [s for s in STAGES if _stamp(started_marker(s, wd)) != stamps[s]]
  finished = [s for s in STAGES if _stamp(done_marker(s, wd)) != done_stamps[s]]
  record["stages_started"], record["stages_finished"] = began, finished
  # The stage it was in; "after X" between stages (X done, the next one not yet started).
  record["killed_in"] = next((s for s in reversed(began) if s not in finished),
                             f"after {finished[-1]}" if finished else None)
  record["on_disk"] = disk_state(wd)
  with open(log, "rb") as f:
    f.seek(offset)
    record["log"] = log_events(f.read().decode("utf-8", errors="replace"))
  return record


def kill_loop(cmd: Sequence[str], workdir: pathlib.Path, log: pathlib.Path, *,
              kills_per_stage: int, durations: Mapping[str, float], seed: int,
              stages: Sequence[str] = STAGES, commit_kills: int = 0, niceness: int = 0,
              timeout: float = 900.0, records: list[dict] | None = None) -> list[dict]:
  """Kills aimed at each stage in turn, recorded in `records` (returned).

  A training stage first gets `commit_kills` kills at the moment its `best/` checkpoints gain a
  step. Then every stage gets `kills_per_stage` kills a seeded random delay after it started: the
  i-th uniform below DELAY_FRACTION x the stage's reference duration x 2^-i (a resumed stage has
  less left to do). A kill that falls after its stage has finished lands in a later one (the
  record says where); a stage already finished when aimed at is recorded as such. Raises
  RunFailed when an attempt exits with an error (a resume that does not work).
  """
  rng = random.Random(seed)
  records = [] if records is None else records
  for stage in stages:
    plan = [(0.0, True)] * (commit_kills if best_dir(stage, workdir) else 0)
    plan += [(rng.uniform(0.0, DELAY_FRACTION * durations[stage] * 0.5 ** i), False)
             for i in range(kills_per_stage)]
    for delay, on_commit in plan:
      if os.path.exists(done_marker(stage, workdir)):
        records.append({"target": stage, "trigger": "best/ commit" if on_commit else "delay",
                        "delay_s": round(delay, 3), "killed": False,
                        "note": "already finished when aimed at"})
        continue
      record = kill_during(cmd, workdir, stage, log, delay=delay, on_commit=on_commit,
                           niceness=niceness, timeout=timeout)
      record["attempt"] = len(records) + 1
      records.append(record)
      print(f"kill {len(records)}: {stage} ({record['trigger']}, {delay:.2f} s), in "
            f"{record['killed_in']}, on disk {record['on_disk']}", file=sys.stderr, flush=True)
      if record.get("exit_status"):
        raise RunFailed(f"attempt {record['attempt']}, aimed at {stage}, exited with status "
                        f"{record['exit_status']}: "
                        f"{'; '.join(record['log'].get('error', [])) or tail(log)}")
  return records


# --- the benchmark --------------------------------------------------------------------------

def run_benchmark(*, data_dir: pathlib.Path, root: pathlib.Path, kills_per_stage: int, seed: int,
                  commit_kills: int = 1, niceness: int = 0, timeout: float = 900.0,
                  extra: Sequence[str] = (), stages: Sequence[str] = STAGES) -> dict:
  """Reference run into root/A, kill loop aimed at `stages` into root/B, then B run to the end,
  and the comparison. Returns the record ("identical": False, with "failed", when a run fails)."""
  wa, wb, logs = root / "A", root / "B", root / "logs"
  logs.mkdir(parents=True, exist_ok=True)
  cmd_a, cmd_b = pipeline_command(data_dir, wa, extra=extra), pipeline_command(data_dir, wb, extra=extra)
  record = {"benchmark": "kill_loop", "command": " ".join(cmd_b[1:]).replace(str(REPO) + os.sep, ""),
            "kills_per_stage": kills_per_stage, "commit_kills": commit_kills, "seed": seed,
            "identical": False}
  reference_s = run_to_end(cmd_a, logs / "A.log", niceness=niceness, timeout=timeout)
  durations = stage_durations(wa)
  record["reference"] = {"seconds": round(reference_s, 1),
                         "stage_seconds": {s: round(v, 2) for s, v in durations.items()}}
  print(f"reference: {reference_s:.1f} s, stages {record['reference']['stage_seconds']}",
        file=sys.stderr, flush=True)
  t0 = time.monotonic()
  kills: list[dict] = []
  try:
    kill_loop(cmd_b, wb, logs / "B.log", kills_per_stage=kills_per_stage, durations=durations,
              seed=seed, stages=stages, commit_kills=commit_kills, niceness=niceness,
              timeout=timeout, records=kills)
    offset = (logs / "B.log").stat().st_size
    final_s = run_to_end(cmd_b, logs / "B.log", niceness=niceness, timeout=timeout)
  except RunFailed as e:
    record.update(kills=kills, failed=str(e))
    return record
  with open(logs / "B.log", "rb") as f:
    f.seek(offset)
    final_log = log_events(f.read().decode("utf-8", errors="replace"))
  comparison = workdir_compare.compare_workdirs(wa, wb)
  killed = [k for k in kills if k.get("killed")]
  landed = {}
  for k in killed:
    landed[k["killed_in"]] = landed.get(k["killed_in"], 0) + 1
  record.update({
      "kills": kills, "kills_landed": landed,
      "final_run": {"seconds": round(final_s, 1), "log": final_log},
      "kill_loop_seconds": round(time.monotonic() - t0, 1),
      "identical": comparison["identical"], "comparison": comparison,
  })
  return record


def main(argv):
  del argv
  logging.set_verbosity(logging.ERROR)  # Orbax reports every restore of the comparison
  with tempfile.TemporaryDirectory(prefix="kill_loop-") as tmp:
    root = pathlib.Path(_KEEP.value or tmp)
    root.mkdir(parents=True, exist_ok=True)
    source = pathlib.Path(_DATA.value) / "scifact"
    if not (source / "corpus.jsonl").exists():
      raise app.UsageError(f"{source}/corpus.jsonl not found: pass --data_dir (or set "
                           "INTERDISTILL_DATA_DIR) to the directory holding scifact/")
    data_dir = build_subset(source, root / "data", num_train=_NUM_TRAIN.value,
                            num_test=_NUM_TEST.value, num_docs=_NUM_DOCS.value, seed=_SEED.value)
    record = run_benchmark(data_dir=data_dir, root=root, kills_per_stage=_KILLS.value,
                           seed=_SEED.value, commit_kills=_COMMIT_KILLS.value,
                           niceness=_NICE.value, timeout=_TIMEOUT.value,
                           extra=model_flags(_MODEL.value, root))
    record["model"], record["note"] = _MODEL.value, _NOTE.value
    record["data"] = {"source": "scifact", "train_queries": _NUM_TRAIN.value,
                      "test_queries": _NUM_TEST.value, "docs": _NUM_DOCS.value}
    text = json.dumps(record, indent=1).replace(str(root), "TMP")
  print(text)
  if _OUT.value:
    pathlib.Path(_OUT.value).write_text(text + "\n", encoding="utf-8")
  return 0 if record["identical"] else 1


if __name__ == "__main__":
  sys.exit(app.run(main))
