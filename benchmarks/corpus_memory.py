"""Memory of a corpus held as Python objects against one read from disk on demand.

  .venv/bin/python benchmarks/corpus_memory.py [--num_docs=200000] [--format=jsonl|tsv]

Writes a synthetic corpus of `num_docs` passages of about 100 words (DPR's passages are 100
words), BEIR JSONL or DPR TSV, then measures, each phase in a fresh process so that its memory
is its own:
  baseline   the imports only
  eager      data.load_corpus: every passage a Document in a dict
  build      corpus.open_corpus the first time: reads the file once, writes the index
  lazy       corpus.open_corpus again (the index exists): the arrays memory-mapped, then
             `--lookups` random passages read and every docid iterated
RSS is VmRSS once the corpus is loaded (`rss_loaded_mb`) and at the end of the phase (`rss_mb`),
with the corpus object alive; peak is VmHWM. `ratio` is (lazy RSS - baseline) / (eager RSS -
baseline) once loaded: the memory the corpus costs, lazily over eagerly; `ratio_after_use` the
same after the lazy phase's lookups and iteration.
Times are wall-clock on whatever else the machine runs. Prints JSON.
"""

import json
import os
import shutil
import sys
import tempfile
import time

from absl import app, flags

_DOCS = flags.DEFINE_integer("num_docs", 200_000, "Passages in the synthetic corpus.")
_FORMAT = flags.DEFINE_enum("format", "jsonl", ["jsonl", "tsv"], "BEIR corpus.jsonl or DPR TSV.")
_LOOKUPS = flags.DEFINE_integer("lookups", 10_000, "Random passages read in the lazy phase.")
_DIR = flags.DEFINE_string("dir", "", "Where the corpus goes (default: a temporary directory).")
_PHASE = flags.DEFINE_string("phase", "", "Internal: run one phase in this process.")
_CACHE = flags.DEFINE_string("cache", "", "Internal: the phase's cache directory.")


def _status_mb(field: str) -> float:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1]) / 1024
  raise RuntimeError(f"no {field} in /proc/self/status")


def _write_corpus(directory: str, num_docs: int, fmt: str) -> str:
  import numpy as np
  rng = np.random.default_rng(0)
  vocab = np.array([f"w{i}" for i in range(30_000)])
  path = os.path.join(directory, "corpus.jsonl" if fmt == "jsonl" else "psgs.tsv")
  with open(path, "w", encoding="utf-8") as f:
    if fmt == "tsv":
      f.write("id\ttext\ttitle\n")
    for start in range(0, num_docs, 10_000):
      n = min(10_000, num_docs - start)
      words = vocab[rng.integers(0, len(vocab), (n, 100))]
      for i in range(n):
        docid, text, title = str(start + i + 1), " ".join(words[i]), f"Title {start + i}"
        if fmt == "jsonl":
          f.write(json.dumps({"_id": docid, "title": title, "text": text}) + "\n")
        else:
          f.write(f"{docid}\t{text}\t{title}\n")
  return path


def _phase(name: str, path: str, cache: str) -> dict:
  import numpy as np
  from interdistill_jax import corpus, data

  out = {"phase": name}
  t = time.perf_counter()
  if name == "eager":
    loaded = data.load_corpus(path)
  elif name in ("build", "lazy"):
    loaded = corpus.open_corpus(path, cache_dir=cache)
  else:
    loaded = None
  out["load_s"] = time.perf_counter() - t
  out["rss_loaded_mb"] = _status_mb("VmRSS")
  if name == "lazy":
    rows = np.random.default_rng(1).integers(0, len(loaded), _LOOKUPS.value)
    docids = [loaded.index.ids[r].decode() for r in rows]
    t = time.perf_counter()
    texts = sum(len(loaded[d].text) for d in docids)
    out["lookup_us"] = (time.perf_counter() - t) / len(docids) * 1e6
    out["lookup_chars"] = texts
    t = time.perf_counter()
    out["iterated"] = sum(1 for _ in loaded)
    out["iterate_s"] = time.perf_counter() - t
  out["num_docs"] = len(loaded) if loaded is not None else None
  out["rss_mb"] = _status_mb("VmRSS")
  out["peak_mb"] = _status_mb("VmHWM")
  return out


def _run_phase(name: str, path: str, cache: str) -> dict:
  import subprocess
  args = [sys.executable, os.path.abspath(__file__), f"--phase={name}", f"--dir={path}",
          f"--cache={cache}", f"--lookups={_LOOKUPS.value}", f"--format={_FORMAT.value}"]
  proc = subprocess.run(args, capture_output=True, text=True)
  if proc.returncode != 0:
    raise RuntimeError(f"phase {name} failed:\n{proc.stderr[-3000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv):
  del argv
  if _PHASE.value:
    print(json.dumps(_phase(_PHASE.value, _DIR.value, _CACHE.value)))
    return
  directory = _DIR.value or tempfile.mkdtemp(prefix="bench_corpus_memory_")
  os.makedirs(directory, exist_ok=True)
  try:
    t = time.perf_counter()
    path = _write_corpus(directory, _DOCS.value, _FORMAT.value)
    write_s = time.perf_counter() - t
    file_mb = os.path.getsize(path) / 2**20
    cache = os.path.join(directory, "cache")
    phases = {name: _run_phase(name, path, cache) for name in ("baseline", "eager", "build", "lazy")}
    index_bytes = sum(os.path.getsize(os.path.join(dirpath, f))
                      for dirpath, _, files in os.walk(cache) for f in files)
  finally:
    if not _DIR.value:
      shutil.rmtree(directory)
  base = phases["baseline"]["rss_mb"]
  cost = {name: phases[name]["rss_loaded_mb"] - base for name in ("eager", "build", "lazy")}
  used = phases["lazy"]["rss_mb"] - base
  print(json.dumps({
      "benchmark": "corpus_memory", "num_docs": _DOCS.value, "format": _FORMAT.value,
      "corpus_file_mb": file_mb,
      "write_s": write_s, "index_on_disk_mb": index_bytes / 2**20, "phases": phases,
      "corpus_rss_mb": cost, "ratio": cost["lazy"] / cost["eager"],
      # the lazy corpus after its lookups and a pass over the ids, against the eager one
      "lazy_used_rss_mb": used, "ratio_after_use": used / cost["eager"],
      "build_peak_over_eager_peak": ((phases["build"]["peak_mb"] - base)
                                     / (phases["eager"]["peak_mb"] - base)),
  }, indent=1))


if __name__ == "__main__":
  sys.exit(app.run(main))
