"""The ranker's fusion with the initial retriever, and the initial retriever's scores of pairs.

`fit_weights` fits a linear mix of score features by ListMLE (convex, L-BFGS); `fit_fusion` uses it
for `a * ranker + b * initial retriever` on the dev queries (`ranker/fusion.json`), and
`initial_scale` for the residual head's starting scale on the training lists.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from interdistill_jax import data as data_lib
from interdistill_jax import checks, files, layout, losses, retrieval


@dataclasses.dataclass(frozen=True)
class Fusion:
  """The fused score: ce_weight * ranker score + initial_weight * initial retriever score."""

  ce_weight: float
  initial_weight: float

  def __call__(self, ce, initial):
    return self.ce_weight * np.asarray(ce, np.float64) + self.initial_weight * np.asarray(initial, np.float64)


def fit_fusion(ce: np.ndarray, initial: np.ndarray, ranking: np.ndarray, mask: np.ndarray,
               prefix: np.ndarray) -> tuple[Fusion, dict]:
  """The weights minimising the mean ListMLE of `a * ce + b * initial` over the lists [Q, L].

  ListMLE is convex in the scores and the scores are linear in (a, b), so L-BFGS finds the
  global minimum. Returns the fusion and the dev ListMLE of the ranker alone and of the initial
  retriever alone, each at its best scale (so the two compare orders, not sharpness), of the
  ranker at its own scale ("ranker_as_is") and of the fusion.
  """
  ce, initial = np.asarray(ce, np.float32), np.asarray(initial, np.float32)
  # Start the initial retriever's weight at the scale where its scores spread like the ranker's.
  scale = float(np.std(ce[mask]) / max(float(np.std(initial[mask])), 1e-6))
  (b0,), initial_only = fit_weights([initial], [scale], ranking, mask, prefix)
  (a0,), ranker_only = fit_weights([ce], [1.0], ranking, mask, prefix)
  # The fused fit starts from the better of the two alone, so it can only improve on it.
  x0 = [a0, 0.0] if ranker_only <= initial_only else [0.0, b0]
  (a, b), fused = fit_weights([ce, initial], x0, ranking, mask, prefix)
  as_is = float(losses.listmle(jnp.asarray(ce), jnp.asarray(ranking), jnp.asarray(mask),
                               jnp.asarray(prefix)).mean())
  return Fusion(float(a), float(b)), {"ranker": ranker_only, "initial": initial_only, "fused": fused,
                                      "ranker_as_is": as_is}


def _mix_listmle(w, feats, ranking, mask, prefix, weights):
  """The ListMLE of sum_i w_i * feats[i] over the lists, averaged (weighted by `weights` [Q]
  when given)."""
  per_query = losses.listmle(jnp.tensordot(w, feats, 1), ranking, mask, prefix)
  if weights is None:
    return per_query.mean()
  return jnp.sum(per_query * weights) / jnp.sum(weights)


_mix_loss = jax.jit(_mix_listmle)
_mix_value_and_grad = jax.jit(jax.value_and_grad(_mix_listmle))


def _mix_args(features, ranking, mask, prefix, weights):
  return (jnp.stack([jnp.asarray(f, jnp.float32) for f in features]), jnp.asarray(ranking),
          jnp.asarray(mask), jnp.asarray(prefix),
          None if weights is None else jnp.asarray(weights, jnp.float32))


def mixed_listmle(w, features, ranking, mask, prefix, weights=None) -> float:
  """The mean ListMLE of sum_i w_i * features[i] (weighted per query by `weights` [Q] when
  given: a query of weight 0 takes no part)."""
  return float(_mix_loss(jnp.asarray(w, jnp.float32), *_mix_args(features, ranking, mask, prefix,
                                                                  weights)))


def fit_weights(features, x0, ranking, mask, prefix, weights=None):
  """(w, loss): the weights minimising the mean ListMLE of sum_i w_i * features[i] (convex in w).

  With `weights` [Q] the mean is weighted per query (0 leaves a query out): refits on subsets of
  one set of lists then share one compiled loss. Without, the lists are compiled in as constants,
  as every ranker's fusion has been fitted (the two compile to different float32 roundings, which
  move the fitted weights along the loss's flat directions).
  """
  from scipy import optimize

  args = _mix_args(features, ranking, mask, prefix, weights)
  if weights is None:
    value_and_grad = jax.jit(jax.value_and_grad(lambda w: _mix_listmle(w, *args)))
  else:
    value_and_grad = lambda w: _mix_value_and_grad(w, *args)  # noqa: E731

  def f(x):
    v, g = value_and_grad(jnp.asarray(x, jnp.float32))
    return float(v), np.asarray(g, np.float64)

  res = optimize.minimize(f, np.asarray(x0, np.float64), jac=True, method="L-BFGS-B")
  if not np.all(np.isfinite(res.x)):
    raise FloatingPointError(f"ranker fusion: the fit diverged ({res.message})")
  return res.x, float(res.fun)


def read_fusion(workdir: str) -> Fusion | None:
  """The fusion `train_ranker` fitted on the dev queries (None when there were none)."""
  path = layout.fusion(workdir)
  if not files.exists(path):
    return None
  info = data_lib.read_json(path)
  return Fusion(info["ce_weight"], info["initial_weight"])


def load_fusion(workdir: str, fuse_initial: str) -> Fusion | None:
  """The fusion the ranker scores with: the fitted one when `fuse_initial` (`ranker.fuse_initial`)
  is "fit"."""
  if check_fuse_initial(fuse_initial) == "none":
    return None
  fusion = read_fusion(workdir)
  if fusion is None:
    raise FileNotFoundError(f"{layout.fusion(workdir)} not found: "
                            "ranker.fuse_initial is 'fit' but the ranker in "
                            f"{workdir}/ranker has no fitted fusion (it had no dev queries: set "
                            "ranker.dev_fraction > 0 and run train_ranker again)")
  return fusion


def check_fuse_initial(value: str) -> str:
  return checks.require_one_of("ranker.fuse_initial", value, checks.FUSE_INITIAL)


class InitialScores:
  """The initial retriever's score of (qid, docid) pairs, looked up in a run read from `source`."""

  def __init__(self, run: data_lib.Run, source: str):
    self.run, self.source = run, source

  @classmethod
  def of_labels(cls, workdir: str, split: str) -> "InitialScores":
    """The run `label` read its candidates from (`label.split`): every labelled pair is in it."""
    path = layout.candidates(workdir, split)
    return cls(data_lib.read_trec_run(path), path)

  @classmethod
  def encoded(cls, encoder: retrieval.Encoder, dataset, pairs,
              doc_embeddings: retrieval.CorpusEmbeddings) -> "InitialScores":
    """The initial retriever's scores of `pairs`, from its query embeddings (`encoder`) and its
    passage embeddings (`doc_embeddings`): any labelled pair, whichever run its candidates came
    from."""
    qids = sorted({q for q, _ in pairs})
    q_emb = encoder.encode([dataset.queries[q].text for q in qids], tower="query")
    row = {q: i for i, q in enumerate(qids)}
    dots = np.einsum("nh,nh->n", q_emb[[row[q] for q, _ in pairs]],
                     doc_embeddings([d for _, d in pairs]))
    run: data_lib.Run = {}
    for (q, d), v in zip(pairs, dots.tolist()):
      run.setdefault(q, {})[d] = v
    return cls(run, "the initial retriever's embeddings")

  def __call__(self, pairs) -> np.ndarray:
    out = np.zeros(len(pairs))
    for i, (q, d) in enumerate(pairs):
      try:
        out[i] = self.run[q][d]
      except KeyError:
        raise KeyError(f"{self.source}: no initial score for query {q!r}, document {d!r}") from None
    return out


