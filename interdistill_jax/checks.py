"""Every config value checked before any work starts: `check_config(config, workdir=...)`.

`main` calls it before a task runs and before the workdir gets anything written, so a bad value in
a late section stops the run at once instead of after hours of earlier stages. Each problem is one
line naming the dotted field, the bad value and what is allowed; every problem found is reported.

Three kinds of check:
- the shape of the config: every field declared in `defaults.py`, none added, each of its type;
- each section's enumerated choices and ranges, and the rules that tie sections together
  (`label.num_candidates` against `retrieve.k`, an approximate index against `encode.shard_size`);
- what the stages that will run need from this machine: the API key a remote LLM backend needs
  (the variable is named, a key is never printed), the in-process model's package and file, the
  data set's files. A pipeline stage already complete in the workdir needs none of them.

The tables of allowed values live here, or in the light modules that own them (tasks, stages,
teacher backends, failure policies); the modules that read a field check it through these tables
and functions, so a value is allowed or refused in one place.
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Mapping, Sequence

import ml_collections

from interdistill_jax import defaults, files, layout, qa_data, reader, tasks, teachers
from interdistill_jax.teachers import llamacpp_backend
from interdistill_jax.teachers import teacher as teacher_lib

# Allowed values of the fields whose modules are too heavy to import for a check (JAX, Flax).
POOLINGS = ("", "mean", "cls")
COMPUTE_DTYPES = ("float32", "bfloat16")
ATTENTION = ("auto", "xla", "cudnn", "cudnn_dropout")
RANKER_HEADS = ("auto", "cls", "residual")
FUSE_INITIAL = ("none", "fit")
LLM_LOSSES = ("listmle", "kl")
TOWERS = ("query", "both")
SCHEDULES = ("linear", "cosine", "constant")
FAISS_INDEXES = ("ivfpq", "hnsw")
INDEXES = ("exact", *FAISS_INDEXES)
SHARD_DTYPES = ("float16", "float32")
WEAK_TEACHER = ("warn", "stop", "ignore")
MESH_AXES = ("data",)
PARAM_LAYOUTS = ("replicate", "fsdp")
QA_FORMATS = ("",) + tuple(qa_data.FORMATS)

# Stages that read the data set.
_DATA_STAGES = ("retrieve", "label", "train_ranker", "distill", "direct", "supervised", "evaluate")


class ConfigError(ValueError):
  """Config values that cannot run: one line per problem, each naming its dotted field."""

  def __init__(self, problems: Sequence[str]):
    self.problems = list(problems)
    super().__init__("\n".join(self.problems))


# --- one field --------------------------------------------------------------------------------

def _quote(values) -> str:
  return ", ".join(repr(v) for v in values)


def one_of(field: str, value, allowed: Sequence) -> str | None:
  """The problem with `value` if it is not one of `allowed`, else None."""
  if isinstance(value, (list, dict)) or value not in allowed:
    return f"{field}={value!r}: must be one of {_quote(allowed)}"
  return None


def at_least(field: str, value, low, note: str = "") -> str | None:
  if value < low:
    return f"{field}={value!r}: must be at least {low}{note}"
  return None


def above(field: str, value, low, note: str = "") -> str | None:
  if not value > low:
    return f"{field}={value!r}: must be above {low}{note}"
  return None


def fraction(field: str, value, *, below_one: bool = False) -> str | None:
  if not (0 <= value < 1 if below_one else 0 <= value <= 1):
    return f"{field}={value!r}: must be in [0, 1{')' if below_one else ']'}"
  return None


def distinct_positive(field: str, values) -> str | None:
  ks = list(values)
  if not ks or any(not _is_int(k) or k < 1 for k in ks) or len(set(ks)) != len(ks):
    return f"{field}={tuple(ks)!r}: must be distinct positive integers (at least one)"
  return None


def require(*problems: str | None) -> None:
  """Raises `ConfigError` with the problems that are not None."""
  found = [p for p in problems if p]
  if found:
    raise ConfigError(found)


def require_one_of(field: str, value, allowed: Sequence):
  """`value` if it is one of `allowed`; else `ConfigError` naming the field (for the modules)."""
  require(one_of(field, value, allowed))
  return value


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


# --- the config's shape -----------------------------------------------------------------------

def _type_name(value) -> str:
  if isinstance(value, ml_collections.ConfigDict):
    return "a section"
  return {bool: "a bool", int: "an int", float: "a number", str: "a string",
          tuple: "a tuple"}.get(type(value), type(value).__name__)


def _fits(value, reference) -> bool:
  if isinstance(reference, bool):
    return isinstance(value, bool)
  if isinstance(reference, int):
    return _is_int(value)
  if isinstance(reference, float):
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  if isinstance(reference, tuple):
    return isinstance(value, (tuple, list))
  return isinstance(value, type(reference))


def shape_problems(config, reference=None, prefix: str = "") -> list[str]:
  """Fields not declared in `defaults.base_config()`, declared ones missing, and wrong types."""
  reference = defaults.base_config() if reference is None else reference
  out = []
  for key in config.keys():
    field = prefix + key
    if key not in reference:
      out.append(f"{field}: unknown field (not declared in interdistill_jax/defaults.py)")
      continue
    value, ref = config[key], reference[key]
    if isinstance(ref, ml_collections.ConfigDict):
      if not isinstance(value, (ml_collections.ConfigDict, Mapping)):
        out.append(f"{field}={value!r}: must be a section")
      else:
        out.extend(shape_problems(value, ref, field + "."))
    elif not _fits(value, ref):
      out.append(f"{field}={value!r}: must be {_type_name(ref)}")
  for key in reference.keys():
    if key not in config:
      out.append(f"{prefix}{key}: missing (every field of interdistill_jax/defaults.py is needed)")
  return out


# --- each section -----------------------------------------------------------------------------

def planned_stages(config) -> tuple[str, ...]:
  """The pipeline stages the config asks for: `pipeline.stages`, or the task itself."""
  if config.task == "pipeline":
    return tuple(config.pipeline.stages)
  return (config.task,)


def _model(field: str, m) -> list:
  return [
      one_of(f"{field}.pooling", m.pooling, POOLINGS),
      one_of(f"{field}.normalize", m.normalize, (-1, 0, 1)),
      at_least(f"{field}.max_query_length", m.max_query_length, 1),
      at_least(f"{field}.max_doc_length", m.max_doc_length, 1),
      one_of(f"{field}.dtype", m.dtype, COMPUTE_DTYPES),
      one_of(f"{field}.attention", m.attention, ATTENTION),
      None if m.attention_dropout < 1 else
      f"{field}.attention_dropout={m.attention_dropout!r}: must be below 1 (a dropout rate), or "
      "negative to keep the checkpoint's",
  ]


def param_rule_problem(rule, axes: Sequence[str] = MESH_AXES) -> str | None:
  """What is wrong with one `mesh.param_rules` entry, or None."""
  if not (isinstance(rule, Sequence) and not isinstance(rule, str) and len(rule) == 2
          and isinstance(rule[0], str)):
    return f"mesh.param_rules: {rule!r} is not a (regex, layout) pair"
  pattern, placement = rule
  try:
    re.compile(pattern)
  except re.error as e:
    return f"mesh.param_rules: {pattern!r} is not a regular expression ({e})"
  if isinstance(placement, str):
    if placement not in PARAM_LAYOUTS:
      return (f"mesh.param_rules: layout {placement!r} of {pattern!r} is not "
              f"{_quote(PARAM_LAYOUTS)} or a spec tuple such as (None, {axes[0]!r})")
  elif isinstance(placement, Sequence):
    for axis in placement:
      if axis is not None and axis not in axes:
        return f"mesh.param_rules: {pattern!r} names axis {axis!r}; the mesh has {tuple(axes)}"
  else:
    return f"mesh.param_rules: layout {placement!r} of {pattern!r} is not a string or a tuple"
  return None


def _mesh(c) -> list:
  m = c.mesh
  return [None if m.data == -1 or m.data >= 1 else
          f"mesh.data={m.data!r}: must be -1 (every device) or a device count of at least 1",
          *(param_rule_problem(rule) for rule in m.param_rules)]


def _data(c) -> list:
  d, qa = c.data, c.data.qa
  return [
      one_of("data.qa.format", qa.format, QA_FORMATS),
      None if qa.format or d.corpus_file else
      "data.corpus_file='': must name the corpus file (corpus.jsonl, or a DPR .tsv)",
      None if d.train_split else "data.train_split='': must name a split",
      None if d.test_split else "data.test_split='': must name a split",
      at_least("data.qa.num_train", qa.num_train, 0, " (0 = all)"),
      at_least("data.qa.num_test", qa.num_test, 0, " (0 = all)"),
  ]


def _encode(c) -> list:
  e = c.encode
  return [
      at_least("encode.batch_size", e.batch_size, 0, " (0 = chosen for the platform)"),
      distinct_positive("encode.buckets", e.buckets),
      at_least("encode.shard_size", e.shard_size, 0, " (0 = in memory)"),
      one_of("encode.shard_dtype", e.shard_dtype, SHARD_DTYPES),
  ]


def _retrieve(c) -> list:
  r = c.retrieve
  out = [
      at_least("retrieve.k", r.k, 1),
      None if r.splits and all(isinstance(s, str) and s for s in r.splits) else
      f"retrieve.splits={tuple(r.splits)!r}: must name at least one split",
      at_least("retrieve.block_size", r.block_size, 1),
      one_of("retrieve.index", r.index, INDEXES),
      at_least("retrieve.nlist", r.nlist, 0, " (0 = 4 sqrt(corpus size))"),
      at_least("retrieve.pq_m", r.pq_m, 1),
      at_least("retrieve.nprobe", r.nprobe, 1),
      at_least("retrieve.hnsw_m", r.hnsw_m, 1),
      at_least("retrieve.ef_search", r.ef_search, 1),
      at_least("retrieve.refine", r.refine, 1),
  ]
  if r.index in INDEXES and r.index != "exact" and c.encode.shard_size <= 0:
    out.append(f"retrieve.index={r.index!r}: needs on-disk shards (encode.shard_size > 0, it is "
               f"{c.encode.shard_size})")
  return out


def _client(field: str, s) -> list:
  """The LLM client fields the teacher and the reader share (`defaults.client_config`)."""
  return [
      at_least(f"{field}.concurrency", s.concurrency, 1),
      at_least(f"{field}.rpm", s.rpm, 0, " (0 = no limit)"),
      at_least(f"{field}.max_retries", s.max_retries, 0),
      at_least(f"{field}.backoff_base", s.backoff_base, 0),
      at_least(f"{field}.backoff_max", s.backoff_max, 0),
      at_least(f"{field}.max_retry_after", s.max_retry_after, 0),
      at_least(f"{field}.temperature", s.temperature, 0),
      at_least(f"{field}.max_output_tokens", s.max_output_tokens, 0, " (0 = the server's default)"),
      above(f"{field}.timeout", s.timeout, 0, " seconds"),
      at_least(f"{field}.max_passage_tokens", s.max_passage_tokens, 0, " (0 = no cut)"),
      at_least(f"{field}.n_ctx", s.n_ctx, 0, " (0 = sized for the prompts)"),
      at_least(f"{field}.n_threads", s.n_threads, 0, " (0 = all cores)"),
  ]


def _needs_model(field: str, s) -> str | None:
  if s.backend in teachers.KEY_VARS and not s.model:
    return f"{field}.model='': the {s.backend} backend needs a model name (e.g. " \
           f"{'gpt-4o-mini' if s.backend == 'openai' else 'gemini-2.5-flash'})"
  return None


def teacher_mode(cfg) -> str | None:
  """What is wrong with `teacher.mode` for `teacher.backend`, or None."""
  problem = one_of("teacher.mode", cfg.mode, llamacpp_backend.MODES)
  if problem is None and cfg.mode != "listwise" and cfg.backend != "llamacpp":
    problem = (f"teacher.mode={cfg.mode!r}: needs teacher.backend='llamacpp' ({cfg.backend!r} "
               "only ranks listwise)")
  return problem


def window(cfg) -> str | None:
  if cfg.window < 1:
    return f"teacher.window={cfg.window!r}: must be at least 1"
  if not 1 <= cfg.stride <= cfg.window:
    return f"teacher.stride={cfg.stride!r}: must be from 1 to teacher.window={cfg.window}"
  return None


def _teacher(c) -> list:
  t = c.teacher
  return [
      one_of("teacher.backend", t.backend, teachers.BACKENDS),
      teacher_mode(t),
      *_client("teacher", t),
      _needs_model("teacher", t) if "label" in planned_stages(c) else None,
      window(t),
      at_least("teacher.sim_noise", t.sim_noise, 0),
      at_least("teacher.seed", t.seed, 0),
      fraction("teacher.sim_malformed_rate", t.sim_malformed_rate),
  ]


def _reader(c) -> list:
  r = c.reader
  return [
      one_of("reader.backend", r.backend, reader.BACKENDS),
      *_client("reader", r),
      _needs_model("reader", r) if r.enabled and "evaluate" in planned_stages(c) else None,
      distinct_positive("reader.ks", r.ks),
      at_least("reader.max_questions", r.max_questions, 0, " (0 = all)"),
  ]


def _label(c) -> list:
  lab = c.label
  out = [
      None if lab.split else "label.split='': must name a split",
      at_least("label.num_candidates", lab.num_candidates, 1),
      at_least("label.max_queries", lab.max_queries, 0, " (0 = all)"),
      one_of("label.on_failure", lab.on_failure, teacher_lib.POLICIES),
      at_least("label.reasks", lab.reasks, 0),
      one_of("label.weak_teacher", lab.weak_teacher, WEAK_TEACHER),
  ]
  stages = planned_stages(c)
  if "label" in stages and lab.num_candidates > c.retrieve.k:
    out.append(f"label.num_candidates={lab.num_candidates}: must be at most retrieve.k="
               f"{c.retrieve.k} (the candidates retrieved per query)")
  if lab.split and {"retrieve", "label"} <= set(stages) and lab.split not in c.retrieve.splits:
    out.append(f"label.split={lab.split!r}: must be one of retrieve.splits="
               f"{tuple(c.retrieve.splits)!r} (the pipeline retrieves its candidates there)")
  return out


def _optim(field: str, o) -> list:
  return [
      above(f"{field}.learning_rate", o.learning_rate, 0),
      one_of(f"{field}.schedule", o.schedule, SCHEDULES),
      fraction(f"{field}.warmup_fraction", o.warmup_fraction),
      at_least(f"{field}.weight_decay", o.weight_decay, 0),
      above(f"{field}.max_grad_norm", o.max_grad_norm, 0),
  ]


def _loop(field: str, s) -> list:
  """The training loop's fields, shared by `ranker` and `distill` (`train.loop_config`)."""
  return [
      at_least(f"{field}.batch_size", s.batch_size, 1),
      above(f"{field}.epochs", s.epochs, 0),
      fraction(f"{field}.dev_fraction", s.dev_fraction, below_one=True),
      at_least(f"{field}.eval_every", s.eval_every, 0, " (0 = never)"),
      at_least(f"{field}.checkpoint_every", s.checkpoint_every, 1),
      at_least(f"{field}.log_every", s.log_every, 1),
      at_least(f"{field}.keep_checkpoints", s.keep_checkpoints, 1),
      *_optim(f"{field}.optim", s.optim),
  ]


