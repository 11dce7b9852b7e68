"""Training losses: ListMLE, KL distillation and the in-batch contrastive term.

Pure `jax.numpy` functions over padded arrays with masks beside them, so every
list size compiles once under `jit`. Each loss returns one value per query
(`[B] float32`); callers choose how to average.

Padded entries are excluded with `jnp.where` *before* any arithmetic that could
overflow, so neither the value nor the gradient depends on what a padded score
holds (huge, infinite or NaN): masked scores get an exact zero gradient.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _masked_max(x: jax.Array, mask: jax.Array) -> jax.Array:
  """Row maxima over the valid entries, 0 for rows without any; no gradient.

  Shifting by a constant leaves every softmax unchanged, so the shift needs no
  gradient, and 0 for an empty row keeps `x - shift` free of `-inf - -inf`.
  """
  m = jnp.max(jnp.where(mask, x, -jnp.inf), axis=-1, keepdims=True)
  return jax.lax.stop_gradient(jnp.where(jnp.isfinite(m), m, 0.0))


def _masked_log_softmax(x: jax.Array, mask: jax.Array) -> jax.Array:
  """Log-softmax over the valid entries of each row; masked entries are 0.

  Args:
    x: [B, L] float32 logits.
    mask: [B, L] bool valid entries.

  Returns:
    [B, L] float32; rows without a valid entry are all 0.
  """
  z = jnp.where(mask, x - _masked_max(x, mask), -jnp.inf)
  # After the shift the largest valid term is exp(0) = 1, so the sum is >= 1
  # and its log is finite; an empty row sums to 0 and is replaced by 1.
  total = jnp.sum(jnp.exp(z), axis=-1, keepdims=True)
  lse = jnp.log(jnp.where(total > 0, total, 1.0))
  return jnp.where(mask, z - lse, 0.0)


def listmle(
    scores: jax.Array,
    ranking: jax.Array,
    mask: jax.Array,
    prefix: jax.Array | None = None,
) -> jax.Array:
  """Plackett–Luce negative log-likelihood of a teacher ranking (ListMLE).

  With n valid candidates, pi = ranking[:n] and k = min(prefix, n):

    NLL = -sum_{i<k} [ s_{pi_i} - logsumexp_{i<=j<n} s_{pi_j} ]

  For k < n this is the top-k Plackett–Luce likelihood: only the first k
  placements are scored, but the untrusted tail stays in every denominator,
  because the teacher did see those items and placed them below the prefix.
  It equals the full PL probability summed over all orders of the tail.

  The same function trains the retriever directly from the teacher ranking
  in the no-intermediate-ranker ablation (`distill.teacher="llm"`).

  Args:
    scores: [B, L] float32 model scores, in candidate order.
    ranking: [B, L] int32 candidate indices, best first. Its first n entries
      must be a permutation of the valid indices of the row; the entries after
      them are ignored (any value, e.g. -1 or the masked indices).
    mask: [B, L] bool valid candidates, in candidate order (need not be a
      prefix of the row).
    prefix: [B] int32 number of trusted ranking positions, or None for all n.

  Returns:
    [B] float32 loss per row; 0 for a row with fewer than 2 trusted items
    (the last placement is certain and contributes 0).
  """
  num_valid = jnp.sum(mask, axis=-1, dtype=jnp.int32)  # [B]
  positions = jnp.arange(scores.shape[-1], dtype=jnp.int32)[None, :]  # [1, L]
  in_list = positions < num_valid[:, None]  # [B, L], in ranking order
  trusted = in_list if prefix is None else in_list & (positions < prefix[:, None])

  # Clip so padding entries such as -1 still gather in bounds; they are
  # dropped by `in_list` right after.
  ranked = jnp.take_along_axis(scores, jnp.clip(ranking, 0, scores.shape[-1] - 1), axis=-1)
  ranked = jnp.where(in_list, ranked - _masked_max(ranked, in_list), -jnp.inf)
  # Denominator at position i: logsumexp over the items still unplaced,
  # i.e. positions i..n-1. Scanning from the right keeps it exact in log space
  # (a cumulative sum of exp() would underflow to log 0 for low-scoring tails).
  tail_lse = jax.lax.cumlogsumexp(ranked, axis=ranked.ndim - 1, reverse=True)
  # Both operands are -inf outside the list: select before subtracting.
  log_probs = jnp.where(trusted, ranked - jnp.where(trusted, tail_lse, 0.0), 0.0)
  return -jnp.sum(log_probs, axis=-1)


def kl_distillation(
    student_scores: jax.Array,
    teacher_scores: jax.Array,
    mask: jax.Array,
    student_temperature: float | jax.Array = 1.0,
    teacher_temperature: float | jax.Array = 1.0,
) -> jax.Array:
  """KL(P_teacher || P_student) over the valid candidates of each row.

  P = softmax(scores / temperature) over the valid candidates. The teacher
  side is wrapped in `stop_gradient`: the frozen ranker must never receive
  updates through this loss.

  Args:
    student_scores: [B, L] float32 retriever scores, in candidate order.
    teacher_scores: [B, L] float32 ranker scores, same candidate order.
    mask: [B, L] bool valid candidates.
    student_temperature: scalar temperature of the student softmax.
    teacher_temperature: scalar temperature of the teacher softmax.

  Returns:
    [B] float32 KL per row (>= 0 up to rounding); 0 for rows without a valid
    candidate.
  """
  teacher_scores = jax.lax.stop_gradient(teacher_scores)
  log_p_teacher = _masked_log_softmax(teacher_scores / teacher_temperature, mask)
  log_p_student = _masked_log_softmax(student_scores / student_temperature, mask)
  # Masked entries: p = 0 and both logs are 0, so the term is an exact 0 with no
  # 0 * log 0 anywhere.
  p_teacher = jnp.where(mask, jnp.exp(log_p_teacher), 0.0)
  return jnp.sum(p_teacher * (log_p_teacher - log_p_student), axis=-1)


def in_batch_contrastive(
    query_emb: jax.Array,
    doc_emb: jax.Array,
    positive_index: jax.Array,
    temperature: float | jax.Array = 1.0,
    doc_mask: jax.Array | None = None,
) -> jax.Array:
  """Softmax cross-entropy of each query against every document in the batch.

  The other queries' documents act as negatives. `doc_mask` drops padding rows
  that fixed batch shapes introduce.

  Args:
    query_emb: [B, D] query embeddings.
    doc_emb: [N, D] all documents of the batch (e.g. N = B * M candidates).
    positive_index: [B] int32 row of `doc_emb` holding each query's positive.
    temperature: scalar softmax temperature.
    doc_mask: [N] bool valid documents, or None for all.

  Returns:
    [B] float32 cross-entropy per query.
  """
  logits = jnp.einsum("bd,nd->bn", query_emb, doc_emb,
                      preferred_element_type=jnp.float32) / temperature  # [B, N]
  mask = jnp.ones(logits.shape, bool) if doc_mask is None else jnp.broadcast_to(
      doc_mask[None, :], logits.shape)
  log_probs = _masked_log_softmax(logits, mask)
  return -jnp.take_along_axis(log_probs, positive_index[:, None], axis=-1)[:, 0]


def scores_from_embeddings(query_emb: jax.Array, cand_emb: jax.Array) -> jax.Array:
  """Dot-product scores of each query against its own candidate list.

  Args:
    query_emb: [B, D] query embeddings.
    cand_emb: [B, L, D] candidate embeddings.

  Returns:
    [B, L] float32 scores; accumulated in float32 even for bfloat16 inputs,
    since the softmaxes downstream are sensitive to score rounding.
  """
  return jnp.einsum("bd,bld->bl", query_emb, cand_emb, preferred_element_type=jnp.float32)
