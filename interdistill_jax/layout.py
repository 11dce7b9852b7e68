"""The experiment directory: where every artifact lives, which stage writes it, and when a stage
is done; and, outside it, where the data cache keeps the index of a corpus file.

Every module finds its inputs and writes its outputs through these functions, and reads and
writes them through `files.py` (a workdir may be a bucket: `gs://b/run`; paths are strings, and
`os.path.join` spells a bucket's as well as a local one's). `LAYOUT` is the
table the README's workdir section is generated from (a test checks the two agree), and `STAGES`
is what `pipeline` runs and how it knows a stage has finished.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os

from interdistill_jax import files, textfiles

# evaluate's system name -> the directory its retriever is trained in; `distill.teacher` -> system.
SYSTEMS = {"distilled": "retriever", "direct": "retriever_direct", "supervised": "retriever_supervised"}
TEACHER_SYSTEMS = {"ranker": "distilled", "llm": "direct", "qrels": "supervised"}
SYSTEM_TEACHERS = {system: teacher for teacher, system in TEACHER_SYSTEMS.items()}

DONE = "done.json"

# (path relative to the workdir, the stage that writes it, what it holds). `{x}` is filled in.
LAYOUT = (
    ("candidates/{split}.trec", "retrieve",
     "the initial retriever's top `retrieve.k` per query of each split (TREC run)"),
    ("candidates/done.json", "retrieve", "done marker: the splits written and what they were "
     "computed from (every done marker records its stage's inputs and their fingerprint)"),
    ("candidates/inputs.json", "retrieve", "what a started stage is computed from (each stage "
     "directory has one: a resumed run is checked against it)"),
    ("embeddings/", "retrieve", "the initial encoder's corpus embeddings (cache, or shards with "
     "`encode.shard_size`), keyed by encoder and corpus"),
    ("labels/labels.jsonl", "label", "the teacher's ranking of each training query's candidates"),
    ("labels/llm_cache.sqlite", "label", "every answered LLM call (a rerun never pays twice)"),
    ("labels/stats.json", "label", "done marker: counts, tokens, cost and the teacher audit"),
    ("labels/stats.partial.json", "label", "the same for a run that left queries unlabelled"),
    ("ranker/checkpoints/", "train_ranker", "Orbax checkpoints: `latest/` to resume, `best/` by dev "
     "loss; `aside/` those a resume could not use (moved, never deleted)"),
    ("ranker/metrics.jsonl", "train_ranker", "train and dev loss per logged step"),
    ("ranker/events.out.tfevents.*", "train_ranker", "the same metrics as TensorBoard events "
     "(`tensorboard --logdir WORKDIR`; each retriever directory has its own)"),
    ("ranker/fusion.json", "train_ranker",
     "the fusion with the initial retriever fitted on the dev queries, and their dev ListMLE"),
    ("ranker/done.json", "train_ranker", "done marker: selected step, head, dev figures"),
    ("ranker/teacher_scores.npz", "distill", "the frozen ranker's scores of the training lists, "
     "kept with the ranker's identity (a retrained ranker scores afresh)"),
    ("ranker/rerank_scores_{split}.npz", "evaluate", "the same for the re-ranked evaluation split"),
    ("retriever/", "distill", "the distilled retriever (`distill.teacher=ranker`): checkpoints/, "
     "metrics.jsonl, TensorBoard events, done.json"),
    ("retriever_direct/", "direct", "the same trainer on the LLM's rankings (`distill.teacher=llm`)"),
    ("retriever_supervised/", "supervised",
     "the same trainer on the training queries' gold qrels (`distill.teacher=qrels`)"),
    ("eval/{system}.json", "evaluate", "each system's metrics on `eval.split`"),
    ("eval/{system}.trec", "evaluate", "each system's run"),
    ("eval/per_query/{system}.json", "evaluate", "each system's per-query metrics"),
    ("eval/compare.json", "evaluate", "paired bootstrap of each system against the baseline"),
    ("eval/ablations.json", "evaluate", "paired bootstrap of the method against its ablations "
     "(distilled vs direct, distilled vs supervised, ranker_fused vs ranker)"),
    ("eval/report.md", "evaluate", "the report, with `training_curves.png` and "
     "`before_after.png`"),
    ("eval/done.json", "evaluate", "done marker: the systems evaluated and the inputs"),
    ("eval/rag/", "evaluate", "the reader's answers per system (`reader.enabled`)"),
    ("eval/reader_cache.sqlite", "evaluate", "every answered reader call"),
    ("export/retriever/", "export", "the retriever as a sentence-transformers folder"),
    ("export/ranker/", "export", "the ranker as a cross-encoder folder (+ query_tower/, fusion.json)"),
    ("export/labels/", "export", "the labels as a Hub data set"),
    ("export/done.json", "export", "done marker: what was exported and where it was pushed"),
    ("point.json", "sweep", "a sweep point's swept values and its whole config"),
    (".lock", "any", "held by the run using the workdir (its host and pid): a second run refuses"),
    (".peers/{run}/", "any", "a multi-process run's files: each process's proof that it sees the "
     "workdir, barriers, and the error of a process that failed (`peers.py`)"),
    ("stale/{stage}-{time}/", "any", "outputs a stage found from other settings, moved aside "
     "before it started afresh (nothing is deleted)"),
)


def _join(workdir: str, *parts: str) -> str:
  return os.path.join(workdir, *parts)


# --- retrieve -------------------------------------------------------------------------------

def candidates_dir(workdir: str) -> str:
  return _join(workdir, "candidates")


def candidates(workdir: str, split: str) -> str:
  return _join(workdir, "candidates", f"{split}.trec")


def embeddings_dir(workdir: str) -> str:
  return _join(workdir, "embeddings")


def shard_store(workdir: str, key: str) -> str:
  """A shard store of corpus embeddings, named by `retrieval.embeddings_key` (`shards.py`)."""
  return _join(workdir, "embeddings", f"shards-{key}")


# --- label ----------------------------------------------------------------------------------

def labels_dir(workdir: str) -> str:
  return _join(workdir, "labels")


def labels(workdir: str) -> str:
  return _join(workdir, "labels", "labels.jsonl")


def label_cache(workdir: str) -> str:
  return _join(workdir, "labels", "llm_cache.sqlite")


def label_stats(workdir: str) -> str:
  return _join(workdir, "labels", "stats.json")


def label_partial_stats(workdir: str) -> str:
  return _join(workdir, "labels", "stats.partial.json")


# --- train_ranker ---------------------------------------------------------------------------

def ranker_dir(workdir: str) -> str:
  return _join(workdir, "ranker")


def fusion(workdir: str) -> str:
  return _join(workdir, "ranker", "fusion.json")


def ranker_scores(workdir: str, name: str) -> str:
  return _join(workdir, "ranker", f"{name}.npz")


# --- distill (and its ablations) ------------------------------------------------------------

def check_teacher(teacher: str) -> str:
  if teacher not in TEACHER_SYSTEMS:
    raise ValueError(f"distill.teacher must be one of {sorted(TEACHER_SYSTEMS)}, got {teacher!r}")
  return teacher


def system_dir(workdir: str, system: str) -> str:
  """The directory the retriever of evaluate's `system` ("distilled", "direct", ...) trains in."""
  return _join(workdir, SYSTEMS[system])


