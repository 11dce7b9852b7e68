"""Any BEIR-layout directory (corpus.jsonl, queries.jsonl, qrels/{split}.tsv).

  python -m interdistill_jax.main --config=configs/beir.py --config.data.dir=/path/to/dataset \
      --config.task=evaluate

`--config=configs/beir.py:/path/to/dataset` sets the directory too.
"""

from interdistill_jax import defaults


def get_config(arg=None):
  config = defaults.base_config()
  config.data.dir = arg or ""
  return config
