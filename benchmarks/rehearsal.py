"""The open-domain QA setting at Wikipedia scale, rehearsed without the download: peak memory of
each stage against the corpus size.

  .venv/bin/python -m benchmarks.rehearsal --num_passages=1000000 [--dir=DIR] [--keep]
  .venv/bin/python -m benchmarks.rehearsal --num_passages=21015324   # DPR's psgs_w100.tsv size

(from the repository root: `-m`, so that this checkout's package is the one run.)

`benchmarks/synthetic_qa.py` writes a DPR-format corpus of `num_passages` passages, DPR question
files (answers planted in known passages) and the corpus's embedding shards where `retrieve`
finds them complete, so no passage is encoded (on CPU, encoding 21M passages would take weeks);
the questions are embedded by the real encoder. Then each phase runs in a fresh process under
`/usr/bin/time -v`, which reports its peak RSS (the kernel's maximum resident set size of the
process) and wall time:

  generate      the files above (peak: one shard of embeddings, one chunk of text)
  index         `corpus.open_corpus` the first time: reads and checks every record and writes the
                byte-offset index (what the first task on a corpus does)
  docids        what mapping rows to docids costs: the corpus's `DocidTable` against the list
                and dict of every docid the tasks held before it (RSS deltas, `_phase_docids`)
  retrieve, label, train_ranker, distill, evaluate
                `python -m interdistill_jax.main --config=configs/nq.py:dpr --config.task=STAGE`
                with the overrides of `stage_overrides`: exact search streamed over the shards
                (FAISS on CPU), the simulated teacher (a passage holding an answer is relevant),
                a few training steps, `distill.towers=query`, the reader off, and fewer labelled
                and test questions than written (`--label_queries`, `--test_queries`): the
                cross-encoder's pairs take minutes on 2 cores and do not grow with the corpus.

Peak RSS counts the pages of memory-mapped files a process touched (the offset index, the shards)
as well as its own memory: each phase's anonymous and file-backed RSS are also sampled every
0.1 s (`peak_anon_mb`, `peak_file_mb`), since only the first is memory the process holds (the
kernel drops file pages under pressure and reads them again). Prints JSON and writes it to --out (benchmarks/results/
rehearsal_<N>.json by default), with each stage's answer accuracy (`eval/*.json`) beside the
accuracy the planting implies.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
from absl import app, flags

from benchmarks import rehearsal_config, synthetic_qa

REPO = rehearsal_config.REPO

_N = flags.DEFINE_integer("num_passages", 1_000_000, "Passages in the synthetic corpus "
                          "(DPR's psgs_w100.tsv: 21015324).")
_TRAIN = flags.DEFINE_integer("num_train", 1000, "Training questions written (all are retrieved).")
_TEST = flags.DEFINE_integer("num_test", 500, "Test questions written.")
_DISTRACTORS = flags.DEFINE_integer("distractors", 10, "Passages planted near each question "
                                    "without its answer.")
_SEED = flags.DEFINE_integer("seed", 0, "Seeds every passage, question and embedding.")
_SHARD = flags.DEFINE_integer("shard_size", 100_000, "Passages per embedding shard.")
_LABEL = flags.DEFINE_integer("label_queries", 100, "Training questions labelled (a seeded "
                              "sample; label.max_queries).")
_TEST_Q = flags.DEFINE_integer("test_queries", 100, "Test questions evaluated (data.qa.num_test).")
_RERANK = flags.DEFINE_integer("rerank_depth", 10, "Baseline candidates the ranker re-ranks in "
                               "evaluate (eval.rerank_depth).")
_STEPS = flags.DEFINE_integer("train_steps", 3, "Steps of train_ranker and of distill.")
_STAGES = flags.DEFINE_list("stages", ["index", "docids", "retrieve", "label", "train_ranker",
                                       "distill", "evaluate"], "Phases run after generate.")
_DIR = flags.DEFINE_string("dir", "", "Where the data and the workdir go (default: a temporary "
                           "directory, removed at the end unless --keep; one given is kept). A "
                           "directory holding this plan's data already is reused.")
_KEEP = flags.DEFINE_bool("keep", False, "Keep the generated data and the workdir.")
_NICE = flags.DEFINE_integer("nice", 19, "Niceness of the phase processes (a shared machine).")
_OUT = flags.DEFINE_string("out", "", "The JSON record ('' = benchmarks/results/"
                           "rehearsal_<N>.json; '-' prints it only).")
_PHASE = flags.DEFINE_string("phase", "", "Internal: run one phase (generate, index, docids) here.")
_TREND = flags.DEFINE_list("trend", [], "Instead of a run: records of runs at two or more sizes "
                           "(benchmarks/results/rehearsal_<N>.json); prints each phase's peaks "
                           "against N, their growth per million passages between the smallest and "
                           "the largest, and the peaks that growth projects at --project_to "
                           "passages, and writes them to --out (default rehearsal_trend.json).")
_PROJECT_TO = flags.DEFINE_integer("project_to", 21_015_324, "Corpus size --trend projects to "
                                   "(DPR's psgs_w100.tsv).")

STAGES = ("retrieve", "label", "train_ranker", "distill", "evaluate")
CONFIG = rehearsal_config.CONFIG


def plan() -> synthetic_qa.Plan:
  return synthetic_qa.Plan(num_passages=_N.value, num_train=_TRAIN.value, num_test=_TEST.value,
                           distractors=_DISTRACTORS.value, seed=_SEED.value)


def settings() -> rehearsal_config.Settings:
  return rehearsal_config.Settings(shard_size=_SHARD.value, label_queries=_LABEL.value,
                                   test_queries=_TEST_Q.value, rerank_depth=_RERANK.value,
                                   train_steps=_STEPS.value)


# --- phases ---------------------------------------------------------------------------------

def _phase_generate(root: str) -> dict:
  p = plan()
  config = rehearsal_config.load_config(rehearsal_config.stage_overrides(root, p, settings()))
  return synthetic_qa.generate(root, p, config, workdir=os.path.join(root, "work"),
                               shard_size=_SHARD.value)


def _phase_index(root: str) -> dict:
  from interdistill_jax import corpus  # noqa: PLC0415
  config = rehearsal_config.load_config(rehearsal_config.stage_overrides(root, plan(), settings()))
  start = time.perf_counter()
  loaded = corpus.open_corpus(config.data.corpus_file, cache_dir=config.data.cache_dir)
  return {"num_docs": len(loaded), "build_s": time.perf_counter() - start,
          "index_mb": _size_mb(os.path.join(root, "cache"))}


def _rss_mb() -> float:
  with open("/proc/self/status") as f:
    return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))


def _phase_docids(root: str) -> dict:
  """What mapping rows to docids and back costs, this code's way against the way before it: the
  corpus's `DocidTable` (checked against the store, 10,000 lookups each way) against a list of
  every docid read from the shards (`ShardStore.docids`, what retrieve and evaluate held) and a
  dict from it (what `CorpusEmbeddings` held). RSS deltas in one process, the table first."""
  import glob  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415
  from interdistill_jax import corpus, shards  # noqa: PLC0415
  config = rehearsal_config.load_config(rehearsal_config.stage_overrides(root, plan(), settings()))
  store = shards.ShardStore(*glob.glob(os.path.join(root, "work", "embeddings", "shards-*")))
  rows = np.random.default_rng(0).integers(0, store.num_docs, 10_000)
  out = {"baseline_rss_mb": _rss_mb()}
  start = time.perf_counter()
  table = corpus.docid_table(corpus.open_corpus(config.data.corpus_file,
                                                cache_dir=config.data.cache_dir))
  store.check_docids(table, config.data.corpus_file)
  asked = [table[int(r)] for r in rows]
  assert table.rows(asked).tolist() == rows.tolist()
  out["table"] = {"rss_mb": _rss_mb() - out["baseline_rss_mb"], "s": time.perf_counter() - start}
  before = _rss_mb()
  start = time.perf_counter()
  docids = store.docids()
  out["list"] = {"rss_mb": _rss_mb() - before, "s": time.perf_counter() - start}
  before = _rss_mb()
  start = time.perf_counter()
  row = {d: i for i, d in enumerate(docids)}
  assert [row[d] for d in asked] == rows.tolist()
  out["dict"] = {"rss_mb": _rss_mb() - before, "s": time.perf_counter() - start}
  return out


def _time_v(stderr: str) -> dict:
  """Peak RSS (MB), wall and CPU seconds from `/usr/bin/time -v`'s report."""
  def field(name):
    m = re.search(rf"^\s*{re.escape(name)}: (.+)$", stderr, re.M)
    if m is None:
      raise RuntimeError(f"/usr/bin/time -v printed no {name!r}")
    return m.group(1).strip()
  wall = [float(x) for x in field("Elapsed (wall clock) time (h:mm:ss or m:ss)").split(":")]
  return {"peak_rss_mb": int(field("Maximum resident set size (kbytes)")) / 1024,
          "wall_s": sum(x * 60 ** i for i, x in enumerate(reversed(wall))),
          "cpu_s": float(field("User time (seconds)")) + float(field("System time (seconds)"))}


