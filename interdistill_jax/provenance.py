"""What each stage was computed from, so that nothing stale is ever reused.

A stage's *inputs* are the config fields it reads that can change its result, the identity of the
data set files, and the fingerprints of the upstream stages it consumed. Each stage records its
inputs and their fingerprint in its done marker. Then:

- `pipeline` reruns a stage whose recorded fingerprint differs from the current one (and so
  everything downstream of it), and says which fields changed;
- a single task whose upstream was computed from other settings stops with an error naming the
  field and both values (`check_upstream`);
- a stage that starts over outputs left by other settings moves them aside to `stale/` first
  (`begin`), so a resumed run never mixes two configurations. The LLM call caches stay: a cached
  answer is keyed by the prompt, so it is reused exactly when it is still right.

Settings that cannot change a result (concurrency, rate limits, retries, inference batch sizes,
checkpoint cadence, Hub destinations) are `NEUTRAL` and never make a stage stale.
"""

from __future__ import annotations

import datetime
import glob
import hashlib
import json
import os
from collections.abc import Mapping

from absl import logging

from interdistill_jax import assets, digests, files, layout, peers
from interdistill_jax import data as data_lib

# Config fields that cannot change any stage's result.
NEUTRAL = frozenset({
    "data.cache_dir", "data.download_url", "data.name",
    "encode.batch_size", "encode.cache", "encode.token_cache", "retrieve.block_size",
    "retrieve.exact_backend",
    "teacher.concurrency", "teacher.rpm", "teacher.max_retries", "teacher.backoff_base",
    "teacher.backoff_max", "teacher.max_retry_after", "teacher.timeout",
    "teacher.price_input_per_mtok", "teacher.price_output_per_mtok", "teacher.n_threads",
    "label.weak_teacher",
    "ranker.score_batch_size", "ranker.checkpoint_every", "ranker.keep_checkpoints",
    "ranker.log_every", "distill.checkpoint_every", "distill.keep_checkpoints", "distill.log_every",
    "reader.concurrency", "reader.rpm", "reader.max_retries", "reader.backoff_base",
    "reader.backoff_max", "reader.max_retry_after", "reader.timeout", "reader.n_threads",
    "export.push_to_hub", "export.private", "export.repo_id_retriever", "export.repo_id_ranker",
    "export.repo_id_labels",
})

# Fields that say where the data set's files are, not what they hold: their content digests
# (`data_files`) say that. Two spellings of one directory (relative, absolute, through a link), or a
# copy of it, are the same inputs (`same_inputs`). They stay in the recorded inputs and the
# fingerprint, which every stage recorded before this rule existed.
LOCATION = frozenset({"data.dir", "data.corpus_file"})

# Fields declared after stages began recording their inputs, with the default that does what
# the stage did before they existed: left out of the inputs at that default, so a workdir
# recorded earlier stays current.
ADDED_LATER = {"label.sample_seed": -1, "distill.interpolation": 1.0, "teacher.seed": 0}

# Provenance stages: the pipeline's `distill` is one of the three retriever stages, by teacher.
RETRIEVER_STAGES = layout.SYSTEM_TEACHERS

# stage -> (config sections or fields it reads, upstream stages it always consumes).
_READS = {
    "retrieve": (("data", "model", "encode", "retrieve"), ()),
    "label": (("teacher", "label"), ("retrieve",)),
    "train_ranker": (("ranker", "seed"), ("label", "retrieve")),
    "distilled": (("distill", "ranker.prefix_only", "ranker.top_k", "seed"),
                  ("train_ranker", "label", "retrieve")),
    "direct": (("distill", "ranker.prefix_only", "ranker.top_k", "seed"), ("label", "retrieve")),
    "supervised": (("distill", "ranker.prefix_only", "ranker.top_k", "seed"), ("label", "retrieve")),
    "evaluate": (("eval", "reader", "seed", "distill.interpolation"), ("retrieve",)),
    "export": (("export", "distill.interpolation"), ()),
}
# Fields of a section a stage does not read: the loss on the LLM's rankings is the direct
# reference's (and how much of them it trusts), the ranker's depth the distilled retriever's;
# the interpolation is applied where a trained retriever is loaded (evaluate, export).
_NOT_READ = {"distilled": {"distill.llm_loss", "distill.llm_top_k", "distill.interpolation"},
             "direct": {"distill.depth", "distill.interpolation"},
             "supervised": {"distill.llm_loss", "distill.llm_top_k", "distill.depth",
                            "distill.interpolation"}}
