"""SciFact learning curve: 100, 250, 500 and all 809 labelled training queries, seeds 0 and 1.

  python -m interdistill_jax.sweep --config=configs/scifact.py \
      --config.data.dir=../shared/data/scifact \
      --sweep=configs/sweeps/learning_curve.py --root=runs/learning_curve
  python -m interdistill_jax.aggregate --root=runs/learning_curve

The labelled queries are a sample seeded by `label.sample_seed` (the same for every point), so
each smaller set is a subset of every larger one and the seeds differ only in training. Retrieve
runs once; label runs once per set size, all from the 809 queries' call cache (each query's
teacher answer is paid for once). 8 points of about 40 minutes each on a 2-core CPU.
"""


def get_sweep(arg=None):
  del arg
  return {
      "seed": (0, 1),
      "label.max_queries": (100, 250, 500, 809),
      "label.sample_seed": (0,),
  }
