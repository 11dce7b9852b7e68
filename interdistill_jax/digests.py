"""What identifies a version of a data file: the SHA-256 of its bytes, remembered by its stat.

A data set copied again (to a new VM, by `gsutil cp`, from a backup, or mounted afresh each
morning) keeps its bytes and loses its modification times. Identified by size and mtime, every
stage computed from it would count as stale, the corpus would be encoded and indexed again, and a
sweep would start over. Identified by content, nothing reruns unless a byte changed.

Hashing reads the whole file (about 1.5 GB/s on one core here, so about 10 s for DPR's 13 GB
of passages, plus the disk), so each digest is remembered under `data.cache_dir/digests/`, keyed
by the file's real path, and reused while its size, mtime, ctime, inode and device are those it
was computed for (an edit that restores the mtime still moves the ctime, which no user can set).
A cache that cannot be written costs a rehash next time, never a wrong answer.
"""

from __future__ import annotations

import hashlib
import json
import os

from absl import logging

from interdistill_jax import files, layout

PREFIX = "sha256:"
_BLOCK = 1 << 22


def _stat_key(st: os.stat_result) -> list[int]:
  return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def stat_id(path: str) -> str:
  """The identity older records used: size and mtime (ns). Compared, never written any more."""
  st = os.stat(path)
  return f"{st.st_size}|{st.st_mtime_ns}"


def _hash(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    while block := f.read(_BLOCK):
      h.update(block)
  return PREFIX + h.hexdigest()


def content_id(path: str, cache_dir: str | None = None) -> str:
  """"sha256:<hex>" of the file's bytes; remembered under `cache_dir` when one is given."""
  real = os.path.realpath(path)
  st = os.stat(real)
  record = layout.digest_record(cache_dir, real) if cache_dir else None
  if record:
    try:
      with open(record, encoding="utf-8") as f:
        known = json.load(f)
      if known.get("path") == real and known.get("stat") == _stat_key(st):
        return known["digest"]
    except (OSError, ValueError, KeyError, AttributeError):
      pass  # absent or damaged: hashed again below
  if st.st_size > 1 << 30:
    logging.info("Hashing %s (%.1f GB), once per version of the file", real, st.st_size / 1e9)
  digest = _hash(real)
  if record:
    if _stat_key(os.stat(real)) != _stat_key(st):
      return digest  # changed while it was read: the digest is not remembered
    try:
      files.atomic_write_text(record, json.dumps(
          {"path": real, "stat": _stat_key(st), "digest": digest}) + "\n")
    except OSError as e:
      logging.warning("Could not remember the digest of %s in %s (%s): it is computed again "
                      "next time", real, record, e)
  return digest
