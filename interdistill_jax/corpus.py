"""Corpus files (BEIR JSONL, DPR TSV): read whole, streamed, or on demand through an index.

`load_corpus` reads every document into a dict and `iter_corpus` streams them, each record
checked (file:line errors). A task holds no passage text it does not use: `open_corpus` returns a
`Mapping[str, Document]` (`corpus[docid]`, `len`, `in`, iteration in file order) whose values are
read from the corpus file when asked for. What stays in memory is the index, numpy arrays only:

  offsets      [N + 1] int64   record i is bytes [offsets[i], offsets[i + 1]) of the file
  ids          [N] bytes       the docids in file order (UTF-8, fixed width)
  sorted_ids   [N] bytes       the same, sorted, and
  sorted_rows  [N] int64       the row of each: a lookup is a binary search (np.searchsorted)

32 bytes a passage for DPR's 21M (numeric ids of up to 8 bytes): 0.7 GB, memory-mapped from
disk, against some 13 GB of text (and more again as Python strings). `docid_table` serves the
docids by row and the row of a docid from the same arrays, for the tasks that map search results
and embedding rows to docids: no list or dict of every docid is built.

Why byte offsets and not a SQLite store: the records are already on disk in a format we read, and
all we ask of them is "the passage with this id" and "every passage in order". An offset index
answers both with one pread or a sequential read, costs 8 bytes a passage besides the ids, is
written in the one pass that checks the file, and loads memory-mapped in milliseconds. A SQLite
store would hold a second copy of the 13 GB of text and a B-tree of string keys, for features
(updates, transactions, queries) nothing here uses.

Building reads and checks every record once (the file:line errors of `load_corpus`,
duplicate ids included), so a malformed file fails as soon as it is opened. The index is kept
under `data.cache_dir` (`layout.corpus_index`), not beside the corpus: data directories may be
read-only or shared, and the cache serves every workdir on this machine (on several hosts each
builds its own, on local disk). It is named by the corpus file's real path and fingerprint
(its content digest, `digests`), so an edited file is indexed afresh and the same bytes copied
again (new mtimes) are not; older versions, and indexes of
files that no longer exist, are removed when a new one is built. Without a cache directory the
index is built in memory for the process (a test, a benchmark).

A gzipped TSV cannot be read at an offset without decompressing what comes before: it is loaded
whole into memory, with a warning that says to decompress it.
"""

from __future__ import annotations

import array
import csv
import dataclasses
import glob
import io
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import ItemsView, Iterator, Mapping, Sequence, ValuesView

import numpy as np
from absl import logging

from interdistill_jax import digests, layout, textfiles

# --- the file's records ------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Document:
  docid: str
  title: str
  text: str

  def full_text(self) -> str:
    """Title and body joined as BEIR's dense-retrieval evaluation does."""
    return f"{self.title} {self.text}".strip() if self.title else self.text.strip()


def load_corpus(path: str | os.PathLike) -> dict[str, Document]:
  """BEIR `corpus.jsonl` (`_id`, `title`, `text`) or a DPR TSV (`id text title`), in memory.

  `open_corpus` reads them from disk on demand instead.
  """
  corpus: dict[str, Document] = {}
  for lineno, doc in _iter_corpus_lines(path):
    if doc.docid in corpus:
      raise textfiles.DataError(path, lineno, f"duplicate document id {doc.docid!r}")
    corpus[doc.docid] = doc
  if not corpus:
    raise textfiles.DataError(path, None, "no documents")
  return corpus


def iter_corpus(path: str | os.PathLike) -> Iterator[Document]:
  """The corpus file's documents in file order, streamed (no duplicate-id check: that needs
  every id in memory)."""
  return (doc for _, doc in _iter_corpus_lines(path))


def is_dpr_tsv(path: str | os.PathLike) -> bool:
  """Whether a corpus file is read as DPR's passage TSV (else as BEIR JSONL)."""
  return str(path).endswith((".tsv", ".tsv.gz"))


def _iter_corpus_lines(path: str | os.PathLike) -> Iterator[tuple[int, Document]]:
  return ((lineno, doc) for lineno, _, _, doc in iter_corpus_records(path))


