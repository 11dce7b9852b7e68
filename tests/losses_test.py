"""Tests for interdistill_jax.losses against brute-force numpy references."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from interdistill_jax import losses

_listmle = jax.jit(losses.listmle)
_kl = jax.jit(losses.kl_distillation)


def _pl_prob(scores: np.ndarray, order) -> float:
  """Full Plackett–Luce probability of `order`, computed item by item in float64."""
  remaining = list(order)
  prob = 1.0
  for item in order:
    denom = sum(math.exp(scores[j]) for j in remaining)
    prob *= math.exp(scores[item]) / denom
    remaining.remove(item)
  return prob


def _topk_pl_nll(scores: np.ndarray, order, k: int) -> float:
  """-log of the first k placement factors, the rest of `order` kept in the denominators."""
  order = list(order)
  return -sum(scores[order[i]] - np.logaddexp.reduce(scores[order[i:]]) for i in range(k))


def _all_permutations_batch(n: int):
  perms = np.array(list(itertools.permutations(range(n))), np.int32)  # [n!, n]
  return perms, np.ones(perms.shape, bool)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_listmle_equals_brute_force_plackett_luce_nll_for_every_permutation(n):
  rng = np.random.default_rng(n)
  scores = rng.normal(scale=2.0, size=n)
  perms, mask = _all_permutations_batch(n)
  batch_scores = np.broadcast_to(scores, perms.shape).astype(np.float32)
  got = np.asarray(_listmle(batch_scores, perms, mask))
  want = np.array([-math.log(_pl_prob(scores, p)) for p in perms])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_listmle_probabilities_of_all_permutations_sum_to_one(n):
  rng = np.random.default_rng(100 + n)
  scores = rng.normal(scale=3.0, size=n).astype(np.float32)
  perms, mask = _all_permutations_batch(n)
  nll = np.asarray(_listmle(np.broadcast_to(scores, perms.shape), perms, mask), np.float64)
  assert np.exp(-nll).sum() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("n", [3, 4, 5])
def test_prefix_listmle_equals_full_pl_probability_summed_over_tail_orders(n):
  rng = np.random.default_rng(200 + n)
  scores = rng.normal(scale=2.0, size=n)
  perms, mask = _all_permutations_batch(n)
  batch_scores = np.broadcast_to(scores, perms.shape).astype(np.float32)
  for k in range(n + 1):
    prefix = np.full(len(perms), k, np.int32)
    got = np.asarray(_listmle(batch_scores, perms, mask, prefix), np.float64)
    for perm, nll in zip(perms, got):
      head, tail = list(perm[:k]), list(perm[k:])
      marginal = sum(_pl_prob(scores, head + list(t)) for t in itertools.permutations(tail))
      assert nll == pytest.approx(-math.log(marginal), abs=1e-5), (k, perm)
      assert nll == pytest.approx(_topk_pl_nll(scores, perm, k), abs=1e-5), (k, perm)


def test_prefix_of_all_items_or_more_equals_no_prefix():
  rng = np.random.default_rng(3)
  scores = rng.normal(size=(4, 6)).astype(np.float32)
  ranking = np.stack([rng.permutation(6) for _ in range(4)]).astype(np.int32)
  mask = np.ones((4, 6), bool)
  full = _listmle(scores, ranking, mask)
  for k in (5, 6, 9):  # position n-1 is a certain placement, so k = n-1 already matches
    np.testing.assert_allclose(_listmle(scores, ranking, mask, np.full(4, k, np.int32)), full,
                               rtol=1e-6)
  np.testing.assert_array_equal(_listmle(scores, ranking, mask, np.zeros(4, np.int32)), 0.0)


def _pad_list(scores, ranking, total, rng, pad_score, ranking_pad):
  """Scatters len(scores) valid items among `total` slots; the rest are masked padding."""
  n = len(scores)
  slots = np.sort(rng.choice(total, size=n, replace=False))
  padded_scores = np.full(total, pad_score, np.float32)
  padded_scores[slots] = scores
  mask = np.zeros(total, bool)
  mask[slots] = True
  padded_ranking = np.full(total, -1, np.int32)
  padded_ranking[:n] = slots[ranking]
  if ranking_pad == "masked_indices":
    padded_ranking[n:] = np.setdiff1d(np.arange(total), slots)
  return padded_scores, padded_ranking, mask, slots


@pytest.mark.parametrize("use_prefix", [False, True])
def test_listmle_padding_changes_neither_loss_nor_gradients(use_prefix):
  rng = np.random.default_rng(7)
  n, total = 4, 7
  scores = rng.normal(size=n).astype(np.float32)
  ranking = rng.permutation(n).astype(np.int32)
  # One row per kind of padding, each scattering the same list differently.
  rows = [_pad_list(scores, ranking, total, rng, pad_score, ranking_pad)
          for pad_score in (0.0, 1e30, -1e30, np.inf, -np.inf, np.nan)
          for ranking_pad in ("minus_one", "masked_indices")]
  padded_scores, padded_ranking, mask, slots = (np.stack(x) for x in zip(*rows))
  prefix = np.full(len(rows), 2, np.int32) if use_prefix else None

  def loss(s, r, m, prefix):
    per_row = losses.listmle(s, r, m, prefix)
    return per_row.sum(), per_row

  grad_fn = jax.jit(jax.value_and_grad(loss, has_aux=True))
  (_, ref_loss), ref_grad = grad_fn(scores[None], ranking[None], np.ones((1, n), bool),
                                    None if prefix is None else prefix[:1])
  (_, pad_loss), pad_grad = grad_fn(padded_scores, padded_ranking, mask, prefix)
  np.testing.assert_allclose(pad_loss, np.broadcast_to(ref_loss, pad_loss.shape), atol=1e-6)
  pad_grad = np.asarray(pad_grad)
  assert np.all(np.isfinite(pad_grad))
  np.testing.assert_allclose(np.take_along_axis(pad_grad, slots, axis=1),
                             np.broadcast_to(ref_grad, slots.shape), atol=1e-6)
  np.testing.assert_array_equal(pad_grad[~mask], 0.0)


def test_listmle_is_stable_for_far_apart_scores():
  # A tail far below the head underflows exp(); a log-space scan must not.
  scores = np.array([[1000.0, 0.0, -1000.0]], np.float32)
  ranking = np.array([[2, 1, 0]], np.int32)
  mask = np.ones((1, 3), bool)
  value, grad = jax.value_and_grad(lambda s: losses.listmle(s, ranking, mask)[0])(scores)
  assert float(value) == pytest.approx(3000.0, rel=1e-6)
  assert np.all(np.isfinite(np.asarray(grad)))
  best_first = losses.listmle(scores, np.array([[0, 1, 2]], np.int32), mask)
  assert float(best_first[0]) == pytest.approx(0.0, abs=1e-6)


def test_listmle_of_row_without_valid_items_is_zero_with_zero_gradient():
  scores = np.array([[1.0, 2.0, 3.0]], np.float32)
  ranking = np.full((1, 3), -1, np.int32)
  mask = np.zeros((1, 3), bool)
  value, grad = jax.value_and_grad(lambda s: losses.listmle(s, ranking, mask)[0])(scores)
  assert float(value) == 0.0
  np.testing.assert_array_equal(grad, 0.0)


def _np_kl(student, teacher, mask, ts=1.0, tt=1.0):
  """Reference KL(P_teacher || P_student) in float64 over each row's valid entries."""
  out = []
  for s, t, m in zip(student.astype(np.float64), teacher.astype(np.float64), mask):
    ls = s[m] / ts - np.logaddexp.reduce(s[m] / ts)
    lt = t[m] / tt - np.logaddexp.reduce(t[m] / tt)
    out.append(np.sum(np.exp(lt) * (lt - ls)))
  return np.array(out)


