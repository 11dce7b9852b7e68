"""Task `pipeline`: the stages of `pipeline.stages` in order, skipping those already done.

The stages and their done markers are `layout.STAGES`: retrieve, label, train_ranker, distill,
the ablations `direct` (distillation from the LLM's rankings) and `supervised` (from the gold
qrels), evaluate and export. A stage is complete when its done marker exists and records the
inputs the config gives it now (`provenance`); every stage writes it last (atomically), so a run
killed at any moment reruns at most the stage it was in, and that stage resumes from its own
partial state (label cache, checkpoints) when that was started from the same inputs.
"""

from __future__ import annotations

from absl import logging

from interdistill_jax import files, layout, peers, provenance, tasks


def stage(name: str) -> layout.Stage:
  if name not in layout.STAGES:
    raise ValueError(f"pipeline.stages: unknown stage {name!r}; choose from {list(layout.STAGES)}")
  return layout.STAGES[name]


def stage_config(name: str, config):
  """The config pipeline stage `name` runs with (`direct` and `supervised` fix the teacher)."""
  return provenance.stage_config(provenance.stage_name(name, config), config)


def state(name: str, config, workdir: str) -> tuple[str, list[str]]:
  """("missing" | "current" | "stale" | "unrecorded", what changed) of pipeline stage `name`."""
  cfg = stage_config(name, config)
  if not all(files.exists(p) for p in stage(name).outputs(cfg, workdir)):
    return "missing", []
  return provenance.status(provenance.stage_name(name, cfg), cfg, workdir)


def is_complete(name: str, config, workdir: str) -> bool:
  """Done, and computed from what the config says now (or recorded before inputs were)."""
  return state(name, config, workdir)[0] in ("current", "unrecorded")


def run(config, workdir: str) -> None:
  """Runs `config.pipeline.stages` in order: a stage is skipped when its output is current, and
  rerun when it is missing or stale (then every later stage sees a changed input and reruns)."""
  for name in config.pipeline.stages:
    stage(name)  # every name is checked before anything runs
  for name in config.pipeline.stages:
    _run_stage(name, config, workdir)
    # With several processes, what process 0 wrote last (outputs, done marker) is in the shared
    # workdir before any process looks at the next stage.
    peers.barrier(f"pipeline:{name}")


def _run_stage(name: str, config, workdir: str) -> None:
  current, changes = state(name, config, workdir)
  if current in ("current", "unrecorded"):
    if current == "unrecorded":
      logging.warning("pipeline: %s in %s records no inputs (an older version wrote it): kept, "
                      "unchecked", name, workdir)
    logging.info("pipeline: %s already complete in %s, skipping", name, workdir)
    return
  if current == "stale":
    logging.warning("pipeline: %s is stale in %s (%s): rerunning it", name, workdir,
                    "; ".join(changes))
  logging.info("pipeline: running %s", name)
  tasks.resolve(stage(name).task)(stage_config(name, config), workdir)
