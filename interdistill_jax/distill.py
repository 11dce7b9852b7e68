"""Stage 2, task `distill`: the frozen ranker teaches the dual-encoder retriever.

For each training query both models score the SAME candidate list; the retriever
minimises KL(P_ranker || P_retriever) between the two softmaxes. No gold labels are used.
The ranker's scores are computed once and cached (`teacher_scores.npz`), since it is frozen.

`distill.teacher` also trains the references the method is compared with, by the same trainer
over the same candidate lists:
- "llm": no intermediate ranker, the LLM rankings themselves (`retriever_direct/`, system
  `direct`): ListMLE (`distill.llm_loss="listmle"`) or KL to a rank-based distribution ("kl":
  the teacher's i-th choice scores -i, the untrusted tail ties below the ranked prefix);
- "qrels": the gold judgements of the same training queries (`retriever_supervised/`, system
  `supervised`), KL to a distribution over the judged grades; queries with no judged candidate
  in their list are left out. What gold labels would buy.

With `distill.towers="query"` (default) only the query tower trains; passages keep their
initial embeddings, so the corpus is never re-encoded. `"both"` trains the shared tower.

The retriever itself is `retrievers.py`'s: the student built from the initial checkpoint, the
trained one loaded (and interpolated) downstream, and the dev figures `run` records in done.json.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from interdistill_jax import data as data_lib
from interdistill_jax import assets, checks, fusion as fusion_lib, layout, losses, models, ranker as ranker_lib
from interdistill_jax import checkpoints, provenance, retrieval, retrievers, sharding, tokenization, train


def check_teacher(section) -> str:
  checks.require(*checks.distill_teacher(section))
  return section.teacher


def output_dir(distill_config, workdir: str) -> str:
  return layout.retriever_dir(workdir, check_teacher(distill_config))


def llm_top_k(distill_config, ranker_top_k: int) -> int:
  """How many of the LLM's first positions the no-ranker reference learns (0: the whole trusted
  prefix). By default the trust the ranker gets (`ranker_top_k`): both learn the same signal."""
  checks.require(checks.llm_top_k(distill_config))
  k = distill_config.llm_top_k
  return ranker_top_k if k == -1 else k


def uses_listmle(section) -> bool:
  """Whether the retriever learns the LLM ranking by ListMLE (else KL to teacher scores)."""
  return section.teacher == "llm" and section.llm_loss == "listmle"


class CandidateLists:
  """Per training query: query tokens, candidate docids, teacher scores / ranking, fixed shapes.

  The lists come from `data.label_lists`, as the ranker's do: the same trust in the teacher's
  ranked prefix (`ranker.prefix_only`). `top_k` stays 0 in training on the ranker's or the gold
  scores (the whole trusted prefix), is `llm_top_k` for the no-ranker reference, and
  `retrievers.dev_llm_listmle` applies `ranker.top_k` to its dev figure.
  """

  def __init__(self, labels, dataset, tokenizer, *, list_size: int, max_query_length: int,
               doc_index: dict[str, int], doc_emb: np.ndarray | None, teacher_scores: dict | None,
               doc_tokens: tuple | None, buckets: tuple[int, ...] = (), use_prefix: bool = True,
               top_k: int = 0):
    lists = data_lib.label_lists(labels, list_size, use_prefix=use_prefix, top_k=top_k)
    q, l = len(labels), list_size
    # Batches are cut to a bucketed length: one compiled step per bucket, not per length.
    self.buckets = tuple(sorted(buckets))
    self.qids = [r["qid"] for r in labels]
    self.query_ids, self.query_len = tokenization.padded_ids(
        tokenizer, [dataset.queries[x].text for x in self.qids], max_query_length)
    self.ranking, self.mask, self.prefix = lists.ranking, lists.mask, lists.prefix
    self.cand = np.zeros((q, l), np.int64)
    self.teacher = np.zeros((q, l), np.float32)
    rows, cols = lists.where
    pairs = lists.pairs
    self.cand[rows, cols] = [doc_index[d] for _, d in pairs]
    if teacher_scores is not None:
      self.teacher[rows, cols] = [teacher_scores[p] for p in pairs]
    self.doc_emb = doc_emb
    self.doc_tokens = doc_tokens  # (ids [N, T], lengths [N]) for towers="both"

  def __len__(self):
    return len(self.qids)

  def _bucket(self, length: int, max_length: int) -> int:
    return tokenization.bucket_length(length, tokenization.buckets_up_to(self.buckets, max_length))

  def batch(self, idx: np.ndarray) -> dict:
    rows = np.maximum(idx, 0)
    valid = idx >= 0
    t = self._bucket(int(self.query_len[rows].max(initial=1)), self.query_ids.shape[1])
    out = {
        "query_ids": self.query_ids[rows, :t],
        "query_mask": (np.arange(t)[None] < self.query_len[rows][:, None]).astype(np.int32),
        "mask": self.mask[rows] & valid[:, None], "teacher": self.teacher[rows],
        "ranking": self.ranking[rows], "prefix": self.prefix[rows],
        "weight": valid.astype(np.float32),
    }
    cand = self.cand[rows]
    if self.doc_emb is not None:
      out["cand_emb"] = self.doc_emb[cand]
    else:
      ids, lengths = self.doc_tokens
      td = self._bucket(int(lengths[cand].max(initial=1)), ids.shape[1])
      out["cand_ids"] = ids[cand, :td]
      out["cand_mask"] = (np.arange(td)[None, None] < lengths[cand][..., None]).astype(np.int32)
    return out


def distill_loss(model: models.DualEncoder, batch: dict, rng, *, section,
                 teacher_temperature: float | None = None) -> jax.Array:
  """[B] per-query loss of the retriever against the teacher over its candidate list.

  `teacher_temperature` overrides `section.teacher_temperature` (the value `auto` resolved to).
  """
  q, cand = retrievers.embed_lists(model, batch, rng)
  scores = losses.scores_from_embeddings(q, cand)
  if uses_listmle(section):
    loss = losses.listmle(scores / section.student_temperature, batch["ranking"], batch["mask"],
                          batch["prefix"])
  else:
    loss = losses.kl_distillation(scores, batch["teacher"], batch["mask"],
                                  student_temperature=section.student_temperature,
                                  teacher_temperature=teacher_temperature or section.teacher_temperature)
  if section.in_batch_weight:
    b, l = batch["mask"].shape
    # Positive: the teacher's best candidate; negatives: every other candidate in the batch.
    if uses_listmle(section):
      best = batch["ranking"][:, 0]
    else:
      best = jnp.argmax(jnp.where(batch["mask"], batch["teacher"], -jnp.inf), axis=1)
    loss = loss + section.in_batch_weight * losses.in_batch_contrastive(
        q, cand.reshape(b * l, -1), jnp.arange(b) * l + best, section.student_temperature,
        doc_mask=batch["mask"].reshape(b * l))
  return loss


def _entropy(logits: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """[Q] entropy (nats) of each row's softmax over its valid entries."""
  z = np.where(mask, logits, -np.inf)
  z = z - z.max(axis=1, keepdims=True)
  log_p = np.where(mask, z - np.log(np.exp(z).sum(axis=1, keepdims=True)), 0.0)
  return -(np.exp(log_p) * log_p * mask).sum(1)


