"""Labelling throughput against a local OpenAI-compatible server that takes 300 ms per answer.

Runs task `label` (openai backend, real SDK) with concurrency 1 and 32 on a synthetic data set,
then reruns the concurrency-32 labelling from its warm cache. Prints one JSON object: throughput of
each, their ratio (goal: >= 20x), and the calls the server received during the warm rerun (goal: 0).

  python benchmarks/label_throughput.py [--latency=0.3] [--queries=320]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.request

from absl import logging

from interdistill_jax import data, defaults, labeling, layout

WORDS = "apple banana cherry grape lemon mango orange peach pear plum kiwi lime".split()


def _dataset(root: str, num_queries: int, num_docs: int = 400, per_query: int = 20) -> None:
  rng = random.Random(0)
  os.makedirs(os.path.join(root, "qrels"), exist_ok=True)
  with open(os.path.join(root, "corpus.jsonl"), "w") as f:
    for i in range(num_docs):
      f.write(json.dumps({"_id": f"d{i}", "title": "", "text": " ".join(rng.choices(WORDS, k=40))}) + "\n")
  with open(os.path.join(root, "queries.jsonl"), "w") as f:
    for i in range(num_queries):
      f.write(json.dumps({"_id": f"q{i}", "text": " ".join(rng.sample(WORDS, 3))}) + "\n")
  run = {f"q{i}": {f"d{d}": float(per_query - r) for r, d in enumerate(rng.sample(range(num_docs), per_query))}
         for i in range(num_queries)}
  data.write_trec_run(os.path.join(root, "candidates.trec"), run, "bench")


def _workdir(base: str, name: str, root: str, num_queries: int) -> str:
  workdir = os.path.join(base, name)
  os.makedirs(os.path.dirname(layout.candidates(workdir, "train")), exist_ok=True)
  with open(os.path.join(root, "candidates.trec")) as f:
    lines = [l for l in f if int(l.split()[0][1:]) < num_queries]
  with open(layout.candidates(workdir, "train"), "w") as f:
    f.writelines(lines)
  return workdir


def _server_stats(url: str) -> dict:
  with urllib.request.urlopen(url + "/stats") as r:
    return json.load(r)


def _label(root: str, workdir: str, url: str, concurrency: int) -> dict:
  config = defaults.base_config()
  config.data.dir = root
  config.teacher.update(dict(backend="openai", model="fake-model", base_url=url + "/v1",
                             concurrency=concurrency, timeout=30.0))
  config.label.num_candidates = 20
  labeling.run(config, workdir)
  with open(layout.label_stats(workdir)) as f:
    return json.load(f)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--latency", type=float, default=0.3)
  parser.add_argument("--queries", type=int, default=320, help="queries for the concurrency-32 run")
  parser.add_argument("--serial_queries", type=int, default=12, help="queries for the serial run")
  args = parser.parse_args()
  logging.set_verbosity(logging.WARNING)
  server = subprocess.Popen([sys.executable, "-m", "interdistill_jax.teachers.testing",
                             f"--latency={args.latency}"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
  try:
    url = f"http://127.0.0.1:{int(server.stdout.readline())}"
    with tempfile.TemporaryDirectory() as base:
      root = os.path.join(base, "data")
      _dataset(root, max(args.queries, args.serial_queries))
      results = {}
      for concurrency, n in ((1, args.serial_queries), (32, args.queries)):
        stats = _label(root, _workdir(base, f"c{concurrency}", root, n), url, concurrency)
        results[concurrency] = {"queries": n, "calls": stats["calls"]["answered"],
                                "seconds": stats["seconds"],
                                "calls_per_second": round(stats["calls"]["answered"] / stats["seconds"], 2)}
      workdir = os.path.join(base, "c32")
      os.remove(layout.labels(workdir))
      before = _server_stats(url)["requests"]
      t = time.monotonic()
      warm = _label(root, workdir, url, 32)
      warm_seconds = time.monotonic() - t
      server_calls = _server_stats(url)["requests"] - before
  finally:
    server.stdin.close()
    server.wait(10)
  ratio = results[32]["calls_per_second"] / results[1]["calls_per_second"]
  print(json.dumps({
      "server_latency_s": args.latency,
      "concurrency_1": results[1],
      "concurrency_32": results[32],
      "throughput_ratio_32_vs_1": round(ratio, 2),
      "goal_ratio": 20.0,
      "warm_rerun": {"server_requests": server_calls, "calls_sent": warm["calls"]["sent"],
                     "cache_hits": warm["calls"]["cache_hits"], "seconds": round(warm_seconds, 3)},
      "cpu_count": os.cpu_count(),
  }, indent=2))


if __name__ == "__main__":
  main()
