"""Stage 1b, task `train_ranker`: a cross-encoder learns the LLM's rankings with ListMLE.

Each training example is one labelled query with its candidate list (`labels.jsonl`).
The ranker scores every (query, candidate) pair; the loss is the Plackett-Luce negative
log-likelihood of the teacher's ranking, over the ranked prefix when only a prefix was
trusted (`ranked_prefix`).

`ranker.head` chooses the ranker's form. "cls" is BertForSequenceClassification, for a real
cross-encoder checkpoint. "residual" (what "auto" picks for a bi-encoder checkpoint such as the
packaged MiniLM) adds the bi-encoder score to the joint encoding's head, trained end to end
(`models.CrossEncoder`): the ranker starts as the initial retriever, at the scale that fits the
teacher's training lists best, and learns the query-passage interactions on top.

After training, `a * ranker + b * initial retriever` is fitted by ListMLE on the dev slice
(`ranker/fusion.json`, with the dev ListMLE of the ranker, of the initial retriever and of the
fusion; the fit and the initial retriever's scores are in `fusion.py`). `ranker.fuse_initial="fit"` makes that fused score the ranker wherever it scores
(distillation, evaluation); "none" keeps the ranker alone, and `evaluate` reports the fusion
beside it as `ranker_fused`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from interdistill_jax import data as data_lib
from interdistill_jax import assets, files, fusion, hf_weights, inference, layout, losses, models
from interdistill_jax import checkpoints, peers, provenance, retrieval, sharding, tokenization, train


class PairScorer:
  """Scores (query, passage) pairs with a cross-encoder on the mesh, bucketed by length."""

  def __init__(self, model: models.CrossEncoder, tokenizer: tokenization.Tokenizer, *,
               max_length: int, batch_size: int, buckets: Sequence[int], mesh, param_rules=()):
    self.mesh = mesh
    self.tokenizer = tokenizer
    self.max_length = max_length
    self.batch_size = sharding.inference_batch_size(batch_size, max_length, self.mesh)
    self.buckets = tokenization.buckets_up_to(buckets, max_length)
    self._runner = inference.BucketedRunner(
        inference.PlacedModel(model, self.mesh, param_rules), _score,
        batch_size=self.batch_size, buckets=self.buckets, pad_id=tokenizer.pad_id, empty_shape=(0,))

  def score(self, queries: Sequence[str], passages: Sequence[str], desc: str = "rank pairs") -> np.ndarray:
    """[N] float32 scores of pairs (queries[i], passages[i])."""
    encoded = self.tokenizer.encode_pairs(queries, passages, self.max_length)
    return self._runner.run([e[0] for e in encoded], [e[1] for e in encoded], desc=desc)

  def score_pairs(self, dataset, pairs: Sequence[tuple[str, str]], desc: str) -> np.ndarray:
    """[N] float32 scores of (qid, docid) pairs of `dataset`: query text, full passage text."""
    return self.score([dataset.queries[q].text for q, _ in pairs],
                      [dataset.corpus[d].full_text() for _, d in pairs], desc=desc)


def _score(model: models.CrossEncoder, ids, types, mask) -> jax.Array:
  return model(ids, types, mask)


class ListwiseExamples:
  """Labelled queries as fixed-shape arrays: pairs [Q, L, T], ranking [Q, L], prefix [Q].

  With `doc_embeddings` (the residual head), also each query's tokens [Q, Tq] and the initial
  retriever's embedding of each candidate [Q, L, H].
  """

  def __init__(self, labels: Sequence[dict], dataset: data_lib.Dataset,
               tokenizer: tokenization.Tokenizer, *, list_size: int, max_length: int,
               buckets: Sequence[int], use_prefix: bool, top_k: int = 0,
               doc_embeddings: Callable[[Sequence[str]], np.ndarray] | None = None,
               max_query_length: int = 64):
    lists = data_lib.label_lists(labels, list_size, use_prefix=use_prefix, top_k=top_k)
    q, l = len(labels), list_size
    self.qids = lists.qids
    self.buckets = tokenization.buckets_up_to(buckets, max_length)
    self.ids = np.zeros((q, l, max_length), np.int32)
    self.types = np.zeros((q, l, max_length), np.int32)
    self.lengths = np.zeros((q, l), np.int32)
    self.ranking, self.mask, self.prefix = lists.ranking, lists.mask, lists.prefix
    pairs = lists.pairs
    where = list(zip(*(x.tolist() for x in lists.where)))
    candidates = [d for _, d in pairs]
    firsts = [dataset.queries[qid].text for qid, _ in pairs]
    seconds = [dataset.corpus[d].full_text() for d in candidates]
    for (i, j), (ids, types) in zip(where, tokenizer.encode_pairs(firsts, seconds, max_length)):
      self.ids[i, j, :len(ids)] = ids
      self.types[i, j, :len(ids)] = types
      self.lengths[i, j] = len(ids)
    self.query_ids = self.query_len = self.cand_emb = None
    if doc_embeddings is not None:
      self.query_buckets = tokenization.buckets_up_to(buckets, max_query_length)
      self.query_ids, self.query_len = tokenization.padded_ids(
          tokenizer, [dataset.queries[x].text for x in self.qids], max_query_length)
      emb = doc_embeddings(candidates) if candidates else np.zeros((0, 1), np.float32)
      self.cand_emb = np.zeros((q, l, emb.shape[1]), np.float32)
      if candidates:
        rows, cols = np.array(where).T
        self.cand_emb[rows, cols] = emb

  def __len__(self) -> int:
    return len(self.qids)

  def batch(self, idx: np.ndarray) -> dict:
    """Example indices [B] (-1 = padding row) -> arrays cut to the batch's length bucket."""
    rows = np.maximum(idx, 0)
    valid = idx >= 0
    t = tokenization.bucket_length(max(int(self.lengths[rows[valid]].max(initial=1)), 1), self.buckets)
    ids = self.ids[rows, :, :t]
    out = {
        "input_ids": ids, "token_type_ids": self.types[rows, :, :t],
        "attention_mask": (np.arange(t)[None, None, :] < self.lengths[rows][..., None]).astype(np.int32),
        "ranking": self.ranking[rows], "mask": self.mask[rows] & valid[:, None],
        "prefix": self.prefix[rows], "weight": valid.astype(np.float32),
    }
    if self.cand_emb is not None:
      tq = tokenization.bucket_length(max(int(self.query_len[rows[valid]].max(initial=1)), 1),
                                      self.query_buckets)
      out["query_ids"] = self.query_ids[rows, :tq]
      out["query_mask"] = (np.arange(tq)[None] < self.query_len[rows][:, None]).astype(np.int32)
      out["cand_emb"] = self.cand_emb[rows]
    return out


