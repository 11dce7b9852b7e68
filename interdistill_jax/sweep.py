"""Sweeps: the pipeline over a grid of settings, one workdir per point, sharing what it can.

  python -m interdistill_jax.sweep --config=configs/scifact.py \
      --config.data.dir=../shared/data/scifact \
      --sweep=configs/sweeps/learning_curve.py --root=runs/learning_curve
  python -m interdistill_jax.aggregate --root=runs/learning_curve

`--sweep` is a sweep file (`grid`): seeds x labelled queries x teacher settings x any config
field. Each point runs `pipeline` with the config plus its values in `ROOT/<point name>/`, the
points one after another. What does not depend on a point's values is computed once:

- `retrieve` (candidates, corpus embeddings) runs once per distinct data, model, encode and
  retrieve settings, in `ROOT/upstream/retrieve-<key>/`;
- `label` runs once per distinct teacher and label settings, in `ROOT/upstream/label-<key>/`,
  with the config of the first point that needs it (the points differing only in seeds or
  training settings take the same labels). Points that differ only in `label.max_queries`
  label nested query sets (`label.sample_seed`): the largest is labelled first and every
  smaller one starts from its call cache, so no LLM call is paid twice;
- `train_ranker` is taken from another point whose ranker finished from the same inputs
  (points that differ only in distillation settings).

A point takes a stage only when the stage's recorded inputs (`provenance`) equal the ones the
point would give it (`sharing`). Rerunning the command skips finished points; a killed point
resumes through the pipeline's own resume. Each workdir is locked while it runs, so the same
command started twice shares the work: a point another process holds is skipped.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from interdistill_jax import data as data_lib
from interdistill_jax import files, grid, layout, locking, models, pipeline, provenance, sharing



def _define_flags() -> None:
  """The command's flags, defined only when it runs (tests import this module beside `main`,
  whose flags share these names)."""
  config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py): every point "
                                  "starts from it.", lock_config=True)
  flags.DEFINE_string("sweep", None, "Sweep file (configs/sweeps/*.py[:arg]).")
  flags.DEFINE_string("root", None, "Directory of the points' workdirs.")
  flags.DEFINE_bool("dry_run", False, "Print the points and what they share; run nothing.")
  flags.DEFINE_bool("verbose_errors", False, "Log a failed point's traceback.")
  flags.DEFINE_bool("replace", False, "Recompute points whose workdirs were run with other "
                    "settings (their outputs are moved to stale/); without it such a sweep stops.")


@dataclasses.dataclass
class Store:
  """A workdir where one upstream stage runs once for every point that needs it."""
  stage: str
  workdir: str
  config: object
  retrieve: Store | None = None       # label: the store whose candidates it labels
  answers_from: Store | None = None   # label: the largest selection of its group
  points: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class PlannedPoint:
  name: str
  values: dict
  workdir: str
  config: object
  stores: dict  # stage -> Store


def _key(obj) -> str:
  return provenance.fingerprint(obj)[:12]


def _max_queries_order(n: int) -> float:
  return float("inf") if n <= 0 else n


def _retrieve_key(root: str, current: dict) -> str:
  """The key of the root's retrieve store for inputs `current`: their fingerprint's, or that of a
  store already finished from the same inputs recorded under another spelling of the data's
  location (`provenance.same_inputs`), so that spelling `data.dir` otherwise reruns nothing."""
  key = _key(current)
  if provenance.read_marker("retrieve", layout.upstream_dir(root, "retrieve", key)) is not None:
    return key
  pattern = layout.upstream_dir(root, "retrieve", "*")
  prefix = os.path.basename(pattern)[:-1]
  for path in files.glob(os.path.dirname(pattern), os.path.basename(pattern)):
    recorded = provenance.read_marker("retrieve", path)
    if recorded and provenance.same_inputs(recorded, current):
      return os.path.basename(path)[len(prefix):]
  return key


def plan(base_config, axes, root: str, *, source: str = "sweep") -> list[PlannedPoint]:
  """The points of the grid and the upstream workdirs they share."""
  planned, stores = [], {}
  groups: dict[str, list[Store]] = {}  # label stores that differ only in label.max_queries
  for point in grid.points(axes, source=source):
    config = grid.apply(base_config, point.values, source=source)
    stages = tuple(config.pipeline.stages)
    for name in stages:
      pipeline.stage(name)
    p = PlannedPoint(point.name, point.values, layout.point_dir(root, point.name), config, {})
    if "retrieve" in stages:
      r_key = _retrieve_key(root, provenance.inputs("retrieve", config, p.workdir))
      path = layout.upstream_dir(root, "retrieve", r_key)
      p.stores["retrieve"] = stores.setdefault(path, Store("retrieve", path, config))
      if "label" in stages:
        fields = provenance.config_fields("label", config)
        group = _key({"retrieve": r_key, "label": {k: v for k, v in fields.items()
                                                    if k != "label.max_queries"}})
        path = layout.upstream_dir(root, "label", _key({"retrieve": r_key, "label": fields}))
        if path not in stores:
          first = groups.setdefault(group, [])
          # The group's first point labels every selection of the group (the same teacher
          # settings, seed included, so the call cache answers the smaller ones).
          store_config = first[0].config.copy_and_resolve_references() if first else config
          store_config.label.max_queries = config.label.max_queries
          stores[path] = Store("label", path, store_config, retrieve=p.stores["retrieve"])
          first.append(stores[path])
        p.stores["label"] = stores[path]
    for store in p.stores.values():
      store.points.append(p.name)
    planned.append(p)
  for members in groups.values():
    largest = max(members, key=lambda s: _max_queries_order(s.config.label.max_queries))
    for store in members:
      store.answers_from = None if store is largest else largest
  return planned


def is_finished(point: PlannedPoint) -> bool:
  return all(pipeline.is_complete(s, point.config, point.workdir) for s in point.config.pipeline.stages)


def _run_store(store: Store) -> None:
  """Runs the store's stage (and takes its upstream from the other stores) unless it is done."""
  config = store.config.copy_and_resolve_references()
  config.pipeline.stages = ("retrieve",) if store.stage == "retrieve" else ("retrieve", "label")
  if pipeline.is_complete(store.stage, config, store.workdir):
    return
  if store.retrieve is not None:
    _run_store(store.retrieve)
  if store.answers_from is not None:
    _run_store(store.answers_from)
  lock = locking.lock_workdir(store.workdir, wait=True)  # another sweep may be running it
  try:
    if pipeline.is_complete(store.stage, config, store.workdir):
      return
    if store.retrieve is not None and not pipeline.is_complete("retrieve", config, store.workdir):
      if not sharing.adopt("retrieve", config, store.workdir, store.retrieve.workdir):
        raise RuntimeError(f"{store.workdir}: the candidates of {store.retrieve.workdir} were "
                           "computed from other inputs than this store's")
    if store.answers_from is not None:
      added = sharing.add_answers(store.answers_from.workdir, store.workdir)
      logging.info("sweep: %s starts from %d answers of %s", store.workdir, added,
                   store.answers_from.workdir)
    logging.info("sweep: running %s in %s (for %d points)", store.stage, store.workdir,
                 len(store.points))
    pipeline.run(config, store.workdir)
  finally:
    lock.close()


