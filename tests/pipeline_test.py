"""The workdir layout, the task table and the pipeline's stage logic (no models run here)."""

import ast
import os
import pathlib

import pytest

from interdistill_jax import defaults, layout, pipeline, tasks

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_every_task_resolves_to_a_run_function():
  for name in tasks.TASKS:
    fn = tasks.resolve(name)
    assert callable(fn) and fn.__name__ == "run", name
  with pytest.raises(ValueError, match="unknown task 'train'"):
    tasks.resolve("train")


def test_every_stage_runs_a_known_task():
  assert set(layout.STAGES) >= {"retrieve", "label", "train_ranker", "distill", "direct",
                                "supervised", "evaluate", "export"}
  for name, stage in layout.STAGES.items():
    assert stage.task in tasks.TASKS, name


def test_distill_stages_are_complete_by_their_own_teacher(tmp_path):
  config = defaults.base_config()
  workdir = str(tmp_path)
  os.makedirs(layout.ranker_dir(workdir))
  open(layout.done(layout.ranker_dir(workdir)), "w").write("{}")
  # A finished ranker says nothing about any retriever.
  assert pipeline.is_complete("train_ranker", config, workdir)
  for name in ("distill", "direct", "supervised"):
    assert not pipeline.is_complete(name, config, workdir), name
  os.makedirs(layout.system_dir(workdir, "direct"))
  open(layout.done(layout.system_dir(workdir, "direct")), "w").write("{}")
  assert pipeline.is_complete("direct", config, workdir)
  assert not pipeline.is_complete("distill", config, workdir)  # config.distill.teacher is "ranker"
  assert not pipeline.is_complete("supervised", config, workdir)
  config.distill.teacher = "llm"
  assert pipeline.is_complete("distill", config, workdir)  # the same directory now


def test_pipeline_runs_stages_in_order_with_their_overrides(tmp_path, monkeypatch):
  config = defaults.base_config()
  config.retrieve.splits = ("train",)
  config.pipeline.stages = ("retrieve", "distill", "direct", "supervised", "export")
  workdir = str(tmp_path)
  os.makedirs(layout.candidates_dir(workdir))
  open(layout.done(layout.candidates_dir(workdir)), "w").write("{}")  # retrieve is done: skipped
  calls = []

  def fake(task):
    def run(cfg, wd):
      calls.append((task, cfg.distill.teacher))
      out = (layout.export_dir(wd) if task == "export"
             else layout.retriever_dir(wd, cfg.distill.teacher))
      os.makedirs(out, exist_ok=True)
      open(layout.done(out), "w").write("{}")
    return run

  monkeypatch.setattr(tasks, "resolve", fake)
  pipeline.run(config, workdir)
  assert calls == [("distill", "ranker"), ("distill", "llm"), ("distill", "qrels"),
                   ("export", "ranker")]
  assert config.distill.teacher == "ranker"  # the overrides never leak into the caller's config
  calls.clear()
  pipeline.run(config, workdir)  # everything is done now
  assert calls == []


def test_an_unknown_stage_stops_before_anything_runs(tmp_path, monkeypatch):
  config = defaults.base_config()
  config.pipeline.stages = ("retrieve", "train")
  monkeypatch.setattr(tasks, "resolve", lambda task: pytest.fail(f"{task} ran"))
  with pytest.raises(ValueError, match="unknown stage 'train'"):
    pipeline.run(config, str(tmp_path))


def test_readme_workdir_table_is_the_layout_table():
  readme = (REPO / "README.md").read_text(encoding="utf-8")
  assert layout.markdown_table() in readme, (
      "README.md's workdir table differs from interdistill_jax/layout.py: paste "
      "layout.markdown_table() into the Artifacts section")


def test_readme_sweep_table_is_the_sweep_layout_table():
  readme = (REPO / "README.md").read_text(encoding="utf-8")
  assert layout.markdown_table(layout.SWEEP_LAYOUT) in readme, (
      "README.md's sweep table differs from layout.SWEEP_LAYOUT: paste "
      "layout.markdown_table(layout.SWEEP_LAYOUT) into the Sweeps section")


def test_layout_paths_are_in_the_table():
  patterns = [p for p, _, _ in layout.LAYOUT]
  w = "W"
  paths = [layout.candidates(w, "{split}"), layout.done(layout.candidates_dir(w)),
           layout.embeddings_dir(w) + "/", layout.labels(w),
           layout.label_cache(w), layout.label_stats(w), layout.label_partial_stats(w),
           layout.fusion(w), layout.done(layout.ranker_dir(w)),
           layout.ranker_scores(w, "teacher_scores"), layout.ranker_scores(w, "rerank_scores_{split}"),
           *(layout.system_dir(w, s) + "/" for s in layout.SYSTEMS),
           layout.eval_file(w, "compare.json"), layout.report(w),
           *(layout.export_dir(w, k) + "/" for k in ("retriever", "ranker", "labels")),
           layout.done(layout.export_dir(w)), layout.done(layout.eval_dir(w)),
           layout.stale_dir(w, "{stage}", "{time}") + "/", layout.lock(w), layout.point_record(w),
           layout.peer_run(w, "{run}") + "/"]
  for path in paths:
    assert os.path.relpath(path, w).replace(os.sep, "/") + ("/" if path.endswith("/") else "") \
        in patterns, path


def test_no_module_joins_artifact_paths_onto_the_workdir():
  """Artifact paths are spelled out in layout.py alone: `os.path.join(workdir, ...)` elsewhere
  would be a second owner of the layout."""
  offenders = []
  for path in sorted((REPO / "interdistill_jax").rglob("*.py")):
    if path.name == "layout.py":
      continue
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
      if (isinstance(node, ast.Call) and ast.unparse(node.func) == "os.path.join" and node.args
          and isinstance(node.args[0], ast.Name) and node.args[0].id in ("workdir", "wd")):
        offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
  assert not offenders, offenders