def iter_corpus_records(path: str | os.PathLike) -> Iterator[tuple[int, int, int, Document]]:
  """(line, first byte, end byte, document) of each record of a corpus file, in file order.

  The line is the record's last (a quoted TSV field may span lines); bytes [first, end) hold the
  whole record, and `parse_corpus_record` reads it back. For a .gz file the offsets are in the
  decompressed stream.
  """
  if is_dpr_tsv(path):
    yield from _iter_dpr_tsv(path)
    return
  pos = 0
  with open(path, "rb") as f:
    for lineno, raw in enumerate(f, start=1):
      start, pos = pos, pos + len(raw)
      line = textfiles.decode(raw, path, lineno)
      if line.strip():
        yield lineno, start, pos, _jsonl_document(line, path, lineno)


def parse_corpus_record(path: str | os.PathLike, raw: bytes, line: int | None = None) -> Document:
  """The document in bytes [first, end) of a corpus file (see `iter_corpus_records`)."""
  if not is_dpr_tsv(path):
    return _jsonl_document(textfiles.decode(raw, path, line), path, line)
  reader = csv.reader((textfiles.decode(x, path, line) for x in io.BytesIO(raw)), delimiter="\t",
                      quoting=csv.QUOTE_MINIMAL)
  return _dpr_document(next(reader, []), path, line)


def _jsonl_document(line: str, path, lineno: int | None) -> Document:
  obj = textfiles.json_object(line, path, lineno)
  docid = textfiles.require_str(obj, "_id", path, lineno)
  text = textfiles.require_str(obj, "text", path, lineno, allow_empty=True)
  title = obj.get("title", "") or ""
  if not isinstance(title, str):
    raise textfiles.DataError(path, lineno, "field 'title' must be a string")
  return Document(docid, title, text)


def _dpr_document(row: list[str], path, lineno: int | None) -> Document:
  if len(row) != 3:
    raise textfiles.DataError(path, lineno, f"expected 3 tab-separated fields, got {len(row)}")
  docid, text, title = row
  if not docid.strip():
    raise textfiles.DataError(path, lineno, "empty passage id")
  return Document(docid, title, text)


def _iter_dpr_tsv(path: str | os.PathLike) -> Iterator[tuple[int, int, int, Document]]:
  import gzip

  opener = gzip.open if str(path).endswith(".gz") else open
  end = 0  # the byte after the last line the csv reader took (it never reads ahead of a row)

  def lines():
    nonlocal end
    with opener(path, "rb") as f:
      for lineno, raw in enumerate(f, start=1):
        line = textfiles.decode(raw, path, lineno)
        end += len(raw)
        yield line

  reader = csv.reader(lines(), delimiter="\t", quoting=csv.QUOTE_MINIMAL)
  header = next(reader, None)
  if header is None:
    raise textfiles.DataError(path, 1, "empty file")
  if [h.strip().lower() for h in header[:3]] != ["id", "text", "title"]:
    raise textfiles.DataError(path, 1, f"expected header 'id<TAB>text<TAB>title', got {header!r}")
  start = end
  for row in reader:
    yield reader.line_num, start, end, _dpr_document(row, path, reader.line_num)
    start = end


# --- the index and the lazy corpus ---------------------------------------------------------

FORMAT = 1
_ARRAYS = ("offsets", "ids", "sorted_ids", "sorted_rows")
_CHUNK = 1 << 16  # records per step when building or iterating


def fingerprint(path: str, cache_dir: str | None = None) -> str:
  """What identifies a version of the corpus file: its content digest (remembered under
  `cache_dir`, `digests.content_id`)."""
  return digests.content_id(path, cache_dir)


