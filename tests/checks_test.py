"""Every section of the config is checked before any work starts, one line per problem."""

import json
import os
import subprocess
import sys

import ml_collections
import pytest

from interdistill_jax import checks, defaults, main
from tests import fixtures
from tests.conftest import REPO
from tests.config_test import CONFIG_ARGS, CONFIGS, _parse

pytestmark = pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")

SECRET = "sk-never-printed-1234"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return fixtures.tiny_beir(tmp_path_factory.mktemp("checks") / "data")


def _config(data_dir, **fields):
  """A config that passes every check (all stages planned), then `fields` set ("a.b": value)."""
  c = fixtures.small_config(data_dir / "no-bert-needed", data_dir)
  c.task = "pipeline"
  c.pipeline.stages = ("retrieve", "label", "train_ranker", "distill", "evaluate", "export")
  for key, value in fields.items():
    *parents, leaf = key.split(".")
    node = c
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


# (field named by the error, the fields to set). Each sets one checked value to a bad one.
BAD = [
    ("task", {"task": "train"}),
    ("pipeline.stages", {"pipeline.stages": ("retrieve", "train")}),
    ("pipeline.stages", {"pipeline.stages": ()}),
    ("mesh.data", {"mesh.data": 0}),
    ("mesh.param_rules", {"mesh.param_rules": (("kernel", "zero3"),)}),
    ("mesh.param_rules", {"mesh.param_rules": (("kernel", ("model",)),)}),
    ("mesh.param_rules", {"mesh.param_rules": (("(", "fsdp"),)}),
    ("data.qa.format", {"data.qa.format": "csv"}),
    ("data.corpus_file", {"data.corpus_file": ""}),
    ("data.train_split", {"data.train_split": ""}),
    ("data.qa.num_train", {"data.qa.num_train": -1}),
    ("model.pooling", {"model.pooling": "max"}),
    ("model.normalize", {"model.normalize": 2}),
    ("model.max_doc_length", {"model.max_doc_length": 0}),
    ("model.dtype", {"model.dtype": "float16"}),
    ("model.attention", {"model.attention": "flash"}),
    ("model.attention_dropout", {"model.attention_dropout": 1.5}),
    ("encode.batch_size", {"encode.batch_size": -1}),
    ("encode.buckets", {"encode.buckets": (0, 32)}),
    ("encode.buckets", {"encode.buckets": ()}),
    ("encode.shard_size", {"encode.shard_size": -1}),
    ("encode.shard_dtype", {"encode.shard_dtype": "int8"}),
    ("retrieve.k", {"retrieve.k": 0, "label.num_candidates": 0, "distill.depth": 0}),
    ("retrieve.splits", {"retrieve.splits": ()}),
    ("retrieve.block_size", {"retrieve.block_size": 0}),
    ("retrieve.index", {"retrieve.index": "annoy"}),
    ("retrieve.index", {"retrieve.index": "ivfpq"}),  # needs encode.shard_size > 0
    ("retrieve.nprobe", {"retrieve.nprobe": 0}),
    ("retrieve.pq_m", {"retrieve.pq_m": 0}),
    ("teacher.backend", {"teacher.backend": "claude"}),
    ("teacher.mode", {"teacher.mode": "pairwise"}),
    ("teacher.mode", {"teacher.mode": "query_likelihood"}),  # the simulated teacher is listwise
    ("teacher.model", {"teacher.backend": "openai", "teacher.base_url": "http://127.0.0.1:1/v1"}),
    ("teacher.concurrency", {"teacher.concurrency": 0}),
    ("teacher.timeout", {"teacher.timeout": 0.0}),
    ("teacher.max_retries", {"teacher.max_retries": -1}),
    ("teacher.window", {"teacher.window": 0}),
    ("teacher.stride", {"teacher.stride": 30}),
    ("teacher.sim_noise", {"teacher.sim_noise": -0.1}),
    ("teacher.sim_malformed_rate", {"teacher.sim_malformed_rate": 1.5}),
    ("label.split", {"label.split": ""}),
    ("label.split", {"label.split": "dev"}),  # the pipeline retrieves only retrieve.splits
    ("label.num_candidates", {"label.num_candidates": 0}),
    ("label.num_candidates", {"label.num_candidates": 200}),  # more than retrieve.k
    ("label.max_queries", {"label.max_queries": -1}),
    ("label.on_failure", {"label.on_failure": "skip"}),
    ("label.reasks", {"label.reasks": -1}),
    ("label.weak_teacher", {"label.weak_teacher": "loud"}),
    ("ranker.head", {"ranker.head": "mlp"}),
    ("ranker.model.dtype", {"ranker.model.dtype": "fp8"}),
    ("ranker.max_length", {"ranker.max_length": 0}),
    ("ranker.list_size", {"ranker.list_size": 0}),
    ("ranker.top_k", {"ranker.top_k": -1}),
    ("ranker.fuse_initial", {"ranker.fuse_initial": "always"}),
    ("ranker.fuse_initial", {"ranker.fuse_initial": "fit", "ranker.dev_fraction": 0.0}),
    ("ranker.batch_size", {"ranker.batch_size": 0}),
    ("ranker.epochs", {"ranker.epochs": 0.0}),
    ("ranker.dev_fraction", {"ranker.dev_fraction": 1.0}),
    ("ranker.checkpoint_every", {"ranker.checkpoint_every": 0}),
    ("ranker.log_every", {"ranker.log_every": 0}),
    ("ranker.keep_checkpoints", {"ranker.keep_checkpoints": 0}),
    ("ranker.optim.schedule", {"ranker.optim.schedule": "step"}),
    ("ranker.optim.learning_rate", {"ranker.optim.learning_rate": 0.0}),
    ("ranker.optim.warmup_fraction", {"ranker.optim.warmup_fraction": 2.0}),
    ("distill.teacher", {"distill.teacher": "gold"}),
    ("distill.llm_loss", {"distill.llm_loss": "mse"}),
    ("distill.llm_top_k", {"distill.llm_top_k": -2}),
    ("distill.towers", {"distill.towers": "doc"}),
    ("distill.depth", {"distill.depth": 500}),  # deeper than retrieve.k
    ("distill.list_size", {"distill.list_size": 0}),
    ("distill.student_temperature", {"distill.student_temperature": 0.0}),
    ("distill.in_batch_weight", {"distill.in_batch_weight": -1.0}),
    ("distill.optim.max_grad_norm", {"distill.optim.max_grad_norm": 0.0}),
    ("eval.split", {"eval.split": ""}),
    ("eval.k_values", {"eval.k_values": (10, 10)}),
    ("eval.answer_ks", {"eval.answer_ks": (0,)}),
    ("eval.depth", {"eval.depth": 0, "eval.rerank_depth": 0}),
    ("eval.rerank_depth", {"eval.rerank_depth": 50}),  # deeper than eval.depth
    ("reader.backend", {"reader.backend": "simulated"}),
    ("reader.ks", {"reader.ks": ()}),
    ("reader.concurrency", {"reader.concurrency": 0}),
    ("reader.model", {"reader.enabled": True, "reader.backend": "gemini",
                      "reader.base_url": "http://127.0.0.1:1"}),
    ("export.repo_id_ranker", {"export.repo_id_ranker": "no-owner"}),
    ("export.push_to_hub", {"export.push_to_hub": True}),
]


