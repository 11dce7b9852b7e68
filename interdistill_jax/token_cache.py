"""Token ids of a corpus's passages on disk, so that encoding it again reads no text.

A corpus is encoded once per model: by the initial retriever, again by each distilled one (and at
each index refresh). With a fast device the tokenizer is the bottleneck (on an H200 with 16
cores, SciFact's 5,183 passages take 0.31 s to tokenize and 0.17 s to encode from token ids), and
every model built on the same tokenizer cuts the same passages into the same ids. So the ids are
kept under `data.cache_dir/tokens/`, one directory per (tokenizer file, corpus file, passage
length), each a set of files of consecutive rows (`rows-START-COUNT.npz`: the ids laid end to end
and each passage's length). A file is written whole or not at all (`files.save_npz`), so a run
killed while tokenizing keeps every finished range and redoes only the one it was in; one that
cannot be read is tokenized again, with a warning.
"""

from __future__ import annotations

import hashlib
import os
import zipfile

import numpy as np
from absl import logging

from interdistill_jax import digests, files, layout, tokenization


class TokenCache:
  """Token ids of ranges of a corpus's rows, by (start, count)."""

  def __init__(self, directory: str):
    self.directory = directory

  @classmethod
  def for_corpus(cls, cache_dir: str, tokenizer: tokenization.Tokenizer, corpus_id: str,
                 max_length: int) -> "TokenCache":
    """The cache of `corpus_id` (the corpus file's content digest) cut by `tokenizer` (named by
    its tokenizer.json's content digest) at `max_length` tokens."""
    tokenizer_id = digests.content_id(tokenizer.file, cache_dir)
    key = hashlib.sha256(f"{tokenizer_id}|{corpus_id}|{max_length}".encode()).hexdigest()[:16]
    return cls(layout.token_cache(cache_dir, key))

  def _path(self, start: int, count: int) -> str:
    return os.path.join(self.directory, f"rows-{start:012d}-{count}.npz")

  def read(self, start: int, count: int) -> list[np.ndarray] | None:
    """The ids of rows [start, start + count), or None when they are not kept (or cannot be read:
    then a warning, and the caller tokenizes them again)."""
    path = self._path(start, count)
    if not files.exists(path):
      return None
    try:
      arrays = files.load_npz(path)
      ids, lengths = arrays["ids"], arrays["lengths"]
      if len(lengths) != count or int(lengths.sum()) != len(ids) or (lengths < 0).any():
        raise ValueError(f"{len(lengths)} lengths summing to {int(lengths.sum())} for "
                         f"{count} rows of {len(ids)} ids")
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
      logging.warning("%s: unreadable (%s); tokenizing these passages again", path, e)
      return None
    ids = ids.astype(np.int32)
    return np.split(ids, np.cumsum(lengths)[:-1]) if count else []

  def write(self, start: int, seqs: list[np.ndarray]) -> None:
    """Keeps the ids of rows [start, start + len(seqs))."""
    ids = np.concatenate(seqs) if seqs else np.zeros((0,), np.int32)
    dtype = np.uint16 if ids.size == 0 or int(ids.max()) < 1 << 16 else np.int32
    try:
      files.save_npz(self._path(start, len(seqs)), ids=ids.astype(dtype),
                     lengths=np.array([len(s) for s in seqs], np.int32))
    except OSError as e:  # a cache that cannot be written costs a tokenization next time
      logging.warning("Could not keep token ids in %s (%s)", self.directory, e)
