"""The trainer: data parallel equals one device, exact resume after SIGKILL, one compile per shape."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from interdistill_jax import (checkpoints, defaults, fusion, hf_weights, layout, ranker, sharding,
                              shards, tokenization)
from interdistill_jax import train
from interdistill_jax import data as data_lib
from tests import events_test, fixtures


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  root = tmp_path_factory.mktemp("tiny")
  bert = fixtures.tiny_bert(root / "bert", layers=1, hidden=16, heads=2)
  data_dir = fixtures.tiny_beir(root / "data", num_train=12)
  return bert, data_dir


def _examples(config, data_dir, tmp_path):
  labels = fixtures.write_labels(tmp_path / "labels.jsonl", data_dir, list_size=6)
  dataset = data_lib.load_beir(data_dir)
  tok = tokenization.Tokenizer(config.model.init)
  return ranker.ListwiseExamples(labels, dataset, tok, list_size=6, max_length=32, buckets=(32,),
                                 use_prefix=True)


def _params(model):
  return jax.tree.map(np.asarray, nnx.state(model, nnx.Param))


@pytest.mark.slow  # ~30 s: two compilations of the train step
def test_train_step_on_four_devices_matches_one(tiny, tmp_path):
  _, data_dir = tiny
  # Without dropout, so both runs compute the same function: the hidden dropout is the
  # checkpoint's (config.json), the attention dropout is overridden by `model.attention_dropout`.
  bert = fixtures.tiny_bert(tmp_path / "bert", layers=1, hidden=16, heads=2, hidden_dropout=0.0)
  config = fixtures.small_config(bert, data_dir)
  config.ranker.model.attention_dropout = 0.0
  model, _ = hf_weights.load_cross_encoder(config.ranker.model)
  assert model.dropout == 0.0 and model.bert.cfg.hidden_dropout_prob == 0.0
  assert {(layer.hidden_dropout, layer.attn_dropout) for layer in model.bert.layers} == {(0.0, 0.0)}
  examples = _examples(config, data_dir, tmp_path)
  assert len(jax.devices()) == 4, jax.devices()  # conftest.py: 4 simulated CPU devices
  results = []
  for devices in (jax.devices()[:1], jax.devices()):
    mesh = sharding.make_mesh(devices)
    model, _ = hf_weights.load_cross_encoder(config.ranker.model)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx, _ = train.make_optimizer(config.ranker.optim, total_steps=10)
    shardings = train.state_shardings(params, tx, mesh)
    params = jax.device_put(params, shardings.params)
    state = train.TrainState(params, jax.jit(tx.init, out_shardings=shardings.opt_state)(params),
                             jax.device_put(np.int32(0), shardings.step))
    rest_sharding = sharding.param_shardings(rest, mesh)
    step = train.make_train_step(graphdef, tx, ranker.listmle_loss, mesh=mesh, shardings=shardings,
                                 rest_sharding=rest_sharding, seed=0)
    rest = jax.device_put(rest, rest_sharding)
    for s in range(3):
      batch = sharding.put_batch(examples.batch(np.arange(4 * s, 4 * s + 4) % len(examples)), mesh)
      state, m = step(state, rest, batch)
    assert int(state.step) == 3
    results.append((jax.tree.map(np.asarray, state.params), float(m["loss"]), float(m["grad_norm"])))
  (p1, l1, g1), (p4, l4, g4) = results
  # Same math, different reduction order across devices: the loss and the gradient norm agree to
  # float32 round-off. Parameters agree to within one learning-rate step (3e-5) after 3 steps:
  # Adam divides by the root of the squared gradient, so round-off in a gradient that is itself
  # ~0 (the scalar classifier bias, say) can move that parameter by a sizeable part of a step.
  assert abs(l1 - l4) < 1e-5 and abs(g1 - g4) < 1e-5 * g1
  lr_step = config.ranker.optim.learning_rate
  leaves = list(zip(jax.tree.leaves(p1), jax.tree.leaves(p4), strict=True))
  assert leaves
  for a, b in leaves:
    np.testing.assert_allclose(a, b, atol=lr_step, rtol=0)
  diffs = [np.abs(a - b).max() for a, b in leaves]
  assert np.median(diffs) < 1e-6  # the typical parameter agrees far more closely


def _train_on(devices, config, examples, out_dir, *, batch_size, param_rules=()):
  """train_loop on a mesh of `devices`: (metrics.jsonl records, summary)."""
  mesh = sharding.make_mesh(devices)
  model, _ = hf_weights.load_cross_encoder(config.ranker.model)
  loop = train.loop_config(config.ranker, 0)
  loop.batch_size, loop.eval_every, loop.checkpoint_every = batch_size, 4, 4
  _, summary = train.train_loop(
      model=model, loss_fn=ranker.listmle_loss, make_batch=examples.batch, num_examples=len(examples),
      dev_batches=train.dev_batches_fn(examples, batch_size, mesh), loop=loop,
      optim_config=config.ranker.optim, out_dir=str(out_dir), mesh=mesh, param_rules=param_rules)
  return [json.loads(line) for line in open(out_dir / "metrics.jsonl")], summary


@pytest.mark.slow  # ~30 s: three training runs
def test_a_batch_that_does_not_split_over_the_devices_is_padded_not_enlarged(tiny, tmp_path):
  """3 examples per step on 4 devices: one zero-weight padding row, so the same number of steps
  and the same losses as on one device (not a batch rounded up to 4); parameters split FSDP-style
  over the 4 devices (`mesh.param_rules`) give the same losses too."""
  _, data_dir = tiny
  bert = fixtures.tiny_bert(tmp_path / "bert", layers=1, hidden=16, heads=2, hidden_dropout=0.0)
  config = fixtures.small_config(bert, data_dir)
  config.ranker.model.attention_dropout = 0.0  # the batch shape must not change the dropout masks
  examples = _examples(config, data_dir, tmp_path)
  assert len(examples) == 12
  one = _train_on(jax.devices()[:1], config, examples, tmp_path / "one", batch_size=3)
  four = _train_on(jax.devices(), config, examples, tmp_path / "four", batch_size=3)
  fsdp = _train_on(jax.devices(), config, examples, tmp_path / "fsdp", batch_size=3,
                   param_rules=((".*", "fsdp"),))
  (records, summary) = one
  assert summary["total_steps"] == 8 and summary["batch_size"] == 3  # 2 epochs of 12 / 3
  assert [r["step"] for r in records] == list(range(1, 9))
  for other_records, other_summary in (four, fsdp):
    assert other_summary == summary
    assert [r["step"] for r in other_records] == [r["step"] for r in records]
    # Equal up to the order of the sums across devices; the gradient norm (~2e-3, a root of a sum
    # of squares over every parameter) carries the most round-off.
    for key, rtol in (("train/loss", 1e-5), ("dev/loss", 1e-5), ("train/grad_norm", 1e-4)):
      np.testing.assert_allclose([r[key] for r in other_records if key in r],
                                 [r[key] for r in records if key in r], rtol=rtol, err_msg=key)


def test_each_step_compiles_once_per_shape(tiny, tmp_path):
  bert, data_dir = tiny
  config = fixtures.small_config(bert, data_dir)
  examples = _examples(config, data_dir, tmp_path)
  traces = []

  def counted_loss(model, batch, rng):
    traces.append(batch["input_ids"].shape)  # runs only while tracing
    return ranker.listmle_loss(model, batch, rng)

  model, _ = hf_weights.load_cross_encoder(config.ranker.model)
  loop = train.loop_config(config.ranker, 0)
  loop.epochs = 3.0
  loop.eval_every = loop.checkpoint_every = 3
  loop.log_every = 4
  mesh = sharding.make_mesh()
  train.train_loop(model=model, loss_fn=counted_loss, make_batch=examples.batch,
                   num_examples=len(examples), dev_batches=train.dev_batches_fn(examples, 4, mesh),
                   loop=loop, optim_config=config.ranker.optim, out_dir=str(tmp_path / "run"), mesh=mesh)
  assert len(traces) == 2, traces  # one train step and one eval step, for the one bucket
  # Metrics are fetched every 4 steps and at each eval / checkpoint step (3, 4, 6, 8, 9), and
  # every step keeps its line; the throughput is measured from one fetch to the next.
  records = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
  assert [r["step"] for r in records] == list(range(1, 10))
  assert all(np.isfinite([r["train/loss"], r["train/grad_norm"], r["train/lr"]]).all() for r in records)
  assert [r["step"] for r in records if "dev/loss" in r] == [3, 6, 9]
  assert [r["step"] for r in records if "train/examples_per_s" in r] == [3, 4, 6, 8, 9]
  assert list(records[2]) == ["step", "train/loss", "train/grad_norm", "train/lr", "epoch", "dev/loss",
                              "train/examples_per_s"]
  # The same numbers as TensorBoard events beside metrics.jsonl, under namespaced tags.
  scalars = events_test.read_scalars(tmp_path / "run")
  assert set(scalars) == {"train/loss", "train/grad_norm", "train/lr", "train/epoch", "dev/loss",
                          "train/examples_per_s"}
  assert scalars["train/loss"] == {r["step"]: pytest.approx(r["train/loss"]) for r in records}
  assert scalars["dev/loss"] == {r["step"]: pytest.approx(r["dev/loss"]) for r in records if "dev/loss" in r}


def test_non_finite_loss_stops_with_a_clear_error(tiny, tmp_path):
  bert, data_dir = tiny
  config = fixtures.small_config(bert, data_dir)
  examples = _examples(config, data_dir, tmp_path)
  model, _ = hf_weights.load_cross_encoder(config.ranker.model)
  nan_loss = lambda m, b, r: ranker.listmle_loss(m, b, r) * jnp.nan  # noqa: E731
  batches = []

  def make_batch(idx):
    batches.append(idx)
    return examples.batch(idx)

  loop = train.loop_config(config.ranker, 0)
  loop.eval_every, loop.checkpoint_every, loop.log_every = 0, 100, 3
  # The loss is fetched every 3 steps: the run stops there and names the first bad step.
  with pytest.raises(train.NonFiniteLossError, match="non-finite loss nan at step 1"):
    train.train_loop(model=model, loss_fn=nan_loss, make_batch=make_batch,
                     num_examples=len(examples), dev_batches=None, loop=loop,
                     optim_config=config.ranker.optim, out_dir=str(tmp_path / "run"),
                     mesh=sharding.make_mesh())
  assert len(batches) == 3
  assert not (tmp_path / "run" / "checkpoints" / "latest").exists() or not os.listdir(
      tmp_path / "run" / "checkpoints" / "latest")


def _latest_params(out_dir):
  mngr = ocp.CheckpointManager(os.path.abspath(os.path.join(out_dir, "checkpoints", "latest")),
                               options=ocp.CheckpointManagerOptions(read_only=True))
  step = mngr.latest_step()
  tree = mngr.restore(step)
  mngr.close()
  return step, jax.tree.map(np.asarray, tree["params"])


def _run_main(config_file, workdir, task):
  workdir.mkdir(parents=True, exist_ok=True)
  log = open(workdir / f"{task}.log", "a")  # a file, not a pipe: a full pipe would block the run
  return subprocess.Popen([sys.executable, "-m", "interdistill_jax.main", f"--config={config_file}",
                           f"--config.task={task}", f"--workdir={workdir}"],
                          stdout=log, stderr=subprocess.STDOUT)


def _tail(workdir, task):
  return (workdir / f"{task}.log").read_text()[-3000:]


@pytest.mark.slow  # three `main` subprocesses
def test_sigkilled_run_resumes_to_the_same_parameters(tiny, tmp_path):
  bert, data_dir = tiny
  config = fixtures.small_config(bert, data_dir)
  config.ranker.epochs = 4.0
  config.ranker.checkpoint_every = 1
  config_file = tmp_path / "cfg.py"
  fixtures.write_config_file(config_file, config)
  full, killed = tmp_path / "full", tmp_path / "killed"
  for wd in (full, killed):
    fixtures.write_labels(wd / "labels" / "labels.jsonl", data_dir, list_size=6)

  proc = _run_main(config_file, full, "train_ranker")
  assert proc.wait(timeout=300) == 0, _tail(full, "train_ranker")

  proc = _run_main(config_file, killed, "train_ranker")
  metrics = killed / "ranker" / "metrics.jsonl"
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    if metrics.exists() and sum(1 for _ in open(metrics)) >= 4:
      break
    time.sleep(0.05)
  assert proc.poll() is None, "the run finished before it could be killed"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (killed / "ranker" / "done.json").exists()
  proc = _run_main(config_file, killed, "train_ranker")
  assert proc.wait(timeout=300) == 0, _tail(killed, "train_ranker")

  step_full, params_full = _latest_params(full / "ranker")
  step_killed, params_killed = _latest_params(killed / "ranker")
  assert step_full == step_killed == 12
  assert jax.tree.leaves(params_full)
  for a, b in zip(jax.tree.leaves(params_full), jax.tree.leaves(params_killed), strict=True):
    np.testing.assert_array_equal(a, b)
  done_full = json.loads((full / "ranker" / "done.json").read_text())
  done_killed = json.loads((killed / "ranker" / "done.json").read_text())
  assert done_full == done_killed
  steps = [json.loads(line)["step"] for line in open(metrics)]
  assert steps == list(range(1, 13))  # the resumed log has each step once
  # So do the TensorBoard curves, with the resumed run's values past its checkpoint.
  losses = {json.loads(line)["step"]: json.loads(line)["train/loss"] for line in open(metrics)}
  assert events_test.read_scalars(killed / "ranker")["train/loss"] == pytest.approx(losses)


@pytest.mark.slow  # end to end: ranker, three distillations, evaluate
def test_ranker_distill_evaluate_end_to_end(tiny, tmp_path, monkeypatch):
  bert, data_dir = tiny
  config = fixtures.small_config(bert, data_dir)
  labels = fixtures.write_labels(tmp_path / "labels" / "labels.jsonl", data_dir, list_size=6)
  _write_candidates(tmp_path, labels)
  from interdistill_jax import distill, evaluate, pipeline
  meshes = []
  make_mesh = sharding.make_mesh
  monkeypatch.setattr(sharding, "make_mesh", lambda *a: meshes.append(make_mesh(*a)) or meshes[-1])
  ranker.run(config, str(tmp_path))
  config.distill.teacher_temperature = 0.0  # auto: matched to the initial retriever's entropy
  config.distill.depth = 10  # deeper than the teacher's lists of 6: the ranker scores them all
  distill.run(config, str(tmp_path))
  done = layout.read_done(str(tmp_path / "retriever"))
  assert done["teacher_temperature"] > 0 and done["list_size"] == 10
  assert np.isfinite([done["dev_llm_listmle"]["initial"], done["dev_llm_listmle"]["trained"]]).all()
  assert len(np.load(tmp_path / "ranker" / "teacher_scores.npz")["scores"]) == 10 * 12
  _check_dev_retrieval(config, data_dir, labels, tmp_path, meshes[-1])
  config.distill.teacher, config.distill.llm_loss = "llm", "kl"
  assert not pipeline.is_complete("distill", config, str(tmp_path))  # the ablation has its own dir
  distill.run(config, str(tmp_path))
  assert pipeline.is_complete("distill", config, str(tmp_path))
  config.distill.teacher = "qrels"  # the gold-label reference, by the same trainer
  distill.run(config, str(tmp_path))
  assert layout.read_done(str(tmp_path / "retriever_supervised"))["teacher"] == "qrels"
  evaluate.run(config, str(tmp_path))
  assert len(meshes) == 5  # one mesh per task run (ranker, 3 distillations, evaluate)
  systems = ("baseline", "ranker", "ranker_fused", "distilled", "direct", "supervised")
  qrels = data_lib.load_beir(data_dir).qrels("test")
  for system in systems:
    result = json.loads((tmp_path / "eval" / f"{system}.json").read_text())
    assert result["num_queries"] == 8
    want = _ndcg_at_10(tmp_path / "eval" / f"{system}.trec", qrels)
    assert result["metrics"]["ndcg@10"] == pytest.approx(want, abs=1e-6), system
  compare = json.loads((tmp_path / "eval" / "compare.json").read_text())
  assert set(compare) == set(systems) - {"baseline"}
  against = json.loads((tmp_path / "eval" / "ablations.json").read_text())
  assert set(against) == {"distilled vs direct", "distilled vs supervised", "ranker_fused vs ranker"}
  assert (tmp_path / "ranker" / "teacher_scores.npz").exists()
  assert (tmp_path / "eval" / "training_curves.png").stat().st_size > 1000
  report = (tmp_path / "eval" / "report.md").read_text()
  assert "| distilled |" in report and "95% CI" in report
  assert "0.5 x trained + 0.5 x initial (`distill.interpolation`)" in report
  _check_ranker_score_caches(config, tmp_path)


def test_dev_interpolation_scores_each_mix_and_leaves_the_model_as_it_came(tiny, monkeypatch):
  bert, data_dir = tiny
  config = fixtures.small_config(bert, data_dir)
  from interdistill_jax import retrievers
  model, _, trainable = retrievers.build_student(config.model, "query", seed=0)
  start = retrievers.host_weights(model, trainable)
  nnx.update(model, jax.tree.map(lambda w: w + 1.0, nnx.split(model, trainable, ...)[1]))
  before = [np.asarray(w).copy() for w in jax.tree.leaves(nnx.split(model, trainable, ...)[1])]
  seen = []

  def first_weight(m, *_):
    seen.append(float(np.asarray(jax.tree.leaves(nnx.split(m, trainable, ...)[1])[0]).ravel()[0]))
    return seen[-1]

  monkeypatch.setattr(retrievers, "dev_llm_listmle", first_weight)
  rows = retrievers.dev_interpolation(config, model, trainable, start, None, lambda m: None)
  w0 = float(jax.tree.leaves(start)[0].ravel()[0])
  assert [r["alpha"] for r in rows] == list(retrievers.DEV_INTERPOLATIONS)
  assert [r["dev_llm_listmle"] for r in rows] == pytest.approx(
      [w0 + a for a in retrievers.DEV_INTERPOLATIONS], abs=1e-5)
  after = jax.tree.leaves(nnx.split(model, trainable, ...)[1])
  for w, b in zip(after, before):
    np.testing.assert_array_equal(np.asarray(w), b)
  # A loop left early (a break, an error in its body) gives the model back its weights too.
  for alpha in retrievers.interpolations(model, start, trainable, (0.0, 0.5)):
    np.testing.assert_array_equal(np.asarray(jax.tree.leaves(nnx.split(model, trainable, ...)[1])[0]),
                                  jax.tree.leaves(start)[0])
    break
  with pytest.raises(RuntimeError):
    for alpha in retrievers.interpolations(model, start, trainable, (0.5,)):
      raise RuntimeError(alpha)
  for w, b in zip(jax.tree.leaves(nnx.split(model, trainable, ...)[1]), before):
    np.testing.assert_array_equal(np.asarray(w), b)


def _check_dev_retrieval(config, data_dir, labels, workdir, mesh):
  """done.json's dev figures over the whole corpus equal a brute-force search by hand, for the
  initial and the trained retriever (one relevant passage per tiny_beir query)."""
  from interdistill_jax import retrieval, retrievers
  out_dir = str(workdir / "retriever")
  done = layout.read_done(out_dir)
  dev = done["dev_retrieval"]
  _, dev_qids = train.dev_split([r["qid"] for r in labels], config.distill.dev_fraction, config.seed)
  assert dev["queries"] == len(dev_qids) == done["dev_queries"]
  dataset = data_lib.load_beir(data_dir)
  qrels = dataset.qrels("train")
  initial = retrieval.Encoder.from_config(config, mesh=mesh)

  def load(alpha):
    model, ckpt, _ = retrievers.load_distilled(config.model, out_dir, mesh=mesh,
                                               param_rules=config.mesh.param_rules, seed=config.seed,
                                               interpolation=alpha)
    return model, retrieval.Encoder(model, tokenization.Tokenizer(ckpt.dir),
                                    encode_config=config.encode, model_config=config.model, mesh=mesh)

  # distill.interpolation: 0 gives back the initial weights exactly, 0.5 the mean of the two.
  start, trainable = retrievers.initial_weights(config.model, "query", seed=config.seed)
  (at0, _), (at1, trained), (half, interpolated) = load(0.0), load(1.0), load(0.5)
  for w0, w1, w5, w in zip(*(jax.tree.leaves(nnx.split(m, trainable, ...)[1]) for m in (at0, at1, half)),
                           jax.tree.leaves(start)):
    np.testing.assert_array_equal(np.asarray(w0), w)
    np.testing.assert_allclose(np.asarray(w5), (w + np.asarray(w1)) / 2, rtol=1e-6, atol=1e-7)
  assert [r["alpha"] for r in done["dev_interpolation"]] == [0.25, 0.5, 0.75]
  docids = list(dataset.corpus)
  d = initial.encode([dataset.corpus[x].full_text() for x in docids], tower="doc")  # query tower only
  for name, encoder, want in (("initial", initial, dev["initial"]), ("trained", trained, dev["trained"]),
                              ("0.5", interpolated, done["dev_interpolation"][1]["dev_retrieval"])):
    q = encoder.encode([dataset.queries[x].text for x in dev_qids], tower="query")
    gains = []
    for qid, row in zip(dev_qids, q @ d.T):
      (rel,) = qrels[qid]
      rank = 1 + int(np.sum(row > row[docids.index(rel)]))
      gains.append(1.0 / np.log2(1 + rank) if rank <= 10 else 0.0)
    assert want["ndcg@10"] == pytest.approx(float(np.mean(gains)), abs=1e-5), name
    if name == "trained":  # the per-query figures the dev resampling analyses read
      dev_retrieval = retrievers.DevRetrieval(config, str(workdir), dataset, initial,
                                              tokenization.Tokenizer(config.model.init), dev_qids,
                                              mesh=mesh)
      per_query = dev_retrieval.per_query(at1)
      assert [per_query["ndcg@10"][q] for q in dev_qids] == pytest.approx(gains, abs=1e-5)


def _ndcg_at_10(trec_path, qrels):
  """nDCG@10 of a written run, by hand: with one relevant document per query (tiny_beir) it is the
  mean of 1 / log2(1 + that document's rank), 0 below rank 10."""
  assert qrels and all(len(docs) == 1 for docs in qrels.values())
  rank = {}
  for line in open(trec_path):
    qid, _, docid, r, _, _ = line.split()
    if docid in qrels.get(qid, {}):
      rank[qid] = int(r)
  return float(np.mean([1.0 / np.log2(1 + rank[q]) if rank.get(q, 11) <= 10 else 0.0 for q in qrels]))


def _check_ranker_score_caches(config, workdir):
  """The frozen ranker's scores are read back, not recomputed; a retrained ranker scores afresh."""
  from interdistill_jax import evaluate
  before = (workdir / "eval" / "ranker.trec").read_text()
  loads = []
  real_load = ranker.load_trained_ranker

  def counting_load(*args, **kwargs):
    loads.append(args)
    return real_load(*args, **kwargs)

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(ranker, "load_trained_ranker", counting_load)
    evaluate.run(config, str(workdir))
    assert not loads and (workdir / "eval" / "ranker.trec").read_text() == before
    done = workdir / "ranker" / "done.json"  # another ranker: its done.json differs
    done.write_text(json.dumps(dict(json.loads(done.read_text()), retrained=True)))
    evaluate.run(config, str(workdir))
    assert len(loads) == 1


def test_top_k_listmle_scores_only_the_first_k_positions(tiny, tmp_path):
  bert, data_dir = tiny
  config = fixtures.small_config(bert, data_dir)
  labels = fixtures.write_labels(tmp_path / "labels.jsonl", data_dir, list_size=6)
  make = lambda k: ranker.ListwiseExamples(  # noqa: E731
      labels, data_lib.load_beir(data_dir), tokenization.Tokenizer(config.model.init), list_size=6,
      max_length=32, buckets=(32,), use_prefix=True, top_k=k)
  full, top2 = make(0), make(2)
  assert full.prefix.tolist() == [2 if r["qid"] == "q1" else 6 for r in labels]
  assert top2.prefix.tolist() == [2] * len(labels)
  np.testing.assert_array_equal(full.ranking, top2.ranking)


def test_distill_batches_come_in_bucketed_lengths(tiny, tmp_path):
  """Query (and passage) lengths are cut to buckets, so the distill step compiles once per bucket."""
  from interdistill_jax import distill
  bert, data_dir = tiny
  labels = fixtures.write_labels(tmp_path / "labels.jsonl", data_dir, list_size=6)
  dataset = data_lib.load_beir(data_dir)
  docids = list(dataset.corpus)
  tok = tokenization.Tokenizer(str(bert))
  seqs = tok.encode([dataset.corpus[d].full_text() for d in docids], 40)
  ids = np.zeros((len(seqs), 40), np.int32)
  for i, s in enumerate(seqs):
    ids[i, :len(s)] = s
  lists = distill.CandidateLists(
      labels, dataset, tok, list_size=6, max_query_length=24, doc_index={d: i for i, d in enumerate(docids)},
      doc_emb=None, teacher_scores=None, doc_tokens=(ids, np.array([len(s) for s in seqs])),
      buckets=(4, 8, 16, 32))
  lengths = {lists.batch(np.array([i, -1]))["query_ids"].shape[1] for i in range(len(lists))}
  doc_lengths = {lists.batch(np.array([i]))["cand_ids"].shape[2] for i in range(len(lists))}
  assert lengths <= {4, 8, 16, 24} and doc_lengths <= {4, 8, 16, 32, 40}
  for i in range(len(lists)):  # nothing is cut off
    b = lists.batch(np.array([i]))
    assert b["query_mask"].sum() == lists.query_len[i]


def test_fusion_fit_recovers_plackett_luce_weights():
  """Rankings sampled from Plackett-Luce with scores 1.0 * ce + 3.0 * initial: the fit finds both."""
  rng = np.random.default_rng(0)
  q, l = 3000, 10
  ce, initial = rng.normal(size=(q, l)), rng.normal(size=(q, l))
  # Sorting score + Gumbel noise samples a Plackett-Luce ranking of softmax(score).
  ranking = np.argsort(-(1.0 * ce + 3.0 * initial + rng.gumbel(size=(q, l))), axis=1).astype(np.int32)
  mask = np.ones((q, l), bool)
  fit, dev = fusion.fit_fusion(ce, initial, ranking, mask, np.full((q,), l, np.int32))
  assert abs(fit.ce_weight - 1.0) < 0.08 and abs(fit.initial_weight - 3.0) < 0.15
  assert dev["fused"] < dev["initial"] < dev["ranker"]
  np.testing.assert_allclose(fit([2.0], [0.5]), [2.0 * fit.ce_weight + 0.5 * fit.initial_weight])


def test_fit_weights_per_query_weights_fit_the_chosen_queries_only():
  """Weight 0 leaves a query out: the weighted fit over every list equals the plain fit over the
  weighted lists alone, and the weighted loss scores those lists alone."""
  rng = np.random.default_rng(1)
  q, l = 400, 8
  ce, initial = rng.normal(size=(q, l)), rng.normal(size=(q, l))
  # The first half follows 2 * ce, the second -2 * ce: fitted together they cancel out.
  sign = np.where(np.arange(q) < q // 2, 1.0, -1.0)[:, None]
  ranking = np.argsort(-(2.0 * sign * ce + initial + rng.gumbel(size=(q, l))), axis=1).astype(np.int32)
  mask, prefix = np.ones((q, l), bool), np.full((q,), l, np.int32)
  first = np.arange(q) < q // 2
  w_sub, loss_sub = fusion.fit_weights([ce[first], initial[first]], [1.0, 1.0], ranking[first],
                                       mask[first], prefix[first])
  w_weighted, loss_weighted = fusion.fit_weights([ce, initial], [1.0, 1.0], ranking, mask, prefix,
                                                 weights=first.astype(np.float32))
  w_all, _ = fusion.fit_weights([ce, initial], [1.0, 1.0], ranking, mask, prefix)
  np.testing.assert_allclose(w_weighted, w_sub, atol=1e-3)
  assert abs(loss_weighted - loss_sub) < 1e-5 and w_sub[0] > 1.5 and abs(w_all[0]) < 0.5
  np.testing.assert_allclose(
      fusion.mixed_listmle(w_sub, [ce, initial], ranking, mask, prefix, first.astype(np.float32)),
      fusion.mixed_listmle(w_sub, [ce[first], initial[first]], ranking[first], mask[first],
                           prefix[first]), rtol=1e-5)


def _write_candidates(workdir, labels, depth=10):
  """candidates/train.trec as `retrieve` would leave it: each labelled list first, then more
  candidates the teacher did not see, down to `depth`."""
  (workdir / "candidates").mkdir(exist_ok=True)
  with open(workdir / "candidates" / "train.trec", "w") as f:
    for r in labels:
      more = [f"d{i}" for i in range(60) if f"d{i}" not in r["docids"]]
      docids = (r["docids"] + more)[:depth]
      f.writelines(f"{r['qid']} Q0 {d} {i + 1} {1.0 - 0.05 * i:.6f} initial\n" for i, d in enumerate(docids))


@pytest.mark.slow  # end to end: ranker, fusion, distill, evaluate, export
@pytest.mark.parametrize("head", ["cls", "residual"])
def test_ranker_fused_with_the_initial_retriever_end_to_end(tiny, tmp_path, head):
  """train_ranker fits fusion.json on dev; with fuse_initial="fit" distill uses the fused score;
  evaluate reports the ranker alone and fused."""
  from interdistill_jax import distill, evaluate
  bert, data_dir = tiny
  config = fixtures.small_config(bert, data_dir)
  config.ranker.head, config.ranker.fuse_initial = head, "fit"
  labels = fixtures.write_labels(tmp_path / "labels" / "labels.jsonl", data_dir, list_size=6)
  _write_candidates(tmp_path, labels)
  with pytest.raises(FileNotFoundError, match="fusion.json not found"):
    fusion.load_fusion(str(tmp_path), config.ranker.fuse_initial)
  ranker.run(config, str(tmp_path))
  done = layout.read_done(str(tmp_path / "ranker"))
  assert done["fuse_initial"] == "fit" and done["head"] == head
  assert done["train_lists_cut"] == 0  # lists of 6, as many as the teacher ranked
  assert (head == "residual") == ("initial_scale" in done)
  info = json.loads((tmp_path / "ranker" / "fusion.json").read_text())
  assert np.isfinite([info["ce_weight"], info["initial_weight"]]).all() and info["dev_queries"] == 3
  assert info["dev_listmle"]["fused"] <= min(info["dev_listmle"]["ranker"], info["dev_listmle"]["initial"]) + 1e-5
  assert done["dev_listmle"] == info["dev_listmle"]
  from benchmarks import rate_rule  # its per-query dev lists must be the ones fitted here
  lists = rate_rule.dev_lists(config, str(tmp_path))
  assert lists["done_fused"] == info["dev_listmle"]["fused"] and len(lists["qids"]) == 3
  again = rate_rule.Lists(lists)
  fitted = np.array([info["ce_weight"], info["initial_weight"]])
  assert again.loss(fitted, again.all) == pytest.approx(info["dev_listmle"]["fused"], rel=1e-6)
  distill.run(config, str(tmp_path))
  assert layout.read_done(str(tmp_path / "retriever"))["ranker_fusion"] == {
      "ce_weight": info["ce_weight"], "initial_weight": info["initial_weight"]}
  evaluate.run(config, str(tmp_path))
  fused = data_lib.read_trec_run(tmp_path / "eval" / "ranker_fused.trec")
  alone = data_lib.read_trec_run(tmp_path / "eval" / "ranker.trec")
  base = data_lib.read_trec_run(tmp_path / "eval" / "baseline.trec")
  assert len(fused) == 8 and fused.keys() == alone.keys() == base.keys()
  for qid in fused:
    head_docs = data_lib.ranked(base[qid])[:config.eval.rerank_depth]
    want = [info["ce_weight"] * alone[qid][d] + info["initial_weight"] * base[qid][d] for d in head_docs]
    np.testing.assert_allclose([fused[qid][d] for d in head_docs], want, rtol=1e-4, atol=1e-4)
  report = (tmp_path / "eval" / "report.md").read_text()
  assert f"ranker ({head} head)" in report and "| ranker_fused |" in report
  config.ranker.fuse_initial = "none"  # the ranker alone ignores the fitted fusion
  assert fusion.load_fusion(str(tmp_path), config.ranker.fuse_initial) is None
  from interdistill_jax import hf_export
  config.ranker.fuse_initial = "fit"
  hf_export.run(config, str(tmp_path))  # the exported ranker carries its fusion, and says so
  out = tmp_path / "export" / "ranker"
  exported = json.loads((out / "fusion.json").read_text())
  source = info["initial_run"]
  assert exported == dict(info, initial_run=os.path.relpath(source, str(tmp_path))
                          if os.path.isabs(source) else source)
  assert str(tmp_path) not in (out / "fusion.json").read_text()  # no path of this machine travels
  assert "## Fusion with the first stage" in (out / "README.md").read_text()
  if head == "residual":  # the export scores as the trained ranker: logit + scale * <q, e>
    _check_residual_export(config, tmp_path, out)


def _check_residual_export(config, workdir, out):
  from interdistill_jax import retrieval
  assert "## The residual head" in (out / "README.md").read_text()
  scale = json.loads((out / "residual.json").read_text())["scale"]
  dataset = data_lib.load_beir(config.data.dir)
  mesh = sharding.make_mesh()
  model, tok = ranker.load_trained_ranker(config.ranker.model, str(workdir), mesh=mesh,
                                          param_rules=config.mesh.param_rules, seed=config.seed)
  pairs = [(q, d) for q in sorted(dataset.qrels("train"))[:3] for d in list(dataset.corpus)[:4]]
  initial = ranker.initial_doc_embeddings(config, str(workdir), dataset, mesh=mesh)
  scoring = dict(ranker_config=config.ranker, encode_config=config.encode, mesh=mesh,
                 param_rules=config.mesh.param_rules)
  want = ranker.score_pairs(dataset, model, tok, pairs, desc="test", doc_embeddings=initial, **scoring)
  exported = defaults.model_config()
  exported.init = str(out)
  joint, _ = hf_weights.load_cross_encoder(exported, head="cls")
  logits = ranker.make_scorer(joint, tok, **scoring).score_pairs(dataset, pairs, desc="test")
  exported.init = str(out / "query_tower")
  tower, _ = hf_weights.load_dual_encoder(exported)
  q = retrieval.Encoder(tower, tok, encode_config=config.encode, model_config=exported, mesh=mesh).encode(
      [dataset.queries[q].text for q, _ in pairs], tower="query")
  e = initial([d for _, d in pairs])
  np.testing.assert_allclose(logits + scale * np.einsum("nh,nh->n", q, e), want, rtol=1e-4, atol=1e-4)


@pytest.mark.slow  # ~20 s
def test_residual_ranker_starts_as_the_scaled_initial_retriever(tiny, tmp_path):
  """Before training the residual head's score is exactly scale * <q, e_p> of the bi-encoder
  checkpoint (the joint head starts at 0), in the loss and when scoring; its first step moves
  the joint head."""
  from interdistill_jax import losses, retrieval
  bert, data_dir = tiny
  config = fixtures.small_config(bert, data_dir)
  labels = fixtures.write_labels(tmp_path / "labels.jsonl", data_dir, list_size=6)
  dataset, tok = data_lib.load_beir(data_dir), tokenization.Tokenizer(config.model.init)
  model, _ = hf_weights.load_cross_encoder(config.ranker.model, head="auto")  # a bi-encoder: residual
  assert model.residual and not np.asarray(model.classifier.kernel[...]).any()
  model.log_scale[...] = jnp.log(jnp.float32(7.0))
  mesh = sharding.make_mesh()
  encoder = retrieval.Encoder.from_config(config, mesh=mesh)
  emb = retrieval.CorpusEmbeddings.of(str(tmp_path), encoder, dataset, encode_config=config.encode,
                                      data_config=config.data)
  examples = ranker.ListwiseExamples(labels, dataset, tok, list_size=6, max_length=32, buckets=(32,),
                                     use_prefix=True, doc_embeddings=emb)
  batch = examples.batch(np.arange(4))
  q = encoder.encode([dataset.queries[r["qid"]].text for r in labels[:4]], tower="query")
  want_scores = 7.0 * np.einsum("bh,blh->bl", q, emb([d for r in labels[:4] for d in r["docids"]]).reshape(4, 6, -1))
  want = losses.listmle(jnp.asarray(want_scores), batch["ranking"], batch["mask"], batch["prefix"])
  np.testing.assert_allclose(ranker.listmle_loss(model, batch, None), want, rtol=1e-4, atol=1e-4)
  pairs = [(r["qid"], d) for r in labels[:4] for d in r["docids"]]
  scores = ranker.score_pairs(dataset, model, tok, pairs, desc="test", ranker_config=config.ranker,
                              encode_config=config.encode, mesh=mesh,
                              param_rules=config.mesh.param_rules, doc_embeddings=emb)
  np.testing.assert_allclose(scores, want_scores.reshape(-1), rtol=1e-4, atol=1e-4)
  grads = nnx.grad(lambda m: ranker.listmle_loss(m, batch, None).mean())(model)
  assert np.abs(np.asarray(grads.classifier.kernel[...])).max() > 0
  assert np.abs(np.asarray(grads.query_tower.layers[0].query.kernel[...])).max() > 0
  assert abs(float(grads.log_scale[...])) > 0


def test_residual_start_when_the_initial_order_does_not_predict_the_teacher(tiny, caplog):
  """A teacher that reverses the initial order: the bi-encoder term starts near zero, said loudly."""
  import logging
  bert, data_dir = tiny
  config = fixtures.small_config(bert, data_dir)
  config.ranker.top_k = 0
  records = [{"qid": f"q{i}", "docids": ["a", "b", "c"], "ranking": ["c", "b", "a"], "ranked_prefix": 3}
             for i in range(4)]
  initial = fusion.InitialScores({f"q{i}": {"a": 0.9, "b": 0.5, "c": 0.1} for i in range(4)}, "test")
  with caplog.at_level(logging.WARNING):
    scale, _ = fusion.initial_scale(config.ranker, records, initial)
  assert 0 < scale < 0.01 and "do not predict the teacher's order" in caplog.text
  records = [dict(r, ranking=["a", "b", "c"]) for r in records]  # the teacher agrees: a real scale
  assert fusion.initial_scale(config.ranker, records, initial)[0] > 1.0


class _Killed(Exception):
  """Stands in for a SIGKILL at a chosen moment of a training run."""


def _train_until(config, examples, out_dir, *, stop_after_save=None):
  """train_loop with a dev set, a checkpoint and an evaluation every 2 steps; with
  `stop_after_save`, the run dies right after its saves of that step have committed."""
  mesh = sharding.make_mesh()
  model, _ = hf_weights.load_cross_encoder(config.ranker.model)
  loop = train.loop_config(config.ranker, 0)
  loop.batch_size, loop.eval_every, loop.checkpoint_every, loop.epochs = 4, 2, 2, 2.0
  real_save = checkpoints.Checkpoints.save

  def save(self, step, state, **kwargs):
    real_save(self, step, state, **kwargs)
    if step == stop_after_save:
      raise _Killed(step)

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(checkpoints.Checkpoints, "save", save)
    model, summary = train.train_loop(
        model=model, loss_fn=ranker.listmle_loss, make_batch=examples.batch,
        num_examples=len(examples), dev_batches=train.dev_batches_fn(examples, 4, mesh), loop=loop,
        optim_config=config.ranker.optim, out_dir=str(out_dir), mesh=mesh)
  return summary, _params(model)


@pytest.mark.slow  # ~40 s: three training runs
def test_a_kill_between_the_best_and_the_latest_checkpoint_resumes_exactly(tiny, tmp_path):
  """Killed after `best/` committed step 4 and before `latest/` did: the resumed run moves `best/4`
  aside, replays steps 3 and 4 from `latest/2` (saving step 4 to `best/` again), and ends with the
  uninterrupted run's selected step and parameters."""
  bert, data_dir = tiny
  config = fixtures.small_config(bert, data_dir)
  config.ranker.optim.learning_rate = 1e-3  # the dev loss falls, so best/ keeps each new step
  examples = _examples(config, data_dir, tmp_path)
  full_summary, full_params = _train_until(config, examples, tmp_path / "full")
  killed = tmp_path / "killed"
  with pytest.raises(_Killed):
    _train_until(config, examples, killed, stop_after_save=4)
  ckpts = killed / "checkpoints"
  assert sorted(os.listdir(ckpts / "best")) == ["4"]  # the state the kill leaves: best/ has
  shutil.rmtree(ckpts / "latest" / "4")              # step 4, latest/ only step 2
  assert sorted(os.listdir(ckpts / "latest")) == ["2"]
  summary, params = _train_until(config, examples, killed)
  assert [p.name.split("-")[:2] for p in (ckpts / "aside").iterdir()] == [["best", "4"]]
  assert summary == full_summary
  for a, b in zip(jax.tree.leaves(full_params), jax.tree.leaves(params), strict=True):
    np.testing.assert_array_equal(a, b)


def test_best_has_committed_a_step_before_latest_records_it(tiny, tmp_path):
  """`latest/` is never ahead of `best/`: the latest save of an evaluated step starts only once
  `best/` has committed that step's candidate, so a kill between the two saves cannot lose a dev
  loss (the resumed run starts after that step and would never evaluate it again)."""
  bert, data_dir = tiny
  config = fixtures.small_config(bert, data_dir)
  examples = _examples(config, data_dir, tmp_path)
  events = []
  real_init = checkpoints.Checkpoints.__init__

  def init(self, *args, **kwargs):
    real_init(self, *args, **kwargs)
    best_save, latest_save = self.best.save, self.latest.save
    self.best.save = lambda step, *a, **kw: events.append(("best", step)) or best_save(step, *a, **kw)
    self.latest.save = lambda step, *a, **kw: events.append(
        ("latest", step, self.best.is_saving_in_progress())) or latest_save(step, *a, **kw)

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(checkpoints.Checkpoints, "__init__", init)
    _train_until(config, examples, tmp_path / "run")
  assert events == [("best", 2), ("latest", 2, False), ("best", 4), ("latest", 4, False),
                    ("best", 6), ("latest", 6, False)]


def test_a_metrics_line_cut_short_by_a_kill_is_dropped_on_resume(tmp_path):
  """A kill can cut metrics.jsonl's last line (it is written before its step is saved): the
  resumed run drops it with the lines past its checkpoint instead of failing to parse it."""
  path = tmp_path / "metrics.jsonl"
  lines = [json.dumps({"step": s, "train/loss": 1.0}) + "\n" for s in (1, 2, 3)]
  path.write_text("".join(lines) + '{"step": 4, "train/lo')
  train._truncate_metrics(str(path), 3)
  assert path.read_text() == "".join(lines)
  train._truncate_metrics(str(path), 2)
  assert path.read_text() == "".join(lines[:2])


@pytest.mark.parametrize("towers", ["query", "both"])
def test_distill_lists_read_only_their_passages_and_batch_as_before(tiny, tmp_path, towers):
  """The candidate lists index a table of their own passages, not the corpus: every batch holds
  the same arrays as with the whole corpus's embeddings (or tokens) and a dict of every docid."""
  from interdistill_jax import distill, retrieval
  bert, data_dir = tiny
  config = fixtures.small_config(bert, data_dir)
  labels = fixtures.write_labels(tmp_path / "labels.jsonl", data_dir, list_size=6)
  dataset = data_lib.load_beir(data_dir, cache_dir=str(tmp_path / "cache"))
  tok = tokenization.Tokenizer(str(bert))
  encoder = retrieval.Encoder.from_config(config, mesh=sharding.make_mesh())
  every = list(dataset.corpus)  # before: the whole corpus, by a dict of every docid
  if towers == "query":
    _, emb = retrieval.corpus_embeddings(str(tmp_path), encoder, dataset,
                                         encode_config=config.encode, data_config=config.data)
    before = dict(doc_emb=emb, doc_tokens=None)
  else:
    seqs = tok.encode([doc.full_text() for doc in dataset.corpus.values()], 32)
    ids = np.zeros((len(seqs), 32), np.int32)
    for i, s in enumerate(seqs):
      ids[i, :len(s)] = s
    before = dict(doc_emb=None, doc_tokens=(ids, np.array([len(s) for s in seqs], np.int32)))
  docids = distill.list_docids([(labels, 6), (labels[:3], 2)])
  assert docids == list(dict.fromkeys(d for r in labels for d in r["docids"][:6]))
  assert len(docids) < len(every)
  if towers == "query":
    after = dict(doc_emb=retrieval.CorpusEmbeddings.of(str(tmp_path), encoder, dataset,
                                                       encode_config=config.encode,
                                                       data_config=config.data)(docids),
                 doc_tokens=None)
  else:
    after = dict(doc_emb=None, doc_tokens=distill.passage_tokens(dataset, tok, docids, 32))
  make = lambda index, arrays: distill.CandidateLists(  # noqa: E731
      labels, dataset, tok, list_size=6, max_query_length=24, doc_index=index,
      teacher_scores=None, buckets=(8, 16, 32), **arrays)
  old = make({d: i for i, d in enumerate(every)}, before)
  new = make({d: i for i, d in enumerate(docids)}, after)
  for idx in [np.array([i, -1]) for i in range(len(old))] + [np.arange(len(old))]:
    a, b = old.batch(idx), new.batch(idx)
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.slow  # ~11 s: the shards are encoded, then a distillation compiles and runs
def test_distill_over_shards_reads_the_shards_not_an_in_memory_copy(tiny, tmp_path, monkeypatch):
  """With `encode.shard_size`, distillation reads its candidates' embeddings from the shards
  retrieval searched (memory-mapped), never the whole corpus encoded in memory."""
  from interdistill_jax import distill, retrieval
  bert, data_dir = tiny
  config = fixtures.small_config(bert, data_dir)
  config.encode.shard_size = 16
  config.distill.teacher = "llm"  # no ranker needed: the LLM's rankings are the teacher
  config.distill.epochs = 1.0
  fixtures.write_labels(tmp_path / "labels" / "labels.jsonl", data_dir, list_size=6)
  read = []
  rows = shards.ShardStore.rows
  monkeypatch.setattr(shards.ShardStore, "rows", lambda self, idx: read.append(len(idx)) or rows(self, idx))

  def whole_corpus(*args, **kwargs):
    raise AssertionError("the whole corpus was encoded in memory")

  monkeypatch.setattr(retrieval, "corpus_embeddings", whole_corpus)
  distill.run(config, str(tmp_path))
  assert layout.is_done(str(tmp_path / "retriever_direct"))
  assert read and sum(read) <= 12 * 6  # the labelled lists' passages, at most
