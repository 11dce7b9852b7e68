"""Exact top-k search: ours (blocked matmul + lax.top_k, sharded) against faiss.IndexFlatIP.

  .venv/bin/python benchmarks/search.py [--num_docs=5183] [--num_queries=1109] [--dim=384] [--k=100]

Random unit vectors (search time does not depend on their content); both sides timed after a
warm-up call with the same shapes; the median of --repeats runs. Prints JSON.
"""

import json
import sys
import time

from absl import app, flags

_DOCS = flags.DEFINE_integer("num_docs", 5183, "Corpus size (default: SciFact's).")
_QUERIES = flags.DEFINE_integer("num_queries", 1109, "Queries (default: all SciFact queries).")
_DIM = flags.DEFINE_integer("dim", 384, "Embedding size.")
_K = flags.DEFINE_integer("k", 100, "Results per query.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed runs per side.")


def _median_time(fn, repeats):
  fn()
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return sorted(times)[len(times) // 2]


def main(argv):
  del argv
  import faiss
  import jax
  import numpy as np

  from interdistill_jax import search, sharding

  rng = np.random.default_rng(0)
  unit = lambda n: (lambda x: x / np.linalg.norm(x, axis=1, keepdims=True))(  # noqa: E731
      rng.standard_normal((n, _DIM.value)).astype(np.float32))
  docs, queries = unit(_DOCS.value), unit(_QUERIES.value)
  index = search.ExactIndex(docs, mesh=sharding.make_mesh())
  ours = _median_time(lambda: index.search(queries, _K.value), _REPEATS.value)
  flat = faiss.IndexFlatIP(_DIM.value)
  flat.add(docs)
  theirs = _median_time(lambda: flat.search(queries, _K.value), _REPEATS.value)
  _, a = index.search(queries, _K.value)
  _, b = flat.search(queries, _K.value)
  print(json.dumps({
      "benchmark": "exact_search", "num_docs": _DOCS.value, "num_queries": _QUERIES.value,
      "dim": _DIM.value, "k": _K.value, "devices": [str(d) for d in jax.devices()],
      "faiss_threads": faiss.omp_get_max_threads(), "ours_s": ours, "faiss_flat_ip_s": theirs,
      "ratio": theirs / ours, "top1_agreement": float(np.mean(a[:, 0] == b[:, 0])),
      "top100_set_agreement": float(np.mean([len(set(x) & set(y)) / len(x) for x, y in zip(a, b)])),
  }, indent=1))


if __name__ == "__main__":
  sys.exit(app.run(main))