def label_arrays(records, initial: InitialScores, *, list_size: int = 0, use_prefix: bool,
                  top_k: int = 0):
  """Label records as [Q, L] arrays: initial scores, ranking, mask; [Q] trusted prefix; and the
  (qid, docid) pairs with their (row, column). `list_size` 0 keeps every candidate; `top_k` > 0
  trusts only the teacher's first k positions, as in ranker training."""
  lists = data_lib.label_lists(records, list_size, use_prefix=use_prefix, top_k=top_k)
  pairs, (rows, cols) = lists.pairs, lists.where
  scores = np.zeros(lists.mask.shape, np.float32)
  scores[rows, cols] = initial(pairs)
  return scores, lists.ranking, lists.mask, lists.prefix, pairs, (rows, cols)


def initial_scale(ranker_config, train_labels, initial: InitialScores) -> tuple[float, float]:
  """(scale, train ListMLE): the initial retriever's best ListMLE scale on the ranker's training
  lists, where the residual head's bi-encoder score starts."""
  scores, ranking, mask, prefix, _, _ = label_arrays(
      train_labels, initial, list_size=ranker_config.list_size,
      use_prefix=ranker_config.prefix_only, top_k=ranker_config.top_k)
  x0 = 1.0 / max(float(np.std(scores[mask])), 1e-6)
  (weight,), loss = fit_weights([scores], [x0], ranking, mask, prefix)
  if not weight > 1e-3 * x0:
    logging.warning("The initial retriever's scores do not predict the teacher's order on the "
                    "training lists (best ListMLE scale %.4g): the residual ranker starts with a "
                    "near-zero bi-encoder term (%.4g) and must learn the teacher from its joint head",
                    weight, 1e-3 * x0)
    weight = 1e-3 * x0
  return float(weight), loss