class _Sampler:
  """Peak anonymous and file-backed RSS of a process's descendants (/proc/PID/status RssAnon and
  RssFile), sampled every `interval` seconds in a thread: what of the peak is the process's own
  memory, and what is pages of memory-mapped files (the offset index, the shards), which the
  kernel can drop and read again."""

  def __init__(self, pid: int, interval: float = 0.1):
    self.pid, self.interval = pid, interval
    self.peak = {"RssAnon": 0, "RssFile": 0}
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True)
    self._thread.start()

  def _run(self):
    import psutil  # noqa: PLC0415
    while not self._stop.wait(self.interval):
      try:
        children = psutil.Process(self.pid).children(recursive=True)
      except psutil.Error:
        continue
      for child in children:
        try:
          with open(f"/proc/{child.pid}/status") as f:
            for line in f:
              key = line.split(":")[0]
              if key in self.peak:
                self.peak[key] = max(self.peak[key], int(line.split()[1]))
        except OSError:
          pass

  def stop(self) -> dict:
    self._stop.set()
    self._thread.join()
    return {"peak_anon_mb": self.peak["RssAnon"] / 1024, "peak_file_mb": self.peak["RssFile"] / 1024}


def _measured(name: str, args: list[str], root: str) -> dict:
  """Runs `args` under /usr/bin/time -v (niced), its output in root/logs/<name>.log."""
  logs = os.path.join(root, "logs")
  os.makedirs(logs, exist_ok=True)
  report = os.path.join(logs, f"{name}.time")
  cmd = ["nice", "-n", str(_NICE.value), "/usr/bin/time", "-v", "-o", report, *args]
  with open(os.path.join(logs, f"{name}.log"), "w") as log:
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    sampler = _Sampler(proc.pid)
    returncode = proc.wait()
    sampled = sampler.stop()
  with open(os.path.join(logs, f"{name}.log")) as log:
    tail = log.read()[-3000:]
  if returncode != 0:
    raise RuntimeError(f"{name} exited with status {returncode}:\n{tail}")
  with open(report) as f:
    out = {**_time_v(f.read()), **sampled}
  result = re.findall(r"^PHASE_RESULT (.+)$", tail, re.M)
  if result:
    out["result"] = json.loads(result[-1])
  return out


