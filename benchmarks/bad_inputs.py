"""Bad inputs and corrupt states: what `python -m interdistill_jax.main` says about each, and
whether the work already in the workdir survives.

  python -m benchmarks.bad_inputs              # from the repository root: runs every case
  python -m benchmarks.bad_inputs --markdown   # the README table, from the stored result

Each case builds its bad input in a temporary directory on tiny data (a 2-layer BERT, 60 documents,
the simulated teacher; API cases talk to a fake OpenAI-protocol server on 127.0.0.1 that this script
starts and stops), runs the entry point as a subprocess and records: the exit status, the message
it printed (its `error:` lines; for a run that repaired the damage and went on, its warning about
it), whether a Python traceback appeared (it must not), and which files written before the run
were lost or changed (moved to `stale/` counts as kept). Prints JSON and writes
benchmarks/results/bad_inputs.json.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import fcntl
import hashlib
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np

from interdistill_jax import layout
from interdistill_jax.teachers.testing import Fault, FakeLLMServer
from tests import fixtures

REPO = pathlib.Path(__file__).resolve().parents[1]
RESULT = REPO / "benchmarks" / "results" / "bad_inputs.json"
FAKE_KEY = "sk-fake-key-must-never-be-printed-4242"
_WARNING = re.compile(r"^W\d{4} [\d:.]+\s+\d+ (\S+\.py):\d+\] (.*)$")
_PACKAGE_FILES = {p.name for p in (REPO / "interdistill_jax").rglob("*.py")}


@dataclasses.dataclass
class Setup:
  """What one case runs: its workdir, the command-line overrides, the environment changes, and
  the file it damaged (allowed to be repaired by a run that goes on)."""
  workdir: pathlib.Path
  args: list[str] = dataclasses.field(default_factory=list)
  env: dict[str, str | None] = dataclasses.field(default_factory=dict)
  damaged: str = ""


@dataclasses.dataclass
class Case:
  name: str
  kind: str
  what: str
  prepare: Callable[["Bench", pathlib.Path], Setup]


class Bench:
  """The shared tiny assets: a BERT, a clean data set, a config file, finished workdirs."""

  def __init__(self, root: pathlib.Path):
    self.root = root
    self.bert = fixtures.tiny_bert(root / "bert")
    self.data = fixtures.tiny_beir(root / "data")
    config = fixtures.small_config(self.bert, self.data)
    config.task = "pipeline"
    config.pipeline.stages = ("retrieve", "label", "train_ranker")
    config.retrieve.k = 10
    config.label.num_candidates = 6
    config.ranker.epochs = 1.0
    self.config_file = root / "config.py"
    fixtures.write_config_file(self.config_file, config)
    self.server: FakeLLMServer | None = None
    # retrieve, label and train_ranker done; and retrieve into on-disk shards.
    self.finished = root / "finished"
    self.sharded = root / "sharded"
    for workdir, args in ((self.finished, []),
                          (self.sharded, ["--config.task=retrieve", "--config.encode.shard_size=20"])):
      proc = run_main(self.config_file, workdir, args, {})
      if proc.returncode != 0:
        raise RuntimeError(f"building {workdir} failed:\n{proc.stderr[-3000:]}")

  def copy_data(self, case_dir: pathlib.Path) -> pathlib.Path:
    return pathlib.Path(shutil.copytree(self.data, case_dir / "data"))

  def copy_workdir(self, source: pathlib.Path, case_dir: pathlib.Path) -> pathlib.Path:
    return pathlib.Path(shutil.copytree(source, case_dir / "work", ignore=shutil.ignore_patterns(".lock")))

  def fake_teacher(self, faults: list[Fault]) -> list[str]:
    """Overrides that label through the fake server, which replays `faults` first."""
    self.server.faults.clear()
    self.server.faults.extend(faults)
    return ["--config.task=label", "--config.teacher.backend=openai",
            "--config.teacher.model=fake-model", f"--config.teacher.base_url={self.server.url}/v1",
            "--config.teacher.max_retries=1", "--config.teacher.backoff_base=0.01"]


def run_main(config_file: pathlib.Path, workdir: pathlib.Path, args: list[str],
             env_changes: dict[str, str | None]) -> subprocess.CompletedProcess:
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
  env.pop("XLA_FLAGS", None)
  for name in ("OPENAI_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY"):
    env.pop(name, None)
  for name, value in env_changes.items():
    if value is None:
      env.pop(name, None)
    else:
      env[name] = value
  return subprocess.run(
      [sys.executable, "-m", "interdistill_jax.main", f"--config={config_file}",
       f"--workdir={workdir}", *args], cwd=REPO, env=env, capture_output=True, text=True,
      timeout=600)


def _hash(path: pathlib.Path) -> str:
  return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(workdir: pathlib.Path) -> dict[str, str]:
  """Relative path -> content hash of every file in the workdir (the lock aside)."""
  if not workdir.exists():
    return {}
  return {str(p.relative_to(workdir)): _hash(p) for p in sorted(workdir.rglob("*"))
          if p.is_file() and p.name != ".lock"}


# --- how each bad input is made -----------------------------------------------------------------

def _replace_line(path: pathlib.Path, lineno: int, text: bytes | None) -> None:
  """Line `lineno` (from 1) replaced by `text` (None: removed)."""
  lines = path.read_bytes().splitlines(keepends=True)
  if text is None:
    del lines[lineno - 1]
  else:
    lines[lineno - 1] = text
  path.write_bytes(b"".join(lines))


def _data_case(edit: Callable[[pathlib.Path], None]):
  def prepare(bench: Bench, case_dir: pathlib.Path) -> Setup:
    data = bench.copy_data(case_dir)
    edit(data)
    return Setup(case_dir / "work", ["--config.task=retrieve", f"--config.data.dir={data}"])
  return prepare


def _config_case(*args: str):
  def prepare(bench: Bench, case_dir: pathlib.Path) -> Setup:
    return Setup(case_dir / "work", list(args))
  return prepare


def _labels_removed(bench: Bench, case_dir: pathlib.Path) -> pathlib.Path:
  """A finished workdir without its labels (and so without the stages after them)."""
  work = bench.copy_workdir(bench.finished, case_dir)
  shutil.rmtree(work / "labels")
  shutil.rmtree(work / "ranker")
  return work


def candidates_bad_line(bench, case_dir):
  work = _labels_removed(bench, case_dir)
  _replace_line(pathlib.Path(layout.candidates(str(work), "train")), 5, b"q0 Q0 d3 5\n")
  return Setup(work, ["--config.task=label"], damaged="candidates/train.trec")


def labels_truncated(bench, case_dir):
  work = bench.copy_workdir(bench.finished, case_dir)
  os.remove(layout.label_stats(str(work)))  # the label run was killed mid-line
  path = pathlib.Path(layout.labels(str(work)))
  blob = path.read_bytes()
  path.write_bytes(blob[:len(blob) - 40])
  return Setup(work, [], damaged="labels/labels.jsonl")


def labels_unknown_docid(bench, case_dir):
  work = bench.copy_workdir(bench.finished, case_dir)
  shutil.rmtree(work / "ranker")
  path = pathlib.Path(layout.labels(str(work)))
  lines = path.read_text().splitlines(keepends=True)
  record = json.loads(lines[1])
  gone = record["docids"][0]
  record["docids"][0] = "d999"
  record["ranking"] = ["d999" if d == gone else d for d in record["ranking"]]
  lines[1] = json.dumps(record) + "\n"
  path.write_text("".join(lines))
  return Setup(work, ["--config.task=train_ranker"], damaged="labels/labels.jsonl")


def llm_cache_damaged(bench, case_dir):
  work = bench.copy_workdir(bench.finished, case_dir)
  os.remove(layout.label_stats(str(work)))
  pathlib.Path(layout.label_cache(str(work))).write_bytes(b"this is not SQLite " * 64)
  return Setup(work, ["--config.task=label"], damaged="labels/llm_cache.sqlite")


def _embeddings_case(damage: Callable[[pathlib.Path], None]):
  """`retrieve` in a finished workdir whose embeddings cache file `damage` has spoilt."""

  def prepare(bench: Bench, case_dir: pathlib.Path) -> Setup:
    work = bench.copy_workdir(bench.finished, case_dir)
    (path,) = pathlib.Path(layout.embeddings_dir(str(work))).glob("corpus-*.npy")
    damage(path)
    return Setup(work, ["--config.task=retrieve"], damaged=str(path.relative_to(work)))
  return prepare


def _another_model(path: pathlib.Path) -> None:
  rows = np.load(path).shape[0]
  np.save(path, np.random.default_rng(0).standard_normal((rows, 16)).astype(np.float32))
  meta = path.with_suffix(".json")
  meta.write_text(json.dumps(json.loads(meta.read_text()) | {"model": "another-model", "dim": 16}))


def _cut_short(path: pathlib.Path) -> None:
  path.write_bytes(path.read_bytes()[:1000])


def shard_partial(bench, case_dir):
  work = bench.copy_workdir(bench.sharded, case_dir)
  (shard,) = pathlib.Path(layout.embeddings_dir(str(work))).glob("shards-*/shard-00001.npy")
  shard.write_bytes(shard.read_bytes()[:700])
  return Setup(work, ["--config.task=retrieve", "--config.encode.shard_size=20"],
               damaged=str(shard.relative_to(work)))


def _last_checkpoint(work: pathlib.Path) -> pathlib.Path:
  """The ranker's newest resume checkpoint, its done marker removed (the run did not finish)."""
  ranker = pathlib.Path(layout.ranker_dir(str(work)))
  os.remove(layout.done(str(ranker)))
  return max((ranker / "checkpoints" / "latest").iterdir(), key=lambda p: int(p.name))


