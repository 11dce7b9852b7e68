"""Natural Questions (NQ-open) over DPR's Wikipedia passages: the paper's open-domain QA setting.

1,000 training questions (a seeded sample of the training split) are labelled by the teacher over
their top-20 candidates; the ranker and the distilled retriever are trained from those labels; the
test questions (NQ-open's 3,610 `validation` questions, DPR's NQ test set) are scored by top-k
answer accuracy (an answer string in the top k passages, DPR's rule) and by a reader LLM's EM / F1
with the top 1 and top 5 passages. The set has no relevance judgements and needs none.

Questions through tensorflow-datasets (`natural_questions_open`, prepared by tfds), passages from
DPR's `psgs_w100.tsv` (id<TAB>text<TAB>title; an absolute path):

  python -m interdistill_jax.main --config=configs/nq.py \\
      --config.data.corpus_file=/data/dpr/psgs_w100.tsv --workdir=runs/nq

Questions from DPR's files instead (`question<TAB>["answer", ...]` per line):

  python -m interdistill_jax.main --config=configs/nq.py:dpr \\
      --config.data.qa.train=/data/dpr/nq-train.qa.csv --config.data.qa.test=/data/dpr/nq-test.qa.csv \\
      --config.data.corpus_file=/data/dpr/psgs_w100.tsv --workdir=runs/nq

The questions are written once as a BEIR-layout directory (queries.jsonl with answers,
splits/{train,test}.txt) under ~/.cache/interdistill_jax/datasets/qa/ (or `data.dir`).
The teacher defaults to `simulated` (a candidate containing an answer string is relevant; a
controlled stand-in for an LLM, named as such in every artifact); a real one as in
configs/scifact.py, e.g. `--config.teacher.backend=openai --config.teacher.model=gpt-4o-mini`.
The reader defaults to the packaged SmolLM2-135M in-process (a harness check: the model is tiny);
a real one: `--config.reader.backend=openai --config.reader.model=gpt-4o-mini`.
Exact search over all 21M passages in memory needs about 32 GB for the embeddings; with
`--config.encode.shard_size=500000` they stay on disk (about 16 GB of float16 shards) and no stage's
memory grows with the corpus but for the passage index's mapped pages (`benchmarks/rehearsal.py`
rehearses the whole setting on a synthetic corpus of any size).
"""

import ml_collections

from interdistill_jax import defaults

FORMATS = ("tfds", "dpr")


def qa_config(arg: str | None, *, name: str, tfds_name: str) -> ml_collections.ConfigDict:
  """The open-domain QA experiment shared by configs/nq.py and configs/tqa.py."""
  fmt = arg or "tfds"
  if fmt not in FORMATS:
    raise ValueError(f"config argument must be one of {FORMATS}, got {arg!r}")
  config = defaults.base_config()
  config.task = "pipeline"
  config.pipeline.stages = ("retrieve", "label", "train_ranker", "distill", "evaluate")
  config.data.dir = ""             # "" = a directory under data.cache_dir named by the source.
  config.data.name = name
  config.data.corpus_file = ""     # The DPR passage TSV: required.
  qa = config.data.qa
  qa.format = fmt
  qa.tfds_name = tfds_name
  qa.train, qa.test = ("train", "validation") if fmt == "tfds" else ("", "")
  qa.num_train = 1000
  qa.num_test = 0
  config.model.max_doc_length = 192  # a 100-word passage and its title fit
  config.retrieve.k = 100
  config.label.num_candidates = 20
  config.teacher.backend = "simulated"
  config.ranker.max_length = 192
  config.ranker.list_size = 20
  config.ranker.epochs = 1.0
  config.distill.list_size = 20
  config.distill.towers = "query"
  config.eval.answer_ks = (1, 5, 20, 100)
  config.eval.rerank_depth = 100
  config.reader.enabled = True
  config.reader.ks = (1, 5)
  return config


def get_config(arg=None):
  return qa_config(arg, name="nq", tfds_name="natural_questions_open")