def listmle_loss(model: models.CrossEncoder, batch: dict, rng) -> jax.Array:
  """Per-query ListMLE of the ranker's scores against the teacher ranking: [B]."""
  b, l, t = batch["input_ids"].shape
  r_pair, r_query = rng, None
  if rng is not None and "cand_emb" in batch:  # the "cls" head keeps its random stream
    r_pair, r_query = jax.random.split(rng)
  flat = lambda x: x.reshape(b * l, t)  # noqa: E731
  scores = model(flat(batch["input_ids"]), flat(batch["token_type_ids"]),
                 flat(batch["attention_mask"]), r_pair).reshape(b, l)
  if "cand_emb" in batch:  # the residual head: the ranker's own bi-encoder score
    q = model.encode(batch["query_ids"], jnp.zeros_like(batch["query_ids"]), batch["query_mask"],
                     dropout_rng=r_query)
    scores = scores + model.bi_scores(q, batch["cand_emb"])
  return losses.listmle(scores, batch["ranking"], batch["mask"], batch["prefix"])


def initial_doc_embeddings(config, workdir: str, dataset, *, mesh,
                           encoder: retrieval.Encoder | None = None) -> retrieval.CorpusEmbeddings:
  """The initial retriever's passage embeddings (the residual head's frozen passage side)."""
  encoder = encoder or retrieval.Encoder.from_config(config, mesh=mesh)
  return retrieval.CorpusEmbeddings.of(workdir, encoder, dataset, encode_config=config.encode,
                                       data_config=config.data)


def initial_side(config, workdir: str, dataset, labels: Sequence[dict], *,
                 mesh) -> tuple[retrieval.CorpusEmbeddings, fusion.InitialScores]:
  """The initial retriever's side of the ranker's lists: its passage embeddings and its score of
  every candidate of `labels` (the term the fusion weighs against the ranker's)."""
  encoder = retrieval.Encoder.from_config(config, mesh=mesh)
  doc_embeddings = initial_doc_embeddings(config, workdir, dataset, mesh=mesh, encoder=encoder)
  initial = fusion.InitialScores.encoded(encoder, dataset,
                                         [(r["qid"], d) for r in labels for d in r["docids"]],
                                         doc_embeddings)
  return doc_embeddings, initial