def test_the_base_of_the_table_passes(data_dir, tmp_path):
  checks.check_config(_config(data_dir), workdir=str(tmp_path / "work"))


@pytest.mark.parametrize("field,fields", BAD, ids=[f"{f}={list(v.values())[-1]}" for f, v in BAD])
def test_a_bad_value_names_its_field_and_nothing_is_written(data_dir, tmp_path, field, fields):
  workdir = tmp_path / "work"
  with pytest.raises(checks.ConfigError) as err:
    main.run(_config(data_dir, **fields), str(workdir))
  lines = str(err.value).splitlines()
  assert any(line.startswith(field) for line in lines), lines
  assert all(":" in line and "\n" not in line for line in err.value.problems)
  assert not workdir.exists()


def test_a_rule_between_sections_holds_only_where_both_are_used(data_dir):
  # The candidates shown to the teacher come from retrieve.k: no question when nothing labels.
  assert checks.problems(_config(data_dir, **{"task": "retrieve", "label.num_candidates": 50,
                                              "retrieve.k": 10})) == []
  assert checks.problems(_config(data_dir, **{"pipeline.stages": ("retrieve", "evaluate"),
                                              "label.split": "dev", "distill.depth": 500})) == []


def test_every_problem_is_reported_at_once(data_dir):
  problems = checks.problems(_config(data_dir, **{"distill.llm_loss": "mse", "ranker.head": "mlp",
                                                  "label.on_failure": "skip"}))
  assert problems == [
      "label.on_failure='skip': must be one of 'prefix', 'retry', 'drop'",
      "ranker.head='mlp': must be one of 'auto', 'cls', 'residual'",
      "distill.llm_loss='mse': must be one of 'listmle', 'kl'"]