def _ranker_source(point: PlannedPoint, others: list[str]) -> str | None:
  for workdir in others:
    if workdir != point.workdir and sharing.matches("train_ranker", point.config, workdir, point.workdir):
      return workdir
  return None


def run_point(point: PlannedPoint, other_workdirs: list[str]) -> None:
  """Takes the shared stages the point's inputs allow, then runs its pipeline. The caller holds
  the point's lock."""
  data_lib.write_json(layout.point_record(point.workdir),
                      {"name": point.name, "values": point.values,
                       "config": json.loads(point.config.to_json())})
  for stage in sharing.SHAREABLE:
    if stage not in point.config.pipeline.stages or pipeline.is_complete(stage, point.config, point.workdir):
      continue
    if stage in point.stores:
      _run_store(point.stores[stage])
      source = point.stores[stage].workdir
    else:
      source = _ranker_source(point, other_workdirs) if stage == "train_ranker" else None
    if source is None or not sharing.adopt(stage, point.config, point.workdir, source):
      break  # computed by the point itself, and so is every later stage
  pipeline.run(point.config, point.workdir)


def write_plan(root: str, points: list[PlannedPoint], argv: list[str]) -> dict:
  """ROOT/sweep.json: this sweep's points and stores added to those already recorded there."""
  path = layout.sweep_plan(root)
  record = {"points": {}, "axes": [], "upstream": {}, "commands": []}
  if files.exists(path):
    with files.open_file(path, "r") as f:
      record = json.load(f)
  for p in points:
    record["points"][p.name] = {"values": json.loads(json.dumps(p.values))}
    for field in p.values:
      if field not in record["axes"]:
        record["axes"].append(field)
    for store in p.stores.values():
      entry = record["upstream"].setdefault(os.path.relpath(store.workdir, root),
                                            {"stage": store.stage, "points": []})
      if p.name not in entry["points"]:
        entry["points"].append(p.name)
  if argv not in record["commands"]:
    record["commands"].append(argv)
  data_lib.write_json(path, record)
  return record


def clashes(points: list[PlannedPoint]) -> dict[str, list[str]]:
  """Points whose workdir holds a point run with other result-changing settings (another sweep
  whose points got the same names: an axis with one value stays out of the names), with what
  differs. Running them would move that point's outputs aside and recompute them."""
  out = {}
  for p in points:
    path = layout.point_record(p.workdir)
    if not files.exists(path):
      continue
    try:
      before = provenance.result_settings(
          ml_collections.ConfigDict(data_lib.read_json(path)["config"]))
    except (KeyError, AttributeError, data_lib.DataError) as e:
      logging.warning("%s: not compared with this sweep's settings (%s)", path, e)
      continue
    now = provenance.result_settings(p.config)
    diffs = [f"{k}: {before.get(k, '<absent>')!r} then, {now.get(k, '<absent>')!r} now"
             for k in sorted(set(before) | set(now)) if before.get(k, "<absent>") != now.get(k, "<absent>")]
    if diffs:
      out[p.name] = diffs
  return out


