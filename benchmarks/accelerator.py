"""Throughput on an accelerator: the ranker train step as MFU, and corpus encoding in docs/s.

  python benchmarks/accelerator.py --data_dir=DATA/scifact [--model_dir=DIR] [--out=FILE]

Runs on `jax.devices()[0]` (a GPU or TPU; it also runs on CPU, with small sizes, as a check).
Each section is timed against PyTorch on the same device, back to back in one run, when
PyTorch (and sentence-transformers) can be imported by `--ref_python`.

- `matmul`: the measured bf16 and fp32 matmul rate (8192^3 on accelerators), the ceiling.
- `train_step`: the jitted ranker ListMLE step (CrossEncoder, AdamW, clipping) at
  `lists x list_size` pairs of `--length` tokens, in bf16 and fp32; pairs/s, TFLOP/s, and MFU
  against the chip's datasheet dense bf16 peak (`--peak_tflops`, or looked up from the device
  kind) and against the measured matmul rate. The reference: BertForSequenceClassification +
  torch AdamW under bf16 autocast (fp32 with TF32 matmuls, which is JAX's default precision
  for fp32 on GPUs, so both sides do the same arithmetic).
- `encode`: the corpus at max length 256, ours (length buckets) vs sentence-transformers, fp32
  and bf16 (bf16 with XLA attention and with `model.attention=auto`, cuDNN's fused attention
  on GPUs), with nDCG@10 of our embeddings on the test split. A first full pass compiles every
  bucket and is not timed; the tokenizer's share of our time is reported beside it.

FLOPs are counted as in benchmarks/train_step.py (benchmarks/ranker_step.py): matmuls and
attention, x3 for the backward.
Every section catches its own failure and records it under "error", so one failure does not
lose the others; nothing is filled in for a failed section.
"""

import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
import traceback

from absl import app, flags

import ranker_step  # benchmarks/ranker_step.py

_DATA = flags.DEFINE_string("data_dir", "../shared/data/scifact", "BEIR directory ('' skips encode).")
_MODEL = flags.DEFINE_string("model_dir", "", "HF BERT directory ('' = packaged MiniLM).")
_LENGTH = flags.DEFINE_integer("length", 256, "Tokens per pair in the train step.")
_LIST_SIZE = flags.DEFINE_integer("list_size", 32, "Pairs per list in the train step.")
_LISTS = flags.DEFINE_list("lists", ["1", "16"], "Lists per step to time (global batch sizes).")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed train steps (median reported).")
_ENC_BATCH = flags.DEFINE_integer("encode_batch", 256, "Encoding batch size (both sides).")
_MAX_DOCS = flags.DEFINE_integer("max_docs", 0, "Encode only the first N docs (0 = all).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed encoding passes (median reported).")
_PEAK = flags.DEFINE_float("peak_tflops", 0.0, "Datasheet dense bf16 TFLOP/s (0 = by device kind).")
_MATMUL_N = flags.DEFINE_integer("matmul_n", 0, "Matmul size for the measured peak (0 = auto).")
_REF_PYTHON = flags.DEFINE_string("ref_python", sys.executable, "Python with torch ('' = skip).")
_ONLY = flags.DEFINE_list("only", [], "Run only the sections whose names start with one of these.")
_ATTN_DROPOUT = flags.DEFINE_float("attention_dropout", -1.0,
                                   "Train step attention dropout, both sides (-1 = the checkpoint's).")
_OUT = flags.DEFINE_string("out", "", "Also write the JSON here (rewritten after each section).")

# Dense bf16 tensor-core peaks from the vendors' datasheets (TFLOP/s, without sparsity).
_DATASHEET_BF16 = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "TPU v4": 275.0,
                   "TPU v5 lite": 197.0, "TPU v5e": 197.0, "TPU v5p": 459.0, "TPU v6": 918.0}

_TORCH_STEP = r"""
import json, sys, time, torch
from transformers import BertForSequenceClassification
model_dir, n, t, steps, dtype = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
dev = "cuda" if torch.cuda.is_available() else "cpu"
torch.backends.cuda.matmul.allow_tf32 = True; torch.backends.cudnn.allow_tf32 = True
torch.manual_seed(0)
attn_dropout = float(sys.argv[7])
extra = {} if attn_dropout < 0 else {"attention_probs_dropout_prob": attn_dropout}
model = BertForSequenceClassification.from_pretrained(model_dir, num_labels=1, dtype=torch.float32, **extra).to(dev).train()
opt = torch.optim.AdamW(model.parameters(), lr=3e-5, weight_decay=0.01, fused=dev == "cuda")
ids = torch.randint(1000, 2000, (n, t), device=dev); mask = torch.ones_like(ids); types = torch.zeros_like(ids)
types[:, t // 4:] = 1
lists = int(sys.argv[6])
def step():
  with torch.autocast(dev, dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
    s = model(input_ids=ids, attention_mask=mask, token_type_ids=types).logits[:, 0].float()
  s = s.view(lists, -1)
  loss = (torch.logcumsumexp(s.flip(1), 1).flip(1) - s).sum(1).mean()
  opt.zero_grad(); loss.backward()
  torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0); opt.step()
  return loss
sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
for _ in range(3): step()
sync(); times = []
for _ in range(steps):
  t0 = time.perf_counter(); step(); sync(); times.append(time.perf_counter() - t0)
print(json.dumps({"step_s": sorted(times)[len(times) // 2], "device": dev, "torch": torch.__version__}))
"""

