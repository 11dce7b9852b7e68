"""Sweeps: the grid, what points share (by recorded inputs), nested label sets, kill and rerun.

The training stages are stand-ins that record their inputs as the real ones do (`provenance`),
so these tests run in seconds; `label` is the real task with the simulated teacher, whose
answers are counted. `test_a_real_two_by_two_sweep_end_to_end` runs every stage for real.
"""

import json
import os

import numpy as np
import pytest

from interdistill_jax import aggregate, data as data_lib, defaults, grid, layout, provenance
from interdistill_jax import aggregate_report, sharing, sweep, tasks
from interdistill_jax.teachers import simulated
from tests import fixtures
from tests.conftest import REPO

NUM_TRAIN = 16


@pytest.fixture
def data_dir(tmp_path):
  return fixtures.tiny_beir(tmp_path / "data", num_train=NUM_TRAIN, num_test=8)


def base_config(data_dir):
  config = defaults.base_config()
  config.data.dir = str(data_dir)
  config.retrieve.splits = ("train",)
  config.pipeline.stages = ("retrieve", "label", "train_ranker", "distill", "evaluate")
  config.label.num_candidates = 8
  config.label.weak_teacher = "ignore"
  return config


class Fakes:
  """Stand-ins for retrieve, train_ranker, distill and evaluate (label is real); counts every
  task run (task, workdir) and every answer the simulated teacher computes."""

  def __init__(self, monkeypatch, *, interrupt=None):
    self.ran, self.answers = [], 0
    self.interrupt = interrupt  # (task, nth run of it) that raises KeyboardInterrupt
    real_resolve, real_answer = tasks.resolve, simulated.SimulatedBackend.answer

    def resolve(name):
      fake = name in ("retrieve", "train_ranker", "distill", "evaluate")
      fn = getattr(self, name) if fake else real_resolve(name)

      def counted(config, workdir):
        self.ran.append((name, os.path.basename(workdir)))
        if self.interrupt and self.interrupt[0] == name and self.count(name) == self.interrupt[1]:
          raise KeyboardInterrupt
        return fn(config, workdir)
      return counted

    async def answer(backend, request):
      self.answers += 1
      if self.interrupt and self.interrupt[0] == "answer" and self.answers == self.interrupt[1]:
        raise KeyboardInterrupt
      return await real_answer(backend, request)

    monkeypatch.setattr(tasks, "resolve", resolve)
    monkeypatch.setattr(simulated.SimulatedBackend, "answer", answer)

  def count(self, task):
    return sum(t == task for t, _ in self.ran)

  @staticmethod
  def retrieve(config, workdir):
    inputs = provenance.begin("retrieve", config, workdir)
    dataset = data_lib.load_beir(config.data.dir)
    num_docs = len(dataset.corpus)
    run = {}
    for i, (qid, rel) in enumerate(sorted(dataset.qrels("train").items())):
      others = [f"d{(7 * i + 3 * j) % num_docs}" for j in range(1, 12)]
      docids = list(dict.fromkeys([*others[:3], *rel, *others[3:]]))[:10]
      run[qid] = {d: float(10 - r) for r, d in enumerate(docids)}
    data_lib.write_trec_run(layout.candidates(workdir, "train"), run, tag="initial")
    os.makedirs(layout.embeddings_dir(workdir), exist_ok=True)
    np.save(os.path.join(layout.embeddings_dir(workdir), "corpus-fake.npy"), np.zeros((num_docs, 4)))
    data_lib.write_json(provenance.marker("retrieve", workdir), {"splits": ["train"], **inputs})

  @staticmethod
  def train_ranker(config, workdir):
    inputs = provenance.begin("train_ranker", config, workdir)
    d = layout.ranker_dir(workdir)
    for kind in ("best", "latest"):
      os.makedirs(os.path.join(d, "checkpoints", kind, "2"), exist_ok=True)
      open(os.path.join(d, "checkpoints", kind, "2", "params"), "w").write(kind)
    rate = 100 * config.ranker.optim.learning_rate
    data_lib.write_json(layout.done(d), {"selected_step": 2 + config.seed, "dev_listmle": {
        "ranker": 2.0 - 0.01 * config.seed + rate, "initial": 2.1, "fused": 1.9 + rate}, **inputs})

  @staticmethod
  def distill(config, workdir):
    inputs = provenance.begin(provenance.stage_name("distill", config), config, workdir)
    quality = _quality(workdir)
    data_lib.write_json(layout.done(layout.retriever_dir(workdir, config.distill.teacher)), {
        "selected_step": 2, "dev_llm_listmle": {
            "initial": 2.1, "trained": 2.0 - quality - config.distill.student_temperature},
        **inputs})

  @staticmethod
  def evaluate(config, workdir):
    """baseline 0.5; distilled 0.5 + 0.2 quality + 0.01 seed + 0.001 labelled queries (+ 0.1 x
    the student temperature's distance above its default)."""
    inputs = provenance.begin("evaluate", config, workdir)
    labelled = len(data_lib.load_labels(layout.labels(workdir)))
    recipe = 0.1 * (config.distill.student_temperature - 0.05)
    scores = {"baseline": 0.5, "distilled": (0.5 + 0.2 * _quality(workdir) + 0.01 * config.seed
                                             + 0.001 * labelled + recipe)}
    for system, ndcg in scores.items():
      data_lib.write_json(layout.eval_file(workdir, f"{system}.json"), {
          "dataset": "tiny", "split": "test", "system": system, "num_queries": 8,
          "metrics": {"ndcg@10": ndcg, "recall@100": 0.9}})
    diff = scores["distilled"] - scores["baseline"]
    data_lib.write_json(layout.eval_file(workdir, "compare.json"), {"distilled": {"ndcg@10": {
        "mean_a": 0.5, "mean_b": scores["distilled"], "diff": diff, "ci_low": diff - 0.05,
        "ci_high": diff + 0.05, "p_value": 0.01}}})
    data_lib.write_json(layout.done(layout.eval_dir(workdir)), {"systems": list(scores), **inputs})


