"""The rehearsal's synthetic QA set: DPR's formats as the readers take them, answers planted where
the plan says, and embedding shards that `retrieve` finds complete (no passage encoded)."""

import dataclasses
import json
import os

import numpy as np
import pytest

from benchmarks import rehearsal_config, synthetic_qa
from interdistill_jax import assets, corpus, data, layout, metrics, qa_data, retrieval, sharding
from tests import fixtures

PLAN = synthetic_qa.Plan(num_passages=2000, num_train=20, num_test=10, distractors=3, seed=1)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
  root = tmp_path_factory.mktemp("rehearsal")
  bert = fixtures.tiny_bert(root / "bert", layers=1, hidden=32, heads=2)
  settings = rehearsal_config.Settings(shard_size=700, label_queries=10, test_queries=10)
  config = rehearsal_config.load_config(rehearsal_config.stage_overrides(str(root), PLAN, settings))
  config.model.init = config.ranker.model.init = str(bert)
  info = synthetic_qa.generate(str(root), PLAN, config, workdir=str(root / "work"),
                               shard_size=settings.shard_size)
  return root, config, info


def test_the_corpus_is_a_dpr_passage_tsv(generated):
  root, config, _ = generated
  path = config.data.corpus_file
  assert path == str(root / "psgs_w100.tsv")
  with open(path, encoding="utf-8") as f:
    assert f.readline() == "id\ttext\ttitle\n"
  passages = corpus.open_corpus(path, cache_dir=config.data.cache_dir)  # checks every record
  assert len(passages) == PLAN.num_passages
  assert list(passages)[:3] == ["1", "2", "3"] and "2000" in passages and "2001" not in passages
  assert data.load_corpus(path) == dict(passages.items())
  for doc in list(passages.values())[::97]:
    assert len(doc.text.split()) == synthetic_qa.PASSAGE_WORDS
    assert len(doc.title.split()) == synthetic_qa.TITLE_WORDS


def test_the_questions_are_dpr_question_files_and_their_answers_are_planted(generated):
  root, config, _ = generated
  train = qa_data.read_dpr_questions(root / "nq-train.qa.csv", "train")
  test = qa_data.read_dpr_questions(root / "nq-test.qa.csv", "test")
  assert (len(train), len(test)) == (PLAN.num_train, PLAN.num_test)
  plan = json.loads((root / "plan.json").read_text())
  assert plan["plan"] == dataclasses.asdict(PLAN)
  assert [q.text for q in train + test] == [q["text"] for q in plan["questions"]]
  passages = corpus.open_corpus(config.data.corpus_file, cache_dir=config.data.cache_dir)
  text = open(config.data.corpus_file, encoding="utf-8").read()
  for q, want in zip(train + test, plan["questions"]):
    assert q.answers == (want["answer"],)
    assert metrics.has_answer(q.answers, passages[want["gold"]].full_text())
    assert text.count(want["answer"]) == 1  # in its gold passage and nowhere else
    for d in want["distractors"]:
      shared = set(q.text.split()) & set(passages[d].text.split())
      assert not metrics.has_answer(q.answers, passages[d].full_text()) and shared
  # The layout configs/nq.py:dpr reads them into: splits without qrels.
  qa_dir = qa_data.materialize(config.data)
  assert len(data.load_split_ids(os.path.join(qa_dir, "splits", "train.txt"))) == PLAN.num_train


def test_the_shards_are_where_retrieve_looks_and_hold_the_planted_cosines(generated, monkeypatch):
  root, config, info = generated
  workdir = str(root / "work")
  assert info["num_shards"] == 3 and info["dim"] == 32  # 700 + 700 + 600
  dataset = assets.load_dataset(config.data)
  encoder = retrieval.Encoder.from_config(config, mesh=sharding.make_mesh())
  plan = json.loads((root / "plan.json").read_text())["questions"]
  q = encoder.encode([x["text"] for x in plan], tower="query")
  real_encode = retrieval.Encoder.encode

  def queries_only(self, texts, *, tower, desc=None):
    assert tower == "query", "a passage was encoded: the store was not found complete"
    return real_encode(self, texts, tower=tower, desc=desc)

  monkeypatch.setattr(retrieval.Encoder, "encode", queries_only)
  store = retrieval.corpus_shards(workdir, encoder, dataset, encode_config=config.encode,
                                  data_config=config.data)
  assert store.directory == info["shard_store"] and store.num_docs == PLAN.num_passages
  store.check_docids(corpus.docid_table(dataset.corpus), config.data.corpus_file)
  embeddings = retrieval.CorpusEmbeddings.of(workdir, encoder, dataset, encode_config=config.encode,
                                             data_config=config.data)
  for i, x in enumerate(plan):
    cos = embeddings([x["gold"], *x["distractors"]]) @ (q[i] / np.linalg.norm(q[i]))
    np.testing.assert_allclose(cos, [x["gold_cos"], *x["distractor_cos"]], atol=2e-3)
  retrieval.run(config, workdir)  # the stage itself: queries encoded, the store searched
  for split, n in (("train", PLAN.num_train), ("test", PLAN.num_test)):
    run = data.read_trec_run(layout.candidates(workdir, split))
    assert len(run) == n and all(len(docs) == config.retrieve.k for docs in run.values())


def test_the_plan_is_the_same_for_the_same_seed_and_refuses_too_small_a_corpus():
  words = np.array(["alpha", "beta", "gamma", "delta"])
  assert synthetic_qa.questions(PLAN, words) == synthetic_qa.questions(PLAN, words)
  np.testing.assert_array_equal(synthetic_qa.planted_rows(PLAN), synthetic_qa.planted_rows(PLAN))
  rows = synthetic_qa.planted_rows(PLAN)
  assert rows.shape == (30, 4) and len(np.unique(rows)) == rows.size
  with pytest.raises(ValueError, match="need 120 passages; the corpus has 100"):
    synthetic_qa.planted_rows(synthetic_qa.Plan(num_passages=100, num_train=20, num_test=10,
                                                distractors=3))
  assert len({synthetic_qa.answer(j) for j in range(5000)}) == 5000