def _drop_data_files(step: pathlib.Path) -> None:
  for path in sorted(step.rglob("*")):
    if path.is_file() and (path.name == "commit_success.txt" or path.parent.name == "d"):
      path.unlink()


def checkpoint_half_written(bench, case_dir):
  # Killed while saving: Orbax writes a step under a temporary name and renames it when done,
  # after the best-of-dev copy of the same step was saved.
  work = bench.copy_workdir(bench.finished, case_dir)
  step = _last_checkpoint(work)
  tmp = step.with_name(f"{step.name}.orbax-checkpoint-tmp-1700000000")
  step.rename(tmp)
  _drop_data_files(tmp)
  return Setup(work, ["--config.task=train_ranker"], damaged="ranker/checkpoints")


def checkpoint_damaged(bench, case_dir):
  work = bench.copy_workdir(bench.finished, case_dir)
  step = _last_checkpoint(work)
  _drop_data_files(step)
  return Setup(work, ["--config.task=train_ranker"], damaged=str(step.relative_to(work)))


def done_marker_damaged(bench, case_dir):
  work = bench.copy_workdir(bench.finished, case_dir)
  path = pathlib.Path(layout.done(layout.candidates_dir(str(work))))
  path.write_bytes(path.read_bytes()[:50])
  return Setup(work, [], damaged="candidates/done.json")


