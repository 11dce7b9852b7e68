"""User errors: one clear line naming the file, the line and the problem; nothing written lost."""

import os
import subprocess
import sys

import pytest

from interdistill_jax import data, main
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
