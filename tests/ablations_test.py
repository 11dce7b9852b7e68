"""eval/ablations.json: the method against its ablations, in the report and over seeds."""

import json

import numpy as np
import pytest

from interdistill_jax import aggregate, data as data_lib, evaluate, layout, report


def _per_query(rng, mean, n=60):
  return {f"q{i}": float(np.clip(mean + 0.2 * rng.standard_normal(), 0, 1)) for i in range(n)}


def _systems(seed=0):
  rng = np.random.default_rng(seed)
  return {s: {"ndcg@10": _per_query(rng, m), "recall@100": _per_query(rng, 0.9)}
          for s, m in (("baseline", 0.5), ("ranker", 0.55), ("distilled", 0.65), ("direct", 0.55))}


def test_ablations_pair_only_systems_both_evaluated_with_system_minus_reference():
  per_query = _systems()
  out = evaluate.ablations(per_query, seed=0)
  assert list(out) == ["distilled vs direct"]  # no supervised, no ranker_fused in this workdir
  got = out["distilled vs direct"]["ndcg@10"]
  want = np.mean(list(per_query["distilled"]["ndcg@10"].values())) - np.mean(
      list(per_query["direct"]["ndcg@10"].values()))
  assert got["diff"] == pytest.approx(want) and got["diff"] > 0
  assert got["mean_a"] == pytest.approx(np.mean(list(per_query["direct"]["ndcg@10"].values())))
  assert got["ci_low"] <= got["diff"] <= got["ci_high"]
  per_query["ranker_fused"] = per_query.pop("ranker")
  per_query["ranker"] = _systems(1)["ranker"]
  assert list(evaluate.ablations(per_query)) == ["distilled vs direct", "ranker_fused vs ranker"]


def test_report_shows_the_ablations_table(tmp_path):
  results = [{"dataset": "tiny", "split": "test", "system": s, "num_queries": 60,
              "metrics": {"ndcg@10": 0.5, "recall@100": 0.9}} for s in ("baseline", "distilled", "direct")]
  ablations = evaluate.ablations(_systems(), seed=0)
  text = report.write(str(tmp_path), results, {}, ablations)
  assert "## Against the ablations" in text
  row = next(line for line in text.splitlines() if line.startswith("| distilled vs direct | ndcg@10 |"))
  c = ablations["distilled vs direct"]["ndcg@10"]
  assert f"| {c['mean_a']:.4f} | {c['mean_b']:.4f} | {c['diff']:+.4f} |" in row
  assert "## Against the ablations" not in report.write(str(tmp_path), results, {}, {})


def test_seeds_report_each_ablation_mean_sd_and_how_many_cis_clear_zero(tmp_path):
  runs = []
  for seed, shift in ((0, 0.05), (1, 0.03), (2, -0.01)):
    workdir = tmp_path / f"s{seed}"
    pair = {"ndcg@10": {"mean_a": 0.6, "mean_b": 0.6 + shift, "diff": shift, "ci_low": shift - 0.02,
                        "ci_high": shift + 0.02, "p_value": 0.1}}
    data_lib.write_json(layout.eval_file(str(workdir), "ablations.json"), {"distilled vs direct": pair})
    runs.append(aggregate.read_run(str(workdir)))
  assert runs[0]["ablations"]["distilled vs direct"]["ndcg@10"]["diff"] == 0.05
  out = aggregate.ablations_over_seeds(runs)["distilled vs direct"]["ndcg@10"]
  assert out["diff"]["mean"] == pytest.approx(0.07 / 3)
  assert out["diff"]["sd"] == pytest.approx(np.std([0.05, 0.03, -0.01], ddof=1))
  assert out["ci_low_above_0_in"] == "2/3" and out["ci_high_below_0_in"] == "0/3"
  data_lib.write_json(layout.eval_file(str(tmp_path / "old"), "compare.json"), {})
  assert aggregate.ablations_over_seeds([aggregate.read_run(str(tmp_path / "old"))]) == {}
  json.dumps(out)  # what benchmarks/seeds.py prints
