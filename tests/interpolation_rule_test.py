"""benchmarks/interpolation_rule.py's comparison: the rule picks on one half of the dev queries and
is scored, like every fixed choice, on the other half only."""

import json

import numpy as np
import pytest

from benchmarks import interpolation_rule

CHOICES = ["0.25", "0.5", "0.75", "1"]


def _write(path, figures):
  n = len(next(iter(figures.values())))
  run = {"qids": [f"q{i}" for i in range(n)],
         "figures": {c: {"ndcg@10": list(map(float, v)), "recall@100": [1.0] * n}
                     for c, v in figures.items()}}
  path.write_text(json.dumps(run))
  return str(path)


def test_a_choice_best_on_every_query_is_always_picked(tmp_path):
  rng = np.random.default_rng(1)
  base = rng.uniform(0.2, 0.8, 40)
  path = _write(tmp_path / "a.json", {"0.25": base, "0.5": base + 0.01, "0.75": base + 0.05,
                                      "1": base + 0.02})
  out = interpolation_rule.held_out([path], CHOICES, 200)
  run = out["runs"]["a.json"]
  assert run["picks"] == {"0.25": 0.0, "0.5": 0.0, "0.75": 1.0, "1": 0.0}
  assert run["held_out"]["rule"] == run["held_out"]["fixed 0.75"]
  assert run["rule_beats_fixed_0.5"] == 1.0
  # Every fixed choice is scored on half the queries; over many halvings its mean is the whole's.
  assert run["held_out"]["fixed 0.5"]["ndcg@10"] == pytest.approx(base.mean() + 0.01, abs=0.01)


def test_a_rule_that_follows_noise_loses_on_the_held_out_half(tmp_path):
  """Every choice equal in truth but 0.5, a little better on every query; the others carry noise
  of their own, so the half the rule picks on favours one of them now and then, and the other half
  does not."""
  rng = np.random.default_rng(2)
  base = rng.uniform(0.2, 0.8, 60)
  figures = {c: base + rng.normal(0, 0.2, 60) for c in ("0.25", "0.75", "1")}
  figures["0.5"] = base + 0.01
  out = interpolation_rule.held_out([_write(tmp_path / "b.json", figures)], CHOICES, 500)
  run = out["runs"]["b.json"]
  assert 0 < run["picks"]["0.5"] < 1
  assert run["held_out"]["rule"]["ndcg@10"] < run["held_out"]["fixed 0.5"]["ndcg@10"]
  assert out["mean_over_runs"]["rule"] == run["held_out"]["rule"]