def test_unknown_missing_and_mistyped_fields_of_an_unlocked_config(data_dir):
  raw = json.loads(_config(data_dir).to_json())
  raw["retrieve"]["kk"] = 5
  raw["retrieve"]["k"] = "100"
  raw["ranker"]["optim"]["learning_rate"] = [1e-4]
  raw["distill"]["epochs"] = 3  # an int where a float is declared is fine
  del raw["label"]["reasks"]
  problems = checks.problems(ml_collections.ConfigDict(raw))
  assert sorted(problems) == [
      "label.reasks: missing (every field of interdistill_jax/defaults.py is needed)",
      "ranker.optim.learning_rate=[0.0001]: must be a number",
      "retrieve.k='100': must be an int",
      "retrieve.kk: unknown field (not declared in interdistill_jax/defaults.py)"]


def test_every_shipped_config_passes():
  for path in CONFIGS:
    for arg in [None, *CONFIG_ARGS.get(path.stem, [])]:
      config = _parse(f"--config={path}" + (f":{arg}" if arg else ""))
      assert checks.problems(config) == [], (path, arg)


@pytest.fixture
def no_keys(monkeypatch):
  for names in checks.teachers.KEY_VARS.values():
    for name in names:
      monkeypatch.delenv(name, raising=False)
  return monkeypatch


@pytest.mark.parametrize("section,backend,variables", [
    ("teacher", "openai", "OPENAI_API_KEY"), ("teacher", "gemini", "GEMINI_API_KEY or GOOGLE_API_KEY"),
    ("reader", "openai", "OPENAI_API_KEY"), ("reader", "gemini", "GEMINI_API_KEY or GOOGLE_API_KEY")])
def test_a_missing_api_key_is_named_when_a_stage_that_calls_it_will_run(
    data_dir, tmp_path, no_keys, section, backend, variables):
  fields = {f"{section}.backend": backend, f"{section}.model": "m"}
  if section == "reader":
    fields["reader.enabled"] = True
  config = _config(data_dir, **fields)
  with pytest.raises(checks.ConfigError, match=f"^{section}.backend='{backend}': needs {variables} "
                                               "in the environment"):
    main.run(config, str(tmp_path / "work"))
  assert not (tmp_path / "work").exists()
  # A local server takes no key; nor does a run whose stages do not call the backend.
  checks.check_config(_config(data_dir, **fields, **{f"{section}.base_url": "http://127.0.0.1:1/v1"}))
  stages = ("retrieve", "train_ranker") if section == "teacher" else ("retrieve", "label")
  checks.check_config(_config(data_dir, **fields, **{"pipeline.stages": stages}))
  # With the key set: no problem, and a key never appears in any message.
  no_keys.setenv(variables.split()[0], SECRET)
  checks.check_config(config)


