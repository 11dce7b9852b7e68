"""`files.py`: the workdir's files on local disk (as `os` did them) and in a bucket (a stand-in)."""

import os
import pathlib
import stat

import numpy as np
import pytest

from interdistill_jax import files
from tests.fake_bucket import fake_bucket


@pytest.fixture(params=["local", "bucket"])
def where(request, tmp_path, monkeypatch):
  """A directory to work in: a local one, or `gs://b/run` served from a scratch directory while
  the working directory is another scratch one that must stay empty (nothing goes around epath)."""
  if request.param == "local":
    yield str(tmp_path / "run")
    return
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  with fake_bucket(tmp_path / "bucket"):
    yield "gs://b/run"
  assert not os.listdir(cwd), f"written around epath: {os.listdir(cwd)}"


def _join(*parts):
  return os.path.join(*parts)


def test_local_and_remote_paths_are_told_apart():
  assert files.is_local("runs/x") and files.is_local("/tmp/x") and files.is_local("a:b")
  assert not files.is_local("gs://b/x") and not files.is_local("s3://b/x")
  assert files.absolute("gs://b/x") == "gs://b/x"
  assert files.absolute("x") == os.path.abspath("x")
  with pytest.raises(ValueError, match="unsupported storage 'ftp://'"):
    files.exists("ftp://host/x")


def test_an_atomic_write_creates_its_directory_and_writes_the_bytes(where):
  path = _join(where, "labels", "stats.json")
  files.atomic_write_text(path, "{\"é\": 1}\n")
  assert files.read_bytes(path) == "{\"é\": 1}\n".encode()
  files.atomic_write_bytes(path, b"two")
  assert files.read_text(path) == "two"
  assert files.listdir(_join(where, "labels")) == ["stats.json"]  # no temporary file left


def test_a_failed_local_write_leaves_the_old_file_and_no_partial_one(tmp_path, monkeypatch):
  path = tmp_path / "labels" / "stats.json"
  files.atomic_write_text(path, "old\n")

  def fail(fd):
    raise OSError("disk full")

  monkeypatch.setattr(os, "fsync", fail)  # after the bytes are written, before the rename
  with pytest.raises(OSError, match="disk full"):
    files.atomic_write_text(path, "new, cut short")
  assert path.read_text() == "old\n"
  assert os.listdir(path.parent) == ["stats.json"]


def test_local_writes_keep_the_modes_they_had():
  # mkstemp's 0600, as data.atomic_write_text always gave the markers and records.
  import tempfile
  with tempfile.TemporaryDirectory() as d:
    files.atomic_write_text(os.path.join(d, "a.json"), "{}")
    assert stat.S_IMODE(os.stat(os.path.join(d, "a.json")).st_mode) == 0o600


def test_appends_add_lines_even_where_objects_cannot_be_appended_to(where):
  path = _join(where, "ranker", "metrics.jsonl")
  files.append_text(path, "1\n")
  files.append_text(path, "2\n3\n")
  assert files.read_text(path) == "1\n2\n3\n"


def test_move_aside_takes_files_and_directories_and_never_overwrites(where):
  files.atomic_write_text(_join(where, "ranker", "done.json"), "{}")
  files.atomic_write_text(_join(where, "ranker", "checkpoints", "latest", "3", "x"), "3")
  files.atomic_write_text(_join(where, "labels", "labels.jsonl"), "{}\n")
  files.move(_join(where, "ranker"), _join(where, "stale", "t", "ranker"))
  files.move(_join(where, "labels", "labels.jsonl"), _join(where, "stale", "t", "labels.jsonl"))
  assert not files.exists(_join(where, "ranker"))
  assert not files.exists(_join(where, "labels", "labels.jsonl"))
  assert files.read_text(_join(where, "stale", "t", "ranker", "checkpoints", "latest", "3", "x")) == "3"
  assert files.listdir(_join(where, "stale", "t")) == ["labels.jsonl", "ranker"]
  files.atomic_write_text(_join(where, "other.json"), "{}")
  with pytest.raises(FileExistsError):
    files.move(_join(where, "other.json"), _join(where, "stale", "t", "labels.jsonl"))
  assert files.read_text(_join(where, "stale", "t", "labels.jsonl")) == "{}\n"


