"""The kill loop (benchmarks/kill_loop.py): the workdir comparison it judges by finds every kind of
difference and ignores only timings and per-run counts; a pipeline SIGKILLed in two stages and
rerun ends with an uninterrupted run's artifacts."""

import json
import os
import pathlib
import shutil

import numpy as np
import orbax.checkpoint as ocp
import pytest

from benchmarks import kill_loop, workdir_compare
from tests import fixtures


def _save_checkpoint(directory: pathlib.Path, step: int, tree: dict) -> None:
  mngr = ocp.CheckpointManager(str(directory))
  mngr.save(step, args=ocp.args.StandardSave(tree))
  mngr.wait_until_finished()
  mngr.close()


def _workdir(root: pathlib.Path, *, seconds: float = 1.0, calls: int = 40) -> pathlib.Path:
  """A small workdir with one artifact of each kind the comparison reads; `seconds` and `calls`
  are a timing and a per-run count, which two equal runs may differ in."""
  (root / "candidates").mkdir(parents=True)
  (root / "candidates" / "train.trec").write_text("q1 Q0 d1 1 0.500000 initial\n"
                                                  "q1 Q0 d2 2 0.250000 initial\n")
  (root / "labels").mkdir()
  labels = [{"qid": f"q{i}", "docids": ["d1", "d2"], "ranking": ["d2", "d1"], "ranked_prefix": 2}
            for i in range(3)]
  (root / "labels" / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in labels))
  (root / "labels" / "stats.json").write_text(json.dumps(
      {"labels": {"queries": 3}, "calls": {"answered": calls}, "seconds": seconds}))
  (root / "ranker").mkdir()
  (root / "ranker" / "metrics.jsonl").write_text("".join(
      json.dumps({"step": s, "train/loss": 1.0 / s, "train/examples_per_s": seconds * s}) + "\n"
      for s in (1, 2)))
  np.savez(root / "ranker" / "teacher_scores.npz", scores=np.linspace(0, 1, 5, dtype=np.float32))
  (root / "eval").mkdir()
  (root / "eval" / "distilled.json").write_text(json.dumps(
      {"system": "distilled", "metrics": {"ndcg@10": 0.625, "recall@100": 0.875}}))
  _save_checkpoint(root / "ranker" / "checkpoints" / "latest", 4,
                   {"params": {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}})
  return root


@pytest.fixture
def pair(tmp_path):
  return _workdir(tmp_path / "A"), _workdir(tmp_path / "B", seconds=7.5, calls=12)


def test_workdirs_that_differ_only_in_timings_and_run_counts_are_identical(pair):
  a, b = pair
  (b / ".lock").write_text("host x pid 1\n")  # not an artifact
  (b / "labels" / ".tmp-abc").write_text("{")  # a write a kill interrupted: debris, reported
  result = workdir_compare.compare_workdirs(a, b)
  assert result["identical"], result
  assert set(result["artifacts"]) == {
      "candidates/train.trec", "labels/labels.jsonl", "labels/stats.json", "ranker/metrics.jsonl",
      "ranker/teacher_scores.npz", "eval/distilled.json", "ranker/checkpoints/latest/4"}
  assert result["debris"] == ["B: labels/.tmp-abc"]
  assert result["run_fields"]["labels/stats.json"]["calls"] == [{"answered": 40}, {"answered": 12}]


def _bump_checkpoint(b):
  directory = b / "ranker" / "checkpoints" / "latest"
  shutil.rmtree(directory)
  w = np.arange(6, dtype=np.float32).reshape(2, 3)
  w[1, 2] = np.nextafter(w[1, 2], np.float32(10))  # one ulp
  _save_checkpoint(directory, 4, {"params": {"w": w}})


def _edit(path, old, new):
  text = path.read_text()
  assert old in text
  path.write_text(text.replace(old, new, 1))


