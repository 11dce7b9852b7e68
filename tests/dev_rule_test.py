"""benchmarks/dev_rule.py: a candidate value replaces the incumbent only if its mean dev figure
over the seeds is lower in every group, and only when every group holds every seed."""

import pytest

from benchmarks import dev_rule


def _point(epochs, seed, noise, fused, step=100):
  return {"name": f"epochs={epochs}+seed={seed}+sim_noise={noise}",
          "values": {"ranker.epochs": epochs, "seed": seed, "teacher.sim_noise": noise},
          "dev": {"ranker": {"fused": fused, "selected_step": step}}}


def _decide(points, seeds=(0, 1, 2)):
  return dev_rule.decide(points, field="ranker.epochs", candidate=2.5, incumbent=1.5,
                         system="ranker_fused", seeds=list(seeds))


def _grid(candidate, incumbent):
  """Per teacher, the fused dev ListMLE of seeds 0-2 at each value."""
  return [_point(e, s, n, figures[n][s]) for e, figures in ((2.5, candidate), (1.5, incumbent))
          for n in figures for s in range(3)]


def test_lower_for_every_teacher_is_adopted_lower_for_one_is_not():
  incumbent = {0.43: [2.30, 2.64, 2.23], 0.38: [2.04, 2.20, 2.01]}
  better = {0.43: [2.29, 2.66, 2.20], 0.38: [2.03, 2.19, 2.00]}
  out = _decide(_grid(better, incumbent))
  assert out["complete"] and out["adopt"]
  weak = next(g for g in out["groups"] if g["values"] == {"teacher.sim_noise": 0.43})
  assert weak["mean"]["candidate"] == pytest.approx(sum(better[0.43]) / 3)
  assert weak["difference"] < 0 and weak["seeds"]["1"]["candidate"]["dev"] == 2.66
  mixed = {**better, 0.38: [2.05, 2.20, 2.01]}  # worse on average for one teacher
  out = _decide(_grid(mixed, incumbent))
  assert out["complete"] and not out["adopt"] and "1.5 stays" in out["decision"]


def test_a_missing_seed_decides_nothing():
  incumbent = {0.43: [2.30, 2.64, 2.23]}
  points = [p for p in _grid({0.43: [1.0, 1.0, 1.0]}, incumbent) if p["name"] != "epochs=2.5+seed=2+sim_noise=0.43"]
  out = _decide(points)
  assert not out["complete"] and "adopt" not in out and out["groups"][0]["missing_seeds"] == [2]


def test_other_values_of_the_field_and_other_systems_are_refused_or_ignored():
  grid = _grid({0.43: [2.0, 2.0, 2.0]}, {0.43: [2.1, 2.1, 2.1]})
  out = _decide(grid + [_point(3.5, 0, 0.43, 0.1)])
  assert out["adopt"] and len(out["groups"]) == 1
  with pytest.raises(ValueError, match="--system"):
    dev_rule.decide(grid, field="ranker.epochs", candidate=2.5, incumbent=1.5, system="nope", seeds=[0])