def api_key_missing(bench, case_dir):
  return Setup(_labels_removed(bench, case_dir),
               ["--config.task=label", "--config.teacher.backend=openai",
                "--config.teacher.model=gpt-4o-mini"])


def api_key_refused(bench, case_dir):
  args = bench.fake_teacher([Fault(status=401)] * 50)
  return Setup(_labels_removed(bench, case_dir), args, {"OPENAI_API_KEY": FAKE_KEY})


def api_quota_exhausted(bench, case_dir):
  args = bench.fake_teacher([Fault(status=429, code="insufficient_quota")] * 50)
  return Setup(_labels_removed(bench, case_dir), args, {"OPENAI_API_KEY": FAKE_KEY})


def workdir_locked(bench, case_dir):
  return Setup(bench.copy_workdir(bench.finished, case_dir))


CASES = [
    Case("corpus_bad_json", "data", "corpus.jsonl line 3 is not JSON",
         _data_case(lambda d: _replace_line(d / "corpus.jsonl", 3, b'{"_id": "d2", "text": \n'))),
    Case("corpus_not_utf8", "data", "corpus.jsonl line 2 holds the byte 0xff",
         _data_case(lambda d: _replace_line(d / "corpus.jsonl", 2,
                                            b'{"_id": "d1", "text": "b\xffd"}\n'))),
    Case("corpus_missing", "data", "no corpus.jsonl", _data_case(lambda d: os.remove(d / "corpus.jsonl"))),
    Case("queries_missing", "data", "no queries.jsonl",
         _data_case(lambda d: os.remove(d / "queries.jsonl"))),
    Case("qrels_bad_columns", "data", "qrels/train.tsv line 3 has 2 columns",
         _data_case(lambda d: _replace_line(d / "qrels" / "train.tsv", 3, b"q1\td5\n"))),
    Case("qrels_non_integer_grade", "data", "qrels/train.tsv line 3 grades 0.5",
         _data_case(lambda d: _replace_line(d / "qrels" / "train.tsv", 3, b"q1\td5\t0.5\n"))),
    Case("qrels_unknown_query", "data", "qrels/train.tsv line 4 judges q999, not in queries.jsonl",
         _data_case(lambda d: _replace_line(d / "qrels" / "train.tsv", 4, b"q999\td5\t1\n"))),
    Case("candidates_bad_line", "run file", "candidates/train.trec line 5 has 4 fields",
         candidates_bad_line),
    Case("labels_truncated", "labels", "labels.jsonl ends in half a line (a killed label run)",
         labels_truncated),
    Case("labels_unknown_docid", "labels", "labels.jsonl line 2 ranks d999, not in the corpus",
         labels_unknown_docid),
    Case("llm_cache_damaged", "cache", "labels/llm_cache.sqlite is not SQLite", llm_cache_damaged),
    Case("embeddings_other_model", "cache", "the embeddings cache holds another model's vectors",
         _embeddings_case(_another_model)),
    Case("embeddings_truncated", "cache", "the embeddings cache file is cut short",
         _embeddings_case(_cut_short)),
    Case("shard_partial", "cache", "an embeddings shard of a finished store is cut short",
         shard_partial),
    Case("checkpoint_half_written", "checkpoint",
         "the newest ranker checkpoint half written (killed mid-save)", checkpoint_half_written),
    Case("checkpoint_damaged", "checkpoint", "the newest ranker checkpoint lost its data files",
         checkpoint_damaged),
    Case("done_marker_damaged", "workdir", "candidates/done.json is cut short", done_marker_damaged),
    Case("config_bad_choice", "config", "--config.distill.llm_loss=mse",
         _config_case("--config.distill.llm_loss=mse")),
    Case("config_bad_range", "config", "--config.label.num_candidates=50 with retrieve.k=10",
         _config_case("--config.label.num_candidates=50")),
    Case("config_unknown_field", "config", "--config.retrieve.kk=3",
         _config_case("--config.retrieve.kk=3")),
    Case("config_wrong_type", "config", "--config.retrieve.k=ten",
         _config_case("--config.retrieve.k=ten")),
    Case("api_key_missing", "api", "teacher.backend=openai with no OPENAI_API_KEY", api_key_missing),
    Case("api_key_refused", "api", "the server answers 401 to the key", api_key_refused),
    Case("api_quota_exhausted", "api", "the server answers 429 insufficient_quota",
         api_quota_exhausted),
    Case("workdir_locked", "workdir", "another run holds the workdir", workdir_locked),
]