def retriever_dir(workdir: str, teacher: str) -> str:
  """The directory `distill` writes with `distill.teacher=teacher`."""
  return system_dir(workdir, TEACHER_SYSTEMS[check_teacher(teacher)])


# --- evaluate -------------------------------------------------------------------------------

def eval_dir(workdir: str) -> str:
  return _join(workdir, "eval")


def eval_file(workdir: str, name: str) -> str:
  return _join(workdir, "eval", name)


def report(workdir: str) -> str:
  return eval_file(workdir, "report.md")


# --- export ---------------------------------------------------------------------------------

def export_dir(workdir: str, kind: str | None = None) -> str:
  return _join(workdir, "export", kind) if kind else _join(workdir, "export")


def lock(workdir: str) -> str:
  return _join(workdir, ".lock")


def peers_dir(workdir: str) -> str:
  return _join(workdir, ".peers")


def peer_run(workdir: str, token: str) -> str:
  """The directory through which the processes of multi-process run `token` meet."""
  return _join(workdir, ".peers", token)


def stale_dir(workdir: str, stage: str, time: str) -> str:
  return _join(workdir, "stale", f"{stage}-{time}")


# --- outside the workdir: the data cache (`data.cache_dir`) ---------------------------------

def corpus_indexes(cache_dir: str) -> str:
  """Where the byte-offset indexes of corpus files are kept (`corpus.open_corpus`)."""
  return os.path.join(os.path.expanduser(cache_dir), "corpus_index")


def token_cache(cache_dir: str, key: str) -> str:
  """Where the token ids of one corpus, tokenizer and passage length are kept (`token_cache`)."""
  return os.path.join(os.path.expanduser(cache_dir), "tokens", key)


def digest_record(cache_dir: str, path: str) -> str:
  """Where the content digest of data file `path` is remembered (`digests.content_id`)."""
  real = os.path.realpath(path)
  path_hash = hashlib.sha256(real.encode()).hexdigest()[:16]
  return os.path.join(os.path.expanduser(cache_dir), "digests",
                      f"{os.path.basename(real)}-{path_hash}.json")