# Stages whose outputs evaluate and export read when they exist.
_OPTIONAL_UPSTREAM = {
    "evaluate": ("label", "train_ranker", "distilled", "direct", "supervised"),
    "export": ("label", "train_ranker", "distilled"),
}


class StaleInput(ValueError):
  """An upstream artifact was computed from other settings than the current config's."""


def stage_name(task_stage: str, config) -> str:
  """The provenance stage of a pipeline stage (`distill` resolves by `distill.teacher`)."""
  if task_stage == "distill":
    return layout.TEACHER_SYSTEMS[layout.check_teacher(config.distill.teacher)]
  return task_stage


def stage_config(name: str, config):
  """`config` as stage `name` reads it: the retriever stages fix `distill.teacher`."""
  teacher = RETRIEVER_STAGES.get(name)
  if teacher is None or config.distill.teacher == teacher:
    return config
  config = config.copy_and_resolve_references()
  config.distill.teacher = teacher
  return config


def marker(name: str, workdir: str) -> str:
  """The done marker that carries stage `name`'s inputs."""
  if name in RETRIEVER_STAGES:
    return layout.done(layout.retriever_dir(workdir, RETRIEVER_STAGES[name]))
  return {"retrieve": layout.done(layout.candidates_dir(workdir)),
          "label": layout.label_stats(workdir),
          "train_ranker": layout.done(layout.ranker_dir(workdir)),
          "evaluate": layout.done(layout.eval_dir(workdir)),
          "export": layout.done(layout.export_dir(workdir))}[name]


def _flatten(value, prefix: str, out: dict) -> None:
  if isinstance(value, Mapping) or hasattr(value, "items") and not isinstance(value, (str, bytes)):
    for key, sub in value.items():
      _flatten(sub, f"{prefix}.{key}" if prefix else key, out)
  else:
    out[prefix] = list(value) if isinstance(value, tuple) else value


def config_fields(name: str, config) -> dict:
  """The result-changing config fields stage `name` reads, flattened (`a.b.c` -> value)."""
  config = stage_config(name, config)
  flat = {}
  for key in _READS[name][0]:
    node = config
    for part in key.split("."):
      node = node[part]
    _flatten(node, key, flat)
  ignored = NEUTRAL | _NOT_READ.get(name, set())
  return {k: v for k, v in sorted(flat.items())
          if k not in ignored and not (k in ADDED_LATER and v == ADDED_LATER[k])}


def result_settings(config) -> dict:
  """Every config field that can change some stage's result (each stage's `config_fields`),
  less where the data lies (`LOCATION`): two configs with the same ones compute the same
  outputs from the same data."""
  fields = {}
  for name in _READS:
    fields.update(config_fields(name, config))
  return {k: v for k, v in fields.items() if k not in LOCATION}


def _data_files(config, recorded: Mapping | None = None) -> dict:
  """The content digest of each of the data set's files (fetched or written first where the
  config says how): an edited corpus, query or qrels file makes retrieve, and all after it,
  stale; the same bytes copied again (new mtimes) do not (`digests`).

  `recorded` is what the workdir's retrieve marker holds: a file that older versions identified
  by size and mtime keeps that identity while both are unchanged, so upgrading reruns nothing."""
  root = assets.ensure_dataset(config.data)
  corpus = config.data.corpus_file
  paths = [corpus if os.path.isabs(corpus) else os.path.join(root, corpus),
           os.path.join(root, "queries.jsonl"), *sorted(glob.glob(os.path.join(root, "qrels", "*"))),
           *sorted(glob.glob(os.path.join(root, "splits", "*")))]
  recorded = recorded or {}
  out = {}
  for path in paths:
    if os.path.isfile(path):
      name = os.path.relpath(path, root)
      old = recorded.get(name)
      if isinstance(old, str) and not old.startswith(digests.PREFIX) and old == digests.stat_id(path):
        out[name] = old
      else:
        out[name] = digests.content_id(path, config.data.cache_dir)
  return out