def _quality(workdir):
  with open(layout.label_stats(workdir)) as f:
    return json.load(f)["quality"]["teacher_ndcg@10"]


def _labels(workdir):
  return {r["qid"]: r for r in data_lib.load_labels(layout.labels(workdir))}


def _mtimes(root):
  return {name: os.stat(layout.done(layout.eval_dir(os.path.join(root, name)))).st_mtime_ns
          for name in os.listdir(root) if layout.is_done(layout.eval_dir(os.path.join(root, name)))}


# --- the grid -------------------------------------------------------------------------------

def test_grid_points_are_the_product_named_by_the_values_that_vary():
  axes = {"seed": (0, 1), ("teacher.backend", "teacher.model"): (("openai", "org/m-1"), ("gemini", "g")),
          "label.sample_seed": (0,)}
  points = grid.points(axes)
  assert [p.name for p in points] == [
      "seed=0+backend=openai+model=org-m-1", "seed=0+backend=gemini+model=g",
      "seed=1+backend=openai+model=org-m-1", "seed=1+backend=gemini+model=g"]
  assert points[1].values == {"seed": 0, "teacher.backend": "gemini", "teacher.model": "g",
                              "label.sample_seed": 0}
  config = grid.apply(defaults.base_config(), points[3].values)
  assert (config.seed, config.teacher.backend, config.label.sample_seed) == (1, "gemini", 0)
  # Two fields with the same last name are named in full.
  names = [p.name for p in grid.points({"ranker.optim.learning_rate": (1e-4, 5e-5),
                                        "distill.optim.learning_rate": (2e-5,)})]
  assert names == ["learning_rate=0.0001", "learning_rate=5e-05"]
  names = [p.name for p in grid.points({"ranker.optim.learning_rate": (1e-4, 5e-5),
                                        "distill.optim.learning_rate": (2e-5, 1e-5)})]
  assert names[0] == "ranker.optim.learning_rate=0.0001+distill.optim.learning_rate=2e-05"


@pytest.mark.parametrize("axes, message", [
    ({"label.max_querys": (1, 2)}, "'label.max_querys' is not a config field"),
    ({"label": (1, 2)}, "'label' is a config section"),
    ({"label.max_queries": (1.5, 2)}, "label.max_queries=1.5"),
    ({"seed": ()}, "axis 'seed': give its values"),
    ({"seed": (0, 0)}, "repeats a value"),
    ({("seed", "teacher.sim_noise"): ((0, 0.1), (1,))}, "each value must be a tuple of 2"),
    ({"seed": (0, 1), ("seed", "teacher.sim_noise"): ((0, 0.1),)}, "'seed' is on two axes"),
])
def test_a_sweep_that_does_not_fit_the_config_names_the_file_and_the_field(axes, message):
  with pytest.raises(grid.SweepError, match=message) as err:
    for point in grid.points(axes, source="s.py"):
      grid.apply(defaults.base_config(), point.values, source="s.py")
  assert str(err.value).startswith("s.py: ")