def _run_phase(name: str, root: str) -> dict:
  args = [sys.executable, "-m", "benchmarks.rehearsal", f"--phase={name}", f"--dir={root}"]
  args += [f"--{f}={flags.FLAGS[f].value}" for f in
           ("num_passages", "num_train", "num_test", "distractors", "seed", "shard_size",
            "label_queries", "test_queries", "rerank_depth", "train_steps")]
  return _measured(name, args, root)


def _run_stage(stage: str, root: str, overrides: dict) -> dict:
  args = [sys.executable, "-m", "interdistill_jax.main", f"--config={CONFIG}",
          f"--workdir={os.path.join(root, 'work')}", f"--config.task={stage}"]
  args += [f"--config.{k}={v}" for k, v in overrides.items()]
  return _measured(stage, args, root)


def _size_mb(directory: str) -> float:
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(directory)
             for f in files) / 2**20


def _generated(root: str, p: synthetic_qa.Plan) -> bool:
  path = os.path.join(root, "plan.json")
  if not os.path.exists(path):
    return False
  with open(path) as f:
    return json.load(f)["plan"] == dataclasses.asdict(p)


def _accuracy(root: str) -> dict:
  """Each system's answer accuracy on the evaluated test questions, and the planting's."""
  with open(os.path.join(root, "plan.json")) as f:
    qs = json.load(f)["questions"]
  test = [q for q in qs if q["split"] == "test"][:settings().test_queries]
  ks = (1, 5, 20, 100)
  out = {"planted": synthetic_qa.planted_accuracy([q["planted_rank"] for q in test], ks)}
  eval_dir = os.path.join(root, "work", "eval")
  for name in sorted(os.listdir(eval_dir)) if os.path.isdir(eval_dir) else ():
    if name.endswith(".json"):
      with open(os.path.join(eval_dir, name)) as f:
        result = json.load(f)
      if "system" in result:  # eval/{system}.json (not compare, done or inputs)
        out[result["system"]] = {f"top{k}_acc": result["metrics"].get(f"top{k}_acc") for k in ks}
  return out


