"""Passages read on demand: the lazy corpus equals the in-memory one, its index is built once per
version of the file, and a malformed file fails with the same file:line errors."""

import gzip
import os
import shutil

import pytest

from interdistill_jax import corpus, data, layout
from tests import conftest, fixtures

# A DPR TSV with what a line-based reader gets wrong: a quoted field over two lines, a quoted tab,
# a line separator that is not a newline (U+2028), CRLF, non-ASCII ids and titles.
_TSV = ('id\ttext\ttitle\n'
        '1\t"Aaron is a\nprophet"\tAaron\n'
        '2\t"tab\there"\tB\r\n'
        '3\tline\u2028separator\tC\n'
        'é-4\tplain\tÜber\n')


def _assert_same(lazy, eager):
  assert isinstance(lazy, corpus.LazyCorpus)
  assert len(lazy) == len(eager)
  assert list(lazy) == list(eager)  # file order
  assert dict(lazy.items()) == eager
  assert list(lazy.values()) == list(eager.values())
  for docid, doc in eager.items():
    assert docid in lazy and lazy[docid] == doc
  assert "no-such-id" not in lazy and lazy.get("no-such-id") is None
  with pytest.raises(KeyError):
    lazy["no-such-id"]
  assert lazy == eager


@pytest.mark.parametrize("cached", [False, True])
def test_lazy_corpus_equals_the_eager_one_on_tiny_data(tmp_path, cached):
  root = fixtures.tiny_beir(tmp_path / "data", num_docs=60)
  eager = data.load_corpus(root / "corpus.jsonl")
  dataset = data.load_beir(root, cache_dir=str(tmp_path / "cache") if cached else None)
  _assert_same(dataset.corpus, eager)
  assert dataset.corpus["d7"].full_text() == eager["d7"].full_text()


def test_lazy_dpr_tsv_reads_multiline_and_unicode_records(tmp_path):
  path = tmp_path / "psgs.tsv"
  path.write_text(_TSV, encoding="utf-8", newline="")
  eager = data.load_corpus(path)
  assert eager["1"].text == "Aaron is a\nprophet" and eager["2"].text == "tab\there"
  lazy = corpus.open_corpus(str(path), cache_dir=str(tmp_path / "cache"))
  _assert_same(lazy, eager)
  assert lazy["é-4"].title == "Über" and "\u2028" in lazy["3"].text


def test_lazy_corpus_equals_the_eager_one_on_scifact(tmp_path):
  path = conftest.data_path("scifact") / "corpus.jsonl"
  lazy = corpus.open_corpus(str(path), cache_dir=str(tmp_path / "cache"))
  _assert_same(lazy, data.load_corpus(path))
  again = corpus.open_corpus(str(path), cache_dir=str(tmp_path / "cache"))
  assert len(again) == 5183 and again["4983"] == lazy["4983"]


def test_the_index_is_built_once_and_kept_out_of_the_data_directory(tmp_path, monkeypatch):
  root = fixtures.tiny_beir(tmp_path / "data", num_docs=30)
  before = sorted(os.listdir(root))
  cache = str(tmp_path / "cache")
  first = data.load_beir(root, cache_dir=cache).corpus
  assert sorted(os.listdir(root)) == before  # a read-only data directory would do
  directory = layout.corpus_index(cache, str(root / "corpus.jsonl"),
                                  corpus.fingerprint(str(root / "corpus.jsonl")))
  assert os.path.exists(os.path.join(directory, "meta.json"))

  def no_build(path):
    raise AssertionError("the index was built again")

  monkeypatch.setattr(corpus, "build_index", no_build)
  assert dict(data.load_beir(root, cache_dir=cache).corpus.items()) == dict(first.items())


def test_an_edited_corpus_file_is_indexed_afresh(tmp_path):
  path = tmp_path / "corpus.jsonl"
  path.write_text('{"_id": "a", "text": "one"}\n{"_id": "b", "text": "two"}\n')
  cache = str(tmp_path / "cache")
  old = corpus.open_corpus(str(path), cache_dir=cache)
  old_dir = layout.corpus_index(cache, str(path), corpus.fingerprint(str(path)))
  assert list(old) == ["a", "b"] and old["b"].text == "two"
  # The same size and the same modification time: only the bytes tell the versions apart.
  st = os.stat(path)
  path.write_text('{"_id": "a", "text": "one"}\n{"_id": "c", "text": "two"}\n')
  os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
  new = corpus.open_corpus(str(path), cache_dir=cache)
  assert list(new) == ["a", "c"] and "b" not in new and new["c"].text == "two"
  assert not os.path.exists(old_dir)  # the old version's index is removed
  # A longer file: records move, and the index follows them.
  path.write_text('{"_id": "z", "title": "new first", "text": "zero"}\n' + path.read_text())
  newer = corpus.open_corpus(str(path), cache_dir=cache)
  assert list(newer) == ["z", "a", "c"] and newer["c"].text == "two"
  assert len(os.listdir(os.path.dirname(old_dir))) == 1


def test_the_same_bytes_copied_again_keep_their_index(tmp_path, monkeypatch):
  """A data set copied afresh (new mtimes, same bytes) is not indexed again."""
  path = tmp_path / "corpus.jsonl"
  path.write_text('{"_id": "a", "text": "one"}\n{"_id": "b", "text": "two"}\n')
  cache = str(tmp_path / "cache")
  corpus.open_corpus(str(path), cache_dir=cache)
  shutil.copyfile(path, tmp_path / "copy")
  os.replace(tmp_path / "copy", path)  # a new inode and mtime
  st = os.stat(path)
  os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))

  def no_build(p):
    raise AssertionError("the index was built again")

  monkeypatch.setattr(corpus, "build_index", no_build)
  assert list(corpus.open_corpus(str(path), cache_dir=cache)) == ["a", "b"]


