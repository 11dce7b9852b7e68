"""What each piece of the ranker's train step costs: the step timed with one piece changed at a time.

  python benchmarks/step_variants.py [--model_dir=DIR] [--attention=cudnn_dropout] [--out=FILE]

The step of `benchmarks/accelerator.py` (bf16, `lists x list_size` pairs of `length` tokens),
with the checkpoint's config as it is ("as_is"), then with its hidden dropout off
("no_hidden_dropout"), its exact GELU replaced by the tanh approximation ("gelu_tanh"), and both;
and with every LayerNorm computing in bfloat16 ("bf16_norms": flax keeps the statistics in
float32 and the parameters in float32, but the normalised output, and so the residual stream
between the layers, is bfloat16 instead of float32), alone and with the two others.
Each variant is the same arithmetic otherwise; a variant's time saved is what that piece costs.
These are measurements, not options: the model keeps the checkpoint's dropout and activation,
and its LayerNorms' float32 output.
With `--dump_dir`, XLA's optimized HLO of the first variant's step is written there too.
"""

import contextlib
import dataclasses
import functools
import json
import os
import pathlib
import sys

from absl import app, flags

import ranker_step  # benchmarks/ranker_step.py


_FAST = {"hidden_dropout_prob": 0.0, "hidden_act": "gelu_new"}
# name -> (BertConfig fields changed, LayerNorm compute dtype or None for the model's own).
VARIANTS = {
    "as_is": ({}, None),
    "no_hidden_dropout": ({"hidden_dropout_prob": 0.0}, None),
    "gelu_tanh": ({"hidden_act": "gelu_new"}, None),
    "no_hidden_dropout_gelu_tanh": (_FAST, None),
    "bf16_norms": ({}, "bfloat16"),
    "bf16_norms_no_hidden_dropout_gelu_tanh": (_FAST, "bfloat16"),
}


def _define_flags() -> None:
  """Defined only when the script runs: the tests import `_variant` beside modules whose flags
  share these names."""
  flags.DEFINE_string("model_dir", "", "HF BERT directory ('' = packaged MiniLM).")
  flags.DEFINE_string("attention", "cudnn_dropout", "ranker.model.attention.")
  flags.DEFINE_integer("lists", 16, "Lists per step.")
  flags.DEFINE_integer("list_size", 32, "Pairs per list.")
  flags.DEFINE_integer("length", 256, "Tokens per pair.")
  flags.DEFINE_integer("steps", 20, "Timed steps (median reported).")
  flags.DEFINE_string("dump_dir", "", "XLA dump directory for the first variant ('' = none).")
  flags.DEFINE_string("out", "", "Also write the JSON here.")
  flags.DEFINE_list("variants", list(VARIANTS), "Variants to time (as_is first: the others' time "
                    "saved is against it).")


@contextlib.contextmanager
def _variant(hf_weights, change: dict, norms: str | None):
  """Builds models with the checkpoint's config changed by `change` and, with `norms`, every
  LayerNorm computing in that dtype; restored on exit."""
  import jax.numpy as jnp
  from flax import nnx

  real_config, real_norm = hf_weights._bert_config, nnx.LayerNorm
  hf_weights._bert_config = lambda ckpt, mc: dataclasses.replace(real_config(ckpt, mc), **change)
  if norms:
    nnx.LayerNorm = functools.partial(real_norm, dtype=jnp.dtype(norms))
  try:
    yield
  finally:
    hf_weights._bert_config, nnx.LayerNorm = real_config, real_norm


def main(argv):
  del argv
  f = flags.FLAGS
  if f.dump_dir:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_dump_to={f.dump_dir}"
                               " --xla_dump_hlo_as_text --xla_dump_hlo_module_re=.*step_fn.*").strip()
  from interdistill_jax import defaults, hf_weights, models

  config = defaults.base_config()
  config.ranker.model.init = f.model_dir
  config.ranker.model.dtype = "bfloat16"
  config.ranker.model.attention = f.attention
  models.prepare_backend(config)
  import jax

  out = {"benchmark": "step_variants", "device_kind": jax.devices()[0].device_kind,
         "jax": jax.__version__, "xla_flags": os.environ.get("XLA_FLAGS", ""),
         "attention": f.attention, "lists": f.lists, "list_size": f.list_size,
         "tokens": f.length, "variants": {}}
  if not f.variants or f.variants[0] != "as_is" or set(f.variants) - set(VARIANTS):
    raise app.UsageError(f"--variants: as_is first, then any of {sorted(VARIANTS)}")
  for name in f.variants:
    change, norms = VARIANTS[name]
    with _variant(hf_weights, change, norms):
      step, state, batch, _, ckpt = ranker_step.build(config.ranker, f.lists, f.list_size,
                                                      f.length)
    compile_s, times, m, _ = ranker_step.time_steps(step, state, batch, warmup=3, steps=f.steps)
    step_s = ranker_step.median(times)
    flops = ranker_step.flops_per_pair(ckpt.config, f.length) * f.lists * f.list_size
    out["variants"][name] = {"change": change, "norms": norms, "step_s": step_s,
                             "tflops": flops / step_s / 1e12, "compile_s": compile_s,
                             "loss": float(m["loss"])}
    print(f"[{name}] {step_s * 1e3:.2f} ms", file=sys.stderr, flush=True)
  base = out["variants"]["as_is"]["step_s"]
  for v in out["variants"].values():
    v["saved_ms"] = (base - v["step_s"]) * 1e3
  text = json.dumps(out, indent=1)
  if f.out:
    pathlib.Path(f.out).write_text(text + "\n")
  print(text)


if __name__ == "__main__":
  _define_flags()
  sys.exit(app.run(main))
