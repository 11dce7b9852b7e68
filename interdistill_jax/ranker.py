"""Stage 1b, task `train_ranker`: a cross-encoder learns the LLM's rankings with ListMLE.

Each training example is one labelled query with its candidate list (`labels.jsonl`).
The ranker scores every (query, candidate) pair; the loss is the Plackett-Luce negative
log-likelihood of the teacher's ranking, over the ranked prefix when only a prefix was
trusted (`ranked_prefix`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import jax
import numpy as np
from absl import logging
from flax import nnx
from tqdm import tqdm

from interdistill_jax import data as data_lib
from interdistill_jax import losses, models, retrieval, sharding, tokenization, train


class PairScorer:
  """Scores (query, passage) pairs with a cross-encoder on the mesh, bucketed by length."""

  def __init__(self, model: models.CrossEncoder, tokenizer: tokenization.Tokenizer, *,
               max_length: int, batch_size: int, buckets: Sequence[int], mesh=None):
    self.mesh = mesh or sharding.make_mesh()
    self.tokenizer = tokenizer
    self.max_length = max_length
    self.batch_size = sharding.round_up(batch_size, sharding.global_batch_multiple(self.mesh))
    self.buckets = [b for b in sorted(buckets) if b < max_length] + [max_length]
    graphdef, state = nnx.split(model)
    self._state = sharding.put_replicated(state, self.mesh)

    @functools.partial(jax.jit, out_shardings=sharding.batch_sharding(self.mesh))
    def score(state, ids, types, mask):
      return nnx.merge(graphdef, state)(ids, types, mask)

    self._score = score

  def score(self, queries: Sequence[str], passages: Sequence[str], desc: str = "rank pairs") -> np.ndarray:
    """[N] float32 scores of pairs (queries[i], passages[i])."""
    encoded = self.tokenizer.encode_pairs(queries, passages, self.max_length)
    ids, types = [e[0] for e in encoded], [e[1] for e in encoded]
    out = np.zeros(len(ids), np.float32)
    batches = tokenization.bucketed_batches(ids, self.batch_size, self.buckets,
                                            self.tokenizer.pad_id, types)
    total = tokenization.num_batches(len(ids), self.batch_size)
    for batch in tqdm(batches, total=total, desc=desc, unit="batch", disable=total < 5):
      arrays = sharding.put_batch((batch.input_ids, batch.token_type_ids, batch.attention_mask),
                                  self.mesh)
      s = np.asarray(sharding.to_host(self._score(self._state, *arrays)))
      valid = batch.index >= 0
      out[batch.index[valid]] = s[valid]
    return out


class ListwiseExamples:
  """Labelled queries as fixed-shape arrays: pairs [Q, L, T], ranking [Q, L], prefix [Q]."""

  def __init__(self, labels: Sequence[dict], dataset: data_lib.Dataset,
               tokenizer: tokenization.Tokenizer, *, list_size: int, max_length: int,
               buckets: Sequence[int], use_prefix: bool, top_k: int = 0):
    q, l = len(labels), list_size
    self.qids = [r["qid"] for r in labels]
    self.buckets = [b for b in sorted(buckets) if b < max_length] + [max_length]
    self.ids = np.zeros((q, l, max_length), np.int32)
    self.types = np.zeros((q, l, max_length), np.int32)
    self.lengths = np.zeros((q, l), np.int32)
    self.ranking = np.zeros((q, l), np.int32)
    self.mask = np.zeros((q, l), bool)
    self.prefix = np.zeros((q,), np.int32)
    firsts, seconds, where = [], [], []
    for i, record in enumerate(labels):
      docids, ranking, prefix = data_lib.truncate_label(record, l, use_prefix=use_prefix)
      # Top-k ListMLE: only the first k positions are scored (all items stay in the denominators).
      self.prefix[i] = min(prefix, top_k) if top_k > 0 else prefix
      query = dataset.queries[record["qid"]].text
      for j, d in enumerate(docids):
        firsts.append(query)
        seconds.append(dataset.corpus[d].full_text())
        where.append((i, j))
      self.ranking[i, :len(ranking)] = ranking
      self.mask[i, :len(docids)] = True
    for (i, j), (ids, types) in zip(where, tokenizer.encode_pairs(firsts, seconds, max_length)):
      self.ids[i, j, :len(ids)] = ids
      self.types[i, j, :len(ids)] = types
      self.lengths[i, j] = len(ids)

  def __len__(self) -> int:
    return len(self.qids)

  def batch(self, idx: np.ndarray) -> dict:
    """Example indices [B] (-1 = padding row) -> arrays cut to the batch's length bucket."""
    rows = np.maximum(idx, 0)
    valid = idx >= 0
    t = tokenization.bucket_length(max(int(self.lengths[rows[valid]].max(initial=1)), 1), self.buckets)
    ids = self.ids[rows, :, :t]
    return {
        "input_ids": ids, "token_type_ids": self.types[rows, :, :t],
        "attention_mask": (np.arange(t)[None, None, :] < self.lengths[rows][..., None]).astype(np.int32),
        "ranking": self.ranking[rows], "mask": self.mask[rows] & valid[:, None],
        "prefix": self.prefix[rows], "weight": valid.astype(np.float32),
    }