def test_a_pipeline_stage_already_complete_needs_no_key(data_dir, tmp_path, no_keys):
  config = _config(data_dir, **{"teacher.backend": "openai", "teacher.model": "m",
                                "pipeline.stages": ("label",)})
  workdir = tmp_path / "work"
  with pytest.raises(checks.ConfigError, match="OPENAI_API_KEY"):
    checks.check_config(config, workdir=str(workdir))
  (workdir / "labels").mkdir(parents=True)
  (workdir / "labels" / "stats.json").write_text("{}")  # done (by a version that recorded nothing)
  assert checks.stages_to_run(config, str(workdir)) == []
  checks.check_config(config, workdir=str(workdir))
  config.task = "label"  # the task itself always calls the teacher
  with pytest.raises(checks.ConfigError, match="OPENAI_API_KEY"):
    checks.check_config(config, workdir=str(workdir))


def test_missing_files_the_stages_need(data_dir, tmp_path):
  with pytest.raises(checks.ConfigError, match="^data.dir=.*: no such directory"):
    checks.check_config(_config(data_dir, **{"data.dir": str(tmp_path / "nowhere")}))
  with pytest.raises(checks.ConfigError, match="^data.dir=.*queries.jsonl not found"):
    checks.check_config(_config(data_dir, **{"data.dir": str(tmp_path)}))
  with pytest.raises(checks.ConfigError, match="^data.corpus_file='missing.jsonl': .*not found"):
    checks.check_config(_config(data_dir, **{"data.corpus_file": "missing.jsonl"}))
  with pytest.raises(checks.ConfigError, match="^teacher.model='/no/such.gguf': no such GGUF file"):
    checks.check_config(_config(data_dir, **{"teacher.backend": "llamacpp",
                                             "teacher.model": "/no/such.gguf"}))
  qa = {"data.qa.format": "dpr", "data.corpus_file": "psgs.tsv"}
  with pytest.raises(checks.ConfigError) as err:
    checks.check_config(_config(data_dir, **qa))
  assert [line.split("=")[0] for line in err.value.problems] == [
      "data.corpus_file", "data.qa.train", "data.qa.test"]
  # Export reads no data set: nothing is asked of it.
  checks.check_config(_config(data_dir, **{"data.dir": str(tmp_path / "nowhere"), "task": "export"}))


def test_the_modules_check_through_the_same_tables():
  from interdistill_jax import fusion, hf_weights, labeling, retrievers, shards, train
  with pytest.raises(checks.ConfigError, match="^ranker.fuse_initial='x': must be one of 'none', 'fit'$"):
    fusion.check_fuse_initial("x")
  with pytest.raises(checks.ConfigError, match="^ranker.head='x'"):
    hf_weights.ranker_head("x", {})
  with pytest.raises(checks.ConfigError, match="^distill.towers='x'"):
    retrievers.build_student(defaults.model_config(), "x", seed=0)
  with pytest.raises(checks.ConfigError, match="^label.weak_teacher='x'"):
    labeling.check_teacher(None, "x", "stats.json")
  optim = defaults.optim_config(1e-4)
  optim.schedule = "x"
  with pytest.raises(checks.ConfigError, match="^optim.schedule='x'"):
    train.make_optimizer(optim, 10)
  assert sorted(shards.DTYPES) == sorted(checks.SHARD_DTYPES)


def test_main_prints_each_problem_on_its_line_and_writes_nothing(data_dir, tmp_path):
  config_file = tmp_path / "cfg.py"
  fixtures.write_config_file(config_file, _config(data_dir))
  workdir = tmp_path / "work"
  out = subprocess.run(
      [sys.executable, "-m", "interdistill_jax.main", f"--config={config_file}",
       "--config.distill.llm_loss=mse", "--config.label.num_candidates=500",
       f"--workdir={workdir}"], capture_output=True, text=True, cwd=REPO, timeout=120,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert out.returncode == 1, out.stderr[-2000:]
  errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
  assert errors == [
      "error: label.num_candidates=500: must be at most retrieve.k=100 (the candidates retrieved "
      "per query)",
      "error: distill.llm_loss='mse': must be one of 'listmle', 'kl'"]
  assert "Traceback" not in out.stderr and not workdir.exists()
