"""User errors: one clear line naming the file, the line and the problem; nothing written lost."""

import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest

from interdistill_jax import data, layout, main, provenance, retrieval, shards, teachers
from interdistill_jax.teachers.cache import Cache, CacheError
from tests.conftest import REPO


def _beir(root, corpus: bytes):
  os.makedirs(root / "qrels")
  (root / "corpus.jsonl").write_bytes(corpus)
  (root / "queries.jsonl").write_text('{"_id": "q1", "text": "x"}\n')
  (root / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")


@pytest.mark.parametrize("name,content,line,problem", [
    ("corpus.jsonl", b'{"_id": "d1", "text": "x"}\n{"_id": "d2", "text": "b\xffd"}\n', 2,
     "not UTF-8 text (byte 0xff at column 25)"),
    ("corpus.jsonl", b'{"_id": "d1", "text": "x"}\n\n{"_id": "d2", "text": \n', 3, "invalid JSON"),
    ("psgs.tsv", b'id\ttext\ttitle\n1\t"two\nlines"\tt\n2\tb\xfed\tt\n', 4,
     "not UTF-8 text (byte 0xfe at column 4)"),
    ("psgs.tsv", b"id\ttext\ttitle\n1\tonly two\n", 2, "expected 3 tab-separated fields, got 2"),
])
def test_corpus_errors_name_file_and_line(tmp_path, name, content, line, problem):
  path = tmp_path / name
  path.write_bytes(content)
  with pytest.raises(data.DataError) as err:
    list(data.iter_corpus(path))
  assert err.value.path == str(path) and err.value.line == line and problem in err.value.problem


def test_qrels_and_runs_with_a_bad_byte_name_their_line(tmp_path):
  qrels = tmp_path / "test.tsv"
  qrels.write_bytes(b"query-id\tcorpus-id\tscore\nq1\td1\t1\nq\x802\td2\t1\n")
  with pytest.raises(data.DataError, match=r"test.tsv:3: not UTF-8"):
    data.load_qrels(qrels)
  run = tmp_path / "run.trec"
  run.write_bytes(b"q1 Q0 d1 1 2.0 x\nq1 Q0 d\xc3 2 1.0 x\n")
  with pytest.raises(data.DataError, match=r"run.trec:2: not UTF-8"):
    data.read_trec_run(run)


def test_a_damaged_call_cache_names_the_file_and_is_kept(tmp_path):
  path = tmp_path / "llm_cache.sqlite"
  path.write_bytes(b"not a database" * 100)
  with pytest.raises(CacheError, match=f"{path}: not a readable call cache"):
    Cache(path)
  assert path.read_bytes() == b"not a database" * 100  # nothing is overwritten


def test_a_second_run_on_a_workdir_is_refused_with_the_first_ones_pid(tmp_path):
  held = main.lock_workdir(str(tmp_path))
  with pytest.raises(main.WorkdirBusy, match=f"in use by host .* pid {os.getpid()}"):
    main.lock_workdir(str(tmp_path))
  held.close()  # the first run ends (or dies): the workdir is free again
  main.lock_workdir(str(tmp_path)).close()


@pytest.mark.slow
def test_main_prints_one_line_and_exits_1(tmp_path):
  _beir(tmp_path / "data", b'{"_id": "d1", "text": "x"}\n{"_id": "d2", "text": "b\xffd"}\n')
  cmd = [sys.executable, "-m", "interdistill_jax.main", f"--config={REPO}/configs/scifact.py",
         "--config.task=retrieve", f"--config.data.dir={tmp_path / 'data'}",
         f"--workdir={tmp_path / 'work'}"]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
  assert out.returncode == 1
  assert f"error: {tmp_path / 'data' / 'corpus.jsonl'}:2: not UTF-8 text" in out.stderr
  assert "Traceback" not in out.stderr
  verbose = subprocess.run(cmd + ["--verbose_errors"], capture_output=True, text=True, env=env,
                           cwd=REPO, timeout=300)
  assert verbose.returncode != 0 and "Traceback" in verbose.stderr


# --- bad inputs and corrupt states found by benchmarks/bad_inputs.py ---------------------------

def test_a_grade_that_is_not_an_integer_names_its_line(tmp_path):
  qrels = tmp_path / "train.tsv"
  qrels.write_text("query-id\tcorpus-id\tscore\nq1\td1\t2.0\nq1\td2\t0.5\n")
  with pytest.raises(data.DataError, match=r"train.tsv:3: relevance '0.5' is not an integer grade"):
    data.load_qrels(qrels)
  qrels.write_text("query-id\tcorpus-id\tscore\nq1\td1\t2.0\n")
  assert data.load_qrels(qrels) == {"q1": {"d1": 2}}  # "2.0" is the grade 2, as some tools write it


def test_a_judged_query_missing_from_queries_names_the_qrels_line(tmp_path):
  _beir(tmp_path, b'{"_id": "d1", "text": "x"}\n')
  (tmp_path / "qrels" / "train.tsv").write_text(
      "query-id\tcorpus-id\tscore\nq1\td1\t1\nq9\td1\t1\nq8\td1\t1\n")
  dataset = data.load_beir(tmp_path)
  with pytest.raises(data.DataError, match=r"train.tsv:3: query 'q9' is not in .*queries.jsonl "
                                           r"\(1 more query ids are missing too\)"):
    dataset.split_queries("train")


def test_labels_of_another_data_set_stop_at_their_first_foreign_line(tmp_path):
  _beir(tmp_path, b'{"_id": "d1", "text": "x"}\n{"_id": "d2", "text": "y"}\n')
  dataset = data.load_beir(tmp_path)
  path = tmp_path / "labels.jsonl"
  good = {"qid": "q1", "docids": ["d1", "d2"], "ranking": ["d2", "d1"], "ranked_prefix": 2}
  path.write_text(json.dumps(good) + "\n" + json.dumps(good | {"qid": "q2"}) + "\n")
  with pytest.raises(data.DataError, match=r"labels.jsonl:2: query 'q2' is not in the data set"):
    data.load_labels(path, dataset)
  path.write_text(json.dumps(good | {"docids": ["d1", "d9"], "ranking": ["d9", "d1"]}) + "\n")
  with pytest.raises(data.DataError, match=r"labels.jsonl:1: document 'd9' is not in the data set"):
    data.load_labels(path, dataset)
  assert len(data.load_labels(path)) == 1  # without a data set: the artifact contract only


def test_a_damaged_done_marker_is_named_and_its_stage_runs_again(tmp_path, caplog):
  marker = tmp_path / "candidates" / "done.json"
  marker.parent.mkdir()
  marker.write_text('{"splits": ["train"], "fingerprint": "ab')
  with pytest.raises(data.DataError, match=r"done.json:1: invalid JSON"):
    data.read_json(marker)
  with pytest.raises(data.DataError, match=r"done.json:1: invalid JSON .*damaged done marker; run "
                                           r"its stage again"):
    layout.read_done(str(marker.parent))
  with caplog.at_level(logging.WARNING):
    assert provenance.read_marker("retrieve", str(tmp_path)) is None  # not done: it reruns
  assert f"{marker}:1: invalid JSON" in caplog.text and "runs again" in caplog.text


def test_an_unfinished_metrics_line_is_dropped_on_resume(tmp_path):
  from interdistill_jax import train
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n{"ste')
  train._truncate_metrics(str(path), 2)
  assert path.read_text() == '{"step": 1}\n{"step": 2}\n'


class _FakeEncoder:
  """Embeds a text as 4 numbers from its hash; counts what it encodes."""
  model_id, max_doc_length = "fake-model", 32
  cache_key = retrieval.Encoder.cache_key
  encode_corpus = retrieval.Encoder.encode_corpus
  encode_documents = retrieval.Encoder.encode_documents
  encode_passages = retrieval.Encoder.encode_passages

  def __init__(self):
    self.encoded = 0

  def encode(self, texts, *, tower, desc=None):
    self.encoded += len(texts)
    return np.array([[hash((t, i)) % 997 / 997 for i in range(4)] for t in texts], np.float32)


@pytest.mark.parametrize("damage", ["other_model", "truncated", "no_record"])
def test_a_damaged_embeddings_cache_is_encoded_again(tmp_path, caplog, damage):
  corpus = {f"d{i}": data.Document(f"d{i}", "", f"text {i}") for i in range(5)}
  encoder = _FakeEncoder()
  _, first = encoder.encode_corpus(corpus, str(tmp_path), "corpus-1")
  (npy,) = tmp_path.glob("corpus-*.npy")
  record = npy.with_suffix(".json")
  if damage == "other_model":
    np.save(npy, np.ones((5, 16), np.float32))
    record.write_text(json.dumps(json.loads(record.read_text()) | {"model": "other", "dim": 16}))
  elif damage == "truncated":
    npy.write_bytes(npy.read_bytes()[:100])
  else:
    record.unlink()
  with caplog.at_level(logging.WARNING):
    _, again = encoder.encode_corpus(corpus, str(tmp_path), "corpus-1")
  assert encoder.encoded == 10 and str(npy) in caplog.text and "encoding the corpus again" in caplog.text
  np.testing.assert_array_equal(again, first)
  _, cached = encoder.encode_corpus(corpus, str(tmp_path), "corpus-1")  # repaired: read back
  assert encoder.encoded == 10 and np.array_equal(cached, first)


def test_a_damaged_shard_of_a_finished_store_is_encoded_again(tmp_path, caplog):
  corpus = tmp_path / "corpus.jsonl"
  corpus.write_text("".join(json.dumps({"_id": f"d{i}", "text": f"t {i}"}) + "\n" for i in range(7)))
  encoder = _FakeEncoder()
  store = shards.encode_to_shards(encoder, str(corpus), str(tmp_path / "s"), shard_size=3,
                                  dtype="float32", meta={"model": "fake"})
  before = store.rows(np.arange(7))
  shard = tmp_path / "s" / "shard-00001.npy"
  shard.write_bytes(shard.read_bytes()[:150])
  with caplog.at_level(logging.WARNING):
    store = shards.encode_to_shards(encoder, str(corpus), str(tmp_path / "s"), shard_size=3,
                                    dtype="float32", meta={"model": "fake"})
  assert f"{shard}: not a readable array" in caplog.text and encoder.encoded == 7 + 3
  np.testing.assert_array_equal(store.rows(np.arange(7)), before)


def test_a_damaged_or_half_written_checkpoint_resumes_from_the_one_before(tmp_path, caplog):
  import jax
  from interdistill_jax import checkpoints, sharding, train
  mesh = sharding.make_mesh()
  params = {"w": jax.device_put(np.zeros(8, np.float32), sharding.replicated(mesh))}
  state = train.TrainState(params, {"m": params["w"]}, jax.device_put(np.int32(0),
                                                                       sharding.replicated(mesh)))
  shardings = jax.tree.map(lambda x: x.sharding, state)
  abstract = checkpoints.restore_target(state, shardings)
  directory = tmp_path / "checkpoints"
  ckpts = checkpoints.Checkpoints(str(directory), keep=5, interval=1)
  for step in (1, 2, 3):
    value = {"w": params["w"] + step}
    ckpts.save(step, train.TrainState(value, {"m": value["w"]}, state.step), dev_loss=-step)
  ckpts.close()
  # Step 3 killed mid-save (left under Orbax's temporary name), step 2 damaged on disk.
  latest = directory / "latest"
  (latest / "3").rename(latest / "3.orbax-checkpoint-tmp-1700000000")
  for path in (latest / "2").rglob("*"):
    if path.is_file() and path.parent.name == "d":
      path.unlink()
  ckpts = checkpoints.Checkpoints(str(directory), keep=5, interval=1)
  with caplog.at_level(logging.WARNING):
    step, restored = ckpts.restore_latest(abstract)
  assert step == 1 and float(restored.params["w"][0]) == 1.0
  assert f"{latest / '2'}: a damaged checkpoint" in caplog.text
  # Moved aside, not deleted: the damaged step, and the best-of-dev step past step 1 (retraced).
  assert sorted(p.name.split("-")[:2] for p in (directory / "aside").iterdir()) == [
      ["best", "3"], ["latest", "2"]]
  assert list(ckpts.best.all_steps()) == []
  value = {"w": params["w"] + 2}
  ckpts.save(2, train.TrainState(value, {"m": value["w"]}, state.step), dev_loss=-2.0)
  ckpts.close()


def test_a_config_override_of_an_undeclared_field_is_one_line():
  assert main._unknown_override(["main", "--config=c.py", "--config.retrieve.k=5",
                                 "--config.retrieve.kk=3"]) == (
      "--config.retrieve.kk: unknown field retrieve.kk (not declared in "
      "interdistill_jax/defaults.py); did you mean retrieve.k?")
  assert main._unknown_override(["main", "--config.rankr.epochs=3"]).startswith(
      "--config.rankr.epochs: unknown field rankr")
  assert main._unknown_override(["main", "--config.ranker.epochs=3"]) is None


def test_an_llm_api_that_stops_the_run_is_a_user_error_without_the_key():
  assert issubclass(teachers.CallFailed, main.USER_ERRORS)
  from interdistill_jax.teachers import openai_backend
  error = openai_backend._classify(429, "Error code: 429 - quota", {}, {"code": "insufficient_quota"})
  assert error.fatal and "quota is exhausted" in str(error)
  error = openai_backend._classify(401, "Error code: 401 - bad key", {}, {})
  assert error.fatal and str(error).startswith("the server refused the API key")