def fuse_initial(section) -> list:
  """`ranker.fuse_initial`: a choice, and "fit" needs dev queries to fit on."""
  problem = one_of("ranker.fuse_initial", section.fuse_initial, FUSE_INITIAL)
  if problem is None and section.fuse_initial == "fit" and section.dev_fraction <= 0:
    problem = ("ranker.fuse_initial='fit': needs dev queries to fit on (ranker.dev_fraction > 0, "
               f"it is {section.dev_fraction})")
  return [problem]


def _ranker(c) -> list:
  r = c.ranker
  return [
      *_model("ranker.model", r.model),
      one_of("ranker.head", r.head, RANKER_HEADS),
      at_least("ranker.max_length", r.max_length, 1),
      at_least("ranker.list_size", r.list_size, 1),
      at_least("ranker.top_k", r.top_k, 0, " (0 = the whole ranked prefix)"),
      *fuse_initial(r),
      at_least("ranker.score_batch_size", r.score_batch_size, 0, " (0 = as encode.batch_size)"),
      *_loop("ranker", r),
  ]


def distill_teacher(section) -> list:
  """`distill.teacher` and `distill.llm_loss`."""
  return [one_of("distill.teacher", section.teacher, tuple(layout.TEACHER_SYSTEMS)),
          one_of("distill.llm_loss", section.llm_loss, LLM_LOSSES)]


