"""Finished stages taken from another workdir whose recorded inputs are this workdir's own.

Every done marker records what its stage was computed from (`provenance`). When another workdir
holds a stage finished from exactly the inputs this workdir would give it now (the same config
fields, data files and upstream fingerprints), its outputs are copied in, and `pipeline` then
finds the stage current and skips it. Nothing is decided by names: only recorded inputs count.

What is taken (`adopt`):
- `retrieve`: candidates/ copied; the corpus embeddings linked (relative symlinks, one per cache
  entry, so a workdir's own later entries stay its own);
- `label`: labels.jsonl, stats.json and the inputs it started from, and every answer of the
  LLM call cache (added to this workdir's cache, never replacing it);
- `train_ranker`: ranker/ without `checkpoints/latest` (only a run that resumes reads it).
`add_answers` copies only the call cache: a label run over a subset of the queries then pays
nothing.
"""

from __future__ import annotations

import os
import shutil

from absl import logging

from interdistill_jax import layout, pipeline, provenance
from interdistill_jax.teachers.cache import Cache

# The stages a sweep takes from elsewhere when their inputs match, in pipeline order.
SHAREABLE = ("retrieve", "label", "train_ranker")


def matches(name: str, config, source: str, workdir: str) -> bool:
  """Whether `source` holds stage `name` finished from the inputs it has in `workdir` now."""
  recorded = provenance.read_marker(name, source)
  if not recorded or "fingerprint" not in recorded:
    return False
  return provenance.same_inputs(recorded, provenance.inputs(name, config, workdir))


def _copy_stage_dir(src: str, dst: str, *, skip: tuple[str, ...] = ()) -> None:
  """Copies a stage directory (less partial files and the relative paths in `skip`), its done
  marker last: a copy cut short leaves the stage unfinished, never finished and incomplete."""
  src, dst = os.path.normpath(src), os.path.normpath(dst)

  def ignore(directory, names):
    rel = os.path.relpath(directory, src)
    out = {n for n in names if ".tmp" in n or os.path.normpath(os.path.join(rel, n)) in skip}
    return out | ({layout.DONE} if rel == "." else set())

  shutil.copytree(src, dst, ignore=ignore)
  shutil.copy2(layout.done(src), layout.done(dst))


def _copy_candidates(source: str, workdir: str) -> None:
  _copy_stage_dir(layout.candidates_dir(source), layout.candidates_dir(workdir))
  src_emb, dst_emb = layout.embeddings_dir(source), layout.embeddings_dir(workdir)
  if not os.path.isdir(src_emb):
    return
  os.makedirs(dst_emb, exist_ok=True)
  for entry in sorted(os.listdir(src_emb)):
    dst = os.path.join(dst_emb, entry)
    if ".tmp" in entry or os.path.lexists(dst):
      continue
    os.symlink(os.path.relpath(os.path.realpath(os.path.join(src_emb, entry)), dst_emb), dst)


def add_answers(source: str, workdir: str) -> int:
  """Adds the answers of `source`'s LLM call cache to `workdir`'s; returns how many were new."""
  path = layout.label_cache(source)
  if not os.path.exists(path):
    return 0
  src, dst = Cache(path), Cache(layout.label_cache(workdir))
  try:
    return dst.add_from(src)
  finally:
    src.close()
    dst.close()


def _copy_labels(source: str, workdir: str) -> None:
  os.makedirs(layout.labels_dir(workdir), exist_ok=True)
  add_answers(source, workdir)
  # stats.json, the marker, last.
  for path in (provenance.started("label", source), layout.labels(source), layout.label_stats(source)):
    if os.path.exists(path):
      shutil.copy2(path, os.path.join(layout.labels_dir(workdir), os.path.basename(path)))


def _copy_ranker(source: str, workdir: str) -> None:
  _copy_stage_dir(layout.ranker_dir(source), layout.ranker_dir(workdir),
                  skip=(os.path.join("checkpoints", "latest"),))


_COPY = {"retrieve": _copy_candidates, "label": _copy_labels, "train_ranker": _copy_ranker}


def adopt(name: str, config, workdir: str, source: str) -> bool:
  """Takes stage `name` from `source` when it finished there from the inputs it has in
  `workdir` now (`matches`): whatever `workdir` holds of the stage (a partial run, or outputs of
  other settings) is moved to `stale/` first. Returns whether it was taken."""
  if name not in _COPY:
    raise ValueError(f"stage {name!r} is not shared; shared stages: {list(_COPY)}")
  if os.path.realpath(source) == os.path.realpath(workdir) or not matches(name, config, source, workdir):
    return False
  moved = provenance.move_aside(name, workdir)
  if moved:
    logging.info("%s: %s's earlier outputs moved to %s", workdir, name, moved)
  _COPY[name](source, workdir)
  if not pipeline.is_complete(name, config, workdir):
    raise RuntimeError(f"{workdir}: {name} taken from {source} is not current there: "
                       f"{pipeline.state(name, config, workdir)}")
  logging.info("%s: %s taken from %s (the same recorded inputs)", workdir, name, source)
  return True
