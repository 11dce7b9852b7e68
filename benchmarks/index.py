"""Search over a Wikipedia-scale corpus in bounded memory: exact streamed search vs FAISS.

  .venv/bin/python benchmarks/index.py [--num_docs=2000000] [--shard_size=100000] [--scifact]

Part 1, synthetic: `num_docs` x 384 float16 embeddings (a mixture of Gaussian clusters, unit
norm, so that inverted lists have structure to prune, as real embeddings do) written as shards
exactly as `encode.shard_size` writes them. Each phase runs in a fresh subprocess so that its peak
RSS is its own:
  exact    ShardedExactIndex, one shard on the devices at a time: queries/s
  ivfpq    FAISS IVF-PQ built from the shards: build s, queries/s, recall@100 vs exact, with and
           without exact re-scoring of 4 x 100 proposals from the memory-mapped shards
  hnsw     FAISS HNSW (float16 vectors) on the first `hnsw_docs` rows (its build is the slow part)
The memory bound checked: exact search over every shard peaks at most one float32 shard above the
same search over the first 4 shards (so memory does not grow with the corpus); IVF-PQ adds its
codes (pq_m bytes + an 8-byte id per vector) and its float32 k-means sample to that baseline.
Part 2, --scifact: FAISS recall@100 against exact on SciFact's real MiniLM embeddings.
Prints JSON.
"""

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

from absl import app, flags

_DOCS = flags.DEFINE_integer("num_docs", 2_000_000, "Synthetic corpus size.")
_DIM = flags.DEFINE_integer("dim", 384, "Embedding size.")
_SHARD = flags.DEFINE_integer("shard_size", 100_000, "Rows per shard.")
_QUERIES = flags.DEFINE_integer("num_queries", 1000, "Queries.")
_K = flags.DEFINE_integer("k", 100, "Results per query.")
_NLIST = flags.DEFINE_integer("nlist", 2048, "IVF lists.")
_PQ_M = flags.DEFINE_integer("pq_m", 48, "PQ sub-quantizers (bytes per vector).")
_NPROBE = flags.DEFINE_integer("nprobe", 64, "IVF lists visited per query.")
_HNSW_DOCS = flags.DEFINE_integer("hnsw_docs", 200_000, "Rows indexed by HNSW (0 = skip).")
_DIR = flags.DEFINE_string("dir", "", "Where the synthetic shards go (default: a temporary dir).")
_SCIFACT = flags.DEFINE_string(
    "scifact", os.path.join(os.environ.get("INTERDISTILL_DATA_DIR", "../shared/data"), "scifact"),
    "SciFact (BEIR) directory for FAISS recall@100 on real embeddings; '' skips it.")
_PHASE = flags.DEFINE_string("phase", "", "Internal: run one phase in this process.")


