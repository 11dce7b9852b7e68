"""The ranker's peak learning rate, chosen on dev: SciFact, the default (noise 0.38) and a weaker
(0.43) simulated teacher, seeds 0 to 2, up to `train_ranker` (no distillation, no test figure).

  python -m interdistill_jax.sweep --config=configs/scifact.py \
      --config.data.dir=../shared/data/scifact \
      --sweep=configs/sweeps/ranker_schedule.py --root=runs/ranker_schedule

Each point's `ranker/done.json` records the dev ListMLE of the teacher's rankings under the
selected checkpoint (alone and fused with the initial retriever): the figure the rates are
compared by, per seed and teacher. The question: with a weaker teacher, one seed's ranker (noise
0.43, seed 1) got worse on dev right after the warmup reached its peak rate (1e-4, the first 10%
of 273 steps), and its selected checkpoint was the one of step 30. Retrieve runs once, label once
per teacher; 12 rankers of about 17 minutes each on a 2-core CPU (273 steps).
The points run in the order of the values below: seed 1 and the lower rate first, so the first
ranker to finish answers the question for the seed that raised it (its 1e-4 figures are in
benchmarks/results/scifact_wise_weak_teacher_seeds.json).
"""


def get_sweep(arg=None):
  del arg
  return {
      "seed": (1, 0, 2),  # seed 1 first: the one whose ranker got worse after the peak
      "teacher.sim_noise": (0.43, 0.38),
      "ranker.optim.learning_rate": (5e-5, 1e-4),
      "pipeline.stages": (("retrieve", "label", "train_ranker"),),
  }