def _random_mask(rng, shape):
  mask = rng.random(shape) < 0.7
  mask[:, 0] = True  # every row keeps at least one valid candidate
  return mask


def test_kl_of_identical_distributions_is_zero_with_zero_finite_gradient():
  rng = np.random.default_rng(11)
  scores = rng.normal(scale=3.0, size=(5, 8)).astype(np.float32)
  mask = _random_mask(rng, scores.shape)
  scores[~mask] = 1e30  # padding with a huge score must not leak in
  value, grad = jax.value_and_grad(lambda s: _kl(s, s, mask).sum())(scores)
  np.testing.assert_allclose(value, 0.0, atol=1e-6)
  grad = np.asarray(grad)
  assert np.all(np.isfinite(grad))
  np.testing.assert_allclose(grad, 0.0, atol=1e-6)


@pytest.mark.parametrize("temps", [(1.0, 1.0), (0.5, 2.0), (3.0, 0.1)])
def test_kl_matches_numpy_reference_with_temperatures_and_is_nonnegative(temps):
  ts, tt = temps
  rng = np.random.default_rng(int(ts * 10 + tt * 100))
  student = rng.normal(scale=2.0, size=(16, 10)).astype(np.float32)
  teacher = rng.normal(scale=2.0, size=(16, 10)).astype(np.float32)
  mask = _random_mask(rng, student.shape)
  got = np.asarray(_kl(student, teacher, mask, ts, tt))
  np.testing.assert_allclose(got, _np_kl(student, teacher, mask, ts, tt), rtol=1e-4, atol=1e-5)
  assert np.all(got >= -1e-6)


