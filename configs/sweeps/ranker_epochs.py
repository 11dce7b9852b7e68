"""The ranker's length of training, chosen on dev: 2.5 epochs against the config's 1.5, both
SciFact teachers (the default noise 0.38 and the weaker 0.43), seeds 1, 0 and 2; up to
`train_ranker` (no distillation, no test figure).

  python -m interdistill_jax.sweep --config=configs/scifact.py \
      --config.data.dir=../shared/data/scifact \
      --sweep=configs/sweeps/ranker_epochs.py --root=ROOT

ROOT is the root of ranker_schedule.py: its retrieve and label stores are shared (taken by their
recorded inputs), so both lengths learn the same labels on the same dev slices. The 1.5-epoch
points are the config as it stands: each takes the ranker of the root's point trained from the
same inputs (ranker_schedule.py's 1e-4 points), so only the 2.5-epoch rankers train, first (and
noise 0.43 seed 2, which that root lacks, at the end). Both lengths are axis values so that the
points are named apart from the root's other sweeps.

Why: at 1.5 epochs (273 steps) most rankers select one of their last checkpoints, their dev
ListMLE (ranker/metrics.jsonl) still falling as the rate decays to 0: selected steps 273, 240,
273 (noise 0.38, seeds 0-2) and 273, 30, 210 (noise 0.43); noise 0.38 seed 0: 2.0524, 2.0479,
2.0416 at steps 210, 240, 273. 2.5 epochs (455 steps) keep the config's warmup fraction and
peak rate, and add about 15 minutes per ranker on 2 cores (the config's 2-hour budget holds).

As run (benchmarks/results/scifact_ranker_epochs.json): the ranker_schedule root was gone, so a
fresh root, with the code of 15706fa (before `teacher.seed`, when the simulated teacher drew from
the seed of the point that labelled first). Its noise-0.43 labels were made first by a one-point
sweep of retrieve and label at seed 0, its noise-0.38 labels by this sweep's first point (seed 1):
train-list nDCG@10 0.7095 and 0.7549, the labels of the old root, whose 1.5-epoch rankers' dev
figures (scifact_ranker_warmup.json, warmup 0.1) this root's 1.5 points are to reproduce. With
`teacher.seed` those draws are `--config.teacher.seed=0` and `=1`.

The rule, fixed before any of these points ran: 2.5 replaces 1.5 as `ranker.epochs` in
configs/scifact.py if, for each teacher, the mean over seeds 0, 1 and 2 of the fused ranker's dev
ListMLE (`ranker/done.json`) is lower at 2.5.
"""


def get_sweep(arg=None):
  del arg
  return {
      "ranker.epochs": (2.5, 1.5),
      "seed": (1, 0, 2),
      "teacher.sim_noise": (0.43, 0.38),
      "pipeline.stages": (("retrieve", "label", "train_ranker"),),
  }