def llm_top_k(section) -> str | None:
  return at_least("distill.llm_top_k", section.llm_top_k, -1,
                  " (-1 = ranker.top_k, 0 = the whole trusted prefix, or a positive count)")


def _distill(c) -> list:
  d = c.distill
  out = [
      *distill_teacher(d),
      llm_top_k(d),
      at_least("distill.list_size", d.list_size, 1),
      at_least("distill.depth", d.depth, 0, " (0 = the labelled lists)"),
      one_of("distill.towers", d.towers, TOWERS),
      above("distill.student_temperature", d.student_temperature, 0),
      at_least("distill.in_batch_weight", d.in_batch_weight, 0),
      fraction("distill.interpolation", d.interpolation),
      *_loop("distill", d),
  ]
  if "distill" in planned_stages(c) and d.depth > c.retrieve.k:
    out.append(f"distill.depth={d.depth}: must be at most retrieve.k={c.retrieve.k} (the "
               "candidates retrieved per query)")
  return out


def _eval(c) -> list:
  e = c.eval
  out = [
      None if e.split else "eval.split='': must name a split",
      distinct_positive("eval.k_values", e.k_values),
      distinct_positive("eval.answer_ks", e.answer_ks),
      at_least("eval.depth", e.depth, 1),
      at_least("eval.rerank_depth", e.rerank_depth, 1),
  ]
  if e.rerank_depth > e.depth:
    out.append(f"eval.rerank_depth={e.rerank_depth}: must be at most eval.depth={e.depth} (the "
               "ranker re-ranks the baseline's run)")
  return out