def matched_temperature(teacher: np.ndarray, student_logits: np.ndarray, mask: np.ndarray) -> float:
  """The teacher temperature whose softmaxes have, on average, the entropy of the student's.

  KL to a teacher much flatter (or sharper) than the student mostly teaches the student to
  flatten (sharpen) its scores; at matched entropy what is left to learn is the order. The mean
  entropy grows with the temperature, so a bisection in log space finds it.
  """
  target = _entropy(student_logits, mask).mean()
  lo, hi = np.log(1e-4), np.log(1e4)
  for _ in range(60):
    mid = (lo + hi) / 2
    if _entropy(teacher / np.exp(mid), mask).mean() < target:
      lo = mid
    else:
      hi = mid
  return float(np.exp((lo + hi) / 2))


def list_docids(lists: Sequence[tuple[Sequence[dict], int]]) -> list[str]:
  """The distinct docids of label-shaped records, each cut to its list width, first seen first:
  every passage `CandidateLists` of those records can ask for."""
  seen: dict[str, None] = {}
  for records, width in lists:
    for r in records:
      seen.update(dict.fromkeys(r["docids"][:width]))
  return list(seen)


def passage_tokens(dataset, tokenizer, docids: Sequence[str],
                   max_length: int) -> tuple[np.ndarray, np.ndarray]:
  """(ids [N, max_length] int32, lengths [N] int32): the token ids of `docids`' full texts."""
  seqs = tokenizer.encode([dataset.corpus[d].full_text() for d in docids], max_length)
  ids = np.zeros((len(seqs), max_length), np.int32)
  for i, s in enumerate(seqs):
    ids[i, :len(s)] = s
  return ids, np.array([len(s) for s in seqs], np.int32)


