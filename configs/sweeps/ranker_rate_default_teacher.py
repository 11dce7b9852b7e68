"""The rankers the ranker-rate decision still needs for the default teacher, without the rest.

  python -m interdistill_jax.sweep --config=configs/scifact.py \
      --config.data.dir=../shared/data/scifact \
      --sweep=configs/sweeps/ranker_rate_default_teacher.py --root=ROOT

ROOT is the root of configs/sweeps/ranker_schedule.py, whose order (seed-major: seed 0's noise-0.43
1e-4 ranker, a reproduction of a committed result, before its noise-0.38 ones) would spend 40
minutes on rankers the decision does not need. This file asks for the noise-0.38 rankers of
seeds 0 and 2 at both rates (configs/scifact.py's teacher is noise 0.38, left as it is), on the
root's shared retrieve and noise-0.38 label stores (taken by their recorded inputs), up to
`train_ranker`. Its points are named by the values that vary here (`seed=0+learning_rate=5e-05`),
not as ranker_schedule.py's are; their rankers are the same computation. The rule is
ranker_rate_pipeline.py's: 5e-5 replaces 1e-4 in configs/scifact.py if, for each teacher, the
mean over seeds 0, 1, 2 of the fused ranker's dev ListMLE (ranker/done.json) is lower at 5e-5;
seed 1's figures are ranker_schedule.py's points `seed=1+sim_noise=0.38+learning_rate=*`.
"""


def get_sweep(arg=None):
  del arg
  return {
      "seed": (0, 2),
      "ranker.optim.learning_rate": (5e-5, 1e-4),
      "pipeline.stages": (("retrieve", "label", "train_ranker"),),
  }