def trend(records: list[dict], project_to: int) -> dict:
  """Each phase's peaks (total, anonymous, file-backed RSS) against N, over one or more runs at
  each size: their mean and spread (max - min) at each N, the growth of the mean per million
  passages from the smallest size to the largest, and the peak that growth projects at
  `project_to` passages if it went on linearly. A growth smaller than the spread between runs of
  one size is not a trend."""
  sizes = sorted({r["num_passages"] for r in records})
  if len(sizes) < 2:
    raise app.UsageError("--trend needs records of at least two corpus sizes")
  millions = (sizes[-1] - sizes[0]) / 1e6
  out = {"num_passages": sizes, "runs": {n: sum(r["num_passages"] == n for r in records)
                                         for n in sizes},
         "project_to": project_to, "phases": {}}
  names = [n for n, phase in records[0]["phases"].items() if "peak_rss_mb" in phase]
  for name in names:
    row = {}
    for key in ("peak_rss_mb", "peak_anon_mb", "peak_file_mb"):
      by_size = {n: [r["phases"].get(name, {}).get(key) for r in records if r["num_passages"] == n]
                 for n in sizes}
      if any(None in v for v in by_size.values()):  # a record from before it was measured
        continue
      mean = {n: float(np.mean(v)) for n, v in by_size.items()}
      growth = (mean[sizes[-1]] - mean[sizes[0]]) / millions
      spread = {n: max(v) - min(v) for n, v in by_size.items()}
      change = mean[sizes[-1]] - mean[sizes[0]]
      row[key] = {"mean": mean, "spread": spread, "per_million": growth,
                  # None: one run of some size, no spread to compare with
                  "beyond_spread": (abs(change) > max(spread.values())
                                    if min(out["runs"].values()) > 1 else None),
                  "projected": mean[sizes[-1]] + growth * (project_to - sizes[-1]) / 1e6}
    out["phases"][name] = row
  return out


def main(argv):
  del argv
  if _TREND.value:
    records = []
    for path in _TREND.value:
      with open(path) as f:
        records.append(json.load(f))
    text = json.dumps(trend(records, _PROJECT_TO.value), indent=1)
    print(text)
    out = _OUT.value or str(REPO / "benchmarks" / "results" / "rehearsal_trend.json")
    if out != "-":
      with open(out, "w") as f:
        f.write(text + "\n")
    return
  if _PHASE.value:
    fn = {"generate": _phase_generate, "index": _phase_index, "docids": _phase_docids}[_PHASE.value]
    print("PHASE_RESULT " + json.dumps(fn(_DIR.value)), flush=True)
    return
  p = plan()
  root = os.path.abspath(_DIR.value or tempfile.mkdtemp(prefix="rehearsal_"))
  os.makedirs(root, exist_ok=True)
  overrides = rehearsal_config.stage_overrides(root, p, settings())
  record = {"benchmark": "rehearsal", "num_passages": p.num_passages, "plan": dataclasses.asdict(p),
            "shard_size": _SHARD.value, "config": CONFIG, "overrides": {
                k: v for k, v in overrides.items() if not k.startswith("data.") or "num" in k},
            "cpu_count": os.cpu_count(), "measure": "/usr/bin/time -v: maximum resident set size",
            "phases": {}}
  try:
    if _generated(root, p):
      record["phases"]["generate"] = {"reused": root}
    else:
      record["phases"]["generate"] = _run_phase("generate", root)
    for stage in _STAGES.value:
      if stage in ("index", "docids"):
        record["phases"][stage] = _run_phase(stage, root)
      else:
        if stage not in STAGES:
          raise app.UsageError(f"--stages: {stage!r} is not one of index, docids, "
                               f"{', '.join(STAGES)}")
        record["phases"][stage] = _run_stage(stage, root, overrides)
      print(f"{stage}: {json.dumps(record['phases'][stage])}", file=sys.stderr, flush=True)
    record["accuracy"] = _accuracy(root)
    record["disk_mb"] = {"corpus": os.path.getsize(overrides["data.corpus_file"]) / 2**20,
                         "index": _size_mb(overrides["data.cache_dir"]),
                         "embeddings": _size_mb(os.path.join(root, "work", "embeddings"))}
  finally:
    if not _KEEP.value and not _DIR.value:  # a directory given is the caller's to remove
      shutil.rmtree(root, ignore_errors=True)
  record["peak_rss_mb"] = {name: phase.get("peak_rss_mb") for name, phase in record["phases"].items()}
  text = json.dumps(record, indent=1)
  print(text)
  out = _OUT.value or str(REPO / "benchmarks" / "results" / f"rehearsal_{p.num_passages}.json")
  if out != "-":
    with open(out, "w") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  sys.exit(app.run(main))
