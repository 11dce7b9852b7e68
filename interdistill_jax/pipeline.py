"""Task `pipeline`: the stages of `pipeline.stages` in order, skipping those already done.

The stages and their done markers are `layout.STAGES`: retrieve, label, train_ranker, distill,
the ablations `direct` (distillation from the LLM's rankings) and `supervised` (from the gold
qrels), evaluate and export. A stage is complete when its done markers exist; every stage writes
them last (atomically), so a run killed at any moment reruns at most the stage it was in, and that
stage resumes from its own partial state (label cache, checkpoints).
"""

from __future__ import annotations

import os

from absl import logging

from interdistill_jax import layout, tasks


def stage(name: str) -> layout.Stage:
  if name not in layout.STAGES:
    raise ValueError(f"pipeline.stages: unknown stage {name!r}; choose from {list(layout.STAGES)}")
  return layout.STAGES[name]


def stage_config(name: str, config):
  """The config the stage runs with: `config` with the stage's overrides (e.g. the teacher)."""
  overrides = stage(name).overrides
  if not overrides:
    return config
  config = config.copy_and_resolve_references()
  for key, value in overrides:
    *parents, field = key.split(".")
    section = config
    for p in parents:
      section = section[p]
    section[field] = value
  return config


def is_complete(name: str, config, workdir: str) -> bool:
  return all(os.path.exists(p) for p in stage(name).outputs(stage_config(name, config), workdir))


def run(config, workdir: str) -> None:
  """Runs `config.pipeline.stages` in order; finished stages are skipped."""
  for name in config.pipeline.stages:
    stage(name)  # every name is checked before anything runs
  for name in config.pipeline.stages:
    if is_complete(name, config, workdir):
      logging.info("pipeline: %s already complete in %s, skipping", name, workdir)
      continue
    logging.info("pipeline: running %s", name)
    tasks.resolve(stage(name).task)(stage_config(name, config), workdir)
