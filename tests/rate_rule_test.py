"""benchmarks/rate_rule.py's comparison: per run, the rate whose fused dev ListMLE is lowest on one
half of the dev queries is picked there and scored, like every fixed rate, on the other half."""

import json

import numpy as np
import pytest

from benchmarks import rate_rule


def _write(path, run, rate, ce, initial, group="t"):
  q, l = ce.shape
  one = {"run": run, "group": group, "rate": rate, "qids": [f"q{i}" for i in range(q)],
         "ce": ce.tolist(), "initial": initial.tolist(),
         "ranking": np.tile(np.arange(l), (q, 1)).tolist(), "mask": np.ones((q, l), bool).tolist(),
         "prefix": [l] * q, "done_fused": 0.0}
  path.write_text(json.dumps(one))
  return str(path)


def test_a_rate_that_orders_every_list_is_always_picked_and_scores_best(tmp_path):
  rng = np.random.default_rng(0)
  q, l = 24, 6
  initial = rng.normal(size=(q, l))
  ordered = -np.arange(l, dtype=float) + rng.normal(scale=0.3, size=(q, l))  # the teacher's order
  files = [_write(tmp_path / "good.json", "r0", 5e-5, ordered, initial),
           _write(tmp_path / "noise.json", "r0", 1e-4, rng.normal(size=(q, l)), initial)]
  out = rate_rule.held_out(files, 30)
  run = out["runs"]["r0"]
  assert run["picks"] == {"5e-05": 1.0, "0.0001": 0.0}
  assert run["held_out"]["rule"] == run["held_out"]["fixed 5e-05"]
  assert run["held_out"]["fixed 5e-05"] < run["held_out"]["fixed 0.0001"]
  assert run["rule_beats"]["0.0001"] == 1.0 and run["rule_loses"]["5e-05"] == 0.0
  assert out["by_group"]["t"]["runs"] == 1


def test_the_rule_is_scored_on_the_half_it_did_not_pick_on(tmp_path):
  """Two rates equally good on average but each better on its own half of the queries: whatever
  the rule picks on one half, the other half does not reward it, so it cannot beat both fixed
  rates on the held-out halves."""
  rng = np.random.default_rng(1)
  q, l = 40, 5
  initial = np.zeros((q, l))
  good = -np.arange(l, dtype=float) * 2.0
  noise = lambda: rng.normal(size=(q, l))  # noqa: E731
  a, b = noise(), noise()
  a[: q // 2] = good
  b[q // 2:] = good
  files = [_write(tmp_path / "a.json", "r0", 5e-5, a, initial),
           _write(tmp_path / "b.json", "r0", 1e-4, b, initial)]
  held = rate_rule.held_out(files, 40)["runs"]["r0"]["held_out"]
  assert held["rule"] >= min(held["fixed 5e-05"], held["fixed 0.0001"]) - 1e-6


def test_rankers_of_one_run_must_share_their_dev_queries(tmp_path):
  rng = np.random.default_rng(2)
  ce, initial = rng.normal(size=(6, 4)), rng.normal(size=(6, 4))
  first = _write(tmp_path / "a.json", "r0", 5e-5, ce, initial)
  other = json.loads((tmp_path / "a.json").read_text())
  other.update(rate=1e-4, qids=[f"x{i}" for i in range(6)])
  (tmp_path / "b.json").write_text(json.dumps(other))
  with pytest.raises(ValueError, match="different dev queries"):
    rate_rule.held_out([first, str(tmp_path / "b.json")], 5)


def test_a_run_with_one_ranker_is_left_out_and_said_so(tmp_path):
  rng = np.random.default_rng(3)
  ce, initial = rng.normal(size=(8, 4)), rng.normal(size=(8, 4))
  files = [_write(tmp_path / "a.json", "r0", 5e-5, ce, initial),
           _write(tmp_path / "b.json", "r0", 1e-4, ce + rng.normal(size=ce.shape), initial),
           _write(tmp_path / "c.json", "r1", 5e-5, ce, initial)]
  out = rate_rule.held_out(files, 5)
  assert list(out["runs"]) == ["r0"] and "nothing to choose" in out["skipped"]["r1"]