# --- running a case -----------------------------------------------------------------------------

def message(proc: subprocess.CompletedProcess, damaged: str) -> str:
  """The `error:` lines; else the warning about the damaged file; else the last line printed."""
  lines = proc.stderr.splitlines()
  errors = [line.removeprefix("error: ") for line in lines if line.startswith("error: ")]
  if errors:
    return " | ".join(errors)
  warnings = [(m.group(1), m.group(2)) for m in map(_WARNING.match, lines) if m]
  ours = [text for name, text in warnings if name in _PACKAGE_FILES]
  about = [text for text in ours if damaged and damaged in text]
  if about or ours:
    return (about or ours)[0]
  rest = [line for line in lines if line.strip()]
  return rest[-1] if rest else ""


def run_case(bench: Bench, case: Case) -> dict:
  case_dir = pathlib.Path(tempfile.mkdtemp(prefix=case.name + "-", dir=bench.root))
  setup = case.prepare(bench, case_dir)
  before = snapshot(setup.workdir)
  holder = None
  if case.name == "workdir_locked":  # a first run holds the workdir while the second starts
    holder = open(setup.workdir / ".lock", "a+")  # noqa: SIM115
    fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
    holder.write(f"host {os.uname().nodename} pid {os.getpid()} since now\n")
    holder.flush()
  start = time.perf_counter()
  try:
    proc = run_main(bench.config_file, setup.workdir, setup.args, setup.env)
  finally:
    if holder is not None:
      holder.close()
  seconds = time.perf_counter() - start
  after = snapshot(setup.workdir)
  kept_hashes = collections.Counter(after.values())
  lost = sorted(p for p, h in before.items() if p not in after and kept_hashes[h] == 0)
  changed = sorted(p for p, h in before.items() if p in after and after[p] != h
                   and not p.startswith(setup.damaged or "\0"))
  output = proc.stdout + proc.stderr
  text = message(proc, setup.damaged)
  for where, name in ((case_dir, "CASE"), (bench.root, "TMP")):
    text = text.replace(str(where), name)
  return {
      "case": case.name,
      "kind": case.kind,
      "input": case.what,
      "exit_code": proc.returncode,
      "message": text,
      "traceback": "Traceback (most recent call last)" in output,
      "files_before": len(before),
      "lost": lost,
      "changed": changed if proc.returncode != 0 else [],
      "survived": not lost and (proc.returncode == 0 or not changed),
      "key_printed": FAKE_KEY in output,
      "seconds": round(seconds, 1),
  }


