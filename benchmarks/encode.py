"""Corpus encoding: ours against sentence-transformers, one run.

  .venv/bin/python benchmarks/encode.py --data_dir=../shared/data/scifact [--max_docs=N] [--bf16]

Prints one JSON object. Encoding: the same documents, the same weights, max length 256. The
corpus is cut into --rounds slices in file order; for each slice, ours and sentence-transformers
each encode it in a fresh process of their own (`benchmarks/turns.py`: nothing else heavy is
alive while a side is timed), the side going first alternating. Each worker warms up on a fixed
set of documents of every length first, and ours also compiles every bucket's shape (our
per-shape compilation and PyTorch's first-call costs stay outside the timed region; our compile
time is reported beside it). The ratio is that of the summed times; each slice's ratio is
reported too. nDCG@10 is computed from our embeddings of all slices.
Batch sizes: ours as `encode.batch_size` chooses (0, the default: per platform, 4 documents of
256 tokens on one CPU device). Small batches run faster on CPU for sentence-transformers too, so
it is timed at each of --st_batch_sizes and at our batch size: `ratio_vs_st` is against its
default of 32, `ratio_vs_st_batch<N>` against batch N, and the top-level `ratio_fp32_same_batch`
and `ratio_fp32_vs_fastest_st` against our batch size and its fastest batch size.
Exact search against FAISS is `benchmarks/search.py`'s (every kernel, in turns, median of rounds).
"""

import json
import os
import pathlib
import sys
import tempfile
import time

from absl import app, flags

import turns  # benchmarks/turns.py

_DATA = flags.DEFINE_string("data_dir", "../shared/data/scifact", "BEIR directory.")
_MAX_DOCS = flags.DEFINE_integer("max_docs", 0, "Encode only the first N docs (0 = all).")
_BATCH = flags.DEFINE_integer("batch_size", 0, "Our encoding batch size (0: chosen per platform).")
_ST_BATCHES = flags.DEFINE_list("st_batch_sizes", ["32", "8"], "sentence-transformers batch sizes to "
                                 "time (32 is its default); our batch size is added.")
_ST_DEFAULT_BATCH = 32  # SentenceTransformer.encode's default
_BF16 = flags.DEFINE_bool("bf16", False, "Also time our bfloat16 mode and report its nDCG@10.")
_REF_PYTHON = flags.DEFINE_string("ref_python", ".venv-ref/bin/python", "PyTorch reference venv.")
_OUT = flags.DEFINE_string("out", "", "Also write the JSON here.")

_ROUNDS = flags.DEFINE_integer("rounds", 6, "Slices of the corpus, one round each; the sides take turns.")
_WORKER = flags.DEFINE_string("worker", "", "Internal: 'start:end:dtype:out.npy', time our side on that "
                              "slice; 'batch', print our document batch size.")

_ST_SCRIPT = r"""
import json, sys, time, torch
from sentence_transformers import SentenceTransformer
model_dir, texts_file, warm_file, threads, start, end, batch = sys.argv[1:8]
torch.set_num_threads(int(threads))
texts, warm = json.load(open(texts_file))[int(start):int(end)], json.load(open(warm_file))
m = SentenceTransformer(model_dir, device="cpu"); m.max_seq_length = 256
m.encode(warm, batch_size=int(batch))
t = time.perf_counter(); m.encode(texts, batch_size=int(batch)); dt = time.perf_counter() - t
print(json.dumps({"seconds": dt, "torch": torch.__version__, "threads": torch.get_num_threads()}))
"""


