"""Task `pipeline`: the stages in order, skipping those whose outputs are complete.

A stage is complete when its final artifact exists; every stage writes that artifact
last (atomically), so a run killed at any moment reruns at most the stage it was in,
and that stage resumes from its own partial state (label cache, checkpoints).
"""

from __future__ import annotations

import os

from absl import logging

from interdistill_jax import tasks


def _outputs(config, workdir: str) -> dict[str, list[str]]:
  j = lambda *p: os.path.join(workdir, *p)  # noqa: E731
  return {
      "retrieve": [j("candidates", f"{s}.trec") for s in config.retrieve.splits],
      "label": [j("labels", "stats.json")],
      "train_ranker": [j("ranker", "done.json")],
      "distill": [os.path.join(_distill_dir(config, workdir), "done.json")],
      "evaluate": [j("eval", "report.md")],
  }


def _distill_dir(config, workdir: str) -> str:
  from interdistill_jax import distill  # noqa: PLC0415 (JAX only when the pipeline runs)
  return distill.output_dir(config, workdir)


def is_complete(stage: str, config, workdir: str) -> bool:
  return all(os.path.exists(p) for p in _outputs(config, workdir)[stage])


def run(config, workdir: str) -> None:
  """Runs `config.pipeline.stages` in order; finished stages are skipped."""
  for stage in config.pipeline.stages:
    if stage not in _outputs(config, workdir):
      raise ValueError(f"pipeline.stages: unknown stage {stage!r}")
    if is_complete(stage, config, workdir):
      logging.info("pipeline: %s already complete in %s, skipping", stage, workdir)
      continue
    logging.info("pipeline: running %s", stage)
    tasks.resolve(stage)(config, workdir)