def markdown_table(result: dict, width: int = 170) -> str:
  """The README's table: each case, its exit status and its message (cut to `width`)."""
  rows = ["| case | exit | message |", "|---|---|---|"]
  for r in result["cases"]:
    text = r["message"] if len(r["message"]) <= width else r["message"][:width - 1] + "…"
    rows.append(f"| {r['input']} | {r['exit_code']} | {text.replace('|', '/')} |")
  return "\n".join(rows)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--markdown", action="store_true", help="print the README table of the "
                      "stored result instead of running")
  parser.add_argument("--only", default="", help="comma-separated case names (default: all)")
  args = parser.parse_args()
  if args.markdown:
    print(markdown_table(json.loads(RESULT.read_text())))
    return
  only = set(filter(None, args.only.split(",")))
  with tempfile.TemporaryDirectory(prefix="bad_inputs-") as tmp:
    bench = Bench(pathlib.Path(tmp))
    with FakeLLMServer() as server:
      bench.server = server
      cases = [run_case(bench, case) for case in CASES if not only or case.name in only]
  result = {
      "cases": cases,
      "all_clear": all(not c["traceback"] and c["survived"] and not c["key_printed"]
                       and c["message"] for c in cases),
      "command": "python -m benchmarks.bad_inputs",
  }
  text = json.dumps(result, indent=2)
  print(text)
  if not only:
    RESULT.write_text(text + "\n")


if __name__ == "__main__":
  main()
