"""Default values for every config section; `configs/*.py` start from `base_config()`.

A field left at its default here is a choice the paper leaves open (DESIGN.md): each is a
config value, overridable from the command line as `--config.section.field=value`.
"""

import ml_collections


def data_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      dir="",                  # BEIR-layout directory (corpus.jsonl, queries.jsonl, qrels/).
      name="",                 # Data set name for reports; default: the directory's basename.
      corpus_file="corpus.jsonl",  # Relative to dir, or absolute (a DPR .tsv works too).
      download_url="",         # Public zip fetched into cache_dir when dir is missing.
      cache_dir="~/.cache/interdistill_jax/datasets",
      train_split="train",
      test_split="test",
  ))


def model_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      init="",                 # HF directory, Hub id, or "" for the packaged all-MiniLM-L6-v2.
      pooling="",              # "", "mean" or "cls"; "" follows the checkpoint's 1_Pooling config.
      normalize=-1,            # -1 follows the checkpoint (2_Normalize module); 0 or 1 to force.
      max_query_length=64,
      max_doc_length=256,
      dtype="float32",         # Compute dtype: "float32" or "bfloat16" (params stay float32).
  ))


def encode_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      batch_size=64,           # Global batch (all devices); padded so shapes never change.
      buckets=(32, 64, 128, 256, 512),  # Sequence lengths each batch is padded up to.
      cache=True,              # Store corpus embeddings under workdir/embeddings/ and reuse.
  ))


def retrieve_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      k=100,                   # Candidates written per query.
      splits=("train", "test"),
      block_size=4096,         # Corpus rows scored per matmul block in exact search.
  ))


def eval_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      split="test",
      k_values=(1, 3, 5, 10, 100, 1000),
      answer_ks=(1, 5, 20, 100),  # top-k answer accuracy, for query sets with answers.
      depth=1000,              # Documents retrieved per query for evaluation.
  ))


def teacher_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      backend="simulated",
      model="",
      base_url="",
      concurrency=8,
      rpm=0,                   # Requests per minute; 0 means no limit.
      max_retries=6,
      temperature=0.0,
      timeout=60.0,
  ))


def label_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      split="train",
      num_candidates=20,
      max_queries=0,           # 0 labels every query of the split.
  ))


def base_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.task = "evaluate"
  config.seed = 0
  config.data = data_config()
  config.model = model_config()
  config.encode = encode_config()
  config.retrieve = retrieve_config()
  config.teacher = teacher_config()
  config.label = label_config()
  config.eval = eval_config()
  config.pipeline = ml_collections.ConfigDict(dict(
      stages=("retrieve", "evaluate"),
  ))
  return config
