"""Task name -> `run(config, workdir)`: the plain table `main` and `pipeline` dispatch through."""

import importlib

# Modules are imported only when their task runs.
TASKS = {
    "retrieve": "interdistill_jax.retrieval:run",
    "label": "interdistill_jax.labeling:run",
    "train_ranker": "interdistill_jax.ranker:run",
    "distill": "interdistill_jax.distill:run",
    "evaluate": "interdistill_jax.evaluate:run",
    "export": "interdistill_jax.hf_export:run",
    "pipeline": "interdistill_jax.pipeline:run",
}


def resolve(name: str):
  if name not in TASKS:
    raise ValueError(f"unknown task {name!r}; choose one of {sorted(TASKS)}")
  module, fn = TASKS[name].split(":")
  return getattr(importlib.import_module(module), fn)
