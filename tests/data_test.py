"""Readers: well-formed files round-trip, malformed lines fail naming file, line and problem."""

import json

import pytest

from interdistill_jax import data


def _write(path, text):
  path.write_text(text, encoding="utf-8")
  return path


def test_corpus_queries_and_qrels_are_read(tmp_path):
  _write(tmp_path / "corpus.jsonl", '{"_id": "d1", "title": "T", "text": "body"}\n'
         '{"_id": 2, "text": "no title"}\n')
  _write(tmp_path / "queries.jsonl", '{"_id": "q1", "text": "what", "metadata": {"answers": ["x"]}}\n')
  (tmp_path / "qrels").mkdir()
  _write(tmp_path / "qrels" / "test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t2\n")
  ds = data.load_beir(tmp_path)
  assert ds.corpus["d1"].full_text() == "T body"
  assert ds.corpus["2"].full_text() == "no title"
  assert ds.queries["q1"].answers == ["x"]
  assert ds.qrels("test") == {"q1": {"d1": 2}}
  assert list(ds.split_queries("test")) == ["q1"]


@pytest.mark.parametrize("content,line,problem", [
    ('{"_id": "a", "text": "x"}\n{"_id": "b", "text": "y"\n', 2, "invalid JSON"),
    ('{"_id": "a", "text": "x"}\n\n{"text": "y"}\n', 3, "missing field '_id'"),
    ('{"_id": "a", "text": "x"}\n{"_id": "a", "text": "y"}\n', 2, "duplicate document id 'a'"),
    ('[1, 2]\n', 1, "expected a JSON object"),
    ('{"_id": "a", "text": 5.5}\n', 1, "field 'text' must be a string"),
])
def test_malformed_corpus_line_is_named(tmp_path, content, line, problem):
  path = _write(tmp_path / "corpus.jsonl", content)
  with pytest.raises(data.DataError) as e:
    data.load_corpus(path)
  assert e.value.line == line and problem in str(e.value) and str(path) in str(e.value)
  assert f"{path}:{line}:" in str(e.value)


@pytest.mark.parametrize("content,line,problem", [
    ("query-id\tcorpus-id\tscore\nq1\td1\n", 2, "expected 3 (BEIR) or 4 (TREC) fields"),
    ("q1\td1\thigh\n", 1, "relevance 'high' is not a number"),
])
def test_malformed_qrels_line_is_named(tmp_path, content, line, problem):
  path = _write(tmp_path / "q.tsv", content)
  with pytest.raises(data.DataError) as e:
    data.load_qrels(path)
  assert str(e.value).startswith(f"{path}:{line}: ") and problem in str(e.value)


def test_queries_answers_must_be_strings(tmp_path):
  path = _write(tmp_path / "queries.jsonl", '{"_id": "q", "text": "t", "metadata": {"answers": [1]}}\n')
  with pytest.raises(data.DataError, match=":1: metadata.answers"):
    data.load_queries(path)


def test_trec_run_round_trip_and_errors(tmp_path):
  run = {"q1": {"d1": 0.5, "d2": 0.9, "d3": 0.5}, "q2": {"d9": -1.0}}
  path = tmp_path / "run.trec"
  data.write_trec_run(path, run, tag="t")
  assert data.read_trec_run(path) == run
  first = path.read_text().splitlines()[:3]
  assert [line.split()[2] for line in first] == ["d2", "d3", "d1"]  # ties: docid descending
  _write(path, "q1 Q0 d1 1 0.5 t\nq1 Q0 d1 2 0.4 t\n")
  with pytest.raises(data.DataError, match=r":2: document 'd1' appears twice"):
    data.read_trec_run(path)
  _write(path, "q1 Q0 d1 1 0.5\n")
  with pytest.raises(data.DataError, match=":1: expected 6 fields"):
    data.read_trec_run(path)


def test_dpr_tsv_corpus(tmp_path):
  path = _write(tmp_path / "psgs.tsv", 'id\ttext\ttitle\n1\t"Aaron is a prophet"\tAaron\n2\tbody\tB\n')
  corpus = data.load_corpus(path)
  assert corpus["1"].text == "Aaron is a prophet" and corpus["1"].title == "Aaron"
  _write(path, "id\ttext\ttitle\n1\tonly two\n")
  with pytest.raises(data.DataError, match=":2: expected 3 tab-separated fields"):
    data.load_corpus(path)
  _write(path, "pid\tpassage\n")
  with pytest.raises(data.DataError, match=":1: expected header"):
    data.load_corpus(path)


def test_labels_must_be_permutations(tmp_path):
  good = {"qid": "q", "docids": ["a", "b"], "ranking": ["b", "a"], "ranked_prefix": 2}
  bad = {"qid": "r", "docids": ["a", "b"], "ranking": ["b", "b"]}
  path = _write(tmp_path / "labels.jsonl", json.dumps(good) + "\n" + json.dumps(bad) + "\n")
  with pytest.raises(data.DataError, match=":2: 'ranking' is not a permutation"):
    data.load_labels(path)


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
  path = tmp_path / "x.json"
  data.write_json(path, {"a": 1})
  with pytest.raises(TypeError):
    data.write_json(path, {"a": object()})
  assert json.loads(path.read_text()) == {"a": 1}
  assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_truncated_label_keeps_teacher_order_and_trusted_prefix():
  record = {"qid": "q", "docids": ["a", "b", "c", "d"], "ranking": ["d", "b", "a", "c"],
            "ranked_prefix": 2}
  assert data.truncate_label(record, 4) == (["a", "b", "c", "d"], [3, 1, 0, 2], 2)
  # "d" (trusted) is cut: of the kept, only "b" was ranked by the teacher.
  assert data.truncate_label(record, 3) == (["a", "b", "c"], [1, 0, 2], 1)
  assert data.truncate_label(record, 3, use_prefix=False) == (["a", "b", "c"], [1, 0, 2], 3)


def test_choices_cut_counts_lists_that_lose_a_trusted_choice():
  records = [
      {"qid": "q1", "docids": ["a", "b", "c", "d"], "ranking": ["d", "b", "a", "c"], "ranked_prefix": 2},
      {"qid": "q2", "docids": ["a", "b", "c", "d"], "ranking": ["b", "d", "a", "c"], "ranked_prefix": 1},
      {"qid": "q3", "docids": ["a", "b", "c", "d"], "ranking": ["a", "b", "c", "d"]},
  ]
  # Lists of 3 drop "d": q1's first choice, q2's second (trusted only without the prefix), q3's
  # last (q3 has no ranked prefix: its whole order is trusted).
  assert data.choices_cut(records, 3, top_k=1) == 1
  assert data.choices_cut(records, 3) == 2
  assert data.choices_cut(records, 3, use_prefix=False) == 3
  assert data.choices_cut(records, 3, use_prefix=False, top_k=2) == 2
  assert data.choices_cut(records, 4) == 0
  assert data.choices_cut(records, 0, use_prefix=False) == 0  # 0: the lists are not cut
