"""Corpus encoding and exact search: ours against sentence-transformers and FAISS, one run.

  .venv/bin/python benchmarks/encode.py --data_dir=../shared/data/scifact [--max_docs=N] [--bf16]

Prints one JSON object. Encoding: the same documents, the same weights, max length 256. The
corpus is cut into --rounds slices in file order; slice by slice, ours and sentence-transformers
(a PyTorch process kept alive for the whole run) each encode it, taking turns at going first, so
a machine that speeds up or slows down during the run weighs on both sides alike. Both sides are
warmed up first on a different slice (our per-shape compilation and PyTorch's first-call costs
are outside the timed region; our compile time is reported beside it). The ratio is the sum of
their times; each slice's ratio is reported too.
Search: top-100 for the split's queries over the corpus embeddings, ours vs faiss.IndexFlatIP.
"""

import json
import os
import pathlib
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

_ROUNDS = flags.DEFINE_integer("rounds", 6, "Slices of the corpus; ours and the reference alternate.")

# The reference, kept alive: after a warm-up it reads "start end" lines and answers each with the
# seconds sentence-transformers took to encode that slice of the texts.
_ST_SCRIPT = r"""
import json, sys, time, torch
from sentence_transformers import SentenceTransformer
model_dir, texts_file, warm_file = sys.argv[1:4]
torch.set_num_threads(int(sys.argv[4]))
texts, warm = json.load(open(texts_file)), json.load(open(warm_file))
m = SentenceTransformer(model_dir, device="cpu"); m.max_seq_length = 256
m.encode(warm, batch_size=32)
print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads()}), flush=True)
for line in sys.stdin:
  start, end = map(int, line.split())
  t = time.perf_counter(); m.encode(texts[start:end], batch_size=32)
  print(json.dumps({"seconds": time.perf_counter() - t}), flush=True)
"""


class _Reference:
  """The sentence-transformers process: `time(start, end)` -> seconds for that slice."""

  def __init__(self, texts, warm, tmp):
    import subprocess
    from interdistill_jax import assets
    tf, wf = pathlib.Path(tmp, "texts.json"), pathlib.Path(tmp, "warm.json")
    tf.write_text(json.dumps(texts))
    wf.write_text(json.dumps(warm))
    env = dict(os.environ, HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="")
    env.pop("XLA_FLAGS", None)
    self.proc = subprocess.Popen([_REF_PYTHON.value, "-c", _ST_SCRIPT, assets.packaged_encoder_dir(),
                                  str(tf), str(wf), str(os.cpu_count())],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    self.info = self._read()

  def _read(self) -> dict:
    line = self.proc.stdout.readline()
    if not line:
      raise RuntimeError(f"the reference process exited with {self.proc.wait()}")
    return json.loads(line)

  def time(self, start: int, end: int) -> float:
    self.proc.stdin.write(f"{start} {end}\n")
    self.proc.stdin.flush()
    return self._read()["seconds"]

  def close(self):
    self.proc.stdin.close()
    self.proc.wait()


def _encoder(config, warm, dtype):
  """Our encoder with every bucket shape the timed texts can hit compiled: (encoder, compile s)."""
  from interdistill_jax import retrieval
  config.model.dtype = dtype
  encoder = retrieval.Encoder.from_config(config)
  t = time.perf_counter()
  encoder.encode(warm, tower="doc")
  return encoder, time.perf_counter() - t


def _timed(encoder, texts):
  t = time.perf_counter()
  emb = encoder.encode(texts, tower="doc")
  return emb, time.perf_counter() - t


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
  from interdistill_jax import data, defaults, retrieval

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

  encoder, compile_s = _encoder(config, warm, "float32")
  bounds = np.linspace(0, len(texts), max(1, _ROUNDS.value) + 1).astype(int)
  slices = [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
  chunks, ours_t, ref_t = [], [], []
  with tempfile.TemporaryDirectory() as tmp:
    ref = _Reference(texts, warm, tmp)
    for i, (a, b) in enumerate(slices):
      if i % 2:  # the reference goes first on odd slices
        ref_t.append(ref.time(a, b))
      emb_i, dt = _timed(encoder, texts[a:b])
      chunks.append(emb_i)
      ours_t.append(dt)
      if not i % 2:
        ref_t.append(ref.time(a, b))
    ref.close()
  emb = np.concatenate(chunks)
  ours_s, st_s = sum(ours_t), sum(ref_t)
  result["ours_fp32"] = {"seconds": ours_s, "docs_per_s": len(texts) / ours_s,
                         "compile_and_warmup_s": compile_s, "batch_size": _BATCH.value}
  result["sentence_transformers"] = dict(ref.info, seconds=st_s, docs_per_s=len(texts) / st_s)
  result["ratio_fp32"] = st_s / ours_s  # > 1: we are faster
  result["ratio_fp32_per_slice"] = [r / o for r, o in zip(ref_t, ours_t)]
  result["slices"] = slices

  if not _MAX_DOCS.value:
    result["ours_fp32"]["test"] = _ndcg(config, encoder, dataset, emb, docids)
  if _BF16.value:
    enc16, c16 = _encoder(config, warm, "bfloat16")
    emb16, s16 = _timed(enc16, texts)
    result["ours_bf16"] = {"seconds": s16, "docs_per_s": len(texts) / s16,
                           "compile_and_warmup_s": c16, "ratio_vs_st": st_s / s16}
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