def score_pairs(dataset, model: models.CrossEncoder, tokenizer: tokenization.Tokenizer,
                pairs: Sequence[tuple[str, str]], *, desc: str, ranker_config, encode_config, mesh,
                param_rules, doc_embeddings: retrieval.CorpusEmbeddings | None = None) -> np.ndarray:
  """[N] float32: the ranker's own score of each (qid, docid) pair (no fusion).

  The joint encoding's head, plus, for the residual head, the scaled dot product of the ranker's
  query embedding with the initial retriever's passage embedding (`doc_embeddings`, which the
  residual head needs).
  """
  scores = make_scorer(model, tokenizer, ranker_config=ranker_config, encode_config=encode_config,
                       mesh=mesh, param_rules=param_rules).score_pairs(dataset, pairs, desc=desc)
  if not model.residual:
    return scores
  if doc_embeddings is None:
    raise ValueError("the residual ranker scores with the initial retriever's passage embeddings: "
                     "pass doc_embeddings")
  qids = sorted({q for q, _ in pairs})
  encoder = retrieval.Encoder(model, tokenizer, encode_config=encode_config,
                              model_config=ranker_config.model, mesh=mesh, param_rules=param_rules)
  q_emb = encoder.encode([dataset.queries[q].text for q in qids], tower="query")
  row = {q: i for i, q in enumerate(qids)}
  d_emb = doc_embeddings([d for _, d in pairs])
  dots = np.einsum("nh,nh->n", q_emb[[row[q] for q, _ in pairs]], d_emb)
  scale = float(np.exp(np.asarray(jax.device_get(model.log_scale[...]))))
  return (scores + scale * dots).astype(np.float32)


def split_labels(labels: Sequence[dict], ranker_config, seed: int) -> tuple[list[dict], list[dict]]:
  """(train, dev) label records: the queries held out for the ranker's dev loss and fusion."""
  train_qids, dev_qids = train.dev_split([r["qid"] for r in labels], ranker_config.dev_fraction, seed)
  by_qid = {r["qid"]: r for r in labels}
  return [by_qid[q] for q in train_qids], [by_qid[q] for q in dev_qids]


@dataclasses.dataclass(frozen=True)
class DevLists:
  """The dev queries' teacher lists, [Q, L]: the ranker's own scores (`ce`), the initial
  retriever's (`initial`), the teacher's ranking, mask and [Q] trusted prefix, and the
  (qid, docid) pairs scored."""

  ce: np.ndarray
  initial: np.ndarray
  ranking: np.ndarray
  mask: np.ndarray
  prefix: np.ndarray
  pairs: list


def dev_lists(dataset, model, tokenizer, dev_labels, initial: fusion.InitialScores,
              doc_embeddings, *, ranker_config, encode_config, mesh, param_rules) -> DevLists:
  """The lists the fusion is fitted on. Every candidate the teacher ranked for a dev query takes
  part (not only the ranker's training list): the fused score is what distillation will soften
  over the candidate lists. The ranking is trusted as far as in training (the ranked prefix, cut
  to `ranker.top_k` when set)."""
  init_arr, ranking, mask, prefix, pairs, (rows, cols) = fusion.label_arrays(
      dev_labels, initial, use_prefix=ranker_config.prefix_only, top_k=ranker_config.top_k)
  ce = score_pairs(dataset, model, tokenizer, pairs, desc="ranker dev scores",
                   ranker_config=ranker_config, encode_config=encode_config, mesh=mesh,
                   param_rules=param_rules, doc_embeddings=doc_embeddings)
  ce_arr = np.zeros(mask.shape, np.float32)
  ce_arr[rows, cols] = ce
  return DevLists(ce_arr, init_arr, ranking, mask, prefix, pairs)