def test_a_file_changed_while_in_use_is_an_error_not_another_passage(tmp_path):
  path = tmp_path / "corpus.jsonl"
  path.write_text('{"_id": "a", "text": "one"}\n{"_id": "b", "text": "two"}\n')
  lazy = corpus.open_corpus(str(path))
  path.write_text('{"_id": "b", "text": "two"}\n{"_id": "a", "text": "one"}\n')
  with pytest.raises(data.DataError, match="changed while in use"):
    lazy["a"]


def test_indexes_of_corpus_files_that_are_gone_are_removed(tmp_path):
  cache = str(tmp_path / "cache")
  gone, kept = tmp_path / "gone.jsonl", tmp_path / "kept.jsonl"
  for p in (gone, kept):
    p.write_text('{"_id": "a", "text": "x"}\n')
  corpus.open_corpus(str(gone), cache_dir=cache)
  gone_dir = os.path.dirname(layout.corpus_index(cache, str(gone), corpus.fingerprint(str(gone))))
  os.remove(gone)
  corpus.open_corpus(str(kept), cache_dir=cache)
  assert not os.path.exists(gone_dir)
  assert len(os.listdir(layout.corpus_indexes(cache))) == 1


@pytest.mark.parametrize("name,content,line,problem", [
    ("corpus.jsonl", '{"_id": "a", "text": "x"}\n{"_id": "b", "text": "y"\n', 2, "invalid JSON"),
    ("corpus.jsonl", '{"_id": "a", "text": "x"}\n\n{"text": "y"}\n', 3, "missing field '_id'"),
    ("corpus.jsonl", '{"_id": "a", "text": "x"}\n{"_id": "b", "text": "y"}\n{"_id": "a", "text": "z"}\n'
     '{"_id": "b", "text": "w"}\n', 3, "duplicate document id 'a'"),
    ("corpus.jsonl", '[1, 2]\n', 1, "expected a JSON object"),
    ("corpus.jsonl", '{"_id": "a", "text": 5.5}\n', 1, "field 'text' must be a string"),
    ("corpus.jsonl", "", None, "no documents"),
    ("psgs.tsv", "id\ttext\ttitle\n1\tonly two\n", 2, "expected 3 tab-separated fields, got 2"),
    ("psgs.tsv", 'id\ttext\ttitle\n1\t"two\nlines"\tt\n1\tagain\tt\n', 4, "duplicate document id '1'"),
    ("psgs.tsv", "pid\tpassage\n", 1, "expected header"),
])
def test_a_malformed_corpus_fails_as_the_eager_reader_does(tmp_path, name, content, line, problem):
  path = tmp_path / name
  path.write_text(content, encoding="utf-8")
  with pytest.raises(data.DataError) as eager:
    data.load_corpus(path)
  cache = tmp_path / "cache"
  with pytest.raises(data.DataError) as lazy:
    corpus.open_corpus(str(path), cache_dir=str(cache))
  assert str(lazy.value) == str(eager.value)
  assert lazy.value.line == line and problem in lazy.value.problem
  assert not list(cache.rglob("meta.json"))  # nothing half-built is left to be trusted


def test_a_gzipped_tsv_is_read_whole(tmp_path):
  path = tmp_path / "psgs.tsv.gz"
  with gzip.open(path, "wt", encoding="utf-8", newline="") as f:
    f.write(_TSV)
  loaded = corpus.open_corpus(str(path), cache_dir=str(tmp_path / "cache"))
  assert isinstance(loaded, dict) and loaded["1"].text == "Aaron is a\nprophet" and len(loaded) == 4


def test_full_texts_reads_only_what_is_asked(tmp_path):
  root = fixtures.tiny_beir(tmp_path / "data", num_docs=10)
  lazy = data.load_beir(root).corpus
  texts = corpus.FullTexts(lazy)
  assert len(texts) == 10 and "d3" in texts and "x" not in texts
  assert texts["d3"] == lazy["d3"].full_text() and list(texts) == list(lazy)


@pytest.mark.parametrize("source", ["lazy", "eager"])
def test_the_docid_table_is_the_list_and_dict_of_docids_it_replaces(tmp_path, source):
  path = tmp_path / "psgs.tsv"
  path.write_text(_TSV, encoding="utf-8", newline="")
  loaded = (corpus.open_corpus(str(path), cache_dir=str(tmp_path / "cache")) if source == "lazy"
            else data.load_corpus(path))
  table = corpus.docid_table(loaded)
  docids = list(loaded)  # what the tasks held before: a list of every docid, and a dict of rows
  row = {d: i for i, d in enumerate(docids)}
  assert len(table) == len(docids) and list(table) == docids
  assert [table[i] for i in range(len(docids))] == docids and table[1:3] == docids[1:3]
  with pytest.raises(IndexError):
    table[len(docids)]
  asked = ["é-4", "1", "3", "1", "2"]
  assert table.rows(asked).tolist() == [row[d] for d in asked]
  assert [table.row(d) for d in docids] == list(range(len(docids)))
  for unknown in ("no-such-id", "", "é-4-longer-than-any-id", "1\0"):
    assert table.row(unknown) is None
  with pytest.raises(KeyError, match="no-such-id"):
    table.rows(["1", "no-such-id"])
  # rows() searches all the keys at once: every kind of miss, wherever it sorts, is still named.
  for unknown in ("", "é-4-longer-than-any-id", "1\0", "0", "é", "\uffff", "é-40"):
    with pytest.raises(KeyError):
      table.rows(["1", unknown, "2"])
  assert table.rows([]).tolist() == []
  assert table.rows(docids[::-1] * 3).tolist() == list(range(len(docids)))[::-1] * 3