def _texts():
  from interdistill_jax import data
  dataset = data.load_beir(_DATA.value)
  docids = list(dataset.corpus)
  texts = [doc.full_text() for doc in dataset.corpus.values()]  # file order, as docids
  if _MAX_DOCS.value:
    docids, texts = docids[:_MAX_DOCS.value], texts[:_MAX_DOCS.value]
  # Warm-up: every 1/64th of the length-sorted texts, so every bucket shape compiles once.
  warm = sorted(texts, key=len)[::max(1, len(texts) // 64)][:64]
  return dataset, docids, texts, warm


def _st_name(batch: int) -> str:
  return "sentence_transformers" + ("" if batch == _ST_DEFAULT_BATCH else f"_batch{batch}")


def _batch_worker():
  """Prints the batch our encoder takes for documents here, as a JSON line (a worker of its own,
  so that the coordinating process never imports JAX before the timing ends)."""
  from interdistill_jax import sharding
  print(json.dumps({"batch_size": sharding.inference_batch_size(_BATCH.value, 256, sharding.make_mesh())}))


def _config(dtype):
  from interdistill_jax import defaults
  config = defaults.base_config()
  config.encode.batch_size = _BATCH.value
  config.encode.cache = False
  config.model.dtype = dtype
  return config


def _ours_worker(spec: str):
  """One turn of our side: warm up, encode texts[start:end], save the embeddings; one JSON line."""
  import numpy as np
  from interdistill_jax import retrieval, sharding
  start, end, dtype, out = spec.split(":", 3)
  _, _, texts, warm = _texts()
  mesh = sharding.make_mesh()
  encoder = retrieval.Encoder.from_config(_config(dtype), mesh=mesh)
  t = time.perf_counter()
  encoder.compile("doc")
  encoder.encode(warm, tower="doc")
  compile_s = time.perf_counter() - t
  t = time.perf_counter()
  emb = encoder.encode(texts[int(start):int(end)], tower="doc")
  seconds = time.perf_counter() - t
  np.save(out, emb)
  print(json.dumps({"seconds": seconds, "compile_and_warmup_s": compile_s,
                    "batch_size": encoder.batch_sizes["doc"]}))


def _ndcg(encoder, dataset, doc_emb, docids):
  from interdistill_jax import metrics, search
  queries = dataset.split_queries("test")
  q = encoder.encode([x.text for x in queries.values()], tower="query")
  run = search.search_run(search.ExactIndex(doc_emb, mesh=encoder.mesh), docids, list(queries), q, 100)
  return metrics.evaluate_run(dataset.qrels("test"), run, (10, 100))[0]


def main(argv):
  del argv
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  if _WORKER.value == "batch":
    return _batch_worker()
  if _WORKER.value:
    return _ours_worker(_WORKER.value)
  import numpy as np
  from interdistill_jax import assets

  dataset, docids, texts, warm = _texts()
  bounds = np.linspace(0, len(texts), max(1, _ROUNDS.value) + 1).astype(int)
  slices = [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
  ref_env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
  ref_env.pop("XLA_FLAGS", None)
  me = [sys.executable, os.path.abspath(__file__), f"--data_dir={_DATA.value}",
        f"--max_docs={_MAX_DOCS.value}", f"--batch_size={_BATCH.value}"]
  our_batch = turns.run_worker(me + ["--worker=batch"])["batch_size"]
  with tempfile.TemporaryDirectory() as tmp:
    tf, wf = pathlib.Path(tmp, "texts.json"), pathlib.Path(tmp, "warm.json")
    tf.write_text(json.dumps(texts))
    wf.write_text(json.dumps(warm))

    def ours(dtype):
      return lambda r: turns.run_worker(
          me + [f"--worker={slices[r][0]}:{slices[r][1]}:{dtype}:{tmp}/{dtype}_{r}.npy"])

    def reference(batch):
      return lambda r: turns.run_worker(
          [_REF_PYTHON.value, "-c", _ST_SCRIPT, assets.packaged_encoder_dir(), str(tf), str(wf),
           str(os.cpu_count()), str(slices[r][0]), str(slices[r][1]), str(batch)], ref_env)

    dtypes = {"ours_fp32": "float32", **({"ours_bf16": "bfloat16"} if _BF16.value else {})}
    references = {_st_name(b): b for b in sorted({_ST_DEFAULT_BATCH, *map(int, _ST_BATCHES.value), our_batch},
                                 key=lambda b: (b != _ST_DEFAULT_BATCH, b))}
    sides = {"ours_fp32": ours("float32"), **{name: reference(b) for name, b in references.items()}}
    if _BF16.value:
      sides["ours_bf16"] = ours("bfloat16")
    runs = turns.take_turns(sides, len(slices))
    emb = {name: np.concatenate([np.load(f"{tmp}/{dtype}_{r}.npy") for r in range(len(slices))])
           for name, dtype in dtypes.items()}

  # Timing is over: from here on this process may use JAX.
  import jax
  from interdistill_jax import retrieval, sharding
  mesh = sharding.make_mesh()
  encoders = {name: retrieval.Encoder.from_config(_config(dtype), mesh=mesh)
              for name, dtype in dtypes.items()}
  seconds = {name: sum(r["seconds"] for r in rs) for name, rs in runs.items()}
  result = {"benchmark": "encode", "data": str(_DATA.value), "num_docs": len(texts),
            "max_length": 256, "cpu_count": os.cpu_count(), "jax": jax.__version__,
            "devices": [str(d) for d in jax.devices()], "slices": slices}
  for ref, batch in references.items():
    result[ref] = {"seconds": seconds[ref], "torch": runs[ref][0]["torch"],
                   "threads": runs[ref][0]["threads"], "batch_size": batch,
                   "docs_per_s": len(texts) / seconds[ref]}
  for name in emb:
    result[name] = {"seconds": seconds[name], "docs_per_s": len(texts) / seconds[name],
                    "compile_and_warmup_s": runs[name][0]["compile_and_warmup_s"],
                    "batch_size": runs[name][0]["batch_size"]}
    for ref in references:
      suffix = ref.removeprefix("sentence_transformers")
      result[name][f"ratio_vs_st{suffix}"] = seconds[ref] / seconds[name]
      result[name][f"ratio_per_slice{suffix}"] = [
          r["seconds"] / o["seconds"] for o, r in zip(runs[name], runs[ref])]
    if not _MAX_DOCS.value:
      result[name]["test"] = _ndcg(encoders[name], dataset, emb[name], docids)
  # > 1: we are faster. Against sentence-transformers at its default batch, at ours, at its fastest.
  result["ratio_fp32"] = seconds[_st_name(_ST_DEFAULT_BATCH)] / seconds["ours_fp32"]
  result["ratio_fp32_same_batch"] = seconds[_st_name(our_batch)] / seconds["ours_fp32"]
  fastest = min(references, key=seconds.get)
  result["fastest_st_batch_size"] = references[fastest]
  result["ratio_fp32_vs_fastest_st"] = seconds[fastest] / seconds["ours_fp32"]

  text = json.dumps(result, indent=1)
  print(text)
  if _OUT.value:
    pathlib.Path(_OUT.value).write_text(text + "\n")


if __name__ == "__main__":
  sys.exit(app.run(main))