def test_listing_globbing_and_removing(where):
  for name in ("b.json", "a.json", "c.trec", "notes~"):
    files.atomic_write_text(_join(where, "eval", name), name)
  assert files.listdir(_join(where, "eval")) == sorted(
      ["a.json", "b.json", "c.trec"] + (["notes~"] if files.is_local(where) else []))
  assert files.glob(_join(where, "eval"), "*.json") == [_join(where, "eval", "a.json"),
                                                       _join(where, "eval", "b.json")]
  assert files.is_dir(_join(where, "eval")) and files.is_file(_join(where, "eval", "a.json"))
  files.remove(_join(where, "eval", "a.json"))
  files.remove(_join(where, "eval", "a.json"))  # missing: fine
  with pytest.raises(FileNotFoundError):
    files.remove(_join(where, "eval", "a.json"), missing_ok=False)
  files.remove_tree(_join(where, "eval"))
  assert not files.exists(_join(where, "eval"))
  files.remove_tree(_join(where, "eval"))


def test_copies_between_local_disk_and_a_bucket(where, tmp_path):
  src = tmp_path / "src"
  (src / "1_Pooling").mkdir(parents=True)
  (src / "config.json").write_text("{}")
  (src / "1_Pooling" / "config.json").write_text("{\"pooling\": 1}")
  files.copy_tree(src, _join(where, "export", "retriever"))
  assert files.read_text(_join(where, "export", "retriever", "1_Pooling", "config.json")) == \
      "{\"pooling\": 1}"
  with files.local_dir(_join(where, "export", "retriever")) as local:
    assert files.is_local(local)
    assert sorted(os.listdir(local)) == ["1_Pooling", "config.json"]
  files.copy_file(_join(where, "export", "retriever", "config.json"), tmp_path / "back.json")
  assert (tmp_path / "back.json").read_text() == "{}"


def test_arrays_round_trip_with_numpys_bytes(where, tmp_path):
  emb = np.arange(12, dtype=np.float16).reshape(4, 3)
  path = _join(where, "embeddings", "shard-00000.npy")
  files.save_npy(path, emb)
  np.save(tmp_path / "reference.npy", emb)
  assert files.read_bytes(path) == (tmp_path / "reference.npy").read_bytes()
  back = files.load_npy(path, mmap=True)
  np.testing.assert_array_equal(back, emb)
  assert isinstance(back, np.memmap) == files.is_local(where)  # a bucket's is read whole
  assert files.listdir(_join(where, "embeddings")) == ["shard-00000.npy"]
  files.save_npz(_join(where, "ranker", "scores.npz"), scores=emb[0], ranker=np.array("r1"))
  cached = files.load_npz(_join(where, "ranker", "scores.npz"))
  assert str(cached["ranker"]) == "r1"
  np.testing.assert_array_equal(cached["scores"], emb[0])


def test_a_killed_array_write_leaves_no_partial_array(tmp_path, monkeypatch):
  path = tmp_path / "embeddings" / "corpus.npy"
  files.save_npy(path, np.zeros(3))

  def killed(*args, **kwargs):
    raise KeyboardInterrupt

  monkeypatch.setattr(os, "replace", killed)  # the temporary file is written, not renamed
  with pytest.raises(KeyboardInterrupt):
    files.save_npy(path, np.ones(3))
  np.testing.assert_array_equal(np.load(path), np.zeros(3))