def _clash_message(root: str, found: dict[str, list[str]]) -> str:
  lines = [f"{name}: {'; '.join(diffs)}" for name, diffs in found.items()]
  return (f"{root}: {len(found)} points of this sweep have the names of points run there with other "
          "settings:\n  " + "\n  ".join(lines) + "\nName them apart (give the axis that differs "
          "two values, e.g. the config's own beside the new one), use another root, or pass "
          "--replace to recompute them (their outputs are moved to stale/, never deleted)")


def describe(points: list[PlannedPoint], root: str) -> str:
  """The plan in words: each point, and each shared workdir with the points it serves."""
  lines = [f"{len(points)} points under {root}:"]
  lines += [f"  {p.name}" for p in points]
  stores = {id(s): s for p in points for s in p.stores.values()}.values()
  for s in stores:
    extra = (f", from the call cache of {os.path.relpath(s.answers_from.workdir, root)}"
             if s.answers_from else "")
    lines.append(f"{os.path.relpath(s.workdir, root)} ({s.stage}{extra}): {', '.join(s.points)}")
  return "\n".join(lines)


def run(base_config, axes, root: str, *, source: str = "sweep", argv: list[str] | None = None,
        verbose_errors: bool = False, replace: bool = False) -> list[str]:
  """Runs every point not finished yet, one after another; returns the names of those that
  failed (each failure is logged, and the others still run). A point whose workdir was run with
  other settings (`clashes`) stops the sweep before anything runs, unless `replace`."""
  if not files.is_local(root):
    raise ValueError(f"--root={root}: a sweep's root must be on local disk (its points share "
                     "embeddings through symbolic links and LLM answers through SQLite files)")
  points = plan(base_config, axes, root, source=source)
  found = clashes(points)
  if found and not replace:
    raise grid.SweepError(_clash_message(root, found))
  for p in points:  # before JAX starts its backends
    models.prepare_backend(p.config)
  record = write_plan(root, points, argv or [])
  workdirs = [layout.point_dir(root, name) for name in record["points"]]
  done = {p.name for p in points if is_finished(p)}
  failed, busy = [], []
  logging.info("sweep: %s", _progress(points, done, failed, busy, None))
  for p in points:
    if p.name in done:
      continue
    logging.info("sweep: %s", _progress(points, done, failed, busy, p.name))
    try:
      lock = locking.lock_workdir(p.workdir)
    except locking.WorkdirBusy as e:
      logging.warning("sweep: %s skipped: %s", p.name, e)
      busy.append(p.name)
      continue
    try:
      run_point(p, workdirs)
      done.add(p.name)
    except Exception as e:  # noqa: BLE001 (one point's failure does not stop the others)
      if verbose_errors:
        logging.exception("sweep: point %s failed", p.name)
      logging.error("sweep: point %s failed: %s", p.name, e)
      failed.append(p.name)
    finally:
      lock.close()
  logging.info("sweep: %s", _progress(points, done, failed, busy, None))
  return failed


def _progress(points, done, failed, busy, running) -> str:
  left = len(points) - len(done) - len(failed) - len(busy) - (running is not None)
  parts = [f"{len(done)}/{len(points)} points done"]
  if running is not None:
    parts.append(f"running {running}")
  parts.append(f"{left} left")
  if failed:
    parts.append(f"{len(failed)} failed")
  if busy:
    parts.append(f"{len(busy)} held by another run")
  return ", ".join(parts)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  try:
    axes = grid.load(f.sweep)
    if f.dry_run:
      points = plan(f.config, axes, f.root, source=f.sweep)
      found = clashes(points)
      print(describe(points, f.root)  # noqa: T201
            + (f"\n{_clash_message(f.root, found)}" if found else ""))
      return
    failed = run(f.config, axes, f.root, source=f.sweep, argv=sys.argv[1:],
                 verbose_errors=f.verbose_errors, replace=f.replace)
  except ValueError as e:
    if f.verbose_errors:
      raise
    sys.stderr.write(f"error: {e}\n(--verbose_errors shows the traceback)\n")
    sys.exit(1)
  if failed:
    sys.stderr.write(f"error: {len(failed)} points failed ({', '.join(failed)}); the log says why. "
                     "Rerun the command to retry them (finished points are skipped)\n")
    sys.exit(1)


if __name__ == "__main__":
  _define_flags()
  flags.mark_flags_as_required(["config", "sweep", "root"])
  app.run(main)