ALTERATIONS = {
    "candidates/train.trec": lambda b: _edit(b / "candidates" / "train.trec", "0.250000", "0.250001"),
    "eval/distilled.json": lambda b: _edit(b / "eval" / "distilled.json", "0.875", "0.8750000001"),
    "labels/labels.jsonl": lambda b: (b / "labels" / "labels.jsonl").write_text("".join(
        reversed((b / "labels" / "labels.jsonl").read_text().splitlines(keepends=True)))),
    "labels/stats.json": lambda b: _edit(b / "labels" / "stats.json", '"queries": 3', '"queries": 2'),
    "ranker/metrics.jsonl": lambda b: _edit(b / "ranker" / "metrics.jsonl", '"train/loss": 0.5',
                                            '"train/loss": 0.25'),
    "ranker/teacher_scores.npz": lambda b: np.savez(
        b / "ranker" / "teacher_scores.npz", scores=np.linspace(0, 1, 5, dtype=np.float32) * 1.0001),
    "ranker/checkpoints/latest/4": _bump_checkpoint,
}


@pytest.mark.parametrize("artifact", sorted(ALTERATIONS))
def test_an_altered_artifact_is_found(pair, artifact):
  a, b = pair
  ALTERATIONS[artifact](b)
  result = workdir_compare.compare_workdirs(a, b)
  assert not result["identical"]
  assert [k for k, v in result["artifacts"].items() if v != "identical"] == [artifact], result
  if artifact == "labels/labels.jsonl":
    assert result["artifacts"][artifact] == ["the same records in another order"]
  if artifact == "ranker/checkpoints/latest/4":
    assert result["artifacts"][artifact] == ["['params']['w']: 1 of 6 entries differ, max |A-B| 4.77e-07"]


def test_a_missing_artifact_or_checkpoint_step_is_a_difference(pair):
  a, b = pair
  os.remove(b / "eval" / "distilled.json")
  _save_checkpoint(b / "ranker" / "checkpoints" / "latest", 6, {"params": {"w": np.zeros(3)}})
  result = workdir_compare.compare_workdirs(a, b)
  assert not result["identical"]
  assert result["only_in_a"] == ["eval/distilled.json"] and result["only_in_b"] == []
  assert result["artifacts"]["ranker/checkpoints/latest/6"] == ["committed in B only"]


@pytest.mark.slow  # four pipeline processes (reference, two killed, final): minutes on 2 cores
def test_a_pipeline_killed_in_two_stages_resumes_to_identical_artifacts(tmp_path):
  bert = fixtures.tiny_bert(tmp_path / "bert", layers=1, hidden=16, heads=2)
  data_dir = fixtures.tiny_beir(tmp_path / "data", num_docs=60, num_train=16, num_test=8)
  # Each training stage is killed the moment its best/ checkpoint commits a step, before latest/
  # has: the window in which a resumed run used to fail.
  record = kill_loop.run_benchmark(
      data_dir=data_dir, root=tmp_path / "run", kills_per_stage=0, commit_kills=1, seed=0,
      stages=("train_ranker", "distill"),
      extra=(f"--config.model.init={bert}", f"--config.ranker.model.init={bert}"))
  assert "failed" not in record, record["failed"]
  assert [(k["target"], k["killed_in"]) for k in record["kills"]] == [
      ("train_ranker", "train_ranker"), ("distill", "distill")], record["kills"]
  assert all(k["best_committed"] for k in record["kills"]), record["kills"]
  comparison = record["comparison"]
  assert record["identical"], {k: v for k, v in comparison["artifacts"].items() if v != "identical"}
  for name in ("labels/labels.jsonl", "candidates/train.trec", "eval/distilled.trec",
               "eval/distilled.json", "ranker/done.json", "retriever/done.json"):
    assert comparison["artifacts"][name] == "identical", name
  assert any(k.startswith("retriever/checkpoints/best/") for k in comparison["artifacts"])
  # The comparison sees the real outputs too: one metric changed in B is found.
  b = tmp_path / "run" / "B"
  result = json.loads((b / "eval" / "ranker.json").read_text())
  result["metrics"]["ndcg@10"] += 1e-9
  (b / "eval" / "ranker.json").write_text(json.dumps(result))
  again = workdir_compare.compare_workdirs(tmp_path / "run" / "A", b)
  assert [k for k, v in again["artifacts"].items() if v != "identical"] == ["eval/ranker.json"]
