"""Ranker train-step throughput: ours against PyTorch, back to back in one run.

  .venv/bin/python benchmarks/train_step.py [--batch=32] [--length=256] [--steps=5]

Ours: the jitted ListMLE step of `train_ranker` (CrossEncoder, AdamW, clipping), on one list of
`batch` pairs. Reference: `transformers.BertForSequenceClassification` (1 label) with
`torch.optim.AdamW`, the same weights, the same batch shape, a ListMLE loss over the batch.
Both exclude the first (compiling / warming) step. Prints JSON with pairs/s, the ratio, and the
fraction of the measured fp32 matmul peak each reaches.
"""

import json
import os
import subprocess
import sys

from absl import app, flags

import ranker_step  # benchmarks/ranker_step.py

_BATCH = flags.DEFINE_integer("batch", 32, "Pairs per step (one list).")
_LENGTH = flags.DEFINE_integer("length", 256, "Tokens per pair.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps.")
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
print(json.dumps({"step_s": sorted(times)[len(times) // 2], "threads": torch.get_num_threads(),
                  "torch": torch.__version__}))
"""


def main(argv):
  del argv
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  import jax
  import jax.numpy as jnp

  from interdistill_jax import assets, defaults

  b, t = _BATCH.value, _LENGTH.value
  config = defaults.base_config()
  config.ranker.model.dtype = _DTYPE.value
  step, params, opt_state, batch, _, ckpt = ranker_step.build(config.ranker, 1, b, t)
  _, ours, _ = ranker_step.time_steps(step, params, opt_state, jax.device_put(batch), warmup=1,
                                      steps=_STEPS.value)

  env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
  env.pop("XLA_FLAGS", None)
  out = subprocess.run([_REF_PYTHON.value, "-c", _TORCH, assets.packaged_encoder_dir(), str(b), str(t),
                        str(_STEPS.value)], capture_output=True, text=True, check=True, env=env).stdout
  ref = json.loads(out.strip().splitlines()[-1])
  peak = ranker_step.matmul_rate(jnp.float32, 2048)
  flops = ranker_step.flops_per_pair(ckpt.config, t) * b
  result = {
      "benchmark": "ranker_train_step", "batch_pairs": b, "tokens": t, "dtype": _DTYPE.value,
      "devices": [str(d) for d in jax.devices()], "cpu_count": os.cpu_count(),
      "ours": {"step_s": ours, "pairs_per_s": b / ours, "gflops_per_s": flops / ours / 1e9,
               "fraction_of_matmul_peak": flops / ours / peak},
      "pytorch": dict(ref, pairs_per_s=b / ref["step_s"], gflops_per_s=flops / ref["step_s"] / 1e9,
                      fraction_of_matmul_peak=flops / ref["step_s"] / peak),
      "ratio": ref["step_s"] / ours,  # > 1: we are faster
      "matmul_peak_gflops_fp32": peak / 1e9,
  }
  print(json.dumps(result, indent=1))


if __name__ == "__main__":
  sys.exit(app.run(main))
