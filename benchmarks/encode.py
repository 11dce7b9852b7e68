"""Corpus encoding and exact search: ours against sentence-transformers and FAISS, one run.

  .venv/bin/python benchmarks/encode.py --data_dir=../shared/data/scifact [--max_docs=N] [--bf16]

Prints one JSON object. Encoding: the same documents, the same weights, max length 256, both
sides timed after a warm-up on a different slice (so our per-shape compilation and PyTorch's
first-call costs are both outside the timed region; our compile time is reported beside it).
Search: top-100 for the split's queries over the corpus embeddings, ours vs faiss.IndexFlatIP.
"""

import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

from absl import app, flags

_DATA = flags.DEFINE_string("data_dir", "../shared/data/scifact", "BEIR directory.")
_MAX_DOCS = flags.DEFINE_integer("max_docs", 0, "Encode only the first N docs (0 = all).")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Our encoding batch size.")
_BF16 = flags.DEFINE_bool("bf16", False, "Also time our bfloat16 mode and report its nDCG@10.")
_REF_PYTHON = flags.DEFINE_string("ref_python", ".venv-ref/bin/python", "PyTorch reference venv.")
_OUT = flags.DEFINE_string("out", "", "Also write the JSON here.")

_ST_SCRIPT = r"""
import json, sys, time, torch
from sentence_transformers import SentenceTransformer
model_dir, texts_file, warm_file = sys.argv[1:4]
torch.set_num_threads(int(sys.argv[4]))
texts, warm = json.load(open(texts_file)), json.load(open(warm_file))
m = SentenceTransformer(model_dir, device="cpu"); m.max_seq_length = 256
m.encode(warm, batch_size=32)
t = time.perf_counter(); m.encode(texts, batch_size=32); dt = time.perf_counter() - t
print(json.dumps({"seconds": dt, "torch": torch.__version__, "threads": torch.get_num_threads()}))
"""


def _ours(config, texts, warm, dtype):
  from interdistill_jax import retrieval
  config.model.dtype = dtype
  encoder = retrieval.Encoder.from_config(config)
  t = time.perf_counter()
  encoder.encode(warm, tower="doc")  # compiles every bucket the timed texts can hit
  compile_s = time.perf_counter() - t
  t = time.perf_counter()
  emb = encoder.encode(texts, tower="doc")
  return emb, time.perf_counter() - t, compile_s, encoder


def _ndcg(config, encoder, dataset, doc_emb, docids):
  from interdistill_jax import metrics, retrieval
  queries = dataset.split_queries("test")
  q = encoder.encode([x.text for x in queries.values()], tower="query")
  run = retrieval.search_run(retrieval.ExactIndex(doc_emb), docids, list(queries), q, 100)
  return metrics.evaluate_run(dataset.qrels("test"), run, (10, 100))[0]


def main(argv):
  del argv
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  import faiss
  import jax
  import numpy as np
  from interdistill_jax import assets, data, defaults, retrieval

  dataset = data.load_beir(_DATA.value)
  docids = list(dataset.corpus)
  texts = [dataset.corpus[d].full_text() for d in docids]
  if _MAX_DOCS.value:
    docids, texts = docids[:_MAX_DOCS.value], texts[:_MAX_DOCS.value]
  # Warm-up on the longest-first slice covers every bucket shape once.
  warm = sorted(texts, key=len)[::max(1, len(texts) // 64)][:64]
  config = defaults.base_config()
  config.encode.batch_size = _BATCH.value
  config.encode.cache = False
  result = {"benchmark": "encode", "data": str(_DATA.value), "num_docs": len(texts),
            "max_length": 256, "cpu_count": os.cpu_count(), "jax": jax.__version__,
            "devices": [str(d) for d in jax.devices()]}

  emb, ours_s, compile_s, encoder = _ours(config, texts, warm, "float32")
  result["ours_fp32"] = {"seconds": ours_s, "docs_per_s": len(texts) / ours_s,
                         "compile_and_warmup_s": compile_s, "batch_size": _BATCH.value}
  with tempfile.TemporaryDirectory() as tmp:
    tf, wf = pathlib.Path(tmp, "texts.json"), pathlib.Path(tmp, "warm.json")
    tf.write_text(json.dumps(texts))
    wf.write_text(json.dumps(warm))
    env = dict(os.environ, HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="")
    env.pop("XLA_FLAGS", None)
    out = subprocess.run([_REF_PYTHON.value, "-c", _ST_SCRIPT, assets.packaged_encoder_dir(),
                          str(tf), str(wf), str(os.cpu_count())],
                         capture_output=True, text=True, check=True, env=env).stdout
  st = json.loads(out.strip().splitlines()[-1])
  result["sentence_transformers"] = dict(st, docs_per_s=len(texts) / st["seconds"])
  result["ratio_fp32"] = st["seconds"] / ours_s  # > 1: we are faster

  if not _MAX_DOCS.value:
    result["ours_fp32"]["test"] = _ndcg(config, encoder, dataset, emb, docids)
  if _BF16.value:
    emb16, s16, c16, enc16 = _ours(config, texts, warm, "bfloat16")
    result["ours_bf16"] = {"seconds": s16, "docs_per_s": len(texts) / s16,
                           "compile_and_warmup_s": c16, "ratio_vs_st": st["seconds"] / s16}
    if not _MAX_DOCS.value:
      result["ours_bf16"]["test"] = _ndcg(config, enc16, dataset, emb16, docids)

  # Exact search: top-100 of every query over the corpus.
  queries = list(dataset.queries.values())
  q = encoder.encode([x.text for x in queries], tower="query")
  index = retrieval.ExactIndex(emb)
  index.search(q, 100)  # compiles every query-block shape this search uses
  t = time.perf_counter()
  _, ours_idx = index.search(q, 100)
  ours_search = time.perf_counter() - t
  flat = faiss.IndexFlatIP(emb.shape[1])
  flat.add(emb)
  t = time.perf_counter()
  _, faiss_idx = flat.search(q, 100)
  faiss_search = time.perf_counter() - t
  result["search"] = {"num_queries": len(q), "k": 100, "ours_s": ours_search,
                      "faiss_flat_ip_s": faiss_search, "ratio": faiss_search / ours_search,
                      "top1_agreement": float(np.mean(ours_idx[:, 0] == faiss_idx[:, 0]))}
  text = json.dumps(result, indent=1)
  print(text)
  if _OUT.value:
    pathlib.Path(_OUT.value).write_text(text + "\n")


if __name__ == "__main__":
  sys.exit(app.run(main))