def read_marker(name: str, workdir: str) -> dict | None:
  """Stage `name`'s done marker; None when it is absent or damaged (the stage counts as not done
  and runs again, resuming from its own files: no LLM call is paid twice)."""
  return _read_record(marker(name, workdir))


_DAMAGED: set[str] = set()  # damaged records already reported


def _read_record(path: str) -> dict | None:
  if not files.exists(path):
    return None
  try:
    return data_lib.read_json(path)
  except data_lib.DataError as e:
    if path not in _DAMAGED:
      _DAMAGED.add(path)
      logging.warning("%s: a damaged record, taken as absent: its stage runs again and resumes "
                      "from its own files", e)
    return None


def upstream(name: str, workdir: str) -> tuple[str, ...]:
  """The stages `name` consumes: its fixed ones, and for evaluate/export those that finished."""
  fixed = _READS[name][1]
  optional = tuple(s for s in _OPTIONAL_UPSTREAM.get(name, ()) if read_marker(s, workdir) is not None)
  return fixed + tuple(s for s in optional if s not in fixed)


def inputs(name: str, config, workdir: str) -> dict:
  """Stage `name`'s inputs now: its config fields, the data files (retrieve), and the recorded
  fingerprint of each upstream stage (None where that stage has not finished)."""
  out = {"config": config_fields(name, config)}
  if name == "retrieve":
    recorded = (read_marker(name, workdir) or {}).get("inputs", {})
    out["data_files"] = _data_files(config, recorded.get("data_files"))
  ups = {}
  for up in upstream(name, workdir):
    recorded = read_marker(up, workdir)
    ups[up] = None if recorded is None else recorded.get("fingerprint", "unrecorded")
  out["upstream"] = ups
  return out