_ST_ENCODE = r"""
import json, sys, time, torch
from sentence_transformers import SentenceTransformer
model_dir, texts_file, batch, repeats, dtype = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
dev = "cuda" if torch.cuda.is_available() else "cpu"
torch.backends.cuda.matmul.allow_tf32 = True
texts = json.load(open(texts_file))
m = SentenceTransformer(model_dir, device=dev, model_kwargs={"dtype": torch.float32})
m.max_seq_length = 256
if dtype == "bfloat16": m = m.to(torch.bfloat16)
sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
m.encode(texts[:2 * batch], batch_size=batch); sync()
times = []
for _ in range(repeats):
  t = time.perf_counter(); m.encode(texts, batch_size=batch); sync(); times.append(time.perf_counter() - t)
import sentence_transformers
print(json.dumps({"seconds": sorted(times)[len(times) // 2], "device": dev, "torch": torch.__version__,
                  "sentence_transformers": sentence_transformers.__version__}))
"""


def _ref(script, *args):
  """Runs a PyTorch reference script with `--ref_python`; its last stdout line is JSON."""
  env = dict(os.environ, HF_HUB_OFFLINE="1")
  proc = subprocess.run([_REF_PYTHON.value, "-c", script, *map(str, args)], capture_output=True,
                        text=True, env=env)
  if proc.returncode:
    raise RuntimeError(f"reference exited {proc.returncode}: {proc.stderr[-2000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def _peak_from_kind(kind: str) -> float:
  for name, tflops in _DATASHEET_BF16.items():
    if name.lower() in kind.lower():
      return tflops
  return 0.0


def _matmul_rates(jnp, n):
  return {"n": n, "tflops": {jnp.dtype(d).name: ranker_step.matmul_rate(d, n) / 1e12
                             for d in (jnp.bfloat16, jnp.float32)}}


def _train_step(lists, dtype, peak, matmul):
  from interdistill_jax import defaults, models

  n, t = _LIST_SIZE.value, _LENGTH.value
  config = defaults.base_config()
  config.ranker.model.init = _MODEL.value
  config.ranker.model.dtype = dtype
  config.ranker.model.attention_dropout = _ATTN_DROPOUT.value
  step, state, batch, model, ckpt = ranker_step.build(config.ranker, lists, n, t)
  compile_s, times, m = ranker_step.time_steps(step, state, batch, warmup=3, steps=_STEPS.value)
  step_s = ranker_step.median(times)
  pairs = lists * n
  flops = ranker_step.flops_per_pair(ckpt.config, t) * pairs
  out = {"lists": lists, "list_size": n, "tokens": t, "pairs": pairs, "dtype": dtype,
         "attention": models.attention_impl(config.ranker.model),
         "attention_dropout": float(model.bert.layers[0].attn_dropout),
         "compile_s": compile_s, "loss": float(m["loss"])}

  def rates(step_s):
    r = {"step_s": step_s, "pairs_per_s": pairs / step_s, "tflops": flops / step_s / 1e12}
    if peak:
      r["mfu"] = r["tflops"] / peak
    key_ = "bfloat16" if dtype == "bfloat16" else "float32"
    r["fraction_of_measured_matmul"] = r["tflops"] / matmul["tflops"][key_]
    return r

  out["ours"] = rates(step_s)
  if _REF_PYTHON.value:
    ref = _ref(_TORCH_STEP, ckpt.dir, pairs, t, _STEPS.value, dtype, lists, _ATTN_DROPOUT.value)
    out["pytorch"] = dict(rates(ref["step_s"]), device=ref["device"], torch=ref["torch"])
    out["ratio"] = ref["step_s"] / out["ours"]["step_s"]  # > 1: we are faster
  return out


def _encode(dtype, attention, texts, dataset, docids, st_cache):
  from interdistill_jax import defaults, metrics, models, retrieval, search, sharding

  config = defaults.base_config()
  config.model.init = _MODEL.value
  config.model.dtype = dtype
  config.model.attention = attention
  config.encode.batch_size = _ENC_BATCH.value
  encoder = retrieval.Encoder.from_config(config, mesh=sharding.mesh_from_config(config.mesh))
  # A full pass compiles every bucket shape, so compilation stays outside the timed passes.
  t = time.perf_counter()
  encoder.encode(texts, tower="doc")
  compile_s = time.perf_counter() - t
  times = []
  for _ in range(_REPEATS.value):
    t = time.perf_counter()
    emb = encoder.encode(texts, tower="doc")
    times.append(time.perf_counter() - t)
  t = time.perf_counter()
  encoder.tokenizer.encode(texts, encoder.max_doc_length)
  tokenize_s = time.perf_counter() - t
  out = {"dtype": dtype, "attention": models.attention_impl(config.model),
         "batch_size": _ENC_BATCH.value, "first_pass_s": compile_s}
  seconds = ranker_step.median(times)
  out["ours"] = {"seconds": seconds, "docs_per_s": len(texts) / seconds, "tokenize_s": tokenize_s}
  if not _MAX_DOCS.value:
    queries = dataset.split_queries("test")
    q = encoder.encode([x.text for x in queries.values()], tower="query")
    run = search.search_run(search.ExactIndex(emb, mesh=encoder.mesh), docids, list(queries), q, 100)
    out["ours"]["test"] = metrics.evaluate_run(dataset.qrels("test"), run, (10, 100))[0]
  if _REF_PYTHON.value:
    if dtype not in st_cache:  # one reference run per dtype
      with tempfile.TemporaryDirectory() as tmp:
        tf = pathlib.Path(tmp, "texts.json")
        tf.write_text(json.dumps(texts))
        st_cache[dtype] = _ref(_ST_ENCODE, encoder_dir(config), tf, _ENC_BATCH.value, _REPEATS.value, dtype)
    st = st_cache[dtype]
    out["sentence_transformers"] = dict(st, docs_per_s=len(texts) / st["seconds"])
    out["ratio"] = st["seconds"] / out["ours"]["seconds"]  # > 1: we are faster
  return out


def encoder_dir(config):
  from interdistill_jax import models
  return models.resolve_checkpoint(config.model.init).dir


def main(argv):
  del argv
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  import jax
  import jax.numpy as jnp

  dev = jax.devices()[0]
  kind = getattr(dev, "device_kind", str(dev))
  peak = _PEAK.value or _peak_from_kind(kind)
  result = {"benchmark": "accelerator", "platform": dev.platform, "device_kind": kind,
            "num_devices": jax.device_count(), "jax": jax.__version__,
            "datasheet_bf16_tflops": peak or None}
  try:
    import flax
    result["flax"] = flax.__version__
  except ImportError:
    pass

  def save():
    text = json.dumps(result, indent=1)
    if _OUT.value:
      pathlib.Path(_OUT.value).write_text(text + "\n")
    return text

  def section(name, fn, *args):
    if _ONLY.value and not any(name.startswith(p) for p in _ONLY.value):
      return
    t = time.perf_counter()
    try:
      result[name] = fn(*args)
    except Exception as e:  # recorded, not hidden: the section's entry is the error
      result[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
    print(f"[{name}] {time.perf_counter() - t:.1f}s", file=sys.stderr, flush=True)
    save()

  n = _MATMUL_N.value or (8192 if dev.platform != "cpu" else 1024)
  section("matmul", _matmul_rates, jnp, n)
  matmul = result.get("matmul", {"error": "not run"})
  if "error" in matmul:
    matmul = {"tflops": {"bfloat16": float("nan"), "float32": float("nan")}}
  suffix = "" if _ATTN_DROPOUT.value < 0 else f"_attn_dropout{_ATTN_DROPOUT.value:g}"
  for dtype in ("bfloat16", "float32"):
    for lists in map(int, _LISTS.value):
      section(f"train_step_{dtype}_{lists}x{_LIST_SIZE.value}{suffix}", _train_step, lists, dtype,
              peak, matmul)

  if _DATA.value:
    from interdistill_jax import data
    dataset = data.load_beir(_DATA.value)
    docids = list(dataset.corpus)
    if _MAX_DOCS.value:
      docids = docids[:_MAX_DOCS.value]
    texts = [doc.full_text() for doc, _ in zip(dataset.corpus.values(), docids)]  # file order
    result["encode_num_docs"] = len(texts)
    st_cache = {}
    for dtype, attention in (("float32", "xla"), ("bfloat16", "xla"), ("bfloat16", "auto")):
      section(f"encode_{dtype}_{attention}", _encode, dtype, attention, texts, dataset, docids, st_cache)
  print(save())


if __name__ == "__main__":
  sys.exit(app.run(main))