_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def push_target(section) -> str | None:
  """`export.push_to_hub` needs a repository to push to."""
  if section.push_to_hub and not (section.repo_id_retriever or section.repo_id_ranker
                                  or section.repo_id_labels):
    return ("export.push_to_hub=True: needs export.repo_id_retriever, repo_id_ranker or "
            "repo_id_labels")
  return None


def _export(c) -> list:
  x = c.export
  return [push_target(x), *(
      f"export.{key}={x[key]!r}: must be '' or a Hub id 'owner/name'"
      for key in ("repo_id_retriever", "repo_id_ranker", "repo_id_labels")
      if x[key] and not _REPO_ID.match(x[key]))]


def _task(c) -> list:
  out = [one_of("task", c.task, tuple(tasks.TASKS))]
  stages = tuple(c.pipeline.stages)
  if not stages:
    out.append("pipeline.stages=(): must name at least one stage")
  out += [one_of("pipeline.stages", s, tuple(layout.STAGES)) for s in stages]
  return out


_SECTIONS = (_task, _mesh, _data, lambda c: _model("model", c.model), _encode, _retrieve, _teacher,
             _label, _ranker, _distill, _eval, _reader, _export)


def problems(config) -> list[str]:
  """Everything wrong with the config itself, one line each (nothing is read from disk)."""
  shape = shape_problems(config)
  if shape:  # the value checks below assume every field is there, of its type
    return shape
  return [p for section in _SECTIONS for p in section(config) if p]


