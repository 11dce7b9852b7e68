"""Content digests of data files and the stat-keyed record that spares rehashing them."""

import hashlib
import os

import pytest

from interdistill_jax import digests, layout


def test_the_digest_is_the_sha256_of_the_bytes_and_is_remembered(tmp_path, monkeypatch):
  path, cache = tmp_path / "corpus.jsonl", str(tmp_path / "cache")
  path.write_bytes(b'{"_id": "a"}\n' * 1000)
  want = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
  assert digests.content_id(str(path)) == want
  assert digests.content_id(str(path), cache) == want
  assert os.path.exists(layout.digest_record(cache, str(path)))

  def no_hash(p):
    raise AssertionError("hashed again")

  with monkeypatch.context() as m:
    m.setattr(digests, "_hash", no_hash)
    assert digests.content_id(str(path), cache) == want  # unchanged: from the record
  # Touched (new mtime and ctime), the bytes the same: hashed again, the same digest.
  st = os.stat(path)
  os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
  with monkeypatch.context() as m:
    m.setattr(digests, "_hash", no_hash)
    with pytest.raises(AssertionError, match="hashed again"):
      digests.content_id(str(path), cache)
  assert digests.content_id(str(path), cache) == want


def test_a_damaged_or_foreign_record_is_never_trusted(tmp_path):
  path, cache = tmp_path / "q.jsonl", str(tmp_path / "cache")
  path.write_text("one\n")
  first = digests.content_id(str(path), cache)
  record = layout.digest_record(cache, str(path))
  with open(record, "w") as f:
    f.write('{"path": "')  # cut by a kill
  assert digests.content_id(str(path), cache) == first
  path.write_text("two\n")  # edited: the record's stat no longer matches
  assert digests.content_id(str(path), cache) == "sha256:" + hashlib.sha256(b"two\n").hexdigest()


def test_an_unwritable_cache_costs_a_rehash_not_an_error(tmp_path):
  path = tmp_path / "q.jsonl"
  path.write_text("one\n")
  blocker = tmp_path / "cache"
  blocker.write_text("a file where the cache directory should be")
  assert digests.content_id(str(path), str(blocker)) == digests.content_id(str(path))