def teacher_scores(config, workdir: str, dataset, pairs, *, mesh):
  """(scores, fusion or None): the frozen ranker's score of each labelled (qid, docid) pair,
  cached on disk, fused with the initial retriever's score when the ranker was fitted so
  (`ranker.fuse_initial`)."""
  scores = ranker_lib.cached_pair_scores(config, workdir, dataset, pairs, name="teacher_scores",
                                         desc="ranker scores", mesh=mesh)
  fusion = fusion_lib.load_fusion(workdir, config.ranker.fuse_initial)
  if fusion is not None:  # the ranker as fitted: a * ranker + b * initial retriever
    encoder = retrieval.Encoder.from_config(config, mesh=mesh)
    doc_embeddings = retrieval.CorpusEmbeddings.of(workdir, encoder, dataset,
                                                   encode_config=config.encode,
                                                   data_config=config.data)
    initial = fusion_lib.InitialScores.encoded(encoder, dataset, pairs, doc_embeddings)
    scores = fusion(scores, initial(pairs))
  return scores, fusion


def deep_lists(workdir: str, labels, depth: int, *, split: str) -> list[dict]:
  """Each labelled query's top `depth` candidates of the run `label` read (of `label.split`; the
  ranker scores them all: it is the cheap teacher), as label-shaped records without an LLM
  ranking."""
  run = fusion_lib.InitialScores.of_labels(workdir, split).run
  out = []
  for r in labels:
    docids = data_lib.ranked(run[r["qid"]])[:depth]
    out.append({"qid": r["qid"], "docids": docids, "ranking": docids, "ranked_prefix": 0})
  return out


def rank_scores(labels, list_size: int, top_k: int = 0) -> dict[tuple[str, str], float]:
  """A score per labelled pair from the LLM ranking alone: the i-th of the trusted prefix (cut to
  `top_k` > 0) scores -i, every candidate past it -prefix (tied: that order is not trusted)."""
  out = {}
  lists = data_lib.label_lists(labels, list_size, top_k=top_k)
  for qid, docids, ranking, mask, prefix in zip(lists.qids, lists.docids, lists.ranking, lists.mask,
                                                lists.prefix):
    for i, j in enumerate(ranking[:mask.sum()]):
      out[(qid, docids[j])] = -float(min(i, prefix))
  return out


def qrels_scores(labels, qrels, list_size: int) -> tuple[dict[tuple[str, str], float], list]:
  """(grade of each labelled pair, the labels with at least one judged candidate in the list)."""
  out, kept = {}, []
  for r in labels:
    docids = r["docids"][:list_size]
    grades = qrels.get(r["qid"], {})
    for d in docids:
      out[(r["qid"], d)] = float(max(grades.get(d, 0), 0))
    if any(grades.get(d, 0) > 0 for d in docids):
      kept.append(r)
  return out, kept


