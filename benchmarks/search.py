"""Exact top-k search, each of our kernels against faiss.IndexFlatIP on the same shapes, in one run.

  .venv/bin/python benchmarks/search.py [--num_docs=5183] [--num_queries=1109] [--dim=384] [--k=100]
      [--shard_size=0]

Random unit vectors (search time does not depend on their content). Timed, each after a warm-up
call with the same shapes:
  faiss_flat_ip       faiss.IndexFlatIP.search, the reference
  memory/faiss        search.exact_index(backend="faiss"): what `retrieve.exact_backend` "auto"
                      runs on CPU (faiss.knn, ties put lower index first)
  memory/jax          search.ExactIndex: blocked matmul + lax.top_k sharded over the mesh (GPU/TPU)
  shards/faiss, shards/jax  shards.ShardedExactIndex over float32 shards of `--shard_size` rows
                      (default: a quarter of the corpus), streamed from disk one at a time
The sides take turns within each of --repeats rounds, so a load on the machine falls on all of
them; the median round is reported, and `ratio` is faiss_flat_ip_s / side_s (above 1: faster than
FAISS flat). Each side's top-k is checked against FAISS flat's. Prints JSON.
"""

import json
import os
import shutil
import sys
import tempfile
import time

from absl import app, flags

_DOCS = flags.DEFINE_integer("num_docs", 5183, "Corpus size (default: SciFact's).")
_QUERIES = flags.DEFINE_integer("num_queries", 1109, "Queries (default: all SciFact queries).")
_DIM = flags.DEFINE_integer("dim", 384, "Embedding size.")
_K = flags.DEFINE_integer("k", 100, "Results per query.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed rounds (every side once per round).")
_SHARD = flags.DEFINE_integer("shard_size", 0, "Rows per shard of the streamed sides "
                              "(0: a quarter of the corpus; -1: skip them).")


def _write_shards(directory, docs, shard_size):
  import numpy as np
  from interdistill_jax import data as data_lib
  offsets = list(range(0, len(docs), shard_size))
  for s, o in enumerate(offsets):
    np.save(os.path.join(directory, f"shard-{s:05d}.npy"), docs[o:o + shard_size])
    with open(os.path.join(directory, f"shard-{s:05d}.ids"), "w") as f:
      f.writelines(f"d{j}\n" for j in range(o, min(o + shard_size, len(docs))))
  data_lib.write_json(os.path.join(directory, "manifest.json"), {
      "complete": True, "num_shards": len(offsets), "num_docs": len(docs), "dim": docs.shape[1],
      "offsets": offsets})


def main(argv):
  del argv
  import faiss
  import jax
  import numpy as np

  from interdistill_jax import search, sharding, shards

  rng = np.random.default_rng(0)
  unit = lambda n: (lambda x: x / np.linalg.norm(x, axis=1, keepdims=True))(  # noqa: E731
      rng.standard_normal((n, _DIM.value)).astype(np.float32))
  docs, queries = unit(_DOCS.value), unit(_QUERIES.value)
  k = _K.value
  mesh = sharding.make_mesh()
  flat = faiss.IndexFlatIP(_DIM.value)
  flat.add(docs)
  # Every side is an object with search(queries, k), FAISS's index included.
  sides = {"faiss_flat_ip": flat,
           **{f"memory/{b}": search.exact_index(docs, mesh=mesh, backend=b) for b in ("faiss", "jax")}}
  directory = None
  shard_size = _SHARD.value or max(1, -(-_DOCS.value // 4))
  if shard_size > 0:
    directory = tempfile.mkdtemp(prefix="bench_search_")
    _write_shards(directory, docs, shard_size)
    store = shards.ShardStore(directory)
    for backend in ("faiss", "jax"):
      sides[f"shards/{backend}"] = shards.ShardedExactIndex(store, mesh=mesh, backend=backend)
  try:
    results = {name: index.search(queries, k) for name, index in sides.items()}  # warm-up
    times = {name: [] for name in sides}
    for _ in range(_REPEATS.value):
      for name, index in sides.items():
        t = time.perf_counter()
        index.search(queries, k)
        times[name].append(time.perf_counter() - t)
  finally:
    if directory:
      shutil.rmtree(directory)
  median = {name: sorted(ts)[len(ts) // 2] for name, ts in times.items()}
  _, reference = results["faiss_flat_ip"]
  out = {
      "benchmark": "exact_search", "num_docs": _DOCS.value, "num_queries": _QUERIES.value,
      "dim": _DIM.value, "k": k, "shard_size": shard_size if shard_size > 0 else None,
      "devices": [str(d) for d in jax.devices()], "cpu_count": os.cpu_count(),
      "faiss_threads": faiss.omp_get_max_threads(),
      "auto_backend": search.exact_backend("auto", mesh),
      "faiss_flat_ip_s": median["faiss_flat_ip"],
      "sides": {},
  }
  for name in sides:
    if name == "faiss_flat_ip":
      continue
    _, idx = results[name]
    out["sides"][name] = {
        "s": median[name], "ratio": median["faiss_flat_ip"] / median[name],
        "top1_agreement": float(np.mean(idx[:, 0] == reference[:, 0])),
        "topk_set_agreement": float(np.mean([len(set(a) & set(b)) / len(a)
                                             for a, b in zip(idx, reference)])),
    }
  out["ratio_vs_faiss_flat"] = {name: side["ratio"] for name, side in out["sides"].items()}
  print(json.dumps(out, indent=1))


if __name__ == "__main__":
  sys.exit(app.run(main))