# --- what the stages that will run need ---------------------------------------------------------

def stages_to_run(config, workdir: str | None) -> list[str]:
  """The planned stages that will run: a pipeline skips those complete in `workdir`."""
  stages = list(planned_stages(config))
  if config.task != "pipeline" or not workdir or not files.is_dir(workdir):
    return stages
  from interdistill_jax import pipeline  # noqa: PLC0415
  return [s for s in stages if not pipeline.is_complete(s, config, workdir)]


def api_key_problem(field: str, cfg, stage: str) -> str | None:
  """A remote backend's missing key (the variable is named; a key is never shown)."""
  names = teachers.KEY_VARS.get(cfg.backend)
  if not names or cfg.base_url or teachers.api_key(cfg.backend):
    return None
  return (f"{field}.backend={cfg.backend!r}: needs {' or '.join(names)} in the environment (or "
          f"{field}.base_url for a local server that takes no key); the {stage} stage calls it")


def llamacpp_problem(field: str, cfg, stage: str) -> str | None:
  """The in-process backend's package and model file."""
  if cfg.backend != "llamacpp":
    return None
  if importlib.util.find_spec("llama_cpp") is None:
    return (f"{field}.backend='llamacpp': needs the llama-cpp-python package (make llama); the "
            f"{stage} stage calls it")
  if cfg.model:
    path = os.path.expanduser(cfg.model)
    return None if os.path.isfile(path) else f"{field}.model={cfg.model!r}: no such GGUF file"
  try:
    llamacpp_backend.packaged_model_path()
  except FileNotFoundError as e:
    return f"{field}.model='': {e}"
  return None