def _peak_rss_mb() -> float:
  """This process's peak RSS (VmHWM). Not getrusage's ru_maxrss: that survives exec, so a child
  started by a large parent would report the parent's size."""
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmHWM:"):
        return int(line.split()[1]) / 1024
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _synthetic(directory: str, num_docs: int, dim: int, shard_size: int, seed: int = 0):
  """Shards of clustered unit vectors, plus queries near corpus points. Returns the queries."""
  import numpy as np
  from interdistill_jax import data as data_lib

  rng = np.random.default_rng(seed)
  centers = rng.standard_normal((1000, dim)).astype(np.float32)
  offsets = list(range(0, num_docs, shard_size))
  for s, o in enumerate(offsets):
    n = min(shard_size, num_docs - o)
    x = centers[rng.integers(0, len(centers), n)] + 0.5 * rng.standard_normal((n, dim), np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    np.save(os.path.join(directory, f"shard-{s:05d}.npy"), x.astype(np.float16))
    with open(os.path.join(directory, f"shard-{s:05d}.ids"), "w") as f:
      f.writelines(f"p{j}\n" for j in range(o, o + n))
  data_lib.write_json(os.path.join(directory, "manifest.json"), {
      "format": 1, "dtype": "float16", "shard_size": shard_size, "complete": True, "dim": dim,
      "num_docs": num_docs, "num_shards": len(offsets), "offsets": offsets, "synthetic": True})
  q = centers[rng.integers(0, len(centers), _QUERIES.value)]
  q = q + 0.5 * rng.standard_normal(q.shape, np.float32)
  return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def _phase(name: str, directory: str) -> dict:
  import jax
  import numpy as np
  from interdistill_jax import sharding, shards

  mesh = sharding.make_mesh(jax.local_devices())
  store = shards.ShardStore(directory)
  q = np.load(os.path.join(directory, "queries.npy"))
  k = _K.value
  out = {"phase": name}
  if name == "baseline":
    # The same exact search over the first 4 shards only: if memory is bounded, searching all
    # of them costs no more than this (plus slack for one shard).
    m = min(4, store.num_shards)
    store.num_docs = int(store.offsets[m]) if m < store.num_shards else store.num_docs
    store.num_shards = m
    shards.ShardedExactIndex(store, mesh=mesh).search(q, k)
  elif name == "exact":
    index = shards.ShardedExactIndex(store, mesh=mesh)
    index.search(q[:8], k)  # compile
    t = time.perf_counter()
    _, idx = index.search(q, k)
    out["search_s"] = time.perf_counter() - t
    np.save(os.path.join(directory, "exact_top.npy"), idx)
  elif name in ("ivfpq", "hnsw"):
    import faiss
    exact = np.load(os.path.join(directory, "exact_top.npy"))
    if name == "hnsw":
      sub = os.path.join(directory, "hnsw_subset")
      store = shards.ShardStore(sub)
      exact = np.load(os.path.join(sub, "exact_top.npy"))
    t = time.perf_counter()
    built = shards.build_faiss(store, name, nlist=_NLIST.value, pq_m=_PQ_M.value)
    out["build_s"] = time.perf_counter() - t
    out["threads"] = faiss.omp_get_max_threads()
    for refine in (0, 4):
      index = shards.FaissIndex(built, nprobe=_NPROBE.value, ef_search=256, store=store, refine=refine)
      index.search(q[:8], k)
      t = time.perf_counter()
      _, idx = index.search(q, k)
      out[f"refine{refine}"] = {"search_s": time.perf_counter() - t,
                                "queries_per_s": len(q) / (time.perf_counter() - t),
                                "recall@100": shards.recall_at_k(idx, exact, k)}
    out["num_docs"] = store.num_docs
  out["peak_rss_mb"] = _peak_rss_mb()
  return out


def _run_phase(name: str, directory: str) -> dict:
  args = [sys.executable, os.path.abspath(__file__), f"--phase={name}", f"--dir={directory}"]
  args += [f"--{f}={flags.FLAGS[f].value}" for f in ("k", "nlist", "pq_m", "nprobe")]
  proc = subprocess.run(args, capture_output=True, text=True)
  if proc.returncode != 0:
    raise RuntimeError(f"phase {name} failed:\n{proc.stderr[-3000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def _scifact(root: str) -> dict:
  """FAISS recall@100 against exact search on SciFact's real embeddings (encoded once, cached)."""
  from interdistill_jax import assets, defaults, retrieval, sharding, shards

  if not os.path.exists(root):
    return {"skipped": f"{root} not found"}
  config = defaults.base_config()
  config.data.dir = str(root)
  config.encode.shard_size, config.encode.shard_dtype = 1000, "float16"
  workdir = os.path.join("runs", "bench_index")
  encoder = retrieval.Encoder.from_config(config, mesh=sharding.mesh_from_config(config.mesh))
  dataset = assets.load_dataset(config.data)
  store = retrieval.corpus_shards(workdir, encoder, dataset, encode_config=config.encode,
                                  data_config=config.data)
  queries = [x.text for x in dataset.queries.values()]
  q = encoder.encode(queries, tower="query")
  _, exact = shards.ShardedExactIndex(store, mesh=sharding.local_mesh(encoder.mesh)).search(q, 100)
  out = {"num_docs": store.num_docs, "num_queries": len(queries)}
  for kind, nlist in (("ivfpq", 256), ("hnsw", 0)):
    built = shards.build_faiss(store, kind, nlist=nlist, pq_m=_PQ_M.value)
    for refine in (0, 4):
      index = shards.FaissIndex(built, nprobe=32, ef_search=256, store=store, refine=refine)
      _, idx = index.search(q, 100)
      out[f"{kind}_refine{refine}_recall@100"] = shards.recall_at_k(idx, exact, 100)
  return out


def main(argv):
  del argv
  if _PHASE.value:
    print(json.dumps(_phase(_PHASE.value, _DIR.value)))
    return
  import numpy as np
  import jax

  directory = _DIR.value or tempfile.mkdtemp(prefix="bench_index_")
  os.makedirs(directory, exist_ok=True)
  t = time.perf_counter()
  q = _synthetic(directory, _DOCS.value, _DIM.value, _SHARD.value)
  np.save(os.path.join(directory, "queries.npy"), q)
  write_s = time.perf_counter() - t
  baseline = _run_phase("baseline", directory)  # imports and a store open: the process's floor
  exact = _run_phase("exact", directory)
  ivfpq = _run_phase("ivfpq", directory)
  hnsw = None
  if _HNSW_DOCS.value:
    sub = os.path.join(directory, "hnsw_subset")
    os.makedirs(sub, exist_ok=True)
    _synthetic(sub, _HNSW_DOCS.value, _DIM.value, _SHARD.value)  # same seed: the first rows
    from interdistill_jax import sharding, shards
    index = shards.ShardedExactIndex(shards.ShardStore(sub), mesh=sharding.make_mesh(jax.local_devices()))
    _, top = index.search(q, _K.value)
    np.save(os.path.join(sub, "exact_top.npy"), top)
    hnsw = _run_phase("hnsw", directory)
  shard_mb = _SHARD.value * _DIM.value * 4 / 2**20
  codes_mb = _DOCS.value * (_PQ_M.value + 8) / 2**20  # PQ code + id per vector
  train_mb = max(64 * _NLIST.value, 40 * 256) * _DIM.value * 4 / 2**20  # the k-means sample
  result = {
      "benchmark": "index", "num_docs": _DOCS.value, "dim": _DIM.value, "storage": "float16",
      "shard_size": _SHARD.value, "num_queries": len(q), "k": _K.value,
      "devices": [str(d) for d in jax.devices()], "cpu_count": os.cpu_count(),
      "corpus_on_disk_mb": _DOCS.value * _DIM.value * 2 / 2**20, "write_shards_s": write_s,
      "baseline_rss_mb": baseline["peak_rss_mb"],  # exact search over the first 4 shards only
      "exact": dict(exact, queries_per_s=len(q) / exact["search_s"],
                    memory_bound_mb=baseline["peak_rss_mb"] + shard_mb,
                    bound_holds=exact["peak_rss_mb"] <= baseline["peak_rss_mb"] + shard_mb),
      "ivfpq": dict(ivfpq, nlist=_NLIST.value, pq_m=_PQ_M.value, nprobe=_NPROBE.value,
                    memory_bound_mb=baseline["peak_rss_mb"] + codes_mb + train_mb,
                    bound_holds=(ivfpq["peak_rss_mb"]
                                 <= baseline["peak_rss_mb"] + codes_mb + train_mb)),
      "ivfpq_vs_exact_speed": (len(q) / ivfpq["refine4"]["search_s"]) / (len(q) / exact["search_s"]),
      "hnsw": hnsw,
  }
  if _SCIFACT.value:
    result["scifact"] = _scifact(_SCIFACT.value)
  if not _DIR.value:
    shutil.rmtree(directory)  # a temporary corpus of num_docs x dim float16: don't leave it
  print(json.dumps(result, indent=1))


if __name__ == "__main__":
  sys.exit(app.run(main))
