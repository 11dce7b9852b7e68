"""Throughput on an accelerator: the ranker train step as MFU, and corpus encoding in docs/s.

  python benchmarks/accelerator.py --data_dir=DATA/scifact [--model_dir=DIR] [--out=FILE]

Runs on `jax.devices()[0]` (a GPU or TPU; it also runs on CPU, with small sizes, as a check).
Each section is timed against PyTorch on the same device, back to back in one run, when
PyTorch (and sentence-transformers) can be imported by `--ref_python`.

- `matmul`: the measured bf16 and fp32 matmul rate (8192^3 on accelerators), the ceiling.
- `cudnn_dropout_check` (GPUs): cuDNN's attention dropout as `model.attention=cudnn_dropout`
  uses it: new masks at each execution and per seed, the keep rate and scale, and a backward pass
  that uses the forward's masks.
- `train_step`: the jitted ranker ListMLE step (CrossEncoder, AdamW, clipping) at
  `lists x list_size` pairs of `--length` tokens, for each `--dtypes` and `--train` variant
  (model.attention and the attention dropout); pairs/s, TFLOP/s, and MFU
  against the chip's datasheet dense bf16 peak (`--peak_tflops`, or looked up from the device
  kind) and against the measured matmul rate. The reference: BertForSequenceClassification +
  torch AdamW under bf16 autocast (fp32 with TF32 matmuls, which is JAX's default precision
  for fp32 on GPUs, so both sides do the same arithmetic). A `cudnn_dropout` variant turns CUDA
  command buffers off for the whole process, as `models.prepare_backend` does (`xla_flags`).
- `tokenize`: the corpus's tokenization alone: one call (the tokenizer's own threads), threads,
  and processes.
- `encode`: the corpus at max length 256 for each `--encodings` variant, vs sentence-transformers,
  with nDCG@10 of our embeddings on the test split: from texts as `Encoder.encode` does it
  (tokenized ahead in a worker thread, batches in flight), the tokenizer alone, from token ids
  (the devices' share), the code before (tokenize everything, then one batch at a time), and
  `Encoder.encode_corpus` with a token cache (first keeping the ids, then encoding from them).
  A first full pass compiles every bucket and is not timed.
- `encode_projection`: `--synthetic_docs` passages of 100 words drawn from the corpus's words
  (DPR's passage length), from texts and from token ids, projected to 21,015,324 passages.

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
import threading
import time
import traceback

import numpy as np
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
_TRAIN = flags.DEFINE_list("train", ["auto:-1", "cudnn_dropout:-1", "auto:0"],
                           "Train step variants, ATTENTION:DROPOUT: model.attention and the attention "
                           "dropout of both sides (-1 = the checkpoint's).")
_DTYPES = flags.DEFINE_list("dtypes", ["bfloat16", "float32"], "Train step dtypes.")
_ENCODINGS = flags.DEFINE_list("encodings", ["float32:xla", "bfloat16:xla", "bfloat16:auto"],
                               "Encode variants, DTYPE:ATTENTION.")
_SYNTHETIC = flags.DEFINE_integer("synthetic_docs", 100_000,
                                  "Passages of 100 words (DPR's length) for the encoding projection "
                                  "to 21M (0 skips).")
_PROFILE = flags.DEFINE_string("profile_dir", "", "Also trace 3 train steps with jax.profiler "
                               "(a Perfetto trace) under this directory ('' = no).")
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


def _train_step(lists, dtype, attention, attn_dropout, peak, matmul, ref_cache):
  from interdistill_jax import defaults, models

  n, t = _LIST_SIZE.value, _LENGTH.value
  config = defaults.base_config()
  config.ranker.model.init = _MODEL.value
  config.ranker.model.dtype = dtype
  config.ranker.model.attention = attention
  config.ranker.model.attention_dropout = attn_dropout
  step, state, batch, model, ckpt = ranker_step.build(config.ranker, lists, n, t)
  compile_s, times, m, state = ranker_step.time_steps(step, state, batch, warmup=3, steps=_STEPS.value)
  if _PROFILE.value:  # a few more steps under the profiler: where the step's time goes
    import jax
    directory = os.path.join(_PROFILE.value, f"{dtype}_{lists}x{n}_{attention}_{attn_dropout:g}")
    with jax.profiler.trace(directory, create_perfetto_trace=True):
      for _ in range(3):
        state, m = step(state, batch)
      jax.block_until_ready(m)
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
    key = (pairs, dtype, attn_dropout)  # one reference run per setting it has
    if key not in ref_cache:
      ref_cache[key] = _ref(_TORCH_STEP, ckpt.dir, pairs, t, _STEPS.value, dtype, lists, attn_dropout)
    ref = ref_cache[key]
    out["pytorch"] = dict(rates(ref["step_s"]), device=ref["device"], torch=ref["torch"])
    out["ratio"] = ref["step_s"] / out["ours"]["step_s"]  # > 1: we are faster
  return out


def _timed(fn, repeats):
  """(median seconds of `repeats` calls of fn, the last call's result)."""
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    out = fn()
    times.append(time.perf_counter() - t)
  return ranker_step.median(times), out


def _encoder(dtype, attention):
  from interdistill_jax import defaults, retrieval, sharding

  config = defaults.base_config()
  config.model.init = _MODEL.value
  config.model.dtype = dtype
  config.model.attention = attention
  config.encode.batch_size = _ENC_BATCH.value
  return config, retrieval.Encoder.from_config(config, mesh=sharding.mesh_from_config(config.mesh))


def _encode(dtype, attention, texts, dataset, docids, st_cache):
  """Encoding from texts as `Encoder.encode` does it (tokenized ahead in a worker thread, batches
  in flight), beside: the tokenizer alone, the devices alone (token ids ready), and the code
  before both (all texts tokenized first, then one batch at a time, each waited for)."""
  from interdistill_jax import inference, metrics, models, search, token_cache

  config, encoder = _encoder(dtype, attention)
  runner, length, repeats = encoder._runners["doc"], encoder.max_doc_length, _REPEATS.value
  # A full pass compiles every bucket shape, so compilation stays outside the timed passes.
  t = time.perf_counter()
  encoder.encode(texts, tower="doc")
  compile_s = time.perf_counter() - t
  seconds, emb = _timed(lambda: encoder.encode(texts, tower="doc"), repeats)
  tokenize_s, seqs = _timed(lambda: encoder.tokenizer.encode(texts, length), repeats)
  device_s, from_tokens = _timed(lambda: runner.run(seqs, desc="encode"), repeats)
  with tempfile.TemporaryDirectory() as tmp:  # encode_corpus with the token cache: kept, then read
    tokens = token_cache.TokenCache(tmp)
    corpus = {d: dataset.corpus[d] for d in docids}
    t = time.perf_counter()
    encoder.encode_corpus(corpus, None, "corpus", tokens=tokens)
    keeping_s = time.perf_counter() - t
    cached_s, (_, from_cache) = _timed(lambda: encoder.encode_corpus(corpus, None, "corpus", tokens=tokens),
                                       repeats)
  in_flight = inference.IN_FLIGHT
  inference.IN_FLIGHT = 0
  try:
    before_s, before = _timed(lambda: runner.run(encoder.tokenizer.encode(texts, length), desc="encode"),
                              repeats)
  finally:
    inference.IN_FLIGHT = in_flight
  out = {"dtype": dtype, "attention": models.attention_impl(config.model),
         "batch_size": _ENC_BATCH.value, "first_pass_s": compile_s, "cpu_count": os.cpu_count()}
  n = len(texts)
  out["ours"] = {"seconds": seconds, "docs_per_s": n / seconds,
                 "tokenize_s": tokenize_s, "tokenize_docs_per_s": n / tokenize_s,
                 "from_token_ids_s": device_s, "from_token_ids_docs_per_s": n / device_s,
                 "before_s": before_s, "before_docs_per_s": n / before_s,
                 "encode_corpus_keeping_tokens_s": keeping_s,
                 "encode_corpus_keeping_tokens_docs_per_s": n / keeping_s,
                 "encode_corpus_from_token_cache_s": cached_s,
                 "encode_corpus_from_token_cache_docs_per_s": n / cached_s,
                 "max_abs_diff_from_token_cache": float(abs(emb - from_cache).max()),
                 "max_abs_diff_vs_before": float(abs(emb - before).max()),
                 "max_abs_diff_from_token_ids": float(abs(emb - from_tokens).max())}
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


_WORKER_TOKENIZER = None


def _worker_init(path):
  global _WORKER_TOKENIZER
  from interdistill_jax import tokenization
  os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per process
  _WORKER_TOKENIZER = tokenization.Tokenizer(path)


def _worker_encode(args):
  texts, length = args
  return _WORKER_TOKENIZER.encode(texts, length)


def _tokenize(texts):
  """The corpus's tokenization (max length 256) three ways: one `encode_batch` call (the Rust
  tokenizer's own threads), threads (a tokenizer each) calling it on 256 texts, and processes (spawned, one
  tokenizer thread each) on 256 texts at a time."""
  import concurrent.futures
  import multiprocessing

  from interdistill_jax import hf_weights, tokenization

  path = hf_weights.resolve_checkpoint(_MODEL.value).dir
  tok = tokenization.Tokenizer(path)
  chunks = [texts[i:i + 256] for i in range(0, len(texts), 256)]
  n, cpus = len(texts), os.cpu_count()
  whole_s, want = _timed(lambda: tok.encode(texts, 256), _REPEATS.value)
  out = {"num_docs": n, "cpu_count": cpus, "encode_batch": {"seconds": whole_s, "docs_per_s": n / whole_s}}
  local = threading.local()

  def in_thread(c):
    if not hasattr(local, "tok"):
      local.tok = tokenization.Tokenizer(path)
    return local.tok.encode(c, 256)

  with concurrent.futures.ThreadPoolExecutor(cpus) as pool:
    list(pool.map(in_thread, chunks[:cpus]))
    s, got = _timed(lambda: [x for c in pool.map(in_thread, chunks) for x in c], _REPEATS.value)
  out["threads"] = {"workers": cpus, "seconds": s, "docs_per_s": n / s,
                    "same_ids": all(map(np.array_equal, got, want))}
  for workers in sorted({cpus // 2, cpus}):
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init,
                                                initargs=(path,)) as pool:
      list(pool.map(_worker_encode, [(c, 256) for c in chunks[:workers]]))  # started, tokenizer loaded
      s, got = _timed(lambda: [x for c in pool.map(_worker_encode, [(c, 256) for c in chunks]) for x in c],
                      _REPEATS.value)
    out[f"processes_{workers}"] = {"seconds": s, "docs_per_s": n / s,
                                   "same_ids": all(map(np.array_equal, got, want))}
  return out


def _projection(dtype, attention, words):
  """Encoding passages of 100 words (DPR's Wikipedia passages) drawn from `words`, from texts and
  from token ids, projected to DPR's 21,015,324 passages."""
  import numpy as np

  rng = np.random.default_rng(0)
  n = _SYNTHETIC.value
  picks = rng.integers(0, len(words), size=(n, 100))
  texts = [" ".join(words[i] for i in row) for row in picks]
  _, encoder = _encoder(dtype, attention)
  encoder.compile("doc")
  runner = encoder._runners["doc"]
  seconds, _ = _timed(lambda: encoder.encode(texts, tower="doc"), 1)
  tokenize_s, seqs = _timed(lambda: encoder.tokenizer.encode(texts, encoder.max_doc_length), 1)
  device_s, _ = _timed(lambda: runner.run(seqs, desc="encode"), 1)
  dpr = 21_015_324
  return {"dtype": dtype, "attention": attention, "num_docs": n,
          "mean_tokens": float(np.mean([len(x) for x in seqs])),
          "from_texts": {"seconds": seconds, "docs_per_s": n / seconds,
                         "dpr_21m_hours": dpr * seconds / n / 3600},
          "tokenize_s": tokenize_s,
          "from_token_ids": {"seconds": device_s, "docs_per_s": n / device_s,
                             "dpr_21m_hours": dpr * device_s / n / 3600}}


def _cudnn_dropout_check():
  """cuDNN's attention dropout as `model.attention=cudnn_dropout` uses it: new masks at every
  execution, different masks per seed (layer), the inverted-dropout scale, and a backward pass
  that uses the forward's mask.

  With T = D and V the identity per head, the output is the dropped-out probability matrix
  itself, so the gradient of sum(out * G) with respect to V must equal P_drop^T G, computed
  from the same execution's output.
  """
  import jax
  import jax.numpy as jnp
  import numpy as np

  from interdistill_jax import models

  b, t, h, d, rate = 32, 32, 12, 32, 0.5
  kq, kk, kg = jax.random.split(jax.random.key(0), 3)
  q = jax.random.normal(kq, (b, t, h, d), jnp.bfloat16)
  k = jax.random.normal(kk, (b, t, h, d), jnp.bfloat16)
  v = jnp.broadcast_to(jnp.eye(t, d, dtype=jnp.bfloat16)[None, :, None, :], (b, t, h, d))
  g = jax.random.normal(kg, (b, t, h, d), jnp.float32)
  lengths = jnp.full((b,), t, jnp.int32)

  def loss(v, seed):
    out = models._cudnn_attention_with_dropout(q, k, v, lengths, rate, seed).astype(jnp.float32)
    return (out * g).sum(), out

  step = jax.jit(jax.grad(loss, has_aux=True), static_argnums=1)
  grad1, out1 = step(v, 0)
  grad2, out2 = step(v, 0)
  _, out_seed1 = step(v, 1)
  want = jnp.einsum("bqhk,bqhj->bkhj", out1, g)  # out1[b, q, h, k] = P_drop[b, h, q, k]
  rel = float(jnp.abs(grad1.astype(jnp.float32) - want).max() / jnp.abs(want).max())
  no_drop = jax.nn.dot_product_attention(q, k, v).astype(jnp.float32)
  zeros = float((out1 == 0).mean())
  return {"rate": rate, "shape": [b, t, h, d],
          "masks_change_between_executions": bool((out1 != out2).any()),
          "masks_differ_by_seed": bool((out1 != out_seed1).any()),
          "zero_fraction": zeros,  # about `rate`: a dropped probability is exactly 0
          "row_sum_mean": float(out1.sum(-1).mean()),  # about 1: kept ones are scaled by 1/(1-rate)
          "row_sum_mean_no_dropout": float(no_drop.sum(-1).mean()),
          "backward_uses_forward_mask_rel_err": rel,
          "grad_changes_between_executions": bool(np.any(np.asarray(grad1 != grad2)))}


def encoder_dir(config):
  from interdistill_jax import hf_weights
  return hf_weights.resolve_checkpoint(config.model.init).dir


def main(argv):
  del argv
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  # As the entry points do (models.prepare_backend): this process's other sections run so too.
  from interdistill_jax import models
  models.prepare_attention_backend(
      cudnn_dropout=any(v.startswith("cudnn_dropout:") for v in _TRAIN.value))
  import jax
  import jax.numpy as jnp

  dev = jax.devices()[0]
  kind = getattr(dev, "device_kind", str(dev))
  peak = _PEAK.value or _peak_from_kind(kind)
  result = {"benchmark": "accelerator", "platform": dev.platform, "device_kind": kind,
            "num_devices": jax.device_count(), "jax": jax.__version__,
            "datasheet_bf16_tflops": peak or None, "xla_flags": os.environ.get("XLA_FLAGS", "")}
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
  if dev.platform == "gpu":
    section("cudnn_dropout_check", _cudnn_dropout_check)
  ref_cache = {}
  for dtype in _DTYPES.value:
    for lists in map(int, _LISTS.value):
      for variant in _TRAIN.value:
        attention, attn_dropout = variant.split(":")
        section(f"train_step_{dtype}_{lists}x{_LIST_SIZE.value}_{attention}_attn_dropout{attn_dropout}",
                _train_step, lists, dtype, attention, float(attn_dropout), peak, matmul, ref_cache)

  if _DATA.value:
    from interdistill_jax import data
    dataset = data.load_beir(_DATA.value)
    docids = list(dataset.corpus)
    if _MAX_DOCS.value:
      docids = docids[:_MAX_DOCS.value]
    texts = [doc.full_text() for doc, _ in zip(dataset.corpus.values(), docids)]  # file order
    result["encode_num_docs"] = len(texts)
    st_cache = {}
    section("tokenize", _tokenize, texts)
    for variant in _ENCODINGS.value:
      dtype, attention = variant.split(":")
      section(f"encode_{dtype}_{attention}", _encode, dtype, attention, texts, dataset, docids, st_cache)
    if _SYNTHETIC.value:
      words = [w for text in texts for w in text.split()]  # drawn as often as they occur
      for variant in _ENCODINGS.value[-1:]:
        dtype, attention = variant.split(":")
        section(f"encode_projection_{dtype}_{attention}", _projection, dtype, attention, words)
  print(save())


if __name__ == "__main__":
  sys.exit(app.run(main))