def fingerprint(stage_inputs: Mapping) -> str:
  text = json.dumps(stage_inputs, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def record(name: str, config, workdir: str) -> dict:
  """What stage `name` writes into its done marker: {"inputs": ..., "fingerprint": ...}."""
  stage_inputs = inputs(name, config, workdir)
  return {"inputs": stage_inputs, "fingerprint": fingerprint(stage_inputs)}


def differences(recorded: Mapping, current: Mapping) -> list[str]:
  """Human-readable differences between recorded and current inputs, most specific first."""
  out = []
  rc, cc = recorded.get("config", {}), current.get("config", {})
  for key in sorted(set(rc) | set(cc)):
    if rc.get(key, "<absent>") != cc.get(key, "<absent>"):
      out.append(f"{key}: {rc.get(key, '<absent>')!r} then, {cc.get(key, '<absent>')!r} now")
  rd, cd = recorded.get("data_files", {}), current.get("data_files", {})
  for key in sorted(set(rd) | set(cd)):
    if rd.get(key) != cd.get(key):
      out.append(f"data file {key} changed")
  ru, cu = recorded.get("upstream", {}), current.get("upstream", {})
  for key in sorted(set(ru) | set(cu)):
    if ru.get(key) != cu.get(key):
      out.append(f"the {key} stage's output changed (fingerprint {ru.get(key)} then, {cu.get(key)} now)")
  return out


def same_inputs(recorded: Mapping, current: Mapping) -> bool:
  """Whether a done marker (`recorded`: its "fingerprint" and "inputs") was computed from the
  inputs `current`: the same fingerprint, or inputs that differ only in `LOCATION` fields while
  every data file's content digest is the same."""
  if recorded.get("fingerprint") == fingerprint(current):
    return True
  before = recorded.get("inputs")
  if not isinstance(before, Mapping) or not before.get("data_files") \
      or before.get("data_files") != current.get("data_files"):
    return False

  def without_location(stage_inputs):
    fields = {k: v for k, v in stage_inputs.get("config", {}).items() if k not in LOCATION}
    return {**stage_inputs, "config": fields}

  return fingerprint(without_location(before)) == fingerprint(without_location(current))


def status(name: str, config, workdir: str) -> tuple[str, list[str]]:
  """("missing" | "current" | "stale" | "unrecorded", differences) of stage `name`'s output."""
  recorded = read_marker(name, workdir)
  if recorded is None:
    return "missing", []
  if "fingerprint" not in recorded:
    return "unrecorded", []
  current = inputs(name, config, workdir)
  if same_inputs(recorded, current):
    return "current", []
  return "stale", differences(recorded.get("inputs", {}), current) or ["its inputs changed"]


def check_upstream(name: str, config, workdir: str) -> None:
  """Stops when an upstream stage stage `name` consumes was computed from other settings (or
  from another upstream output) than the current config's, naming what changed."""
  for up in upstream(name, workdir):
    state, diffs = status(up, config, workdir)
    if state == "stale":
      raise StaleInput(
          f"{marker(up, workdir)} was computed from other settings than this config's: "
          f"{'; '.join(diffs)}. Rerun `{_task(up)}` (or `pipeline`, which reruns what is stale), "
          f"or run with the settings it was made with")
    if state == "unrecorded":
      logging.warning("%s records no inputs (written by an older version): it cannot be checked "
                      "against this config", marker(up, workdir))


def _task(name: str) -> str:
  if name in RETRIEVER_STAGES:
    return f"distill --config.distill.teacher={RETRIEVER_STAGES[name]}"
  return name


# What a stage that starts afresh moves aside (never the LLM call caches).
def _outputs(name: str, workdir: str) -> list[str]:
  if name == "retrieve":
    return [layout.candidates_dir(workdir)]
  if name == "label":
    return [layout.labels(workdir), layout.label_stats(workdir), layout.label_partial_stats(workdir),
            started(name, workdir)]
  if name == "train_ranker":
    return [layout.ranker_dir(workdir)]
  if name in RETRIEVER_STAGES:
    return [layout.retriever_dir(workdir, RETRIEVER_STAGES[name])]
  if name == "evaluate":
    keep = {os.path.basename(layout.eval_file(workdir, "reader_cache.sqlite"))}
    d = layout.eval_dir(workdir)
    return [os.path.join(d, n) for n in files.listdir(d) if n not in keep] if files.is_dir(d) else []
  return [layout.export_dir(workdir)]


def started(name: str, workdir: str) -> str:
  """Where a stage writes its inputs when it starts (its resume is checked against them)."""
  return layout.started(os.path.dirname(marker(name, workdir)))


def begin(name: str, config, workdir: str, *, every_process: bool = True) -> dict:
  """Called as stage `name` starts: checks its upstream, moves aside outputs left by other
  settings (a finished stale output, or a partial run of another config), and records the
  inputs it starts from. Returns `record(...)` for its done marker.

  `every_process`: every process of a multi-host run calls it (process 0 alone moves and
  records, and none reads the workdir before it has); False where process 0 alone runs the stage.
  """
  check_upstream(name, config, workdir)
  rec = record(name, config, workdir)
  if _is_main_process():
    _settle(name, workdir, rec)
  if every_process:
    peers.barrier(f"provenance.begin:{name}")
  return rec


def _settle(name: str, workdir: str, rec: dict) -> None:
  """Moves aside what stage `name` left from other settings, and records `rec` as its start."""
  path = started(name, workdir)
  previous = _read_record(path)
  done = read_marker(name, workdir)
  left = previous or (done if done and "fingerprint" in done else None)
  if left is None and any(files.exists(p) for p in _outputs(name, workdir)):
    # Outputs from before inputs were recorded: the stage's own checks decide whether they
    # resume; recording inputs now would pass them off as this config's.
    return
  if left is not None and left.get("fingerprint") != rec["fingerprint"]:
    diffs = differences(left.get("inputs", {}), rec["inputs"]) or ["its inputs changed"]
    moved = move_aside(name, workdir)
    logging.warning("%s: the outputs in %s came from other settings (%s); moved to %s, starting "
                    "afresh", name, workdir, "; ".join(diffs), moved)
  data_lib.write_json(path, rec)


def move_aside(name: str, workdir: str) -> str | None:
  """Moves stage `name`'s outputs to `stale/<stage>-<time>/` (nothing is deleted; process 0)."""
  paths = [p for p in _outputs(name, workdir) if files.exists(p)]
  if not paths or not _is_main_process():
    return None
  stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
  dest = layout.stale_dir(workdir, name, stamp)
  files.makedirs(dest)
  for p in paths:
    files.move(p, os.path.join(dest, os.path.basename(p)))
  return dest


def _is_main_process() -> bool:
  import jax  # noqa: PLC0415 (provenance is read without JAX; only writers need the process index)
  return jax.process_index() == 0
