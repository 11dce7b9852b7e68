"""Offline demo on SciFact with the packaged all-MiniLM-L6-v2 (what `make demo` runs).

  python -m interdistill_jax.main --config=configs/demo.py --config.data.dir=../shared/data/scifact

Runs the pipeline's stages in order in runs/demo, skipping those already complete, and prints
the evaluation table.
"""

from interdistill_jax import defaults


def get_config(arg=None):
  del arg
  config = defaults.base_config()
  config.task = "pipeline"
  config.data.dir = "../shared/data/scifact"
  config.data.name = "scifact"
  config.pipeline.stages = ("retrieve", "evaluate")
  return config
