"""Ranker train-step throughput: ours against PyTorch, taking turns in one run.

  .venv/bin/python benchmarks/train_step.py [--batch=32] [--length=256] [--steps=3] [--rounds=4]

Ours: the jitted ListMLE step of `train_ranker` (CrossEncoder, AdamW, clipping), on one list of
`batch` pairs. Reference: `transformers.BertForSequenceClassification` (1 label) with
`torch.optim.AdamW`, the same weights, the same batch shape, a ListMLE loss over the batch.
Each round runs each side once, in a fresh process of its own (`benchmarks/turns.py`: nothing
else heavy is alive while a side is timed), excluding its first (compiling / warming) step.
Prints JSON with the median step of each side over all rounds, pairs/s, the ratio, each
round's ratio, and the fraction of the measured fp32 matmul peak each side reaches.
"""

import json
import os
import sys

from absl import app, flags

import ranker_step  # benchmarks/ranker_step.py
import turns  # benchmarks/turns.py

_BATCH = flags.DEFINE_integer("batch", 32, "Pairs per step (one list).")
_LENGTH = flags.DEFINE_integer("length", 256, "Tokens per pair.")
_STEPS = flags.DEFINE_integer("steps", 3, "Timed steps per side and round.")
_ROUNDS = flags.DEFINE_integer("rounds", 4, "Rounds; each side runs once per round, in its own process.")
_WORKER = flags.DEFINE_bool("worker", False, "Internal: time our side only and print its JSON line.")
_DTYPE = flags.DEFINE_string("dtype", "float32", "Our compute dtype (float32 or bfloat16).")
_REF_PYTHON = flags.DEFINE_string("ref_python", ".venv-ref/bin/python", "PyTorch reference venv.")

_TORCH = r"""
import json, sys, time, torch
from transformers import BertForSequenceClassification
model_dir, b, t, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.manual_seed(0)
model = BertForSequenceClassification.from_pretrained(model_dir, num_labels=1).train()
opt = torch.optim.AdamW(model.parameters(), lr=3e-5, weight_decay=0.01)
ids = torch.randint(1000, 2000, (b, t)); mask = torch.ones_like(ids); types = torch.zeros_like(ids)
types[:, t // 4:] = 1
def step():
  s = model(input_ids=ids, attention_mask=mask, token_type_ids=types).logits[:, 0]
  # ListMLE of the identity ranking over the list (reverse cumulative logsumexp).
  loss = (torch.logcumsumexp(s.flip(0), 0).flip(0) - s).sum()
  opt.zero_grad(); loss.backward()
  torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0); opt.step()
step()
times = []
for _ in range(steps):
  t0 = time.perf_counter(); step(); times.append(time.perf_counter() - t0)
print(json.dumps({"times": times, "threads": torch.get_num_threads(), "torch": torch.__version__}))
"""


def _ours_worker():
  """One turn of our side: compile, time --steps steps, measure the matmul peak; one JSON line."""
  import jax
  import jax.numpy as jnp

  from interdistill_jax import defaults
  config = defaults.base_config()
  config.ranker.model.dtype = _DTYPE.value
  step, state, batch, _, ckpt = ranker_step.build(config.ranker, 1, _BATCH.value, _LENGTH.value)
  _, times, _, _ = ranker_step.time_steps(step, state, batch, warmup=1, steps=_STEPS.value)
  print(json.dumps({"times": times, "matmul_peak": ranker_step.matmul_rate(jnp.float32, 2048),
                    "flops": ranker_step.flops_per_pair(ckpt.config, _LENGTH.value) * _BATCH.value,
                    "devices": [str(d) for d in jax.devices()], "jax": jax.__version__}))


def main(argv):
  del argv
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  if _WORKER.value:
    return _ours_worker()
  from interdistill_jax import assets

  b, t = _BATCH.value, _LENGTH.value
  ours_argv = [sys.executable, os.path.abspath(__file__), "--worker", f"--batch={b}", f"--length={t}",
               f"--steps={_STEPS.value}", f"--dtype={_DTYPE.value}"]
  ref_env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
  ref_env.pop("XLA_FLAGS", None)
  ref_argv = [_REF_PYTHON.value, "-c", _TORCH, assets.packaged_encoder_dir(), str(b), str(t),
              str(_STEPS.value)]
  turns_ = turns.take_turns({"ours": lambda r: turns.run_worker(ours_argv),
                             "pytorch": lambda r: turns.run_worker(ref_argv, ref_env)}, _ROUNDS.value)
  ours_t = [x for r in turns_["ours"] for x in r["times"]]
  ref_t = [x for r in turns_["pytorch"] for x in r["times"]]
  ours_s, ref_s = ranker_step.median(ours_t), ranker_step.median(ref_t)
  peak = ranker_step.median([r["matmul_peak"] for r in turns_["ours"]])
  flops = turns_["ours"][0]["flops"]
  last = turns_["ours"][-1]
  result = {
      "benchmark": "ranker_train_step", "batch_pairs": b, "tokens": t, "dtype": _DTYPE.value,
      "devices": last["devices"], "jax": last["jax"], "cpu_count": os.cpu_count(),
      "rounds": _ROUNDS.value, "steps_per_side": len(ours_t),
      "ours": {"step_s": ours_s, "pairs_per_s": b / ours_s, "gflops_per_s": flops / ours_s / 1e9,
               "fraction_of_matmul_peak": flops / ours_s / peak},
      "pytorch": {"step_s": ref_s, "threads": turns_["pytorch"][0]["threads"],
                  "torch": turns_["pytorch"][0]["torch"], "pairs_per_s": b / ref_s,
                  "gflops_per_s": flops / ref_s / 1e9, "fraction_of_matmul_peak": flops / ref_s / peak},
      "ratio": ref_s / ours_s,  # > 1: we are faster
      "ratio_per_round": [ranker_step.median(r["times"]) / ranker_step.median(o["times"])
                          for o, r in zip(turns_["ours"], turns_["pytorch"])],
      "matmul_peak_gflops_fp32": peak / 1e9,
  }
  print(json.dumps(result, indent=1))


if __name__ == "__main__":
  sys.exit(app.run(main))