def test_kl_temperature_is_a_division_of_the_scores():
  rng = np.random.default_rng(13)
  student = rng.normal(size=(3, 5)).astype(np.float32)
  teacher = rng.normal(size=(3, 5)).astype(np.float32)
  mask = np.ones((3, 5), bool)
  np.testing.assert_allclose(_kl(student, teacher, mask, 2.0, 0.5),
                             _kl(student / 2.0, teacher / 0.5, mask), rtol=1e-5)


def test_kl_masked_entries_change_neither_loss_nor_gradients():
  rng = np.random.default_rng(17)
  student = rng.normal(size=(2, 4)).astype(np.float32)
  teacher = rng.normal(size=(2, 4)).astype(np.float32)
  pad = np.array([[np.inf, -1e30, np.nan], [1e30, 0.0, -np.inf]], np.float32)
  padded_student = np.concatenate([pad, student], axis=1)
  padded_teacher = np.concatenate([pad[::-1], teacher], axis=1)
  mask = np.concatenate([np.zeros((2, 3), bool), np.ones((2, 4), bool)], axis=1)

  def grads(s, t, m):
    return jax.value_and_grad(lambda s: _kl(s, t, m, 0.7, 1.3).sum())(s)

  ref_value, ref_grad = grads(student, teacher, np.ones((2, 4), bool))
  value, grad = grads(padded_student, padded_teacher, mask)
  assert float(value) == pytest.approx(float(ref_value), rel=1e-6)
  grad = np.asarray(grad)
  assert np.all(np.isfinite(grad))
  np.testing.assert_array_equal(grad[:, :3], 0.0)
  np.testing.assert_allclose(grad[:, 3:], ref_grad, atol=1e-6)


def test_kl_sends_no_gradient_to_the_teacher():
  rng = np.random.default_rng(19)
  student = rng.normal(size=(2, 5)).astype(np.float32)
  teacher = rng.normal(size=(2, 5)).astype(np.float32)
  mask = np.ones((2, 5), bool)
  grad = jax.grad(lambda t: _kl(student, t, mask).sum())(teacher)
  np.testing.assert_array_equal(grad, 0.0)


def _np_contrastive(q, d, pos, temperature, doc_mask=None):
  logits = q.astype(np.float64) @ d.astype(np.float64).T / temperature
  if doc_mask is not None:
    logits = np.where(doc_mask[None, :], logits, -np.inf)
  log_probs = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
  return -log_probs[np.arange(len(q)), pos]


