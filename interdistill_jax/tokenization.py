"""Fast tokenizer loading, length buckets and fixed-shape padded batches.

The tokenizer is the Rust `tokenizers` one read from `tokenizer.json`, with padding and
truncation reset so that we, not the file, decide lengths: a shipped file may fix both
(all-MiniLM-L6-v2's pads everything to 128).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import os
import threading
from collections.abc import Iterator, Sequence

import numpy as np
import tokenizers


@dataclasses.dataclass
class Batch:
  """A padded batch; rows past `num_valid` are padding rows (all-zero mask).

  input_ids, token_type_ids, attention_mask: [B, T] int32.
  index: [B] int64 position of each row in the caller's list, -1 for padding rows.
  """

  input_ids: np.ndarray
  token_type_ids: np.ndarray
  attention_mask: np.ndarray
  index: np.ndarray

  @property
  def num_valid(self) -> int:
    return int((self.index >= 0).sum())


class Tokenizer:
  """WordPiece tokenizer with lengths under our control."""

  def __init__(self, path: str | os.PathLike):
    path = os.fspath(path)
    file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
    if not os.path.exists(file):
      raise FileNotFoundError(f"{file}: no tokenizer.json (a fast tokenizer file is required)")
    self._tok = tokenizers.Tokenizer.from_file(file)
    # Truncation is set for the length of each call: calls from several threads (the encoder
    # tokenizes ahead in a worker) take turns, each call is parallel inside.
    self._lock = threading.Lock()
    self._tok.no_padding()
    self._tok.no_truncation()
    self.file = file
    self.dir = os.path.dirname(file)
    self.pad_id = self._token_id("[PAD]", default=0)
    self.cls_id = self._token_id("[CLS]")
    self.sep_id = self._token_id("[SEP]")

  def _token_id(self, token: str, default: int | None = None) -> int:
    idx = self._tok.token_to_id(token)
    if idx is None:
      if default is None:
        raise ValueError(f"tokenizer in {self.dir} has no {token} token")
      return default
    return idx

  def encode(self, texts: Sequence[str], max_length: int) -> list[np.ndarray]:
    """Token ids with [CLS] ... [SEP], truncated to `max_length` (as transformers does)."""
    with self._lock:
      self._tok.enable_truncation(max_length=max_length, strategy="longest_first")
      try:
        encs = self._tok.encode_batch(list(texts))
      finally:
        self._tok.no_truncation()
    return [np.asarray(e.ids, np.int32) for e in encs]

  def encode_pairs(self, firsts: Sequence[str], seconds: Sequence[str],
                   max_length: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """`[CLS] a [SEP] b [SEP]` ids and token types, longest-first truncation."""
    with self._lock:
      self._tok.enable_truncation(max_length=max_length, strategy="longest_first")
      try:
        encs = self._tok.encode_batch(list(zip(firsts, seconds)))
      finally:
        self._tok.no_truncation()
    return [(np.asarray(e.ids, np.int32), np.asarray(e.type_ids, np.int32)) for e in encs]


def padded_ids(tokenizer: "Tokenizer", texts: Sequence[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
  """(ids [N, max_length] int32, right-padded with 0, lengths [N] int32) of `texts`."""
  ids = np.zeros((len(texts), max_length), np.int32)
  lengths = np.zeros((len(texts),), np.int32)
  for i, seq in enumerate(tokenizer.encode(texts, max_length) if texts else []):
    ids[i, :len(seq)] = seq
    lengths[i] = len(seq)
  return ids, lengths


def buckets_up_to(buckets: Sequence[int], max_length: int) -> list[int]:
  """The sorted buckets below `max_length`, then `max_length` itself: the lengths batches take."""
  return [b for b in sorted(buckets) if b < max_length] + [max_length]


def bucket_length(length: int, buckets: Sequence[int]) -> int:
  """The smallest bucket that holds `length` tokens."""
  for b in sorted(buckets):
    if length <= b:
      return b
  raise ValueError(f"sequence of {length} tokens exceeds the largest bucket {max(buckets)}")


def pad_batch(seqs: Sequence[np.ndarray], index: Sequence[int], batch_size: int, length: int,
              pad_id: int = 0, types: Sequence[np.ndarray] | None = None) -> Batch:
  """Pads `seqs` to [batch_size, length]; missing rows are padding (index -1)."""
  if len(seqs) > batch_size:
    raise ValueError(f"{len(seqs)} sequences do not fit a batch of {batch_size}")
  ids = np.full((batch_size, length), pad_id, np.int32)
  tt = np.zeros((batch_size, length), np.int32)
  mask = np.zeros((batch_size, length), np.int32)
  idx = np.full((batch_size,), -1, np.int64)
  for row, seq in enumerate(seqs):
    n = len(seq)
    ids[row, :n] = seq
    mask[row, :n] = 1
    if types is not None:
      tt[row, :n] = types[row]
    idx[row] = index[row]
  return Batch(ids, tt, mask, idx)


def bucketed_batches(seqs: Sequence[np.ndarray], batch_size: int, buckets: Sequence[int],
                     pad_id: int = 0, types: Sequence[np.ndarray] | None = None) -> Iterator[Batch]:
  """Batches of sequences of similar length, each padded to its bucket.

  Sequences are sorted by length (longest first, so the largest shapes compile and
  any out-of-memory shows up at once); every batch has exactly `batch_size` rows, so
  the number of distinct shapes is at most the number of buckets.
  """
  order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
  for start in range(0, len(order), batch_size):
    chunk = order[start:start + batch_size]
    length = bucket_length(max(len(seqs[i]) for i in chunk), buckets)
    yield pad_batch([seqs[i] for i in chunk], chunk, batch_size, length, pad_id,
                    None if types is None else [types[i] for i in chunk])


def num_batches(n: int, batch_size: int) -> int:
  return -(-n // batch_size)


def tokenized_ahead(tokenizer: Tokenizer, texts: Sequence[str], max_length: int,
                    chunk: int) -> Iterator[list[np.ndarray]]:
  """`tokenizer.encode` of `texts` in consecutive chunks of `chunk`, each one computed in a
  worker thread while the caller uses the one before."""
  starts = range(0, len(texts), chunk)
  if len(starts) <= 1:
    yield tokenizer.encode(texts, max_length) if texts else []
    return
  with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="tokenize") as pool:
    ahead = collections.deque()
    for start in starts:
      ahead.append(pool.submit(tokenizer.encode, texts[start:start + chunk], max_length))
      if len(ahead) > 1:
        yield ahead.popleft().result()
    while ahead:
      yield ahead.popleft().result()
