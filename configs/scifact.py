"""BEIR SciFact: 5,183 abstracts, 809 train and 300 test claims.

Evaluate the initial retriever (packaged all-MiniLM-L6-v2):
  python -m interdistill_jax.main --config=configs/scifact.py --config.task=evaluate \
      --config.data.dir=../shared/data/scifact

Without `data.dir`, the public BEIR zip is downloaded into ~/.cache/interdistill_jax/datasets
when the network allows it.
"""

from interdistill_jax import defaults


def get_config(arg=None):
  del arg
  config = defaults.base_config()
  config.data.dir = "~/.cache/interdistill_jax/datasets/scifact"
  config.data.name = "scifact"
  config.data.download_url = (
      "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/scifact.zip")
  return config
