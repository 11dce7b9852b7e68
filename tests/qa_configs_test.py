"""configs/nq.py and configs/tqa.py end to end on fixture files: DPR question files and tfds records.

Question sets with answers and no qrels: splits from `splits/{split}.txt`, the simulated teacher
judging by answer strings, evaluation by answer accuracy and the reader's EM / F1.
"""

import importlib.util
import json

import numpy as np
import pytest

from interdistill_jax import data, defaults, metrics, pipeline, qa_data
from interdistill_jax import evaluate as evaluate_lib
from interdistill_jax.teachers.testing import FakeLLMServer
from tests import fixtures
from tests.conftest import REPO

WORDS = fixtures.WORDS
NUM_DOCS, NUM_TRAIN, NUM_TEST = 40, 10, 6


def _load_config(name: str, arg: str | None = None):
  spec = importlib.util.spec_from_file_location(f"config_{name}", REPO / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def _answer_word(i: int) -> str:
  return f"zor{chr(97 + i // 26)}{chr(97 + i % 26)}"  # a made-up word that names one passage


def _questions(seed: int = 0) -> list[tuple[str, list[str]]]:
  """(question, answers): the question shares 6 words with the passage whose answer word it asks."""
  rng = np.random.default_rng(seed)
  out = []
  for j in range(NUM_TRAIN + NUM_TEST):
    target = int(rng.integers(NUM_DOCS))
    out.append((" ".join(_doc_words(target)[:6]) + f" number {j}", [_answer_word(target)]))
  return out


def _doc_words(i: int) -> list[str]:
  return np.random.default_rng(100 + i).choice(WORDS, size=10).tolist()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  """A DPR passage TSV, DPR question files (train and test) and a tiny BERT."""
  root = tmp_path_factory.mktemp("qa")
  with open(root / "psgs.tsv", "w") as f:
    f.write("id\ttext\ttitle\n")
    for i in range(NUM_DOCS):
      f.write(f"{i + 1}\t{' '.join(_doc_words(i))} {_answer_word(i)}.\tPassage {i}\n")
  questions = _questions()
  for name, rows in (("train", questions[:NUM_TRAIN]), ("test", questions[NUM_TRAIN:])):
    with open(root / f"nq-{name}.qa.csv", "w") as f:
      f.writelines(f"{q}\t{json.dumps(a)}\n" for q, a in rows)
  bert = fixtures.tiny_bert(root / "bert", layers=1, hidden=16, heads=2)
  return root, bert


def _reader_answer(query, passages):
  """A reader that answers exactly when one of its passages holds the answer word."""
  gold = {q: a for q, a in _questions()}[query]
  return gold[0] if any(metrics.has_answer(gold, p) for p in passages) else "no idea"


def _small(config, root, bert, server, workdir):
  """The config at test size: the tiny BERT, 5 candidates, the fake server (if any) as the reader."""
  config.data.dir = str(workdir / "data")
  config.data.corpus_file = str(root / "psgs.tsv")
  config.data.cache_dir = str(workdir / "cache")  # the corpus index
  config.data.qa.num_train = 8
  config.model.init = config.ranker.model.init = str(bert)
  config.model.max_query_length, config.model.max_doc_length = 16, 32
  config.ranker.max_length = 32
  config.encode.buckets = (16, 32)
  config.retrieve.k = 10
  config.label.num_candidates = 5
  r, d = config.ranker, config.distill
  r.list_size, r.batch_size, r.epochs, r.dev_fraction = 5, 4, 1.0, 0.25
  d.list_size, d.batch_size, d.epochs, d.dev_fraction = 5, 4, 1.0, 0.25
  r.eval_every = r.checkpoint_every = d.eval_every = d.checkpoint_every = 2
  config.eval.depth, config.eval.rerank_depth, config.eval.answer_ks = 20, 10, (1, 5, 20)
  if server is not None:
    config.reader.update(dict(backend="openai", model="reader", base_url=server.url + "/v1",
                              timeout=5.0))
  return config


def _check_eval(workdir, systems, server):
  """Answer metrics and the reader's, and no IR metric (there are no qrels)."""
  for system in systems:
    result = json.loads((workdir / "eval" / f"{system}.json").read_text())
    m = result["metrics"]
    assert result["num_queries"] == NUM_TEST and "ndcg@10" not in m
    # The scripted reader is right exactly when the answer is in its passages.
    assert m["rag.em@1"] == m["top1_acc"] and m["rag.em@5"] == m["top5_acc"]
    assert system != "baseline" or m["rag.em@1"] > 0  # the fixture is easy enough to be non-trivial
    assert m["rag.questions"] == NUM_TEST
    lines = (workdir / "eval" / "rag" / f"{system}.jsonl").read_text().splitlines()
    assert len(lines) == 2 * NUM_TEST
  report = (workdir / "eval" / "report.md").read_text()
  assert "rag.em@1" in report and "top5_acc" in report


@pytest.mark.slow  # the whole pipeline, ~45 s
def test_nq_config_end_to_end_on_dpr_question_files(files, tmp_path):
  root, bert = files
  workdir = tmp_path / "work"
  with FakeLLMServer(answer_fn=_reader_answer) as server:
    config = _small(_load_config("nq", "dpr"), root, bert, server, tmp_path)
    config.data.qa.train = str(root / "nq-train.qa.csv")
    config.data.qa.test = str(root / "nq-test.qa.csv")
    assert config.teacher.backend == "simulated" and config.reader.enabled
    pipeline.run(config, str(workdir))

    materialised = tmp_path / "data"
    train = data.load_split_ids(materialised / "splits" / "train.txt")
    assert len(train) == 8 and not (materialised / "qrels").exists()
    assert len(data.read_trec_run(workdir / "candidates" / "test.trec")) == NUM_TEST
    labels = data.load_labels(workdir / "labels" / "labels.jsonl")
    assert sorted(r["qid"] for r in labels) == sorted(train)
    assert labels[0]["teacher"]["backend"] == "simulated"
    _check_eval(workdir, ("baseline", "ranker", "distilled"), server)
    calls = server.total_answered
    assert calls > 0

    evaluate_lib.run(config, str(workdir))  # a rerun reads every answer from the cache
    assert server.total_answered == calls


def test_simulated_teacher_ranks_passages_with_the_answer_first(files, tmp_path):
  root, bert = files
  config = _small(_load_config("nq", "dpr"), root, bert, None, tmp_path)
  config.data.qa.train = str(root / "nq-train.qa.csv")
  config.data.qa.test = str(root / "nq-test.qa.csv")
  config.retrieve.splits = ("train",)
  config.retrieve.k = 40  # every passage: the one with the answer is among the candidates
  config.label.num_candidates = 40
  config.pipeline.stages = ("retrieve", "label")
  pipeline.run(config, str(tmp_path / "work"))
  dataset = data.load_beir(tmp_path / "data", config.data.corpus_file)
  labels = data.load_labels(tmp_path / "work" / "labels" / "labels.jsonl")
  assert len(labels) == config.data.qa.num_train == 8
  for record in labels:
    first = dataset.corpus[record["ranking"][0]].full_text()
    assert metrics.has_answer(dataset.queries[record["qid"]].answers, first)


def _nq_records(rows):
  return [{"question": q.encode(), "answer": np.array([a.encode() for a in answers])}
          for q, answers in rows]


def test_nq_config_end_to_end_on_tfds_records(files, tmp_path, monkeypatch):
  root, bert = files
  questions = _questions()
  splits = {"train": _nq_records(questions[:NUM_TRAIN]),
            "validation": _nq_records(questions[NUM_TRAIN:])}
  asked = []

  def fake_tfds(name, split, data_dir=""):
    asked.append((name, split))
    return iter(splits[split])

  monkeypatch.setattr(qa_data, "tfds_records", fake_tfds)
  workdir = tmp_path / "work"
  with FakeLLMServer(answer_fn=_reader_answer) as server:
    config = _small(_load_config("nq"), root, bert, server, tmp_path)
    config.pipeline.stages = ("retrieve", "evaluate")
    pipeline.run(config, str(workdir))
    assert sorted(asked) == [("natural_questions_open", "train"),
                             ("natural_questions_open", "validation")]
    _check_eval(workdir, ("baseline",), server)
  queries = data.load_queries(tmp_path / "data" / "queries.jsonl")
  test_ids = data.load_split_ids(tmp_path / "data" / "splits" / "test.txt")
  assert [queries[q].text for q in test_ids] == [q for q, _ in questions[NUM_TRAIN:]]
  assert queries[test_ids[0]].answers == questions[NUM_TRAIN][1]


def test_trivia_qa_records_take_every_alias():
  nested = {"question": b"Which planet is red?", "question_id": b"tc_1",
            "answer": {"aliases": np.array([b"Mars", b"The Red Planet"]),
                       "normalized_aliases": np.array([b"mars", b"red planet"]), "value": b"Mars"}}
  flat = {"question": "Who wrote Hamlet?", "answer.aliases": ["Shakespeare"],
          "answer.normalized_aliases": ["shakespeare"]}
  got = qa_data.questions_from_records([nested, flat], name="trivia_qa/unfiltered.nocontext",
                                       split="validation")
  assert [q.qid for q in got] == ["validation-0", "validation-1"]
  assert got[0].answers == ("Mars", "The Red Planet", "mars", "red planet")
  assert got[1].text == "Who wrote Hamlet?" and got[1].answers == ("Shakespeare", "shakespeare")
  assert got[0].source == "tfds:trivia_qa/unfiltered.nocontext[validation]#0"


def test_tqa_config_reads_trivia_qa(tmp_path):
  config = _load_config("tqa")
  assert config.data.qa.tfds_name == "trivia_qa/unfiltered.nocontext"
  assert (config.data.qa.train, config.data.qa.test) == ("train", "validation")
  assert config.data.qa.num_train == 1000 and config.reader.enabled and config.data.name == "tqa"
  assert _load_config("tqa", "dpr").data.qa.format == "dpr"


def test_dpr_question_file_errors_name_the_line(tmp_path):
  path = tmp_path / "q.csv"
  path.write_text('who wrote hamlet\t["Shakespeare"]\nwhat is this\tnot a list\n')
  with pytest.raises(data.DataError, match=r"q.csv:2: answers 'not a list'"):
    qa_data.read_dpr_questions(path, "test")
  path.write_text('who wrote hamlet\t[]\n')
  with pytest.raises(data.DataError, match=r"q.csv:1: no answer"):
    qa_data.read_dpr_questions(path, "test")
  path.write_text('who wrote hamlet\t["Shakespeare", "William Shakespeare"]\n')
  (q,) = qa_data.read_dpr_questions(path, "test")
  assert q.qid == "test-0" and q.answers == ("Shakespeare", "William Shakespeare")


def test_materialised_directory_is_rebuilt_only_when_its_source_changes(files, tmp_path):
  root, _ = files
  config = defaults.base_config()
  config.data.dir = str(tmp_path / "d")
  config.data.corpus_file = str(root / "psgs.tsv")
  qa = config.data.qa
  qa.format, qa.train, qa.test, qa.num_train, qa.num_test = (
      "dpr", str(root / "nq-train.qa.csv"), str(root / "nq-test.qa.csv"), 4, 2)
  first = qa_data.materialize(config.data)
  marker = tmp_path / "d" / "qa_source.json"
  stamp = marker.stat().st_mtime_ns
  assert qa_data.materialize(config.data) == first and marker.stat().st_mtime_ns == stamp
  dataset = data.load_beir(first, config.data.corpus_file)
  assert len(dataset.split_queries("train")) == 4 and len(dataset.split_queries("test")) == 2
  assert dataset.has_split("test") and not dataset.has_qrels("test")
  qa.num_train = 6
  qa_data.materialize(config.data)
  assert len(data.load_split_ids(tmp_path / "d" / "splits" / "train.txt")) == 6
  config.data.corpus_file = "psgs.tsv"
  with pytest.raises(FileNotFoundError, match="absolute path"):
    qa_data.materialize(config.data)


def test_split_id_lists_define_splits_without_qrels(tmp_path):
  (tmp_path / "splits").mkdir()
  (tmp_path / "corpus.jsonl").write_text(json.dumps({"_id": "d1", "text": "x"}) + "\n")
  (tmp_path / "queries.jsonl").write_text("".join(
      json.dumps({"_id": q, "text": q, "metadata": {"answers": ["x"]}}) + "\n" for q in ("a", "b", "c")))
  (tmp_path / "splits" / "test.txt").write_text("c\na\n")
  dataset = data.load_beir(tmp_path)
  assert list(dataset.split_queries("test")) == ["c", "a"]  # the list's order
  assert not dataset.has_split("train")
  with pytest.raises(FileNotFoundError, match="neither qrels/train.tsv nor splits/train.txt"):
    dataset.split_queries("train")
  (tmp_path / "splits" / "dev.txt").write_text("a\nzz\n")
  with pytest.raises(data.DataError, match="dev.txt:2: query .zz. is not in .*queries.jsonl$"):
    dataset.split_queries("dev")
