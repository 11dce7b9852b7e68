"""SciFact learning curve: 100, 250, 500 and all 809 labelled training queries, seeds 0 and 1.

  python -m interdistill_jax.sweep --config=configs/scifact.py \
      --config.data.dir=../shared/data/scifact \
      --sweep=configs/sweeps/learning_curve.py --root=runs/learning_curve
  python -m interdistill_jax.aggregate --root=runs/learning_curve

The labelled queries are a sample seeded by `label.sample_seed` (the same for every point), so
each smaller set is a subset of every larger one and the seeds differ only in training. Retrieve
runs once; label runs once per set size, all from the 809 queries' call cache (each query's
teacher answer is paid for once). The points run in the order written: all 809 queries first (that
point is the plain pipeline of configs/scifact.py, the check that a sweep reproduces a single
run), then the smaller sets. 8 points of 15 to 45 minutes each on a 2-core CPU, about 4 hours.
"""


def get_sweep(arg=None):
  del arg
  return {
      "seed": (0, 1),
      "label.max_queries": (809, 500, 250, 100),
      "label.sample_seed": (0,),
  }
