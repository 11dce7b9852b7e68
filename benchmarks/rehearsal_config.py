"""The config every phase of `benchmarks/rehearsal.py` runs with: `configs/nq.py:dpr` over the
synthetic QA set of `benchmarks/synthetic_qa.py`, at a few training steps (no flags here, so
tests import it beside any benchmark)."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import pathlib

from benchmarks import synthetic_qa
from interdistill_jax import grid

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG = "configs/nq.py:dpr"


@dataclasses.dataclass(frozen=True)
class Settings:
  """How the stages run (`benchmarks/rehearsal.py`'s flags of the same names)."""

  shard_size: int = 100_000    # passages per embedding shard (encode.shard_size)
  label_queries: int = 100     # training questions labelled (label.max_queries)
  test_queries: int = 100      # test questions evaluated (data.qa.num_test)
  rerank_depth: int = 10       # eval.rerank_depth
  train_steps: int = 3         # steps of train_ranker and of distill


def stage_overrides(root: str, plan: synthetic_qa.Plan, s: Settings) -> dict:
  """The config fields every phase sets over `configs/nq.py:dpr` (the same for all, so each stage
  finds the previous one's outputs current)."""
  dev = 0.1  # ranker.dev_fraction and distill.dev_fraction, as the defaults
  train = s.label_queries - round(dev * s.label_queries)
  # Epochs of exactly `train_steps` steps (the trainer takes ceil(epochs * steps per epoch)).
  epochs = lambda batch: (s.train_steps - 0.5) / -(-train // batch)  # noqa: E731
  return {
      "data.dir": os.path.join(root, "qa"),
      "data.cache_dir": os.path.join(root, "cache"),
      "data.corpus_file": os.path.join(root, synthetic_qa.CORPUS_FILE),
      "data.qa.train": os.path.join(root, synthetic_qa.QUESTION_FILES["train"]),
      "data.qa.test": os.path.join(root, synthetic_qa.QUESTION_FILES["test"]),
      "data.qa.num_train": plan.num_train,
      "data.qa.num_test": s.test_queries,
      "encode.shard_size": s.shard_size,
      "encode.shard_dtype": "float16",
      "label.max_queries": s.label_queries,
      "label.sample_seed": 0,
      "ranker.epochs": epochs(4),
      "ranker.batch_size": 4,
      "ranker.dev_fraction": dev,
      "ranker.eval_every": s.train_steps,
      "ranker.checkpoint_every": s.train_steps,
      "distill.epochs": epochs(32),
      "distill.batch_size": 32,
      "distill.dev_fraction": dev,
      "distill.eval_every": s.train_steps,
      "distill.checkpoint_every": s.train_steps,
      "distill.towers": "query",
      "eval.depth": 100,
      "eval.rerank_depth": s.rerank_depth,
      "reader.enabled": False,
  }


def load_config(overrides: dict):
  """`configs/nq.py:dpr` with `overrides`, as the command line would set them."""
  path, arg = CONFIG.split(":")
  spec = importlib.util.spec_from_file_location("rehearsal_nq_config", REPO / path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return grid.apply(module.get_config(arg), overrides, source="rehearsal")
