"""Offline demo (what `make demo` runs): the whole method on SciFact with packaged models only.

  python -m interdistill_jax.main --config=configs/demo.py [--config.data.dir=/path/to/scifact]

Initial retriever: the packaged all-MiniLM-L6-v2. Teacher: the packaged SmolLM2-135M-Instruct run
in-process by llama.cpp, ranking 10 candidates of 40 train queries by query likelihood
(log P(query | passage)); a 135M model cannot write listwise permutations. Then the ranker learns
its rankings (ListMLE), the query tower is distilled from the ranker (KL), and everything is
evaluated on the 300 test queries. About 15-20 minutes on 2 CPU cores, most of it encoding the
corpus and scoring with the LLM.

What to expect: this teacher is WEAKER than the student (as a re-ranker of MiniLM's top 10 it
scores lower nDCG@10 than MiniLM itself), so the demo shows the machinery working end to end,
not a gain. The gain needs a teacher better than the initial retriever: see configs/scifact.py.
"""

from interdistill_jax import defaults


def get_config(arg=None):
  del arg
  config = defaults.base_config()
  config.task = "pipeline"
  config.pipeline.stages = ("retrieve", "label", "train_ranker", "distill", "evaluate")
  config.data.dir = "~/.cache/interdistill_jax/datasets/scifact"  # `make demo` passes DATA_DIR
  config.data.name = "scifact"
  # Where data.dir is not a BEIR directory (a fresh machine), the public SciFact zip is fetched
  # once into data.cache_dir, and the log says so.
  config.data.download_url = (
      "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/scifact.zip")
  config.retrieve.splits = ("train",)
  config.retrieve.k = 10
  config.teacher.backend = "llamacpp"
  config.teacher.mode = "query_likelihood"
  config.teacher.concurrency = 1   # one in-process model
  config.label.num_candidates = 10
  config.label.max_queries = 40
  config.ranker.max_length = 128
  config.ranker.list_size = 10
  config.ranker.batch_size = 4
  config.ranker.epochs = 2.0
  config.ranker.eval_every = config.ranker.checkpoint_every = 5
  config.distill.list_size = 10
  config.distill.batch_size = 8
  config.distill.epochs = 4.0
  config.distill.eval_every = config.distill.checkpoint_every = 4
  config.eval.depth = 100
  config.eval.rerank_depth = 10
  return config