class CorpusIndex:
  """The byte-offset index of a corpus file (see the module docstring)."""

  def __init__(self, offsets: np.ndarray, ids: np.ndarray, sorted_ids: np.ndarray,
               sorted_rows: np.ndarray):
    self.offsets, self.ids = offsets, ids
    self.sorted_ids, self.sorted_rows = sorted_ids, sorted_rows

  def __len__(self) -> int:
    return len(self.ids)

  def lookup(self, docids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """([n] int64 file-order rows, 0 where not found; [n] bool: the corpus holds the docid), by
    one vectorised binary search over the sorted ids."""
    width = self.sorted_ids.dtype.itemsize
    keys = [d.encode("utf-8") if isinstance(d, str) else b"" for d in docids]
    # A fixed-width array would cut a longer key, or drop a trailing NUL, into another id.
    valid = np.array([bool(k) and len(k) <= width and b"\0" not in k for k in keys], bool)
    if not len(self.sorted_ids) or not valid.any():
      return np.zeros(len(keys), np.int64), np.zeros(len(keys), bool)
    asked = np.array([k if ok else b"" for k, ok in zip(keys, valid)], dtype=self.sorted_ids.dtype)
    at = np.minimum(np.searchsorted(self.sorted_ids, asked), len(self.sorted_ids) - 1)
    found = valid & (self.sorted_ids[at] == asked)
    return np.where(found, self.sorted_rows[at], 0).astype(np.int64), found

  def row(self, docid: str) -> int | None:
    """The file-order row of `docid`, or None when the corpus has no such document."""
    rows, found = self.lookup([docid])
    return int(rows[0]) if found[0] else None

  def save(self, directory: str) -> None:
    for name in _ARRAYS:
      np.save(os.path.join(directory, f"{name}.npy"), getattr(self, name))

  @classmethod
  def load(cls, directory: str) -> "CorpusIndex":
    """The arrays memory-mapped: read from disk as lookups touch them, never copied."""
    return cls(*(np.load(os.path.join(directory, f"{name}.npy"), mmap_mode="r")
                 for name in _ARRAYS))


def _id_arrays(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(sorted ids, the file-order row of each) of fixed-width ids; equal ids keep file order."""
  order = np.argsort(ids, kind="stable")
  return ids[order], order.astype(np.int64, copy=False)


class DocidTable(Sequence):
  """A corpus's docids by file-order row (`table[row]`), and the row of a docid (`row`, `rows`).

  A view of the index's arrays: nothing is copied, so it costs what the memory-mapped pages a
  lookup touches cost, where a list of 21M docids and a dict from them would hold several GB of
  Python objects. Rows are the corpus file's order, which is the order of its embeddings (the
  in-memory cache and the on-disk shards alike).
  """

  def __init__(self, index: CorpusIndex):
    self.index = index

  def __len__(self) -> int:
    return len(self.index)

  def __getitem__(self, row):
    if isinstance(row, slice):
      return [d.decode("utf-8") for d in self.index.ids[row].tolist()]
    return self.index.ids[row].decode("utf-8")  # numpy raises IndexError past the end

  def __iter__(self) -> Iterator[str]:
    for start in range(0, len(self.index), _CHUNK):
      for docid in self.index.ids[start:start + _CHUNK].tolist():
        yield docid.decode("utf-8")

  def row(self, docid: str) -> int | None:
    """The row of `docid`, or None when the corpus has no such document."""
    return self.index.row(docid)

  def rows(self, docids: Sequence[str]) -> np.ndarray:
    """[len(docids)] int64 rows; KeyError naming the first docid the corpus does not hold.
    One vectorised search (`CorpusIndex.lookup`): a deep distillation of a 21M-passage corpus
    looks up millions of docids."""
    rows, found = self.index.lookup(docids)
    if not found.all():
      raise KeyError(docids[int(np.argmin(found))])
    return rows


def docid_table(corpus: Mapping[str, Document]) -> DocidTable:
  """The `DocidTable` of a corpus: its index's for a `LazyCorpus`, else one built from its keys
  (a corpus loaded whole, such as a gzipped TSV: already in memory, and small)."""
  if isinstance(corpus, LazyCorpus):
    return DocidTable(corpus.index)
  ids = np.array([d.encode("utf-8") for d in corpus], dtype=bytes)
  sorted_ids, sorted_rows = _id_arrays(ids)
  return DocidTable(CorpusIndex(np.zeros(0, np.int64), ids, sorted_ids, sorted_rows))


def build_index(path: str) -> CorpusIndex:
  """Reads and checks every record of the corpus file once: its offsets and ids.

  Raises `data.DataError` (file and line) on the first malformed record, on a duplicate id (at
  its second occurrence) and on an empty corpus, as `data.load_corpus` does.
  """
  offsets, lines = array.array("q"), array.array("q")  # 8 bytes a record, not a Python int
  chunks, pending = [], []
  end = 0
  for lineno, start, end, doc in iter_corpus_records(path):
    if "\0" in doc.docid:  # fixed-width byte strings drop trailing NULs
      raise textfiles.DataError(path, lineno, f"document id {doc.docid!r} contains a NUL character")
    offsets.append(start)
    lines.append(lineno)
    pending.append(doc.docid.encode("utf-8"))
    if len(pending) == _CHUNK:
      chunks.append(np.array(pending, dtype=bytes))
      pending = []
  if pending:
    chunks.append(np.array(pending, dtype=bytes))
  if not offsets:
    raise textfiles.DataError(path, None, "no documents")
  width = max(c.dtype.itemsize for c in chunks)
  ids = np.concatenate([c.astype(f"S{width}") for c in chunks])
  del chunks
  sorted_ids, order = _id_arrays(ids)  # equal ids keep file order: the later is the duplicate
  same = np.flatnonzero(sorted_ids[1:] == sorted_ids[:-1])
  if len(same):
    row = int(order[same + 1].min())
    docid = ids[row].decode("utf-8")
    raise textfiles.DataError(path, lines[row], f"duplicate document id {docid!r}")
  offsets.append(end)
  return CorpusIndex(np.frombuffer(offsets, np.int64), ids, sorted_ids, order)


class LazyCorpus(Mapping):
  """docid -> `data.Document` of a corpus file, each read from disk when asked for.

  Lookups (`corpus[d]`, `d in corpus`) are a binary search and one `os.pread` (safe from many
  threads); iteration yields docids in file order; `values()` and `items()` read the file
  front to back. Nothing read is kept.
  """

  def __init__(self, path: str, index: CorpusIndex):
    self.path, self.index = path, index
    self._fd: int | None = None
    self._lock = threading.Lock()

  def __len__(self) -> int:
    return len(self.index)

  def __iter__(self) -> Iterator[str]:
    for start in range(0, len(self.index), _CHUNK):
      for docid in self.index.ids[start:start + _CHUNK].tolist():
        yield docid.decode("utf-8")

  def __contains__(self, docid) -> bool:
    return self.index.row(docid) is not None

  def __getitem__(self, docid: str) -> Document:
    row = self.index.row(docid)
    if row is None:
      raise KeyError(docid)
    return self.document(row)

  def document(self, row: int) -> Document:
    """The document of file-order row `row`."""
    start, end = int(self.index.offsets[row]), int(self.index.offsets[row + 1])
    return self._parse(os.pread(self._file(), end - start, start), row)

  def values(self) -> ValuesView:
    return _StreamedValues(self)

  def items(self) -> ItemsView:
    return _StreamedItems(self)

  def documents(self) -> Iterator[Document]:
    """Every document in file order, read sequentially."""
    offsets = self.index.offsets
    with open(self.path, "rb") as f:
      f.seek(int(offsets[0]))
      for start in range(0, len(self.index), _CHUNK):
        sizes = np.diff(offsets[start:start + _CHUNK + 1]).tolist()
        for i, size in enumerate(sizes):
          yield self._parse(f.read(size), start + i)

  def _parse(self, raw: bytes, row: int) -> Document:
    try:
      doc = parse_corpus_record(self.path, raw)
      problem = None if doc.docid.encode("utf-8") == self.index.ids[row] else "another document"
    except textfiles.DataError as e:
      problem = e.problem
    if problem:
      raise textfiles.DataError(self.path, None, f"changed while in use: record {row + 1} is no "
                               f"longer where its index says ({problem}); run again to index it "
                               "afresh")
    return doc

  def _file(self) -> int:
    if self._fd is None:
      with self._lock:
        if self._fd is None:
          self._fd = os.open(self.path, os.O_RDONLY)
    return self._fd

  def __del__(self):
    if getattr(self, "_fd", None) is not None:
      os.close(self._fd)

  def __repr__(self) -> str:
    return f"LazyCorpus({self.path!r}, {len(self)} documents)"


class _StreamedValues(ValuesView):
  def __iter__(self):
    return self._mapping.documents()


class _StreamedItems(ItemsView):
  def __iter__(self):
    return ((doc.docid, doc) for doc in self._mapping.documents())


class FullTexts(Mapping):
  """docid -> `Document.full_text()` of a corpus, each read when asked for (for readers that
  take texts and look at a few of them, such as `metrics.answer_accuracy`)."""

  def __init__(self, corpus: Mapping[str, Document]):
    self._corpus = corpus

  def __getitem__(self, docid: str) -> str:
    return self._corpus[docid].full_text()

  def __contains__(self, docid) -> bool:
    return docid in self._corpus

  def __iter__(self) -> Iterator[str]:
    return iter(self._corpus)

  def __len__(self) -> int:
    return len(self._corpus)


def open_corpus(path: str, *, cache_dir: str | None = None) -> Mapping[str, Document]:
  """The corpus file as a `LazyCorpus`, its index read from `cache_dir` or built there first
  (in memory only when `cache_dir` is None); a gzipped TSV is loaded whole (`data.load_corpus`)."""
  if str(path).endswith(".gz"):
    logging.warning("%s is gzipped: its passages are loaded into memory (decompress it to read "
                    "them from disk on demand)", path)
    return load_corpus(path)
  if not cache_dir:
    return LazyCorpus(path, build_index(path))
  version = fingerprint(path, cache_dir)
  directory = layout.corpus_index(cache_dir, path, version)
  if not _is_index_of(directory, path, version):
    _build_into(directory, path, version)
  return LazyCorpus(path, CorpusIndex.load(directory))


def _meta(directory: str) -> dict | None:
  try:
    with open(os.path.join(directory, "meta.json"), encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _is_index_of(directory: str, path: str, version: str) -> bool:
  meta = _meta(directory)
  return bool(meta) and meta.get("format") == FORMAT and meta.get("fingerprint") == version \
      and meta.get("corpus") == os.path.realpath(path)


def _build_into(directory: str, path: str, version: str) -> None:
  """Builds the index in a temporary directory and renames it into place: a directory that
  exists is complete (another process of this machine may have finished first)."""
  logging.info("Indexing %s (once per version of the file) into %s", path, directory)
  index = build_index(path)
  parent = os.path.dirname(directory)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(dir=parent, prefix=".tmp-")
  try:
    index.save(tmp)
    with open(os.path.join(tmp, "meta.json"), "w", encoding="utf-8") as f:
      json.dump({"format": FORMAT, "corpus": os.path.realpath(path), "fingerprint": version,
                 "num_docs": len(index), "id_bytes": index.ids.dtype.itemsize}, f, indent=2)
    if os.path.exists(directory) and not _is_index_of(directory, path, version):
      shutil.rmtree(directory)  # left by an older format
    try:
      os.rename(tmp, directory)
    except OSError:
      if not _is_index_of(directory, path, version):  # else another process finished first
        raise
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  _remove_stale(directory)


def _remove_stale(current: str) -> None:
  """Removes the other versions of this file's index, the indexes of files that are gone, and
  what builds killed more than a day ago left."""
  parent = os.path.dirname(current)
  for version in glob.glob(os.path.join(parent, "*")):
    if version != current:
      shutil.rmtree(version, ignore_errors=True)
  for tmp in glob.glob(os.path.join(os.path.dirname(parent), "*", ".tmp-*")):
    if time.time() - os.path.getmtime(tmp) > 86400:
      shutil.rmtree(tmp, ignore_errors=True)
  for other in glob.glob(os.path.join(os.path.dirname(parent), "*", "*", "meta.json")):
    corpus = (_meta(os.path.dirname(other)) or {}).get("corpus")
    if corpus and not os.path.exists(corpus):
      shutil.rmtree(os.path.dirname(os.path.dirname(other)), ignore_errors=True)