def _data_files(c) -> list:
  d = c.data
  if d.qa.format:
    out = []
    path = os.path.expanduser(d.corpus_file)
    if not os.path.isabs(path) or not os.path.isfile(path):
      out.append(f"data.corpus_file={d.corpus_file!r}: a question set needs the absolute path of "
                 "an existing DPR passage TSV (id<TAB>text<TAB>title)")
    if d.qa.format == "dpr":
      out += [f"data.qa.{split}={d.qa[split]!r}: no such DPR question file (question<TAB>[answers])"
              for split in ("train", "test") if not os.path.isfile(os.path.expanduser(d.qa[split]))]
    return out
  root = os.path.expanduser(d.dir)
  queries = os.path.join(root, "queries.jsonl")
  if not (root and os.path.isfile(queries)):
    if d.download_url:
      return []  # fetched when the stage starts
    if not root or not os.path.isdir(root):
      return [f"data.dir={d.dir!r}: no such directory, and no data.download_url to fetch it from"]
    return [f"data.dir={d.dir!r}: {queries} not found (a BEIR-layout directory holds "
            "corpus.jsonl, queries.jsonl and qrels/)"]
  corpus = os.path.expanduser(d.corpus_file)
  corpus = corpus if os.path.isabs(corpus) else os.path.join(root, corpus)
  return [] if os.path.isfile(corpus) else [
      f"data.corpus_file={d.corpus_file!r}: {corpus} not found"]


def environment_problems(config, stages: Sequence[str]) -> list[str]:
  """What `stages` need from this machine that it lacks, one line each."""
  out = []
  if "label" in stages:
    out += [api_key_problem("teacher", config.teacher, "label"),
            llamacpp_problem("teacher", config.teacher, "label")]
  if "evaluate" in stages and config.reader.enabled:
    out += [api_key_problem("reader", config.reader, "evaluate"),
            llamacpp_problem("reader", config.reader, "evaluate")]
  if any(s in _DATA_STAGES for s in stages):
    out += _data_files(config)
  return [p for p in out if p]


def check_config(config, *, workdir: str | None = None) -> None:
  """Raises `ConfigError` listing every problem of the config and of what its stages need.

  Reads the workdir (which pipeline stages are complete) but writes nothing anywhere.
  """
  require(*problems(config))
  require(files.storage_problem(workdir) if workdir else None)
  require(*environment_problems(config, stages_to_run(config, workdir)))
