"""What the train-step benchmarks share: the ranker step on synthetic lists, its FLOPs, a matmul rate.

Imported by benchmarks/train_step.py (CPU, vs PyTorch) and benchmarks/accelerator.py (GPU/TPU).
"""

import time


def flops_per_pair(cfg, t: int) -> int:
  """Forward FLOPs of one pair (matmuls and attention), times 3 for forward + backward."""
  h, i, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
  return 3 * layers * (2 * t * (4 * h * h + 2 * h * i) + 2 * 2 * t * t * h)


def matmul_rate(dtype, n: int, reps: int = 10) -> float:
  """FLOP/s of an n x n x n jitted matmul in `dtype` on the default device."""
  import jax
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  t = time.perf_counter()
  for _ in range(reps):
    out = f(a)
  out.block_until_ready()
  return reps * 2 * n ** 3 / (time.perf_counter() - t)


def build(section, lists: int, list_size: int, length: int):
  """The jitted ListMLE step of `train_ranker` (CrossEncoder, AdamW, clipping) and its inputs, for
  the `ranker` config section (its model and optimizer).

  Returns (step, state, batch, model, checkpoint): `step(state, batch) -> (state, metrics)`
  on the default mesh, parameters replicated; the batch, on the mesh, is `lists` lists of
  `list_size` pairs of `length` tokens, ranked in candidate order.
  """
  import jax
  import numpy as np
  from flax import nnx

  from interdistill_jax import hf_weights, ranker, sharding, train

  model, ckpt = hf_weights.load_cross_encoder(section.model)
  mesh = sharding.make_mesh()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tx, _ = train.make_optimizer(section.optim, total_steps=1000)
  shardings = train.state_shardings(params, tx, mesh)
  rest_sharding = sharding.param_shardings(rest, mesh)
  params = jax.device_put(params, shardings.params)
  rest = jax.device_put(rest, rest_sharding)
  state = train.TrainState(params, jax.jit(tx.init, out_shardings=shardings.opt_state)(params),
                           jax.device_put(np.int32(0), shardings.step))
  step_fn = train.make_train_step(graphdef, tx, ranker.listmle_loss, mesh=mesh, shardings=shardings,
                                  rest_sharding=rest_sharding, seed=0)
  step = lambda state, batch: step_fn(state, rest, batch)  # noqa: E731
  rng = np.random.default_rng(0)
  n, t = list_size, length
  types = np.zeros((lists, n, t), np.int32)
  types[..., t // 4:] = 1
  batch = {"input_ids": rng.integers(1000, 2000, (lists, n, t)).astype(np.int32),
           "token_type_ids": types, "attention_mask": np.ones((lists, n, t), np.int32),
           "ranking": np.tile(np.arange(n, dtype=np.int32), (lists, 1)),
           "mask": np.ones((lists, n), bool), "prefix": np.full((lists,), n, np.int32),
           "weight": np.ones((lists,), np.float32)}
  return step, state, sharding.put_batch(batch, mesh), model, ckpt


def time_steps(step, state, batch, *, warmup: int, steps: int):
  """(compile_s, [step_s of each timed step], last metrics, last state): step 0 compiles,
  `warmup - 1` more run untimed, then `steps` are timed (the state given is donated)."""
  import jax
  t0 = time.perf_counter()
  state, m = step(state, batch)
  jax.block_until_ready(m)
  compile_s = time.perf_counter() - t0
  for _ in range(1, warmup):
    state, m = step(state, batch)
  jax.block_until_ready(m)
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    state, m = step(state, batch)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t0)
  return compile_s, times, m, state


def median(xs):
  return sorted(xs)[len(xs) // 2]
