"""Two workdirs of the same config, artifact by artifact: what `kill_loop.py` checks a resumed
run against an uninterrupted one with.

`compare_workdirs(a, b)` walks both and compares each artifact by kind: TREC runs, reports and
plots byte for byte; JSON markers and JSONL logs field by field, less the fields that measure time
(and, in labels/stats.json, the counts of what the last run did); score caches and embeddings
array by array; the LLM call cache by its answers; every Orbax checkpoint restored and compared
array by array (parameters and optimizer state). Floats are compared exactly.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import sqlite3
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from interdistill_jax import layout

# Fields that measure time, not results: never compared.
TIMING_KEYS = frozenset({"finished", "seconds", "queries_per_second", "train/examples_per_s",
                         "created"})
# labels/stats.json fields that count what the *last* run did (calls made, cache hits, queries it
# labelled): a resumed run did less than an uninterrupted one by design. Reported, not compared.
RUN_FIELDS = {"labels/stats.json": ("queries.already_labelled", "queries.labelled", "windows",
                                    "repairs", "reasks", "calls", "cost_usd.this_run")}
# Not artifacts: the workdir lock and SQLite's journal files (the cache is read through SQLite).
_SKIPPED_NAMES = (".lock",)
_SKIPPED_SUFFIXES = ("-wal", "-shm")
# TensorBoard event files are a view of metrics.jsonl (which is compared), one file per run named
# by its start time: a resumed stage has one more. Not compared.
_SKIPPED_INFIXES = (".tfevents.",)


def is_debris(name: str, rel: str = "") -> bool:
  """A temporary file a kill left behind an atomic write (`data.atomic_write_text`'s `.tmp-*`,
  the `*.tmp.npy` / `*.tmp.npz` of the score and embedding caches), or a checkpoint a resumed
  run moved to `checkpoints/aside/` (never read again): reported apart from the artifacts."""
  return (name.startswith(".tmp-") or ".tmp." in name
          or f"{os.sep}checkpoints{os.sep}aside{os.sep}" in f"{os.sep}{rel}")


def checkpoint_steps(directory: str) -> tuple[list[int], int]:
  """(committed checkpoint steps, unfinished ones) in an Orbax manager's directory."""
  if not os.path.isdir(directory):
    return [], 0
  names = os.listdir(directory)
  return sorted(int(n) for n in names if n.isdigit()), sum(not n.isdigit() for n in names)


def _drop(obj, keys: frozenset, paths: Sequence[str] = (), prefix: str = ""):
  """`obj` without the dict keys named in `keys` (at any depth) or at the dotted `paths`."""
  if isinstance(obj, dict):
    return {k: _drop(v, keys, paths, f"{prefix}{k}.") for k, v in obj.items()
            if k not in keys and f"{prefix}{k}" not in paths}
  if isinstance(obj, list):
    return [_drop(v, keys, paths, prefix) for v in obj]
  return obj


def _get(obj, path: str):
  for part in path.split("."):
    if not isinstance(obj, dict) or part not in obj:
      return None
    obj = obj[part]
  return obj


def json_differences(a, b, prefix: str = "", limit: int = 10) -> list[str]:
  """Where two JSON values differ (dotted paths; exact equality, floats included)."""
  out: list[str] = []
  if isinstance(a, dict) and isinstance(b, dict):
    for k in sorted(set(a) | set(b), key=str):
      p = f"{prefix}{k}"
      if k not in a or k not in b:
        out.append(f"{p}: only in {'B' if k not in a else 'A'}")
      else:
        out += json_differences(a[k], b[k], p + ".", limit)
  elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
    for i, (x, y) in enumerate(zip(a, b)):
      out += json_differences(x, y, f"{prefix}{i}.", limit)
  elif a != b or type(a) is not type(b):
    out.append(f"{prefix.rstrip('.')}: {json.dumps(a)[:80]} (A) vs {json.dumps(b)[:80]} (B)")
  return out[:limit]