def listmle_loss(model: models.CrossEncoder, batch: dict, rng) -> jax.Array:
  """Per-query ListMLE of the ranker's scores against the teacher ranking: [B]."""
  b, l, t = batch["input_ids"].shape
  flat = lambda x: x.reshape(b * l, t)  # noqa: E731
  scores = model(flat(batch["input_ids"]), flat(batch["token_type_ids"]),
                 flat(batch["attention_mask"]), rng).reshape(b, l)
  return losses.listmle(scores, batch["ranking"], batch["mask"], batch["prefix"])


def loop_config(section, seed: int) -> train.LoopConfig:
  return train.LoopConfig(batch_size=section.batch_size, epochs=section.epochs,
                          eval_every=section.eval_every, checkpoint_every=section.checkpoint_every,
                          keep_checkpoints=section.keep_checkpoints, seed=seed)


def dev_batches_fn(examples, batch_size: int, mesh):
  batch_size = sharding.round_up(batch_size, sharding.global_batch_multiple(mesh))

  def batches():
    for start in range(0, len(examples), batch_size):
      idx = np.arange(start, min(start + batch_size, len(examples)))
      yield examples.batch(np.pad(idx, (0, batch_size - len(idx)), constant_values=-1))

  return batches if len(examples) else None


def load_trained_ranker(config, workdir: str) -> tuple[models.CrossEncoder, tokenization.Tokenizer]:
  """The ranker `train_ranker` selected in this workdir (frozen for distillation/evaluation)."""
  model, ckpt = models.load_cross_encoder(config.ranker.model, seed=config.seed)
  step = train.restore_params(model, os.path.join(workdir, "ranker"))
  logging.info("Ranker from %s/ranker (step %d)", workdir, step)
  return model, tokenization.Tokenizer(ckpt.dir)


def make_scorer(config, model, tokenizer, mesh=None) -> PairScorer:
  return PairScorer(model, tokenizer, max_length=config.ranker.max_length,
                    batch_size=config.ranker.score_batch_size, buckets=config.encode.buckets,
                    mesh=mesh)


def run(config, workdir: str) -> None:
  """Task `train_ranker`: labels/labels.jsonl -> ranker/checkpoints, ranker/metrics.jsonl."""
  section = config.ranker
  dataset = retrieval.load_dataset(config)
  labels = data_lib.load_labels(os.path.join(workdir, "labels", "labels.jsonl"))
  if not labels:
    raise ValueError(f"{workdir}/labels/labels.jsonl has no labelled queries")
  train_qids, dev_qids = train.dev_split([r["qid"] for r in labels], section.dev_fraction, config.seed)
  by_qid = {r["qid"]: r for r in labels}
  model, ckpt = models.load_cross_encoder(section.model, seed=config.seed)
  tokenizer = tokenization.Tokenizer(ckpt.dir)
  make = functools.partial(ListwiseExamples, dataset=dataset, tokenizer=tokenizer,
                           list_size=section.list_size, max_length=section.max_length,
                           buckets=config.encode.buckets, use_prefix=section.prefix_only,
                           top_k=section.top_k)
  train_ex = make([by_qid[q] for q in train_qids])
  dev_ex = make([by_qid[q] for q in dev_qids])
  logging.info("Ranker: %d train and %d dev queries, lists of %d, %d tokens", len(train_ex),
               len(dev_ex), section.list_size, section.max_length)
  mesh = sharding.make_mesh()
  out_dir = os.path.join(workdir, "ranker")
  model, summary = train.train_loop(
      model=model, loss_fn=listmle_loss, make_batch=train_ex.batch, num_examples=len(train_ex),
      dev_batches=dev_batches_fn(dev_ex, section.batch_size, mesh),
      loop=loop_config(section, config.seed), optim_config=section.optim, out_dir=out_dir, mesh=mesh)
  train.write_done(out_dir, summary, {"train_queries": len(train_ex), "dev_queries": len(dev_ex)})