@pytest.mark.parametrize("temperature", [1.0, 0.05])
def test_in_batch_contrastive_matches_numpy_softmax_cross_entropy(temperature):
  rng = np.random.default_rng(23)
  b, m, d = 4, 3, 8
  q = rng.normal(size=(b, d)).astype(np.float32)
  docs = rng.normal(size=(b * m, d)).astype(np.float32)
  pos = (np.arange(b) * m).astype(np.int32)  # each query's first candidate is its positive
  got = np.asarray(jax.jit(losses.in_batch_contrastive)(q, docs, pos, temperature))
  np.testing.assert_allclose(got, _np_contrastive(q, docs, pos, temperature), rtol=1e-4)


def test_in_batch_contrastive_ignores_masked_documents():
  rng = np.random.default_rng(29)
  q = rng.normal(size=(3, 4)).astype(np.float32)
  docs = rng.normal(size=(6, 4)).astype(np.float32)
  doc_mask = np.array([1, 1, 0, 1, 1, 0], bool)
  docs_padded = docs.copy()
  docs_padded[~doc_mask] = 1e6  # would dominate the softmax if it leaked in
  pos = np.array([0, 3, 4], np.int32)
  got = losses.in_batch_contrastive(q, docs_padded, pos, 0.5, doc_mask)
  np.testing.assert_allclose(got, _np_contrastive(q, docs, pos, 0.5, doc_mask), rtol=1e-4)


def test_scores_from_embeddings_are_per_query_dot_products():
  rng = np.random.default_rng(31)
  q = rng.normal(size=(2, 5)).astype(np.float32)
  cands = rng.normal(size=(2, 3, 5)).astype(np.float32)
  got = losses.scores_from_embeddings(q, cands)
  assert got.shape == (2, 3) and got.dtype == jnp.float32
  want = np.array([[cands[b, i] @ q[b] for i in range(3)] for b in range(2)])
  np.testing.assert_allclose(got, want, rtol=1e-5)
  bf16 = losses.scores_from_embeddings(jnp.asarray(q, jnp.bfloat16),
                                       jnp.asarray(cands, jnp.bfloat16))
  assert bf16.dtype == jnp.float32


def test_losses_trace_once_per_shape():
  traces = []

  def counted(student, teacher, ranking, mask, prefix, temperature):
    traces.append(student.shape)
    return (losses.listmle(student, ranking, mask, prefix)
            + losses.kl_distillation(student, teacher, mask, temperature, temperature))

  step = jax.jit(counted)
  rng = np.random.default_rng(37)
  for size in (4, 4, 4, 6, 6):
    scores = rng.normal(size=(2, size)).astype(np.float32)
    ranking = np.stack([rng.permutation(size) for _ in range(2)]).astype(np.int32)
    mask = rng.random((2, size)) < 0.8
    prefix = rng.integers(0, size + 1, size=2).astype(np.int32)
    # Only the shapes matter here; new values of prefix, mask and temperature must not retrace.
    step(scores, scores[:, ::-1], ranking, mask, prefix, float(rng.uniform(0.5, 2.0)))
  assert traces == [(2, 4), (2, 6)]


def test_matched_temperature_recovers_the_scale_between_teacher_and_student():
  from interdistill_jax import distill
  rng = np.random.default_rng(0)
  student = rng.standard_normal((50, 20)) * 4
  mask = np.ones((50, 20), bool)
  mask[:10, 15:] = False  # shorter lists count only their valid candidates
  teacher = np.where(mask, 3.0 * student, 1e6)  # padding values must not matter
  assert distill.matched_temperature(teacher, student, mask) == pytest.approx(3.0, rel=1e-6)
  # A flatter teacher needs a lower temperature to be as sharp as the student.
  assert distill.matched_temperature(0.5 * teacher, student, mask) == pytest.approx(1.5, rel=1e-6)
