"""The whole pipeline with the ranker's lower peak rate (5e-5): both SciFact teachers of
`ranker_schedule.py` (noise 0.43 first, the weaker; then 0.38, the config's), seeds 1, 0 and 2.

  python -m interdistill_jax.sweep --config=configs/scifact.py \
      --config.data.dir=../shared/data/scifact \
      --sweep=configs/sweeps/ranker_rate_pipeline.py --root=runs/ranker_schedule

Run it in the root of `ranker_schedule.py`: each point then takes the ranker that sweep trained
with the same inputs (`sharing`: by fingerprint, not by name) and runs only distill and evaluate.
The 1e-4 side of the comparison is the config as it stands: `ranker_schedule.py`'s 1e-4 points
in the same root, on the same labels. (The root's noise-0.43 labels are those of
benchmarks/results/scifact_wise_weak_teacher_seeds.json, whose dev figures its 1e-4 rankers
reproduce; its noise-0.38 labels were drawn with seed 1, the seed of the sweep's first point,
train-list nDCG@10 0.7549, where scifact_wise_seeds.json's were drawn with seed 0, 0.7494: their
dev figures do not compare with this root's.)

The choice between the rates is made on dev alone, by a rule fixed before any of these points
ran: 5e-5 replaces 1e-4 in configs/scifact.py if, for each teacher, the mean over the 3 seeds of
the fused ranker's dev ListMLE (`ranker/done.json`, the figure the distilled retriever learns
from) is lower at 5e-5. The test figures these points write are reported whichever rate wins,
and do not enter the choice.
"""


def get_sweep(arg=None):
  del arg
  return {
      "teacher.sim_noise": (0.43, 0.38),
      "seed": (1, 0, 2),
      "ranker.optim.learning_rate": (5e-5,),
  }