def _compare_json(a: pathlib.Path, b: pathlib.Path, rel: str) -> list[str]:
  paths = RUN_FIELDS.get(rel, ())
  load = lambda p: _drop(json.loads(p.read_text(encoding="utf-8")), TIMING_KEYS, paths)  # noqa: E731
  return json_differences(load(a), load(b))


def _compare_jsonl(a: pathlib.Path, b: pathlib.Path, rel: str) -> list[str]:
  if a.read_bytes() == b.read_bytes():
    return []
  ra = [_drop(json.loads(line), TIMING_KEYS) for line in a.read_text(encoding="utf-8").splitlines()]
  rb = [_drop(json.loads(line), TIMING_KEYS) for line in b.read_text(encoding="utf-8").splitlines()]
  if ra == rb:
    return []
  if len(ra) != len(rb):
    return [f"{len(ra)} lines (A) vs {len(rb)} (B)"]
  if rel == layout.labels("") and sorted(map(json.dumps, ra)) == sorted(map(json.dumps, rb)):
    return ["the same records in another order"]
  return [f"line {i + 1}: {d}" for i, (x, y) in enumerate(zip(ra, rb)) for d in json_differences(x, y)][:10]


def _compare_arrays(a: pathlib.Path, b: pathlib.Path, rel: str) -> list[str]:
  load = lambda p: dict(np.load(p)) if p.suffix == ".npz" else {"": np.load(p)}  # noqa: E731
  return _array_differences(load(a), load(b))


def _array_differences(a: Mapping, b: Mapping) -> list[str]:
  out = [f"{k}: only in {'B' if k not in a else 'A'}" for k in sorted(set(a) ^ set(b))]
  for k in sorted(set(a) & set(b)):
    x, y = np.asarray(a[k]), np.asarray(b[k])
    if x.shape != y.shape or x.dtype != y.dtype:
      out.append(f"{k}: {x.dtype}{list(x.shape)} (A) vs {y.dtype}{list(y.shape)} (B)")
    elif not np.array_equal(x, y):
      if np.issubdtype(x.dtype, np.number):
        diff = np.abs(x.astype(np.float64) - y.astype(np.float64))
        out.append(f"{k}: {int((x != y).sum())} of {x.size} entries differ, max |A-B| {diff.max():.3g}")
      else:
        out.append(f"{k}: {int((x != y).sum())} of {x.size} entries differ")
  return out


def _compare_cache(a: pathlib.Path, b: pathlib.Path, rel: str) -> list[str]:
  """The call caches' answers (key, answer, tokens), less the time each was stored."""
  def rows(p):
    with contextlib.closing(sqlite3.connect(f"file:{p}?mode=ro", uri=True)) as db:
      return {r[0]: r[1:] for r in db.execute(
          "SELECT key, backend, model, answer, prompt_tokens, completion_tokens FROM answers")}
  ra, rb = rows(a), rows(b)
  if ra == rb:
    return []
  return [f"{len(set(ra) ^ set(rb))} answers in one cache only, "
          f"{sum(ra[k] != rb[k] for k in set(ra) & set(rb))} different"]


def _compare_bytes(a: pathlib.Path, b: pathlib.Path, rel: str) -> list[str]:
  x, y = a.read_bytes(), b.read_bytes()
  if x == y:
    return []
  at = next((i for i, (p, q) in enumerate(zip(x, y)) if p != q), min(len(x), len(y)))
  return [f"{len(x)} bytes (A) vs {len(y)} (B), first difference at byte {at}"]


_BY_SUFFIX: dict[str, Callable] = {".json": _compare_json, ".jsonl": _compare_jsonl,
                                   ".npz": _compare_arrays, ".npy": _compare_arrays,
                                   ".sqlite": _compare_cache}