def _fit_fusion_on_dev(workdir: str, dataset, model, tokenizer, dev_labels,
                       initial: fusion.InitialScores, doc_embeddings, *, ranker_config,
                       encode_config, mesh, param_rules) -> dict:
  """Fits and writes ranker/fusion.json on the dev queries' teacher rankings (`dev_lists`).
  Returns the dev ListMLE of the ranker alone, of the initial retriever and of the fusion."""
  lists = dev_lists(dataset, model, tokenizer, dev_labels, initial, doc_embeddings,
                    ranker_config=ranker_config, encode_config=encode_config, mesh=mesh,
                    param_rules=param_rules)
  fit, dev_loss = fusion.fit_fusion(lists.ce, lists.initial, lists.ranking, lists.mask,
                                     lists.prefix)
  logging.info("Ranker on %d dev queries, ListMLE of the teacher's rankings (each at its best "
               "scale): ranker %.4f, initial retriever %.4f, fused %.4f (%.4f * ranker + %.4f * "
               "initial)", len(dev_labels),
               dev_loss["ranker"], dev_loss["initial"], dev_loss["fused"], fit.ce_weight,
               fit.initial_weight)
  if dev_loss["ranker"] >= dev_loss["initial"]:
    logging.warning("The ranker alone fits the teacher's dev rankings WORSE than the initial "
                    "retriever (ListMLE %.4f >= %.4f): it has not learned what the teacher knows",
                    dev_loss["ranker"], dev_loss["initial"])
  path = layout.fusion(workdir)
  if jax.process_index() == 0:
    data_lib.write_json(path, {
        "ce_weight": fit.ce_weight, "initial_weight": fit.initial_weight,
        "initial_run": initial.source, "dev_queries": len(dev_labels), "dev_pairs": len(lists.pairs),
        "dev_listmle": dev_loss})
  peers.barrier("fusion:" + path)  # every process reads it next (distill, evaluate)
  return dev_loss


def load_trained_ranker(model_config, workdir: str, *, mesh, param_rules,
                        seed: int) -> tuple[models.CrossEncoder, tokenization.Tokenizer]:
  """The ranker `train_ranker` selected in this workdir (frozen for distillation/evaluation), of
  the checkpoint `model_config` (`ranker.model`) names."""
  info = layout.read_done(layout.ranker_dir(workdir))
  model, ckpt = hf_weights.load_cross_encoder(model_config, seed=seed, head=info.get("head", "cls"))
  step = checkpoints.restore_params(model, layout.ranker_dir(workdir), mesh=mesh,
                                    param_rules=param_rules)
  logging.info("Ranker from %s/ranker (%s head, step %d)", workdir, info.get("head", "cls"), step)
  return model, tokenization.Tokenizer(ckpt.dir)


def _ranker_identity(workdir: str, max_length: int) -> str:
  """Names the trained ranker and how it reads pairs: its done.json (less the dev figures
  measured after training, which describe it) and its pair length (`ranker.max_length`)."""
  done = layout.read_done(layout.ranker_dir(workdir))
  done.pop("dev_listmle", None)
  text = json.dumps(done, sort_keys=True) + f"|{max_length}"
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def cached_pair_scores(config, workdir: str, dataset, pairs: Sequence[tuple[str, str]], *,
                       name: str, desc: str, mesh) -> np.ndarray:
  """The frozen ranker's own scores of (qid, docid) pairs, cached in `ranker/{name}.npz`.

  The ranker is frozen once trained, so distillation and every later evaluation read its scores
  from disk. The cache holds the ranker's identity (its done.json and pair length): a retrained
  ranker, or another `ranker.max_length`, scores afresh.
  """
  path = layout.ranker_scores(workdir, name)
  ident = _ranker_identity(workdir, config.ranker.max_length)
  if files.exists(path):
    cached = files.load_npz(path)
    if "ranker" in cached and str(cached["ranker"]) == ident:
      have = dict(zip(zip(cached["qids"].tolist(), cached["docids"].tolist()), cached["scores"].tolist()))
      if all(p in have for p in pairs):
        logging.info("Ranker scores from cache %s", path)
        return np.array([have[p] for p in pairs], np.float32)
  param_rules = config.mesh.param_rules
  model, tokenizer = load_trained_ranker(config.ranker.model, workdir, mesh=mesh,
                                         param_rules=param_rules, seed=config.seed)
  doc_embeddings = (initial_doc_embeddings(config, workdir, dataset, mesh=mesh) if model.residual
                    else None)
  scores = score_pairs(dataset, model, tokenizer, pairs, desc=desc, ranker_config=config.ranker,
                       encode_config=config.encode, mesh=mesh, param_rules=param_rules,
                       doc_embeddings=doc_embeddings)
  if jax.process_index() == 0:
    files.save_npz(path, qids=np.array([q for q, _ in pairs]), docids=np.array([d for _, d in pairs]),
                   scores=scores, ranker=np.array(ident))
  return scores