def test_stages_write_the_same_artifacts_to_a_bucket_as_to_local_disk(tmp_path, monkeypatch):
  """retrieve, label, evaluate and export (the stages without Orbax checkpoints, whose arrays
  tensorstore would send to a real bucket) in a local workdir and in `gs://b/run`: every artifact
  is the same, and nothing is written around epath (the working directory stays empty)."""
  from benchmarks import workdir_compare
  from interdistill_jax import pipeline
  from tests import fixtures

  bert = fixtures.tiny_bert(tmp_path / "bert", layers=1, hidden=16, heads=2)
  data_dir = fixtures.tiny_beir(tmp_path / "data", num_docs=40, num_train=8, num_test=6)
  config = fixtures.small_config(bert, data_dir)
  config.pipeline.stages = ("retrieve", "label", "evaluate", "export")
  config.label.num_candidates = 10
  local = tmp_path / "local"
  pipeline.run(config, str(local))
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  with fake_bucket(tmp_path / "bucket") as root:
    pipeline.run(config, "gs://b/run")
    assert pipeline.is_complete("export", config, "gs://b/run")
  assert not os.listdir(cwd), f"written around epath: {os.listdir(cwd)}"
  # The call cache lived in a local mirror under data.cache_dir while labelling.
  assert (pathlib.Path(config.data.cache_dir) / "remote" / "gs" / "b" / "run" / "labels" /
          "llm_cache.sqlite").is_file()
  comparison = workdir_compare.compare_workdirs(local, root / "b" / "run")
  assert not comparison["only_in_a"] and not comparison["only_in_b"], comparison
  differ = {k: v for k, v in comparison["artifacts"].items() if v != "identical"}
  # export/done.json names where each folder went (the workdir's own path), and the cards report
  # labelling's timings.
  assert sorted(differ) == ["export/done.json", "export/labels/README.md",
                            "export/ranker/README.md", "export/retriever/README.md"], differ
  assert all(".path:" in d for d in differ["export/done.json"]), differ
  for card in sorted(differ)[1:]:
    a, b = ((r / card).read_text().splitlines() for r in (local, root / "b" / "run"))
    assert {x.split("|")[1].strip() for x, y in zip(a, b, strict=True) if x != y} <= {
        "finished", "seconds", "queries_per_second"}, card
  for name in ("candidates/train.trec", "labels/labels.jsonl", "labels/llm_cache.sqlite",
               "eval/baseline.json", "eval/report.md", "eval/before_after.png",
               "export/retriever/model.safetensors", "export/labels/labels.jsonl"):
    assert comparison["artifacts"][name] == "identical", name


def test_a_bucket_workdir_is_locked_through_a_local_file(tmp_path, caplog):
  from interdistill_jax import locking
  with fake_bucket(tmp_path / "bucket"):
    held = locking.lock_workdir("gs://b/run", local_dir=str(tmp_path / "cache"))
    with pytest.raises(locking.WorkdirBusy, match=f"gs://b/run is in use by host .* pid {os.getpid()}"):
      locking.lock_workdir("gs://b/run", local_dir=str(tmp_path / "cache"))
    held.close()
    locking.lock_workdir("gs://b/run", local_dir=str(tmp_path / "cache")).close()
    assert not files.exists("gs://b/run/.lock")  # an object cannot hold an fcntl lock
    with pytest.raises(ValueError, match="needs a local directory for its lock"):
      locking.lock_workdir("gs://b/run")
  assert (tmp_path / "cache" / "remote" / "gs" / "b" / "run" / ".lock").is_file()
  assert "excludes a second run on this host only" in caplog.text


def test_a_bucket_call_cache_is_a_local_mirror_merged_and_uploaded_even_on_failure(tmp_path):
  from interdistill_jax.teachers.base import Answer
  from interdistill_jax.teachers.cache import Cache, open_cache
  put = lambda cache, key: cache.put(key, Answer(text=key), backend="b", model="m")  # noqa: E731
  with fake_bucket(tmp_path / "bucket") as root:
    path = "gs://b/run/labels/llm_cache.sqlite"
    with open_cache(path, local_dir=str(tmp_path / "cache")) as cache:
      put(cache, "first")
    mirror = tmp_path / "cache" / "remote" / "gs" / "b" / "run" / "labels" / "llm_cache.sqlite"
    mirror.unlink()  # another host: no mirror here, the bucket's answers come down
    with pytest.raises(RuntimeError, match="killed"):
      with open_cache(path, local_dir=str(tmp_path / "cache")) as cache:
        assert cache.get("first") == Answer(text="first")
        put(cache, "second")
        raise RuntimeError("killed")
    uploaded = Cache(root / "b" / "run" / "labels" / "llm_cache.sqlite")
    assert len(uploaded) == 2 and uploaded.get("second") == Answer(text="second")
    uploaded.close()


def test_a_bucket_that_cannot_be_reached_is_said_before_anything_runs(tmp_path, monkeypatch):
  import fsspec
  from interdistill_jax import checks, defaults
  assert files.storage_problem(tmp_path) is None
  assert "unsupported storage 'ftp://'" in files.storage_problem("ftp://host/run")

  def missing(scheme):
    raise ImportError(f"Please install {scheme}fs")

  monkeypatch.setattr(fsspec, "get_filesystem_class", missing)
  assert files.storage_problem("gs://b/run") == (
      "gs://b/run: Please install gsfs (etils.epath reaches it through fsspec)")
  config = defaults.base_config()
  with pytest.raises(checks.ConfigError, match="gs://b/run: Please install gsfs"):
    checks.check_config(config, workdir="gs://b/run")