def corpus_index(cache_dir: str, corpus_path: str, fingerprint: str) -> str:
  """The index of one version of a corpus file: named by the file (its basename and a hash of
  its real path) and by its fingerprint, so an edited file gets a directory of its own."""
  real = os.path.realpath(corpus_path)
  path_hash = hashlib.sha256(real.encode()).hexdigest()[:12]
  version = hashlib.sha256(fingerprint.encode()).hexdigest()[:8]
  return os.path.join(corpus_indexes(cache_dir),
                      f"{os.path.basename(real)}-{path_hash}", version)


def local_mirror(cache_dir: str, path: str) -> str:
  """Where a file of a workdir in a bucket is kept on local disk when it has to be local (an
  SQLite call cache, the workdir's lock): under `cache_dir/remote/`, by its address, so
  `gs://b/run/labels/llm_cache.sqlite` is `CACHE/remote/gs/b/run/labels/llm_cache.sqlite`."""
  scheme, sep, rest = path.partition("://")
  if not sep:
    raise ValueError(f"{path} is local: it needs no local mirror")
  return os.path.join(os.path.expanduser(cache_dir), "remote", scheme, rest.strip("/"))


# --- sweeps: a root directory of workdirs (`interdistill_jax.sweep`) ------------------------

SWEEP_LAYOUT = (
    ("sweep.json", "sweep", "the points (name, swept values), the shared upstream workdirs and "
     "which points use each; a later sweep over the same root adds its points"),
    ("{point}/", "sweep", "one point's workdir (the layout above), named by its swept values"),
    ("upstream/retrieve-{key}/", "sweep", "a workdir where `retrieve` ran once for every point "
     "with the same data, model, encode and retrieve settings"),
    ("upstream/label-{key}/", "sweep", "a workdir where `label` ran once for every point with the "
     "same teacher and label settings (over the same candidates)"),
    ("aggregate/", "aggregate", "report.md, summary.json and the PNG plots over every point"),
)


def point_record(workdir: str) -> str:
  return _join(workdir, "point.json")


def sweep_plan(root: str) -> str:
  return os.path.join(root, "sweep.json")


def point_dir(root: str, name: str) -> str:
  return os.path.join(root, name)


def upstream_dir(root: str, stage: str, key: str) -> str:
  return os.path.join(root, "upstream", f"{stage}-{key}")


def aggregate_dir(root: str) -> str:
  return os.path.join(root, "aggregate")


def aggregate_file(root: str, name: str) -> str:
  return os.path.join(root, "aggregate", name)


# --- done markers ---------------------------------------------------------------------------

def done(stage_dir: str) -> str:
  return os.path.join(stage_dir, DONE)


def started(stage_dir: str) -> str:
  """What a stage was started from (`provenance.begin`): a resumed run is checked against it."""
  return os.path.join(stage_dir, "inputs.json")


def is_done(stage_dir: str) -> bool:
  return files.exists(done(stage_dir))


def read_done(stage_dir: str) -> dict:
  path = done(stage_dir)
  if not files.exists(path):
    raise FileNotFoundError(f"{path} not found: the stage has not finished in this workdir")
  try:
    return textfiles.read_json(path)
  except textfiles.DataError as e:
    raise textfiles.DataError(path, e.line, f"{e.problem}: a damaged done marker; run its stage again "
                         "(`pipeline` does: it resumes from the stage's own files)") from None


@dataclasses.dataclass(frozen=True)
class Stage:
  """A pipeline stage: the task it runs and its done markers (`direct` and `supervised` run
  `distill` with their own teacher: `provenance.stage_config`)."""
  task: str
  outputs: object  # (config, workdir) -> list of paths that exist once the stage has finished


def _distill_stage(teacher: str | None) -> Stage:
  def outputs(config, workdir):
    return [done(retriever_dir(workdir, teacher or config.distill.teacher))]
  return Stage("distill", outputs)


STAGES = {
    "retrieve": Stage("retrieve", lambda c, w: [done(candidates_dir(w))]),
    "label": Stage("label", lambda c, w: [label_stats(w)]),
    "train_ranker": Stage("train_ranker", lambda c, w: [done(ranker_dir(w))]),
    "distill": _distill_stage(None),
    "direct": _distill_stage("llm"),
    "supervised": _distill_stage("qrels"),
    "evaluate": Stage("evaluate", lambda c, w: [done(eval_dir(w))]),
    "export": Stage("export", lambda c, w: [done(export_dir(w))]),
}


def markdown_table(table=LAYOUT) -> str:
  """The README's workdir table (or, with `SWEEP_LAYOUT`, its sweep root table)."""
  rows = ["| path | written by | what |", "|---|---|---|"]
  rows += [f"| `{path}` | {stage} | {what} |" for path, stage, what in table]
  return "\n".join(rows)