def run(config, workdir: str) -> None:
  """Task `distill`: ranker (LLM rankings, or gold qrels) -> retriever/checkpoints, metrics.jsonl."""
  section = config.distill
  teacher = check_teacher(section)
  inputs = provenance.begin(provenance.stage_name("distill", config), config, workdir)
  mesh = sharding.mesh_from_config(config.mesh)
  dataset = assets.load_dataset(config.data)
  labels = data_lib.load_labels(layout.labels(workdir), dataset)
  scores = fusion = None
  extra = {}
  records, width = labels, section.list_size  # the lists the retriever trains on
  if teacher == "ranker" and section.depth > 0:
    records = deep_lists(workdir, labels, section.depth, split=config.label.split)
    width = section.depth
  if teacher == "ranker":
    pairs = [(r["qid"], d) for r in records for d in r["docids"][:width]]
    values, fusion = teacher_scores(config, workdir, dataset, pairs, mesh=mesh)
    scores = dict(zip(pairs, values.tolist()))
  elif teacher == "llm" and section.llm_loss == "kl":
    scores = rank_scores(labels, section.list_size, llm_top_k(section, config.ranker.top_k))
  elif teacher == "qrels":
    if not dataset.has_qrels(config.label.split):
      raise ValueError(f"distill.teacher='qrels' needs qrels/{config.label.split}.tsv in {dataset.root}")
    scores, kept = qrels_scores(labels, dataset.qrels(config.label.split), section.list_size)
    logging.info("distill.teacher=qrels: %d of %d training queries have a judged candidate in "
                 "their top %d", len(kept), len(labels), section.list_size)
    extra["queries_without_judged_candidate"] = len(labels) - len(kept)
    records = kept
  model, ckpt, trainable = retrievers.build_student(config.model, section.towers, seed=config.seed)
  start = retrievers.host_weights(model, trainable)  # the interpolations' initial end
  tokenizer = tokenization.Tokenizer(ckpt.dir)
  # Only the passages of the candidate lists are read: rows of a table of those alone.
  docids = list_docids([(records, width), (labels, section.list_size)])
  doc_index = {d: i for i, d in enumerate(docids)}
  doc_emb = doc_tokens = None
  auto_temperature = scores is not None and section.teacher_temperature <= 0
  # The initial retriever's passage embeddings: the fixed passage side (towers="query") and the
  # softmaxes the automatic temperature matches.
  needs_initial = section.towers == "query" or auto_temperature
  if needs_initial:
    encoder = retrieval.Encoder.from_config(config, mesh=mesh)
    initial_doc_emb = retrieval.CorpusEmbeddings.of(workdir, encoder, dataset,
                                                    encode_config=config.encode,
                                                    data_config=config.data)(docids)
  if section.towers == "query":
    doc_emb = initial_doc_emb
  else:
    doc_tokens = passage_tokens(dataset, tokenizer, docids, config.model.max_doc_length)
  train_qids, dev_qids = train.dev_split([r["qid"] for r in records], section.dev_fraction, config.seed)
  by_qid = {r["qid"]: r for r in records}
  make = functools.partial(CandidateLists, dataset=dataset, tokenizer=tokenizer,
                           list_size=width, max_query_length=config.model.max_query_length,
                           doc_index=doc_index, doc_emb=doc_emb, teacher_scores=scores,
                           doc_tokens=doc_tokens, buckets=config.encode.buckets,
                           use_prefix=config.ranker.prefix_only,
                           top_k=llm_top_k(section, config.ranker.top_k) if teacher == "llm" else 0)
  train_ex, dev_ex = make([by_qid[q] for q in train_qids]), make([by_qid[q] for q in dev_qids])
  # The LLM's own rankings of the dev queries: the one figure every recipe is compared by.
  labelled = {r["qid"]: r for r in labels}
  dev_llm = make([labelled[q] for q in dev_qids], list_size=section.list_size, teacher_scores=None,
                 top_k=0)
  temperature = section.teacher_temperature
  if auto_temperature:
    # The initial retriever's own softmaxes over the training lists set the teacher's sharpness.
    q_emb = encoder.encode([dataset.queries[q].text for q in train_ex.qids], tower="query")
    student = np.einsum("qh,qlh->ql", q_emb, initial_doc_emb[train_ex.cand]) / section.student_temperature
    temperature = matched_temperature(train_ex.teacher, student, train_ex.mask)
    logging.info("distill.teacher_temperature auto: %.4f (the initial retriever's mean entropy, "
                 "%.3f nats, over %d training lists)", temperature,
                 _entropy(student, train_ex.mask).mean(), len(train_ex))
  if needs_initial:
    del initial_doc_emb  # the encoder stays: DevRetrieval's initial retriever
  out_dir = output_dir(section, workdir)
  dev_before = retrievers.dev_llm_listmle(model, dev_llm, config.ranker.top_k)
  model, summary = train.train_loop(
      model=model, loss_fn=functools.partial(distill_loss, section=section,
                                             teacher_temperature=temperature),
      make_batch=train_ex.batch, num_examples=len(train_ex),
      dev_batches=train.dev_batches_fn(dev_ex, section.batch_size, mesh),
      loop=train.loop_config(section, config.seed), optim_config=section.optim,
      out_dir=out_dir, mesh=mesh, param_rules=config.mesh.param_rules, trainable=trainable)
  dev = (retrievers.DevRetrieval(config, workdir, dataset, encoder, tokenizer, dev_ex.qids, mesh=mesh)
         if section.towers == "query" else None)
  extra["dev_retrieval"] = dev and dev(model)
  extra["dev_interpolation"] = retrievers.dev_interpolation(
      config, model, trainable, start, dev_llm, lambda m: dev and dev(m, report=False))
  dev_after = retrievers.dev_llm_listmle(model, dev_llm, config.ranker.top_k)
  checkpoints.write_done(out_dir, summary, {"teacher": section.teacher, "towers": section.towers,
                                            "llm_loss": section.llm_loss if teacher == "llm" else None,
                                            "llm_top_k": (llm_top_k(section, config.ranker.top_k)
                                                          if teacher == "llm" else None),
                                            "teacher_temperature": temperature, "list_size": width,
                                            "ranker_fusion": fusion and dataclasses.asdict(fusion),
                                            "train_queries": len(train_ex), "dev_queries": len(dev_ex),
                                            "dev_llm_listmle": {"initial": dev_before, "trained": dev_after},
                                            **extra, **inputs})