def make_scorer(model, tokenizer, *, ranker_config, encode_config, mesh, param_rules) -> PairScorer:
  return PairScorer(model, tokenizer, max_length=ranker_config.max_length,
                    batch_size=ranker_config.score_batch_size, buckets=encode_config.buckets,
                    mesh=mesh, param_rules=param_rules)


def run(config, workdir: str) -> None:
  """Task `train_ranker`: labels/labels.jsonl -> ranker/checkpoints, ranker/metrics.jsonl,
  ranker/fusion.json (with the dev ListMLE of the ranker and of the initial retriever)."""
  section = config.ranker
  fusion.check_fuse_initial(section.fuse_initial)
  inputs = provenance.begin("train_ranker", config, workdir)
  mesh = sharding.mesh_from_config(config.mesh)
  dataset = assets.load_dataset(config.data)
  labels = data_lib.load_labels(layout.labels(workdir), dataset)
  if not labels:
    raise ValueError(f"{layout.labels(workdir)} has no labelled queries")
  from interdistill_jax import labeling  # noqa: PLC0415 (the teacher's code only for its audit)
  labeling.check_teacher(labeling.recorded_audit(workdir), config.label.weak_teacher,
                         layout.label_stats(workdir))
  train_labels, dev_labels = split_labels(labels, section, config.seed)
  cut = data_lib.choices_cut(train_labels, section.list_size, use_prefix=section.prefix_only,
                             top_k=section.top_k)
  if cut:
    logging.warning(
        "ranker.list_size=%d cuts the teacher's trusted first choices (ranker.top_k=%d) out of %d "
        "of %d training lists (%.0f%%): there the ranker learns the best of the kept candidates "
        "instead. The teacher ranked %d candidates (label.num_candidates); a list that long keeps "
        "them all.", section.list_size, section.top_k, cut, len(train_labels),
        100 * cut / len(train_labels), config.label.num_candidates)
  if section.fuse_initial == "fit" and not dev_labels:
    raise ValueError("ranker.fuse_initial='fit' needs dev queries to fit on: set "
                     "ranker.dev_fraction > 0")
  model, ckpt = hf_weights.load_cross_encoder(section.model, seed=config.seed, head=section.head)
  tokenizer = tokenization.Tokenizer(ckpt.dir)
  doc_embeddings, initial = initial_side(config, workdir, dataset, labels, mesh=mesh)
  extra = {"head": "residual" if model.residual else "cls", "fuse_initial": section.fuse_initial,
           "train_lists_cut": cut}
  if not model.residual:
    doc_embeddings = None  # the examples need no passage embeddings
  else:
    scale, loss = fusion.initial_scale(section, train_labels, initial)
    model.log_scale[...] = jnp.log(jnp.float32(scale))
    extra["initial_scale"] = scale
    logging.info("Residual ranker: starts as %.4f * the initial retriever's score (its best "
                 "ListMLE scale on the training lists, %.4f)", scale, loss)
  make = functools.partial(ListwiseExamples, dataset=dataset, tokenizer=tokenizer,
                           list_size=section.list_size, max_length=section.max_length,
                           buckets=config.encode.buckets, use_prefix=section.prefix_only,
                           top_k=section.top_k, doc_embeddings=doc_embeddings,
                           max_query_length=section.model.max_query_length)
  train_ex, dev_ex = make(train_labels), make(dev_labels)
  logging.info("Ranker (%s head): %d train and %d dev queries, lists of %d, %d tokens",
               extra["head"], len(train_ex), len(dev_ex), section.list_size, section.max_length)
  out_dir = layout.ranker_dir(workdir)
  stale = layout.fusion(workdir)  # an earlier ranker's fit must not outlive it
  if jax.process_index() == 0:
    files.remove(stale)
  model, summary = train.train_loop(
      model=model, loss_fn=listmle_loss, make_batch=train_ex.batch, num_examples=len(train_ex),
      dev_batches=train.dev_batches_fn(dev_ex, section.batch_size, mesh),
      loop=train.loop_config(section, config.seed), optim_config=section.optim, out_dir=out_dir,
      mesh=mesh, param_rules=config.mesh.param_rules)
  if dev_labels:
    extra["dev_listmle"] = _fit_fusion_on_dev(
        workdir, dataset, model, tokenizer, dev_labels, initial, doc_embeddings,
        ranker_config=section, encode_config=config.encode, mesh=mesh,
        param_rules=config.mesh.param_rules)
  checkpoints.write_done(out_dir, summary, {"train_queries": len(train_ex), "dev_queries": len(dev_ex),
                                            **extra, **inputs})