def _restore(directory: str, step: int) -> dict:
  """One Orbax checkpoint as {path: numpy array}."""
  import jax  # noqa: PLC0415
  import orbax.checkpoint as ocp  # noqa: PLC0415
  mngr = ocp.CheckpointManager(os.path.abspath(directory),
                               options=ocp.CheckpointManagerOptions(read_only=True))
  try:
    tree = mngr.restore(step, args=ocp.args.StandardRestore())
  finally:
    mngr.close()
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in flat}


def compare_checkpoints(a: str, b: str) -> dict[str, list[str]]:
  """{step: differences} for every committed step of two Orbax managers' directories (params and
  optimizer state, array by array); a step committed on one side only is a difference too."""
  (sa, _), (sb, _) = checkpoint_steps(a), checkpoint_steps(b)
  out = {}
  for step in sorted(set(sa) | set(sb)):
    if step not in sa or step not in sb:
      out[str(step)] = [f"committed in {'B' if step not in sa else 'A'} only"]
    else:
      out[str(step)] = _array_differences(_restore(a, step), _restore(b, step))
  return out


def _checkpoint_dirs(root: pathlib.Path) -> list[str]:
  """Orbax managers' directories (`*/checkpoints/{latest,best}`), relative to `root`."""
  return sorted(str(p.relative_to(root)) for p in root.glob("*/checkpoints/*")
                if p.is_dir() and p.name in ("latest", "best"))


def compare_workdirs(a: str | os.PathLike, b: str | os.PathLike) -> dict:
  """Every artifact of workdir `a` against `b`.

  Returns {"identical": bool, "artifacts": {path: "identical" or [differences]},
  "only_in_a", "only_in_b": [paths], "debris": ["A: path" or "B: path" of the temporary files and
  unfinished Orbax directories kills left; not artifacts], "run_fields": {path: {field: [A, B]}}
  (per-run counts, reported, not compared)}.
  """
  a, b = pathlib.Path(a), pathlib.Path(b)
  ckpt_dirs = set(_checkpoint_dirs(a)) | set(_checkpoint_dirs(b))
  debris = []

  def files(root, side):
    out = set()
    for p in root.rglob("*"):
      rel = str(p.relative_to(root))
      if (not p.is_file() or p.name in _SKIPPED_NAMES or p.name.endswith(_SKIPPED_SUFFIXES)
          or any(x in p.name for x in _SKIPPED_INFIXES)
          or any(rel.startswith(d + os.sep) for d in ckpt_dirs)):
        continue
      if is_debris(p.name, rel):
        debris.append(f"{side}: {rel}")
      else:
        out.add(rel)
    return out

  fa, fb = files(a, "A"), files(b, "B")
  artifacts: dict[str, object] = {}
  for rel in sorted(fa & fb):
    compare = _BY_SUFFIX.get(pathlib.Path(rel).suffix, _compare_bytes)
    diffs = compare(a / rel, b / rel, rel)
    artifacts[rel] = diffs or "identical"
  for d in sorted(ckpt_dirs):
    for step, diffs in compare_checkpoints(str(a / d), str(b / d)).items():
      artifacts[f"{d}/{step}"] = diffs or "identical"
    debris += [f"{side}: {d}/{n}" for side, root in (("A", a), ("B", b)) if (root / d).is_dir()
               for n in sorted(os.listdir(root / d)) if not n.isdigit()]
  run_fields = {}
  for rel, paths in RUN_FIELDS.items():
    if (a / rel).exists() and (b / rel).exists():
      ja, jb = (json.loads((r / rel).read_text(encoding="utf-8")) for r in (a, b))
      run_fields[rel] = {p: [_get(ja, p), _get(jb, p)] for p in paths}
  only_a, only_b = sorted(fa - fb), sorted(fb - fa)
  identical = (all(v == "identical" for v in artifacts.values()) and not only_a and not only_b)
  return {"identical": identical, "artifacts": artifacts, "only_in_a": only_a, "only_in_b": only_b,
          "debris": sorted(debris), "run_fields": run_fields}
