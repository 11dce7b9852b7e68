"""How good must the teacher be? SciFact with the simulated teacher at six noise levels, seeds 0
and 1.

  python -m interdistill_jax.sweep --config=configs/scifact.py \
      --config.data.dir=../shared/data/scifact \
      --sweep=configs/sweeps/teacher_quality.py --root=runs/teacher_quality
  python -m interdistill_jax.aggregate --root=runs/teacher_quality

`teacher.sim_noise` against the teacher's nDCG@10 on its 809 training lists (labels/stats.json
"quality"; measured with seed 0 over the candidates of configs/scifact.py, where the initial
order scores 0.6602): 0.2 -> 0.8443, 0.3 -> 0.8110, 0.38 -> 0.7494 (the config's), 0.43 ->
0.7095, 0.48 -> 0.6631, 0.6 -> 0.5856 (worse than the initial order: the teacher audit warns).
Below about 0.2 nothing improves (0.15 -> 0.8448): the candidates cap it. Retrieve runs once,
label once per noise level (both seeds train on the same labels). 12 points of about 45 minutes
each on a 2-core CPU. The points run in the order written, seed 0 first, and within a seed the
teacher level with the initial order (0.48) first, then one clearly worse (0.6), then 0.3 and
0.43 (with 0.48, four levels from the initial order's quality to 0.81), then 0.2 and 0.38. The
simulated teacher's errors are independent noise around the qrels, which a ranker trained on 809
lists can average out; 0.48 already paid at seed 0, so the curve reaches below the initial
order's quality to find where it stops paying.
"""


def get_sweep(arg=None):
  del arg
  return {
      "seed": (0, 1),
      "teacher.sim_noise": (0.48, 0.6, 0.3, 0.43, 0.2, 0.38),
  }
