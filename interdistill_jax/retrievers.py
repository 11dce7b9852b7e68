"""The retriever the distillation trains: how it is built, loaded once trained, and scored on dev.

A retriever is the dual encoder of `config.model` (`models.DualEncoder`), started from the same
checkpoint as the initial retriever `retrieve` searched with. `distill.towers` says which of its
weights train: "query" (default) the query tower alone, the passages keeping their initial
embeddings (the corpus is never re-encoded), or "both", one tower shared by queries and passages.
`build_student` gives the model and the filter of its trainable weights; `initial_weights` those
weights before any training.

A finished retriever (`retriever/`, `retriever_direct/`, `retriever_supervised/`; its done.json
says which towers trained) is loaded by `load_distilled` for evaluate, export and the benchmarks,
its trainable weights set to (1 - a) x initial + a x trained, `a` = `distill.interpolation` (1:
the trained weights alone; `interpolate`). This is weight-space ensembling, as WiSE-FT does for
fine-tuned models; it is applied at loading, so the checkpoints always hold the trained weights.

The dev figures a distillation records in done.json, and `benchmarks/recipes.py` recomputes:
`dev_llm_listmle`, the ListMLE of the LLM's rankings of the dev candidate lists under the
retriever's scores; `DevRetrieval`, the dev queries' nDCG@10 and Recall@100 over the whole corpus;
`dev_interpolation`, both at a few interpolations between the initial and the trained weights.
The candidate lists are `distill.CandidateLists`, read through their batches and arrays alone:
this module does not import `distill` (which imports it).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from interdistill_jax import fusion as fusion_lib
from interdistill_jax import (checkpoints, checks, hf_weights, layout, losses, metrics, models,
                              retrieval, search)

QUERY_TOWER = nnx.All(nnx.Param, nnx.PathContains("query_tower"))


def build_student(model_config, towers: str, *,
                  seed: int) -> tuple[models.DualEncoder, hf_weights.Checkpoint, object]:
  """The retriever to train (from the checkpoint `model_config` names) and the filter of its
  trainable parameters."""
  checks.require_one_of("distill.towers", towers, checks.TOWERS)
  shared = towers == "both"
  model, ckpt = hf_weights.load_dual_encoder(model_config, shared=shared, seed=seed)
  return model, ckpt, (nnx.Param if shared else QUERY_TOWER)


def interpolate(model: models.DualEncoder, start: object, alpha: float, trainable) -> None:
  """Sets `model`'s trainable weights to (1 - alpha) x `start` + alpha x its own, in place
  (`start`: the initial weights, as `initial_weights` returns them). Weight-space
  ensembling (WiSE-FT, Wortsman et al. 2022): the retriever keeps more of what it could do
  before training, which the candidate lists never show it."""
  trained = nnx.split(model, trainable, ...)[1]
  nnx.update(model, jax.tree.map(lambda a, b: (1 - alpha) * np.asarray(a) + alpha * b,
                                 start, trained))


def _snapshot(model, trainable):
  """`model`'s trainable weights as they are now, left where they are (on the mesh). The state
  `nnx.split` returns follows the model (a later `nnx.update` shows in it); a tree map holds the
  arrays of this moment. `interpolations` restores from it, which needs no copy to the host;
  `host_weights` is the copy that must outlive training or a restore."""
  return jax.tree.map(lambda x: x, nnx.split(model, trainable, ...)[1])


def interpolations(model: models.DualEncoder, start: object, trainable,
                   alphas: Sequence[float]) -> Iterator[float]:
  """Yields each of `alphas` with `model`'s trainable weights set to (1 - alpha) x `start` +
  alpha x its own (`interpolate`), and gives the model back its own weights after each, and
  when the loop ends or is left early."""
  trained = _snapshot(model, trainable)
  for alpha in alphas:
    interpolate(model, start, alpha, trainable)
    try:
      yield alpha
    finally:
      nnx.update(model, trained)


def host_weights(model, trainable):
  """A host copy of `model`'s trainable weights as they are now: what `interpolate` starts from
  when taken before training (a copy, so that training, which donates its buffers, or a later
  restore leaves it as it was)."""
  return jax.tree.map(np.array, nnx.split(model, trainable, ...)[1])


def initial_weights(model_config, towers: str, *, seed: int):
  """The trainable weights the student starts from (host arrays), and their filter."""
  initial, _, trainable = build_student(model_config, towers, seed=seed)
  return host_weights(initial, trainable), trainable


def load_distilled(
    model_config, out_dir: str, *, mesh, param_rules, seed: int, interpolation: float = 1.0,
) -> tuple[models.DualEncoder, hf_weights.Checkpoint, dict]:
  """A finished distillation's selected retriever, with its done.json; its trainable weights
  interpolated with the initial ones when `interpolation` < 1 (`distill.interpolation`)."""
  info = layout.read_done(out_dir)
  model, ckpt, trainable = build_student(model_config, info["towers"], seed=seed)
  start = host_weights(model, trainable) if interpolation != 1.0 else None
  step = checkpoints.restore_params(model, out_dir, mesh=mesh, param_rules=param_rules,
                                    trainable=trainable)
  if start is not None:
    interpolate(model, start, interpolation, trainable)
  logging.info("Retriever from %s (step %d%s)", out_dir, step,
               "" if interpolation == 1.0 else
               f"; weights {interpolation:g} x trained + {1 - interpolation:g} x initial")
  return model, ckpt, info


def embed_lists(model: models.DualEncoder, batch: dict, rng) -> tuple[jax.Array, jax.Array]:
  """(query embeddings [B, H], candidate embeddings [B, L, H]) of a batch of candidate lists
  (`distill.CandidateLists.batch`): the candidates' fixed embeddings when the batch carries them
  (towers="query"), else their tokens through the passage tower. `rng`: dropout, None for none."""
  r_q, r_d = (None, None) if rng is None else tuple(jax.random.split(rng))
  q = model.encode(batch["query_ids"], jnp.zeros_like(batch["query_ids"]), batch["query_mask"],
                   tower="query", dropout_rng=r_q)
  if "cand_emb" in batch:
    return q, batch["cand_emb"]
  b, l, t = batch["cand_ids"].shape
  ids = batch["cand_ids"].reshape(b * l, t)
  return q, model.encode(ids, jnp.zeros_like(ids), batch["cand_mask"].reshape(b * l, t),
                         tower="doc", dropout_rng=r_d).reshape(b, l, -1)


def dev_llm_listmle(model: models.DualEncoder, dev_ex, top_k: int) -> float | None:
  """The ListMLE of the LLM's rankings of the dev lists (`dev_ex`, a `distill.CandidateLists`)
  under the retriever's scores, at their best scale, over the trusted prefix cut to `top_k` (> 0;
  the trust `ranker.top_k` gives the teacher's order): one dev figure every recipe is compared by,
  whatever its loss."""
  if not len(dev_ex):
    return None
  graphdef, state = nnx.split(model)
  score = jax.jit(lambda st, b: losses.scores_from_embeddings(*embed_lists(nnx.merge(graphdef, st), b, None)))
  size = 32
  scores = []
  for start in range(0, len(dev_ex), size):
    idx = np.arange(start, min(start + size, len(dev_ex)))
    batch = dev_ex.batch(np.pad(idx, (0, size - len(idx)), constant_values=-1))
    scores.append(np.asarray(score(state, batch))[:len(idx)])
  prefix = np.minimum(dev_ex.prefix, top_k) if top_k > 0 else dev_ex.prefix
  _, loss = fusion_lib.fit_weights([np.concatenate(scores)], [20.0], dev_ex.ranking, dev_ex.mask, prefix)
  return loss


DEV_RETRIEVAL_METRICS = ("ndcg@10", "recall@100")
DEV_INTERPOLATIONS = (0.25, 0.5, 0.75)


def dev_interpolation(config, model, trainable, start, dev_llm, retrieval_figures) -> list[dict]:
  """The dev figures of the trained retriever interpolated with the initial one at each of
  DEV_INTERPOLATIONS (`distill.interpolation`; 0 and 1 are done.json's "initial" and "trained"),
  `start` being the initial weights (`host_weights` of the student before it trained): the LLM's
  dev ListMLE over `dev_llm` (a `distill.CandidateLists`) and, where
  `retrieval_figures(model)` has them, nDCG@10 and Recall@100 over the whole corpus. `model` is
  left as it came."""
  rows = []
  for alpha in interpolations(model, start, trainable, DEV_INTERPOLATIONS):
    figures = retrieval_figures(model)
    rows.append({"alpha": alpha,
                 "dev_llm_listmle": dev_llm_listmle(model, dev_llm, config.ranker.top_k),
                 "dev_retrieval": figures and figures["trained"]})
  logging.info("Dev figures of the interpolated retriever (distill.interpolation=%g is used "
               "downstream): %s", config.distill.interpolation, rows)
  return rows


class DevRetrieval:
  """The dev queries' nDCG@10 and Recall@100 over the whole corpus against the training split's
  qrels, of the initial retriever and of each trained one it is called with; the corpus index
  and the initial retriever's figures are computed once. `available` is False where there are
  no qrels (NQ, TriviaQA: answers only), no dev queries, or both towers were trained (the corpus
  would be re-encoded); then every call returns None.

  The lists' losses see only the candidates; a retriever that learns them can still lose
  relevant passages below them (Recall@100), and this is where the dev slice shows it.
  """

  def __init__(self, config, workdir: str, dataset, initial: retrieval.Encoder, tokenizer,
               dev_qids: Sequence[str], *, mesh):
    self.config, self.tokenizer, self.mesh = config, tokenizer, mesh
    self.qids = list(dev_qids)
    split = config.label.split
    self.qrels = {}
    if self.qids and config.distill.towers == "query" and dataset.has_qrels(split):
      wanted = set(self.qids)
      self.qrels = {q: rel for q, rel in dataset.qrels(split).items() if q in wanted}
    self.available = bool(self.qrels)
    if not self.available:
      return
    self.texts = [dataset.queries[q].text for q in self.qids]
    self.docids, self.index = retrieval.corpus_index(
        workdir, initial, dataset, retrieve_config=config.retrieve, encode_config=config.encode,
        data_config=config.data, seed=config.seed)
    self.initial = self._evaluate(initial)[0]

  def _evaluate(self, encoder: retrieval.Encoder) -> tuple[dict, dict]:
    """(means, per query) of DEV_RETRIEVAL_METRICS, as `metrics.evaluate_run` gives them."""
    run = search.search_run(self.index, self.docids, self.qids,
                            encoder.encode(self.texts, tower="query"),
                            max(self.config.eval.depth, 100))
    means, per_query = metrics.evaluate_run(self.qrels, run)
    return ({m: means[m] for m in DEV_RETRIEVAL_METRICS},
            {m: per_query[m] for m in DEV_RETRIEVAL_METRICS})

  def _encoder(self, model: models.DualEncoder) -> retrieval.Encoder:
    # A new Encoder per call: one places the model's weights of that moment on the mesh, and
    # `model` differs from call to call (or was changed in place: `interpolations`).
    return retrieval.Encoder(model, self.tokenizer, encode_config=self.config.encode,
                             model_config=self.config.model, mesh=self.mesh,
                             param_rules=self.config.mesh.param_rules)

  def per_query(self, model: models.DualEncoder) -> dict | None:
    """{metric: {qid: figure}} of `model` over the dev queries with qrels (the analyses that
    resample the dev queries, e.g. `benchmarks/interpolation_rule.py`)."""
    return self._evaluate(self._encoder(model))[1] if self.available else None

  def __call__(self, model: models.DualEncoder, *, report: bool = True) -> dict | None:
    """{"queries", "initial", "trained"} for `model`; `report` logs them (and warns when the
    trained retriever finds fewer relevant passages in its top 100)."""
    if not self.available:
      return None
    out = {"queries": len(self.qrels), "initial": self.initial,
           "trained": self._evaluate(self._encoder(model))[0]}
    if report:
      logging.info("Dev queries over the whole corpus (%d with qrels): nDCG@10 %.4f -> %.4f, "
                   "Recall@100 %.4f -> %.4f", out["queries"], out["initial"]["ndcg@10"],
                   out["trained"]["ndcg@10"], out["initial"]["recall@100"],
                   out["trained"]["recall@100"])
      if out["trained"]["recall@100"] < out["initial"]["recall@100"]:
        logging.warning("The trained retriever finds fewer relevant dev passages in its top 100 "
                        "than the initial one (Recall@100 %.4f against %.4f)",
                        out["trained"]["recall@100"], out["initial"]["recall@100"])
    return out