def test_committed_sweep_files_fit_the_scifact_config():
  import importlib.util
  spec = importlib.util.spec_from_file_location("scifact", REPO / "configs" / "scifact.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  sizes = {}
  for name in ("learning_curve", "teacher_quality", "ranker_schedule", "ranker_rate_pipeline",
               "ranker_rate_default_teacher", "ranker_warmup", "ranker_epochs"):
    path = str(REPO / "configs" / "sweeps" / f"{name}.py")
    points = grid.points(grid.load(path), source=path)
    for p in points:
      config = grid.apply(module.get_config(), p.values, source=path)
      if name in ("ranker_schedule", "ranker_rate_default_teacher", "ranker_warmup",
                  "ranker_epochs"):  # dev only
        assert tuple(config.pipeline.stages)[-1] == "train_ranker"
      if name == "ranker_warmup":  # the config's peak rate, a longer warmup
        assert config.ranker.optim.learning_rate == 1e-4
        assert config.ranker.optim.warmup_fraction == 0.3
      if name == "ranker_epochs":  # the config's schedule, but for its length
        assert config.ranker.epochs in (1.5, 2.5) and config.ranker.optim.learning_rate == 1e-4
        assert config.ranker.optim.warmup_fraction == module.get_config().ranker.optim.warmup_fraction
      if name == "ranker_rate_pipeline":  # the config's whole pipeline, the lower rate
        assert tuple(config.pipeline.stages) == tuple(module.get_config().pipeline.stages)
        assert config.ranker.optim.learning_rate == 5e-5
    sizes[name] = len(points)
  assert sizes == {"learning_curve": 8, "teacher_quality": 12, "ranker_schedule": 12,
                   "ranker_rate_pipeline": 6, "ranker_rate_default_teacher": 4, "ranker_warmup": 6,
                   "ranker_epochs": 12}


# --- sharing --------------------------------------------------------------------------------

def test_a_two_by_two_sweep_shares_retrieve_and_labels_across_seeds_only(data_dir, tmp_path, monkeypatch):
  fakes = Fakes(monkeypatch)
  root = str(tmp_path / "root")
  axes = {"seed": (0, 1), "teacher.sim_noise": (0.0, 3.0)}
  assert sweep.run(base_config(data_dir), axes, root) == []
  points = sorted(os.listdir(root))
  assert points == ["seed=0+sim_noise=0.0", "seed=0+sim_noise=3.0", "seed=1+sim_noise=0.0",
                    "seed=1+sim_noise=3.0", "sweep.json", "upstream"]
  # Retrieve once for all; label once per teacher (in upstream/), both seeds on the same labels;
  # every point trains its own ranker (the seed is one of its inputs).
  assert fakes.count("retrieve") == 1 and fakes.count("label") == 2
  assert sorted(w for t, w in fakes.ran if t == "train_ranker") == points[:4]
  assert fakes.answers == 2 * NUM_TRAIN  # each query once per teacher
  for noise in ("0.0", "3.0"):
    a, b = (os.path.join(root, f"seed={s}+sim_noise={noise}") for s in (0, 1))
    assert _labels(a) == _labels(b)
  assert _labels(os.path.join(root, points[0])) != _labels(os.path.join(root, points[1]))
  # Embeddings are linked to the one copy, candidates copied.
  emb = os.path.join(layout.embeddings_dir(os.path.join(root, points[0])), "corpus-fake.npy")
  assert os.path.islink(emb) and not os.path.isabs(os.readlink(emb))
  assert not os.path.islink(layout.candidates_dir(os.path.join(root, points[0])))
  plan = json.load(open(layout.sweep_plan(root)))
  assert {e["stage"] for e in plan["upstream"].values()} == {"retrieve", "label"}
  assert sorted(len(e["points"]) for e in plan["upstream"].values()) == [2, 2, 4]
  assert json.load(open(layout.point_record(os.path.join(root, points[3]))))["values"] == {
      "seed": 1, "teacher.sim_noise": 3.0}
  # A rerun finds every point finished.
  fakes.ran.clear()
  assert sweep.run(base_config(data_dir), axes, root) == []
  assert fakes.ran == [] and fakes.answers == 2 * NUM_TRAIN


def test_a_ranker_is_taken_from_a_point_that_trained_it_from_the_same_inputs(data_dir, tmp_path,
                                                                            monkeypatch):
  fakes = Fakes(monkeypatch)
  root = str(tmp_path / "root")
  sweep.run(base_config(data_dir), {"distill.optim.learning_rate": (2e-5, 5e-5)}, root)
  assert fakes.count("train_ranker") == 1 and fakes.count("distill") == 2
  first, second = (os.path.join(root, f"learning_rate={lr}") for lr in ("2e-05", "5e-05"))
  assert layout.read_done(layout.ranker_dir(first)) == layout.read_done(layout.ranker_dir(second))
  assert os.path.isdir(os.path.join(layout.ranker_dir(second), "checkpoints", "best"))
  assert not os.path.exists(os.path.join(layout.ranker_dir(second), "checkpoints", "latest"))


def test_stages_are_taken_by_recorded_inputs_never_by_name(data_dir, tmp_path, monkeypatch):
  Fakes(monkeypatch)
  config = base_config(data_dir)
  source, workdir = str(tmp_path / "a"), str(tmp_path / "b")
  config.pipeline.stages = ("retrieve", "label")
  from interdistill_jax import pipeline
  pipeline.run(config, source)
  other = config.copy_and_resolve_references()
  other.label.num_candidates = 5  # the same candidates, other label settings
  assert sharing.adopt("retrieve", other, workdir, source)
  assert not sharing.adopt("label", other, workdir, source)
  assert not os.path.exists(layout.labels(workdir))
  assert sharing.adopt("label", config, workdir, source)  # the settings it was made with
  assert _labels(workdir) == _labels(source)


def test_a_sweep_rerun_with_another_spelling_of_the_data_directory_reruns_nothing(
    data_dir, tmp_path, monkeypatch):
  """The stores are found by recorded inputs: the same data under another spelling of data.dir
  takes the root's retrieve and label stores, and every finished point stays finished."""
  fakes = Fakes(monkeypatch)
  root = str(tmp_path / "root")
  axes = {"seed": (0, 1)}
  assert sweep.run(base_config(data_dir), axes, root) == []
  stores = sorted(os.listdir(os.path.join(root, "upstream")))
  fakes.ran.clear()
  monkeypatch.chdir(tmp_path)
  config = base_config(data_dir)
  config.data.dir = os.path.relpath(data_dir, tmp_path)
  assert sweep.run(config, axes, root) == []
  assert fakes.ran == [] and sorted(os.listdir(os.path.join(root, "upstream"))) == stores
  # A new point of the same data takes the stores too; only its own stages run.
  assert sweep.run(config, {"seed": (0, 1, 2)}, root) == []
  assert sorted(fakes.ran) == [(t, "seed=2") for t in ("distill", "evaluate", "train_ranker")]
  assert sorted(os.listdir(os.path.join(root, "upstream"))) == stores
  assert not [d for d, _, _ in os.walk(root) if os.path.basename(d) == "stale"]


def test_a_sweep_whose_points_have_the_names_of_other_settings_stops_before_running(
    data_dir, tmp_path, monkeypatch):
  """An axis with one value stays out of the names: a second sweep with another such value would
  recompute the first one's points under their names. It stops, naming the points and the
  field, unless told to replace them; going on with the same settings (more stages) is fine."""
  fakes = Fakes(monkeypatch)
  root = str(tmp_path / "root")
  base = base_config(data_dir)
  first = {"seed": (0, 1), "teacher.sim_noise": (0.0,),
           "pipeline.stages": (("retrieve", "label", "train_ranker"),)}
  assert sweep.run(base, first, root) == []
  assert sweep.clashes(sweep.plan(base, {**first, "pipeline.stages": (tuple(base.pipeline.stages),)},
                                  root)) == {}
  fakes.ran.clear()
  other = {**first, "teacher.sim_noise": (3.0,)}
  with pytest.raises(grid.SweepError) as e:
    sweep.run(base, other, root)
  assert "seed=0" in str(e.value) and "seed=1" in str(e.value)
  assert "teacher.sim_noise: 0.0 then, 3.0 now" in str(e.value) and "--replace" in str(e.value)
  assert fakes.ran == [] and not [d for d, _, _ in os.walk(root) if os.path.basename(d) == "stale"]
  assert sweep.run(base, other, root, replace=True) == []
  assert sorted(w for t, w in fakes.ran if t == "train_ranker") == ["seed=0", "seed=1"]
  assert [d for d, _, _ in os.walk(root) if os.path.basename(d) == "stale"]
  # Going on from the same settings to the whole pipeline runs only the later stages.
  fakes.ran.clear()
  assert sweep.run(base, {**other, "pipeline.stages": (tuple(base.pipeline.stages),)}, root) == []
  assert sorted({t for t, _ in fakes.ran}) == ["distill", "evaluate"]


def test_a_learning_curve_labels_nested_sets_paying_each_answer_once(data_dir, tmp_path, monkeypatch):
  fakes = Fakes(monkeypatch)
  root = str(tmp_path / "root")
  axes = {"seed": (0, 1), "label.max_queries": (4, 8, 0), "label.sample_seed": (3,)}
  base = base_config(data_dir)
  base.teacher.sim_noise = 1.0
  assert sweep.run(base, axes, root) == []
  assert fakes.count("label") == 3 and fakes.answers == NUM_TRAIN
  sets = [_labels(os.path.join(root, f"seed=0+max_queries={n}")) for n in (4, 8, 0)]
  assert [len(s) for s in sets] == [4, 8, NUM_TRAIN]
  for smaller, larger in zip(sets, sets[1:]):
    assert set(smaller) < set(larger)
    assert all(smaller[q] == larger[q] for q in smaller)  # the same answers, not new ones
  assert sets[1] == _labels(os.path.join(root, "seed=1+max_queries=8"))
  # The first four are a seeded sample, not the first queries of the file.
  assert set(sets[0]) != {f"q{i}" for i in range(4)}
  with open(layout.label_stats(os.path.join(root, "seed=0+max_queries=4"))) as f:
    assert json.load(f)["calls"]["answered"] == 0  # all from the cache of the largest set


def test_a_killed_sweep_recomputes_no_finished_point_and_pays_no_answer_twice(data_dir, tmp_path,
                                                                              monkeypatch):
  root = str(tmp_path / "root")
  axes = {"seed": (0, 1), "teacher.sim_noise": (0.0, 3.0)}
  # Killed in the middle of labelling the first teacher's queries.
  fakes = Fakes(monkeypatch, interrupt=("answer", 5))
  with pytest.raises(KeyboardInterrupt):
    sweep.run(base_config(data_dir), axes, root)
  answered = fakes.answers - 1
  monkeypatch.undo()
  # Killed again in the third point's ranker: two points are finished by then.
  fakes = Fakes(monkeypatch, interrupt=("train_ranker", 3))
  with pytest.raises(KeyboardInterrupt):
    sweep.run(base_config(data_dir), axes, root)
  assert answered + fakes.answers == 2 * NUM_TRAIN
  finished = _mtimes(root)
  assert sorted(finished) == ["seed=0+sim_noise=0.0", "seed=0+sim_noise=3.0"]
  monkeypatch.undo()
  fakes = Fakes(monkeypatch)
  assert sweep.run(base_config(data_dir), axes, root) == []
  assert fakes.answers == 0 and fakes.count("label") == 0 and fakes.count("retrieve") == 0
  assert {w for _, w in fakes.ran} == {"seed=1+sim_noise=0.0", "seed=1+sim_noise=3.0"}
  assert {k: v for k, v in _mtimes(root).items() if k in finished} == finished
  # Everything resumed in place: nothing was found stale and moved aside.
  assert not [d for d, _, _ in os.walk(root) if os.path.basename(d) == "stale"]


def test_a_failed_point_is_reported_and_the_others_run(data_dir, tmp_path, monkeypatch):
  fakes = Fakes(monkeypatch)
  real = fakes.distill

  def fail_at_lr(config, workdir):
    if config.distill.optim.learning_rate > 3e-5:
      raise ValueError("distill: a bad value")
    real(config, workdir)

  fakes.distill = fail_at_lr  # looked up when each task runs
  root = str(tmp_path / "root")
  failed = sweep.run(base_config(data_dir), {"distill.optim.learning_rate": (5e-5, 2e-5)}, root)
  assert failed == ["learning_rate=5e-05"]
  assert layout.is_done(layout.eval_dir(os.path.join(root, "learning_rate=2e-05")))


def test_a_point_held_by_another_run_is_skipped(data_dir, tmp_path, monkeypatch):
  from interdistill_jax import locking
  fakes = Fakes(monkeypatch)
  root = str(tmp_path / "root")
  held = locking.lock_workdir(os.path.join(root, "seed=1"))
  try:
    assert sweep.run(base_config(data_dir), {"seed": (0, 1)}, root) == []
  finally:
    held.close()
  assert {w for t, w in fakes.ran if t == "evaluate"} == {"seed=0"}


def test_dry_run_describes_points_and_what_they_share(data_dir, tmp_path):
  root = str(tmp_path / "root")
  points = sweep.plan(base_config(data_dir), {"seed": (0, 1), "label.max_queries": (4, 0)}, root)
  text = sweep.describe(points, root)
  assert "4 points" in text and text.count("(label") == 2 and "from the call cache of" in text
  assert not os.path.exists(root)


# --- the report -----------------------------------------------------------------------------

def test_aggregate_reports_mean_sd_and_ci_per_setting_with_plots(data_dir, tmp_path, monkeypatch):
  Fakes(monkeypatch)
  root = str(tmp_path / "root")
  sweep.run(base_config(data_dir), {"seed": (0, 1), "teacher.sim_noise": (0.0, 3.0),
                                    "label.max_queries": (6, 0)}, root)
  summary = aggregate.aggregate(root)
  assert len(summary["cells"]) == 4 and not summary["unfinished"]
  cell = next(c for c in summary["cells"]
              if c["values"] == {"teacher.sim_noise": 0.0, "label.max_queries": 0})
  quality = cell["teacher"]["teacher_ndcg@10"]["mean"]
  distilled = cell["systems"]["distilled"]
  want = [0.5 + 0.2 * quality + 0.01 * s + 0.001 * NUM_TRAIN for s in (0, 1)]
  assert distilled["ndcg@10"]["values"] == pytest.approx(want)
  assert distilled["ndcg@10"]["mean"] == pytest.approx(np.mean(want))
  assert distilled["ndcg@10"]["sd"] == pytest.approx(np.std(want, ddof=1))
  assert distilled["gain"]["ndcg@10"]["mean"] == pytest.approx(np.mean(want) - 0.5)
  assert distilled["ndcg@10_ci_low_above_0_in"] == "2/2"
  assert cell["labelled"]["mean"] == NUM_TRAIN
  report = open(layout.aggregate_file(root, "report.md")).read()
  assert f"{np.mean(want):.4f} ± {np.std(want, ddof=1):.4f}" in report
  assert "## teacher.sim_noise=0.0, label.max_queries=0\n" in report
  # One teacher curve per labelled set, each from the weaker teacher (noise 3.0) up.
  assert [c["fixed"] for c in summary["teacher_curves"]] == [{"label.max_queries": 6},
                                                             {"label.max_queries": 0}]
  for c in summary["teacher_curves"]:
    assert [r["values"]["teacher.sim_noise"] for r in c["rows"]] == [3.0, 0.0]
  assert "## Gain against the teacher's quality" in report
  for name in ("learning_curve.png", "gain_vs_teacher.png", "dev_vs_test.png"):
    assert os.path.getsize(layout.aggregate_file(root, name)) > 5000, name
    assert f"]({name})" in report
  # Dev figures: these points differ in seed, teacher or labelled set, so no two share the dev
  # queries and labels their dev losses are computed on: none is correlated (the fake's loss
  # falls with the teacher's quality, as its test metric rises, but across labels that differ).
  assert summary["dev_vs_test"]["distilled"]["spearman"] is None
  assert summary["dev_vs_test"]["distilled"]["groups"] == []
  assert len(summary["dev_vs_test"]["distilled"]["points"]) == 8
  assert "No 3 points here share their dev queries and labels" in report
  saved = json.load(open(layout.aggregate_file(root, "summary.json")))
  assert saved["cells"][0]["systems"]["distilled"]["ndcg@10"]["values"] == pytest.approx(
      summary["cells"][0]["systems"]["distilled"]["ndcg@10"]["values"])


def test_dev_losses_are_correlated_only_among_recipes_on_the_same_dev_data(data_dir, tmp_path,
                                                                          monkeypatch):
  Fakes(monkeypatch)
  root = str(tmp_path / "root")
  sweep.run(base_config(data_dir), {"seed": (0, 1), "teacher.sim_noise": (0.0, 3.0),
                                    "distill.student_temperature": (0.02, 0.05, 0.1)}, root)
  summary = aggregate.aggregate(root)
  c = summary["dev_vs_test"]["distilled"]
  # One set per seed and teacher, each the three recipes: the fake's dev loss falls and its test
  # metric rises with the temperature, so each set ranks them perfectly.
  assert sorted(len(g["points"]) for g in c["groups"]) == [3, 3, 3, 3]
  for g in c["groups"]:
    assert len({p.split("+")[0] for p in g["points"]}) == 1  # one seed
    assert g["spearman"] == pytest.approx(-1.0)
  assert c["spearman"] == pytest.approx(-1.0)
  report = open(layout.aggregate_file(root, "report.md")).read()
  assert "| distilled | 12 | 4 | -1.000 |" in report


def _teacher_cell(noise, quality, max_queries, ci_lows):
  """A cell of `aggregate.cells`: per system, each seed's CI low against the baseline."""
  return {"values": {"teacher.sim_noise": noise, "label.max_queries": max_queries},
          "teacher": {"teacher_ndcg@10": {"mean": quality}, "initial_ndcg@10": {"mean": 0.66}},
          "systems": {"baseline": {"ndcg@10": {"mean": 0.6}},
                      **{s: {"gain": {"ndcg@10": {"mean": lows[0] + 0.01}},
                             "vs_baseline": {"ndcg@10": [{"ci_low": lo} for lo in lows]}}
                         for s, lows in ci_lows.items()}}}


def test_teacher_curves_say_from_which_teacher_each_system_pays():
  cells = [
      _teacher_cell(0.3, 0.81, 0, {"distilled": [0.02, 0.01], "ranker": [-0.01, 0.02], "fused": [0.01]}),
      _teacher_cell(0.6, 0.59, 0, {"distilled": [0.01, -0.001], "ranker": [0.01, 0.01], "fused": [0.01]}),
      _teacher_cell(0.48, 0.66, 0, {"distilled": [0.01, 0.02], "ranker": [0.01, 0.01], "fused": [0.01]}),
      _teacher_cell(0.48, 0.66, 100, {"distilled": [0.01]}),  # alone with its labelled set
  ]
  (curve,) = aggregate.teacher_curves(cells, "ndcg@10")
  assert curve["fixed"] == {"label.max_queries": 0}
  assert [r["teacher_ndcg@10"] for r in curve["rows"]] == [0.59, 0.66, 0.81]
  assert [r["systems"]["distilled"]["pays"] for r in curve["rows"]] == [False, True, True]
  assert curve["pays_from"]["distilled"] == {"teacher_ndcg@10": 0.66, "not_at": 0.59,
                                             "pays_everywhere": False}
  # Paying at weaker teachers does not count when the strongest one does not.
  assert curve["pays_from"]["ranker"] == {"teacher_ndcg@10": None, "not_at": 0.81,
                                          "pays_everywhere": False}
  assert curve["pays_from"]["fused"]["pays_everywhere"]
  assert "baseline" not in curve["pays_from"]
  text = "\n".join(aggregate_report._teacher_markdown([curve], "ndcg@10"))
  assert "With label.max_queries=0:" in text
  # Columns in the order the systems come: distilled, ranker, fused.
  assert "| teacher.sim_noise=0.6 | 0.5900 | 0.6600 | +0.0200 | +0.0200 * | +0.0200 * |" in text
  assert "- distilled: pays from teacher 0.6600 up; not at 0.5900." in text
  assert "- ranker: does not pay with the strongest teacher measured (0.8100)." in text
  assert "- fused: pays at every level measured, down to the weakest teacher (0.5900)" in text
  # One teacher level per set: no curve.
  assert aggregate.teacher_curves(cells[3:], "ndcg@10") == []


def test_the_dev_figure_is_the_one_of_the_weights_evaluated(tmp_path):
  """With distill.interpolation < 1 a retriever's dev figure is the one distill recorded at that
  interpolation; none where it recorded none (an older run), never the trained weights' one."""
  workdir = str(tmp_path)
  for system, rows in (("distilled", [{"alpha": 0.5, "dev_llm_listmle": 2.3}]), ("direct", None)):
    data_lib.write_json(layout.done(layout.system_dir(workdir, system)), {
        "dev_llm_listmle": {"initial": 2.5, "trained": 2.1},
        **({"dev_interpolation": rows} if rows else {})})
  data_lib.write_json(layout.done(layout.eval_dir(workdir)), {"systems": [], "interpolation": 0.5})
  run = aggregate.read_run(workdir)
  assert aggregate.dev_figure(run, "distilled") == 2.3
  assert aggregate.dev_figure(run, "direct") is None
  data_lib.write_json(layout.done(layout.eval_dir(workdir)), {"systems": [], "interpolation": 1.0})
  assert aggregate.dev_figure(aggregate.read_run(workdir), "distilled") == 2.1


def test_aggregate_leaves_out_unfinished_points_and_says_so(data_dir, tmp_path, monkeypatch):
  Fakes(monkeypatch, interrupt=("evaluate", 2))
  root = str(tmp_path / "root")
  with pytest.raises(KeyboardInterrupt):
    sweep.run(base_config(data_dir), {"seed": (0, 1)}, root)
  summary = aggregate.aggregate(root)
  assert list(summary["points"]) == ["seed=0"] and summary["unfinished"] == ["seed=1"]
  assert summary["cells"][0]["systems"]["distilled"]["ndcg@10"]["sd"] is None
  assert "Not finished (left out): seed=1" in open(layout.aggregate_file(root, "report.md")).read()
  with pytest.raises(ValueError, match="--metric='top20_acc' is not in the points' results"):
    aggregate.aggregate(root, metric="top20_acc")


def test_a_sweep_that_ends_before_evaluate_is_reported_by_its_dev_figures(data_dir, tmp_path,
                                                                         monkeypatch):
  """Rankers compared on dev (stages up to train_ranker): every point is finished, with dev
  figures only; a later sweep in the same root runs the whole pipeline for one rate, takes those
  rankers, and its points are reported with test figures and dev figures alike."""
  fakes = Fakes(monkeypatch)
  root = str(tmp_path / "root")
  config = base_config(data_dir)
  rates = {"seed": (0, 1), "ranker.optim.learning_rate": (5e-5, 1e-4),
           "pipeline.stages": (("retrieve", "label", "train_ranker"),)}
  sweep.run(config, rates, root)
  summary = aggregate.aggregate(root)
  assert summary["points"] == {} and summary["cells"] == [] and summary["unfinished"] == []
  assert len(summary["dev_only"]) == 4
  by_rate = {c["values"]["ranker.optim.learning_rate"]: c for c in summary["dev_cells"]}
  for lr, cell in by_rate.items():
    rate = 100 * lr
    assert cell["seeds"] == [0, 1]
    assert cell["dev"]["ranker"]["values"] == pytest.approx([2.0 + rate, 1.99 + rate])
    assert cell["dev"]["ranker_fused"]["mean"] == pytest.approx(1.9 + rate)
    assert cell["dev"]["baseline"]["mean"] == pytest.approx(2.1)
    assert cell["ranker_selected_step"] == [2, 3]
    assert "distilled" not in cell["dev"]
  report = open(layout.aggregate_file(root, "report.md")).read()
  assert "4 more points end before `evaluate`" in report and "Not finished" not in report
  assert ("| ranker.optim.learning_rate=5e-05 | 0, 1 | 2.1000 ± 0.0000 | 2.0000 ± 0.0071 | "
          "1.9050 ± 0.0000 | 2, 3 |") in report
  assert ("| ranker.optim.learning_rate=0.0001 | 0, 1 | 2.1000 ± 0.0000 | 2.0050 ± 0.0071 | "
          "1.9100 ± 0.0000 | 2, 3 |") in report
  # The whole pipeline at one rate: the rankers are taken, not trained again.
  trained = fakes.count("train_ranker")
  sweep.run(config, {"seed": (0, 1), "ranker.optim.learning_rate": (5e-5,)}, root)
  assert fakes.count("train_ranker") == trained and fakes.count("evaluate") == 2
  summary = aggregate.aggregate(root)
  assert len(summary["points"]) == 2 and len(summary["dev_only"]) == 4
  assert summary["cells"][0]["systems"]["distilled"]["seeds"] == 2
  whole = [c for c in summary["dev_cells"] if "evaluate" in c["values"]["pipeline.stages"]]
  assert len(whole) == 1 and "distilled" in whole[0]["dev"]
  assert whole[0]["dev"]["ranker"]["values"] == by_rate[5e-5]["dev"]["ranker"]["values"]
  # A point cut short before its last stage is unfinished, not dev-only.
  layout_done = layout.done(layout.ranker_dir(layout.point_dir(root, "seed=1+learning_rate=0.0001")))
  os.remove(layout_done)
  summary = aggregate.aggregate(root)
  assert summary["unfinished"] == ["seed=1+learning_rate=0.0001"] and len(summary["dev_only"]) == 3


# --- for real -------------------------------------------------------------------------------

@pytest.mark.slow  # every stage of four points on a tiny model: 2.5 min of CPU
def test_a_real_two_by_two_sweep_end_to_end(data_dir, tmp_path):
  bert = fixtures.tiny_bert(tmp_path / "bert")
  config = fixtures.small_config(bert, data_dir)
  config.retrieve.splits = ("train", "test")
  config.retrieve.k = 20
  config.label.num_candidates = 6
  config.label.weak_teacher = "ignore"
  config.pipeline.stages = ("retrieve", "label", "train_ranker", "distill", "evaluate")
  root = str(tmp_path / "root")
  assert sweep.run(config, {"seed": (0, 1), "teacher.sim_noise": (0.0, 2.0)}, root) == []
  for name in os.listdir(root):
    if name.startswith("seed="):
      for stage_dir in (layout.ranker_dir(os.path.join(root, name)),
                        layout.retriever_dir(os.path.join(root, name), "ranker")):
        assert any(f.startswith("events.out.tfevents.") for f in os.listdir(stage_dir)), stage_dir
  summary = aggregate.aggregate(root)
  assert len(summary["cells"]) == 2
  for cell in summary["cells"]:
    assert set(cell["systems"]) >= {"baseline", "ranker", "distilled"}
    assert cell["systems"]["distilled"]["ndcg@10"]["sd"] is not None
    assert cell["systems"]["baseline"]["ndcg@10"]["sd"] == pytest.approx(0.0, abs=1e-9)
  assert os.path.getsize(layout.aggregate_file(root, "dev_vs_test.png")) > 5000
