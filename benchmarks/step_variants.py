"""What each piece of the ranker's train step costs: the step timed with one piece changed at a time.

  python benchmarks/step_variants.py [--model_dir=DIR] [--attention=cudnn_dropout] [--out=FILE]

The step of `benchmarks/accelerator.py` (bf16, `lists x list_size` pairs of `length` tokens),
with the checkpoint's config as it is ("as_is"), then with its hidden dropout off
("no_hidden_dropout"), its exact GELU replaced by the tanh approximation ("gelu_tanh"), and both.
Each variant is the same arithmetic otherwise; a variant's time saved is what that piece costs.
These are measurements, not options: the model keeps the checkpoint's dropout and activation.
With `--dump_dir`, XLA's optimized HLO of the first variant's step is written there too.
"""

import dataclasses
import json
import os
import pathlib
import sys

from absl import app, flags

import ranker_step  # benchmarks/ranker_step.py

_MODEL = flags.DEFINE_string("model_dir", "", "HF BERT directory ('' = packaged MiniLM).")
_ATTENTION = flags.DEFINE_string("attention", "cudnn_dropout", "ranker.model.attention.")
_LISTS = flags.DEFINE_integer("lists", 16, "Lists per step.")
_LIST_SIZE = flags.DEFINE_integer("list_size", 32, "Pairs per list.")
_LENGTH = flags.DEFINE_integer("length", 256, "Tokens per pair.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps (median reported).")
_DUMP = flags.DEFINE_string("dump_dir", "", "XLA dump directory for the first variant ('' = none).")
_OUT = flags.DEFINE_string("out", "", "Also write the JSON here.")

VARIANTS = {
    "as_is": {},
    "no_hidden_dropout": {"hidden_dropout_prob": 0.0},
    "gelu_tanh": {"hidden_act": "gelu_new"},
    "no_hidden_dropout_gelu_tanh": {"hidden_dropout_prob": 0.0, "hidden_act": "gelu_new"},
}


def main(argv):
  del argv
  if _DUMP.value:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_dump_to={_DUMP.value}"
                               " --xla_dump_hlo_as_text --xla_dump_hlo_module_re=.*step_fn.*").strip()
  from interdistill_jax import defaults, hf_weights, models

  config = defaults.base_config()
  config.ranker.model.init = _MODEL.value
  config.ranker.model.dtype = "bfloat16"
  config.ranker.model.attention = _ATTENTION.value
  models.prepare_backend(config)
  import jax

  real = hf_weights._bert_config
  out = {"benchmark": "step_variants", "device_kind": jax.devices()[0].device_kind,
         "jax": jax.__version__, "xla_flags": os.environ.get("XLA_FLAGS", ""),
         "attention": _ATTENTION.value, "lists": _LISTS.value, "list_size": _LIST_SIZE.value,
         "tokens": _LENGTH.value, "variants": {}}
  for name, change in VARIANTS.items():
    hf_weights._bert_config = lambda ckpt, mc, change=change: dataclasses.replace(real(ckpt, mc), **change)
    try:
      step, state, batch, _, ckpt = ranker_step.build(config.ranker, _LISTS.value, _LIST_SIZE.value,
                                                      _LENGTH.value)
      compile_s, times, m, _ = ranker_step.time_steps(step, state, batch, warmup=3, steps=_STEPS.value)
    finally:
      hf_weights._bert_config = real
    step_s = ranker_step.median(times)
    flops = ranker_step.flops_per_pair(ckpt.config, _LENGTH.value) * _LISTS.value * _LIST_SIZE.value
    out["variants"][name] = {"change": change, "step_s": step_s, "tflops": flops / step_s / 1e12,
                             "compile_s": compile_s, "loss": float(m["loss"])}
    print(f"[{name}] {step_s * 1e3:.2f} ms", file=sys.stderr, flush=True)
  base = out["variants"]["as_is"]["step_s"]
  for v in out["variants"].values():
    v["saved_ms"] = (base - v["step_s"]) * 1e3
  text = json.dumps(out, indent=1)
  if _OUT.value:
    pathlib.Path(_OUT.value).write_text(text + "\n")
  print(text)


if __name__ == "__main__":
  sys.exit(app.run(main))
