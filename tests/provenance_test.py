"""Stage inputs and fingerprints: what makes a stage stale, and what happens then (no models)."""

import glob
import json
import os
import shutil

import pytest

from interdistill_jax import defaults, digests, layout, pipeline, provenance, tasks


def _config(root):
  """The default config over a two-line BEIR-layout directory (its files are fingerprinted)."""
  os.makedirs(root / "qrels", exist_ok=True)
  (root / "corpus.jsonl").write_text('{"_id": "d1", "text": "a"}\n')
  (root / "queries.jsonl").write_text('{"_id": "q1", "text": "b"}\n')
  (root / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
  config = defaults.base_config()
  config.data.dir = str(root)
  config.data.cache_dir = str(root.parent / "cache")  # content digests are remembered there
  config.retrieve.splits = ("train",)
  return config


def _finish(name, config, workdir, extra=None):
  """Writes stage `name`'s done marker as the stage would, with its recorded inputs."""
  path = provenance.marker(name, workdir)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump({**(extra or {}), **provenance.record(name, config, workdir)}, f)


def test_neutral_settings_never_change_a_fingerprint(tmp_path):
  config, workdir = _config(tmp_path / "data"), str(tmp_path / "work")
  before = {name: provenance.fingerprint(provenance.inputs(name, config, workdir))
            for name in ("retrieve", "label", "train_ranker", "distilled", "evaluate", "export")}
  config.teacher.concurrency, config.teacher.rpm, config.encode.batch_size = 64, 100, 7
  config.ranker.score_batch_size, config.export.push_to_hub, config.label.weak_teacher = 3, True, "stop"
  config.ranker.log_every, config.distill.log_every = 1, 50  # how often metrics are fetched
  after = {name: provenance.fingerprint(provenance.inputs(name, config, workdir)) for name in before}
  assert after == before
  config.teacher.sim_noise = 0.43
  changed = {name: provenance.fingerprint(provenance.inputs(name, config, workdir)) for name in before}
  assert changed["label"] != before["label"]
  assert {n for n in before if changed[n] != before[n]} == {"label"}


def test_a_changed_setting_makes_the_stage_and_its_downstream_stale(tmp_path):
  config, workdir = _config(tmp_path / "data"), str(tmp_path / "work")
  config.teacher.sim_noise = 0.38
  for name in ("retrieve", "label", "train_ranker"):
    _finish(name, config, workdir)
  assert [provenance.status(n, config, workdir)[0] for n in ("retrieve", "label", "train_ranker")] \
      == ["current"] * 3
  config.teacher.sim_noise = 0.43
  state, changes = provenance.status("label", config, workdir)
  assert state == "stale" and changes == ["teacher.sim_noise: 0.38 then, 0.43 now"]
  # The ranker's own settings did not change, but it was trained on the old labels: once label
  # reruns (new fingerprint), train_ranker is stale too.
  assert provenance.status("train_ranker", config, workdir)[0] == "current"
  _finish("label", config, workdir)
  state, changes = provenance.status("train_ranker", config, workdir)
  assert state == "stale" and "the label stage's output changed" in changes[0]


def test_a_task_on_a_stale_input_stops_naming_the_field(tmp_path):
  config, workdir = _config(tmp_path / "data"), str(tmp_path / "work")
  for name in ("retrieve", "label"):
    _finish(name, config, workdir)
  config.data.train_split = "dev"  # not read by label; retrieve reads the data section
  config.model.max_query_length = 32
  with pytest.raises(provenance.StaleInput) as err:
    provenance.check_upstream("train_ranker", config, workdir)
  message = str(err.value)
  assert "model.max_query_length: 64 then, 32 now" in message
  assert layout.done(layout.candidates_dir(workdir)) in message and "pipeline" in message


def test_begin_moves_stale_outputs_aside_and_keeps_the_call_cache(tmp_path):
  config, workdir = _config(tmp_path / "data"), str(tmp_path / "work")
  _finish("retrieve", config, workdir)
  provenance.begin("label", config, workdir)
  with open(layout.labels(workdir), "w") as f:
    f.write('{"qid": "q1"}\n')
  open(layout.label_cache(workdir), "wb").write(b"cache")
  _finish("label", config, workdir)
  assert provenance.begin("label", config, workdir)  # same settings: resumes in place
  assert os.path.exists(layout.labels(workdir))
  config.teacher.sim_noise = 0.5
  provenance.begin("label", config, workdir)
  assert not os.path.exists(layout.labels(workdir)) and not os.path.exists(layout.label_stats(workdir))
  assert open(layout.label_cache(workdir), "rb").read() == b"cache"
  (moved,) = os.listdir(os.path.join(workdir, "stale"))
  assert moved.startswith("label-")
  assert open(os.path.join(workdir, "stale", moved, "labels.jsonl")).read() == '{"qid": "q1"}\n'


def test_a_partial_run_of_other_settings_is_not_resumed(tmp_path):
  config, workdir = _config(tmp_path / "data"), str(tmp_path / "work")
  for name in ("retrieve", "label"):
    _finish(name, config, workdir)
  provenance.begin("train_ranker", config, workdir)
  os.makedirs(os.path.join(layout.ranker_dir(workdir), "checkpoints", "latest"))  # killed here
  config.ranker.optim.learning_rate = 5e-5
  provenance.begin("train_ranker", config, workdir)
  assert not os.path.exists(os.path.join(layout.ranker_dir(workdir), "checkpoints"))
  (moved,) = os.listdir(os.path.join(workdir, "stale"))
  assert os.path.isdir(os.path.join(workdir, "stale", moved, "ranker", "checkpoints", "latest"))


def test_pipeline_reruns_what_is_stale_and_only_that(tmp_path, monkeypatch):
  config, workdir = _config(tmp_path / "data"), str(tmp_path / "work")
  config.pipeline.stages = ("retrieve", "label", "train_ranker", "distill", "direct", "evaluate")
  ran = []

  def fake(task):
    def run(cfg, wd):
      name = provenance.stage_name(task, cfg)
      ran.append(name)
      inputs = provenance.begin(name, cfg, wd)
      path = provenance.marker(name, wd)
      os.makedirs(os.path.dirname(path), exist_ok=True)
      with open(path, "w") as f:
        json.dump(inputs, f)
      if name == "evaluate":
        open(layout.report(wd), "w").write("report")
    return run

  monkeypatch.setattr(tasks, "resolve", fake)
  pipeline.run(config, workdir)
  assert ran == ["retrieve", "label", "train_ranker", "distilled", "direct", "evaluate"]
  ran.clear()
  pipeline.run(config, workdir)
  assert ran == []
  config.ranker.optim.learning_rate = 5e-5  # the ranker, what it teaches, and the report
  pipeline.run(config, workdir)
  assert ran == ["train_ranker", "distilled", "evaluate"]
  ran.clear()
  config.teacher.sim_noise = 0.43  # the labels and everything trained on them
  pipeline.run(config, workdir)
  assert ran == ["label", "train_ranker", "distilled", "direct", "evaluate"]
  assert sorted(n.split("-")[0] for n in os.listdir(os.path.join(workdir, "stale"))) == [
      "direct", "distilled", "distilled", "evaluate", "evaluate", "label", "train_ranker",
      "train_ranker"]


def test_unrecorded_markers_of_older_runs_are_kept(tmp_path):
  config, workdir = _config(tmp_path / "data"), str(tmp_path / "work")
  os.makedirs(layout.ranker_dir(workdir))
  open(layout.done(layout.ranker_dir(workdir)), "w").write("{}")
  assert provenance.status("train_ranker", config, workdir) == ("unrecorded", [])
  assert pipeline.is_complete("train_ranker", config, workdir)


def test_an_edited_data_file_makes_retrieve_stale(tmp_path):
  config, workdir = _config(tmp_path / "data"), str(tmp_path / "work")
  _finish("retrieve", config, workdir)
  assert provenance.status("retrieve", config, workdir)[0] == "current"
  (tmp_path / "data" / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t2\n")
  assert provenance.status("retrieve", config, workdir) == (
      "stale", [f"data file {os.path.join('qrels', 'train.tsv')} changed"])


def test_the_same_data_copied_again_leaves_retrieve_current(tmp_path):
  """A fresh copy of the data set (new mtimes and inodes, the same bytes) reruns nothing."""
  config, workdir = _config(tmp_path / "data"), str(tmp_path / "work")
  _finish("retrieve", config, workdir)
  shutil.copytree(tmp_path / "data", tmp_path / "copy")
  shutil.rmtree(tmp_path / "data")
  os.rename(tmp_path / "copy", tmp_path / "data")
  for path in glob.glob(str(tmp_path / "data" / "**" / "*.*"), recursive=True):
    os.utime(path, ns=(0, os.stat(path).st_mtime_ns + 10**10))
  assert provenance.status("retrieve", config, workdir) == ("current", [])
  # Hashed from the bytes, not taken from the remembered digests: a stale record is not trusted.
  shutil.rmtree(tmp_path / "cache")
  assert provenance.status("retrieve", config, workdir) == ("current", [])


def test_records_of_size_and_mtime_stay_current_while_the_files_are_unchanged(tmp_path):
  """Older versions recorded each data file's size and mtime: such a workdir is not rerun after
  an upgrade, until a file changes."""
  config, workdir = _config(tmp_path / "data"), str(tmp_path / "work")
  root = tmp_path / "data"
  legacy = {name: digests.stat_id(str(root / name))
            for name in ("corpus.jsonl", "queries.jsonl", os.path.join("qrels", "train.tsv"))}
  stage_inputs = {**provenance.inputs("retrieve", config, workdir), "data_files": legacy}
  path = provenance.marker("retrieve", workdir)
  os.makedirs(os.path.dirname(path))
  with open(path, "w") as f:
    json.dump({"inputs": stage_inputs, "fingerprint": provenance.fingerprint(stage_inputs)}, f)
  assert provenance.status("retrieve", config, workdir) == ("current", [])
  st = os.stat(root / "queries.jsonl")
  os.utime(root / "queries.jsonl", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
  assert provenance.status("retrieve", config, workdir) == ("stale", ["data file queries.jsonl changed"])


def test_each_retriever_stage_reads_only_its_own_distill_fields(tmp_path):
  config, workdir = _config(tmp_path / "data"), str(tmp_path / "work")
  fields = {name: provenance.config_fields(name, config)
            for name in ("distilled", "direct", "supervised")}
  assert fields["distilled"]["distill.teacher"] == "ranker" and "distill.llm_loss" not in fields["distilled"]
  assert fields["direct"]["distill.teacher"] == "llm" and "distill.depth" not in fields["direct"]
  assert fields["supervised"]["distill.teacher"] == "qrels"
  assert not {"distill.depth", "distill.llm_loss"} & set(fields["supervised"])
  assert config.distill.teacher == "ranker"  # the caller's config is never changed


def test_the_interpolation_makes_evaluate_and_export_stale_not_the_training(tmp_path):
  """distill.interpolation is applied where the trained retriever is loaded: changing it reruns
  evaluate and export only."""
  config, workdir = _config(tmp_path / "data"), str(tmp_path / "work")
  for name in ("retrieve", "label", "train_ranker", "distilled", "evaluate", "export"):
    _finish(name, config, workdir)
  config.distill.interpolation = 0.75
  assert {n: provenance.status(n, config, workdir)[0]
          for n in ("distilled", "evaluate", "export")} == {
              "distilled": "current", "evaluate": "stale", "export": "stale"}
  assert provenance.status("evaluate", config, workdir)[1] == [
      "distill.interpolation: 0.5 then, 0.75 now"]


def test_a_field_added_later_leaves_earlier_records_current_at_its_default(tmp_path):
  config, workdir = _config(tmp_path / "data"), str(tmp_path / "work")
  for name in ("retrieve", "label"):
    _finish(name, config, workdir)
  # As a workdir labelled before label.sample_seed existed recorded its inputs.
  with open(provenance.marker("label", workdir)) as f:
    recorded = json.load(f)
  assert "label.sample_seed" not in recorded["inputs"]["config"]
  assert provenance.status("label", config, workdir)[0] == "current"
  config.label.sample_seed = 0
  assert provenance.status("label", config, workdir) == (
      "stale", ["label.sample_seed: '<absent>' then, 0 now"])


def test_another_spelling_of_the_data_directory_leaves_every_stage_current(tmp_path, monkeypatch):
  """data.dir says where the files are, their digests what they hold: relative, absolute and
  through a link, the same files rerun nothing; an edited file still makes retrieve stale."""
  config, workdir = _config(tmp_path / "data"), str(tmp_path / "work")
  for name in ("retrieve", "label", "train_ranker"):
    _finish(name, config, workdir)
  monkeypatch.chdir(tmp_path)
  os.symlink(tmp_path / "data", tmp_path / "link")
  for spelling in ("data", "./data/", str(tmp_path / "link")):
    config.data.dir = spelling
    assert [provenance.status(n, config, workdir) for n in ("retrieve", "label", "train_ranker")] \
        == [("current", [])] * 3, spelling
  # Another location with other bytes is other inputs, and says which file.
  shutil.copytree(tmp_path / "data", tmp_path / "other")
  (tmp_path / "other" / "queries.jsonl").write_text('{"_id": "q1", "text": "c"}\n')
  config.data.dir = "other"
  state, changes = provenance.status("retrieve", config, workdir)
  assert state == "stale" and "data file queries.jsonl changed" in changes
  assert provenance.status("label", config, workdir)[0] == "current"  # until retrieve reruns
  # A field that says what (not where) still counts beside a respelled directory.
  config.data.dir = "data"
  config.retrieve.splits = ("train", "test")
  assert provenance.status("retrieve", config, workdir)[0] == "stale"


def test_a_record_without_data_files_is_not_taken_as_the_same_by_location_alone(tmp_path):
  config, workdir = _config(tmp_path / "data"), str(tmp_path / "work")
  current = provenance.inputs("retrieve", config, workdir)
  recorded = {"config": {**current["config"], "data.dir": "elsewhere"}, "upstream": {}}
  assert not provenance.same_inputs({"inputs": recorded, "fingerprint": "x"}, current)
  recorded["data_files"] = current["data_files"]
  assert provenance.same_inputs({"inputs": recorded, "fingerprint": "x"}, current)
