"""Readers and writers for data sets, queries, qrels, TREC runs and labels (no JAX).

Every reader fails on malformed input with a `DataError` naming the file, the
line and the problem, so a user can fix the line instead of guessing. Corpus files are
`corpus.py`'s.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from interdistill_jax import corpus as corpus_lib
from interdistill_jax import files
from interdistill_jax import textfiles
# Also data.X, as the package and its users have always named them.
from interdistill_jax.corpus import Document, iter_corpus, load_corpus  # noqa: F401
from interdistill_jax.textfiles import DataError, read_json  # noqa: F401 (data.read_json)

Qrels = dict[str, dict[str, int]]  # qid -> docid -> graded relevance
Run = dict[str, dict[str, float]]  # qid -> docid -> score


@dataclasses.dataclass(frozen=True)
class Query:
  qid: str
  text: str
  metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def answers(self) -> list[str]:
    return list(self.metadata.get("answers", []) or [])


def _check_unique(seen: set, key: str, path, lineno: int, what: str):
  if key in seen:
    raise DataError(path, lineno, f"duplicate {what} {key!r}")
  seen.add(key)


def load_queries(path: str | os.PathLike) -> dict[str, Query]:
  """BEIR `queries.jsonl` (`_id`, `text`, optional `metadata.answers`)."""
  queries: dict[str, Query] = {}
  for lineno, obj in textfiles.jsonl_objects(path):
    qid = textfiles.require_str(obj, "_id", path, lineno)
    text = textfiles.require_str(obj, "text", path, lineno)
    metadata = obj.get("metadata") or {}
    if not isinstance(metadata, dict):
      raise DataError(path, lineno, "field 'metadata' must be an object")
    answers = metadata.get("answers")
    if answers is not None and (
        not isinstance(answers, list) or not all(isinstance(a, str) for a in answers)):
      raise DataError(path, lineno, "metadata.answers must be a list of strings")
    if qid in queries:
      raise DataError(path, lineno, f"duplicate query id {qid!r}")
    queries[qid] = Query(qid, text, metadata)
  return queries


def load_qrels(path: str | os.PathLike) -> Qrels:
  """BEIR qrels TSV (header `query-id corpus-id score`) or TREC qrels (`qid 0 docid rel`)."""
  qrels: Qrels = {}
  for lineno, line in textfiles.lines(path):
    if not line.strip():
      continue
    parts = line.split("\t") if "\t" in line else line.split()
    parts = [p.strip() for p in parts]
    if lineno == 1 and parts[0].lower() in ("query-id", "query_id", "qid"):
      continue
    if len(parts) == 3:
      qid, docid, rel = parts
    elif len(parts) == 4:
      qid, _, docid, rel = parts
    else:
      raise DataError(path, lineno, f"expected 3 (BEIR) or 4 (TREC) fields, got {len(parts)}")
    qrels.setdefault(qid, {})[docid] = _grade(rel, path, lineno)
  return qrels


def _grade(text: str, path, lineno: int) -> int:
  """A relevance grade: an integer ("2", or "2.0" as some tools write it), never rounded."""
  try:
    value = float(text)
  except ValueError:
    raise DataError(path, lineno, f"relevance {text!r} is not a number") from None
  if not value.is_integer():
    raise DataError(path, lineno, f"relevance {text!r} is not an integer grade")
  return int(value)


def first_line_of(path: str | os.PathLike, key: str) -> int | None:
  """The number of the first line of a whitespace-separated file whose first field is `key`."""
  for lineno, line in textfiles.lines(path):
    fields = line.split()
    if fields and fields[0] == key:
      return lineno
  return None


def read_trec_run(path: str | os.PathLike) -> Run:
  """TREC run: `qid Q0 docid rank score tag` per line."""
  run: Run = {}
  for lineno, line in textfiles.lines(path):
    if not line.strip():
      continue
    parts = line.split()
    if len(parts) != 6:
      raise DataError(path, lineno, f"expected 6 fields 'qid Q0 docid rank score tag', got {len(parts)}")
    qid, _, docid, rank, score, _ = parts
    try:
      int(rank)
      value = float(score)
    except ValueError:
      raise DataError(path, lineno, f"rank {rank!r} or score {score!r} is not a number") from None
    docs = run.setdefault(qid, {})
    if docid in docs:
      raise DataError(path, lineno, f"document {docid!r} appears twice for query {qid!r}")
    docs[docid] = value
  return run


def ranked(scores: Mapping[str, float], depth: int | None = None) -> list[str]:
  """Docids best first, in the order trec_eval evaluates them: the one ranking order of the
  package (TREC files, metrics, re-ranking heads, the reader's passages).

  Args:
    scores: docid -> retrieval score of one query.
    depth: keep only the first `depth` docids (all when None).

  Returns:
    Docids sorted by float32 score descending, ties by docid descending
    (trec_eval sorts docnos in reverse on equal scores). Matching this order
    exactly is what makes our numbers equal pytrec_eval's on tied scores.
  """
  docids = list(scores)
  values = np.fromiter(scores.values(), dtype=np.float64, count=len(docids))
  if np.isnan(values).any():
    raise ValueError("a run score is NaN: the ranking would be undefined")
  # tolist() turns each float32 back into the exact Python float it stores.
  keys = values.astype(np.float32).tolist()
  order = sorted(zip(keys, docids), reverse=True)
  if depth is not None:
    order = order[:depth]
  return [docid for _, docid in order]


def write_trec_run(path: str | os.PathLike, run: Run, tag: str) -> None:
  """Writes a TREC run atomically (a crash never leaves half a file)."""
  lines = []
  for qid in run:
    for rank, docid in enumerate(ranked(run[qid]), start=1):
      lines.append(f"{qid} Q0 {docid} {rank} {run[qid][docid]:.6f} {tag}\n")
  atomic_write_text(path, "".join(lines))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
  """Writes `path` whole or not at all (a kill leaves the old file or the new one: `files`)."""
  files.atomic_write_text(path, text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
  atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_jsonl(path: str | os.PathLike) -> list[dict]:
  return [obj for _, obj in textfiles.jsonl_objects(path)]


def append_jsonl(path: str | os.PathLike, records: Iterable[Mapping]) -> None:
  """Appends one line per record (fsynced on local disk; `files.append_text`)."""
  files.append_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def load_labels(path: str | os.PathLike, dataset: Dataset | None = None) -> list[dict]:
  """`labels.jsonl` records, each checked against the artifact contract, and with `dataset`,
  against its queries and corpus (labels made over another data set stop at their first line)."""
  labels = []
  seen: set[str] = set()
  for lineno, obj in textfiles.jsonl_objects(path):
    qid = textfiles.require_str(obj, "qid", path, lineno)
    _check_unique(seen, qid, path, lineno, "query id")
    docids, ranking = obj.get("docids"), obj.get("ranking")
    if not isinstance(docids, list) or not isinstance(ranking, list):
      raise DataError(path, lineno, "'docids' and 'ranking' must be lists")
    if sorted(map(str, docids)) != sorted(map(str, ranking)) or len(set(docids)) != len(docids):
      raise DataError(path, lineno, "'ranking' is not a permutation of 'docids'")
    prefix = obj.get("ranked_prefix", len(ranking))
    if not isinstance(prefix, int) or not 0 <= prefix <= len(ranking):
      raise DataError(path, lineno, f"'ranked_prefix' must be an int in [0, {len(ranking)}]")
    if dataset is not None:
      _check_labelled(obj, dataset, path, lineno)
    labels.append(obj)
  return labels


def _check_labelled(record: Mapping, dataset: Dataset, path, lineno: int) -> None:
  unknown = ("query", record["qid"]) if record["qid"] not in dataset.queries else next(
      (("document", d) for d in record["docids"] if d not in dataset.corpus), None)
  if unknown:
    what, key = unknown
    raise DataError(path, lineno, f"{what} {key!r} is not in the data set {dataset.root} (labels "
                    "of another data set?); move labels.jsonl and stats.json away and run `label` "
                    "again (answered calls stay in its cache)")


def load_split_ids(path: str | os.PathLike) -> list[str]:
  """A split's query ids, one per line (`splits/{split}.txt`)."""
  qids: list[str] = []
  seen: set[str] = set()
  for lineno, line in textfiles.lines(path):
    qid = line.strip()
    if not qid:
      continue
    if len(qid.split()) != 1:
      raise DataError(path, lineno, f"expected one query id, got {qid!r}")
    _check_unique(seen, qid, path, lineno, "query id")
    qids.append(qid)
  return qids


def _trusted_length(record: Mapping, use_prefix: bool) -> int:
  """How many leading positions of a record's ranking are trusted: its ranked prefix (where a
  repair left the rest unranked) with `use_prefix`, else the whole order."""
  if use_prefix:
    return record.get("ranked_prefix", len(record["ranking"]))
  return len(record["ranking"])


def truncate_label(record: Mapping, list_size: int, *, use_prefix: bool = True
                   ) -> tuple[list[str], list[int], int]:
  """A labels.jsonl record cut to its first `list_size` candidates.

  Returns (docids in candidate order, ranking as indices into them, trusted prefix length).
  The teacher's order among the kept candidates stays, and so does the trust in those of
  them that were inside the ranked prefix.
  """
  docids = list(record["docids"][:list_size])
  kept = set(docids)
  trusted = set(record["ranking"][:_trusted_length(record, use_prefix)])
  ranking = [d for d in record["ranking"] if d in kept]
  pos = {d: j for j, d in enumerate(docids)}
  return docids, [pos[d] for d in ranking], sum(d in trusted for d in ranking)


def choices_cut(records: Sequence[Mapping], list_size: int, *, use_prefix: bool = True,
                top_k: int = 0) -> int:
  """How many records lose one of the teacher's trusted first choices (its first `top_k`, or the
  whole trusted prefix when 0) when cut to their first `list_size` candidates (0: none cut).

  Where one is lost, the best of the kept candidates becomes the target in its place
  (`truncate_label`): a loss over such lists learns a signal the teacher did not give.
  """
  if list_size <= 0:
    return 0
  cut = 0
  for r in records:
    trusted = _trusted_length(r, use_prefix)
    kept = set(r["docids"][:list_size])
    cut += any(d not in kept for d in r["ranking"][:min(trusted, top_k) if top_k > 0 else trusted])
  return cut


@dataclasses.dataclass(frozen=True)
class LabelLists:
  """Labelled queries as fixed-shape arrays, the one form every listwise loss reads.

  `ranking[i]` indexes `docids[i]` best first, `mask[i]` marks real candidates and `prefix[i]` is
  how many leading positions of the teacher's order are trusted (ListMLE scores only those).
  """

  qids: list[str]
  docids: list[list[str]]
  ranking: np.ndarray  # [Q, L] int32
  mask: np.ndarray     # [Q, L] bool
  prefix: np.ndarray   # [Q] int32

  def __len__(self) -> int:
    return len(self.qids)

  @property
  def pairs(self) -> list[tuple[str, str]]:
    """Every (qid, docid), row by row: the order `where` places them in."""
    return [(qid, d) for qid, docids in zip(self.qids, self.docids) for d in docids]

  @property
  def where(self) -> tuple[np.ndarray, np.ndarray]:
    """(rows, columns) of `pairs` in the [Q, L] arrays."""
    rows = [i for i, docids in enumerate(self.docids) for _ in docids]
    cols = [j for docids in self.docids for j in range(len(docids))]
    return np.array(rows, np.int64), np.array(cols, np.int64)


def label_lists(records: Sequence[Mapping], list_size: int = 0, *, use_prefix: bool = True,
                top_k: int = 0) -> LabelLists:
  """labels.jsonl records cut to `list_size` candidates (0: every candidate, padded to the longest).

  `use_prefix` trusts only the ranked prefix the teacher gave (else its whole order); `top_k` > 0
  trusts at most its first k positions (top-k ListMLE: every candidate stays in the denominators).
  """
  lists = [truncate_label(r, list_size or len(r["docids"]), use_prefix=use_prefix) for r in records]
  width = list_size or max((len(docids) for docids, _, _ in lists), default=0)
  q = len(lists)
  ranking, mask = np.zeros((q, width), np.int32), np.zeros((q, width), bool)
  prefix = np.array([min(p, top_k) if top_k > 0 else p for _, _, p in lists], np.int32)
  for i, (docids, order, _) in enumerate(lists):
    ranking[i, :len(order)] = order
    mask[i, :len(docids)] = True
  return LabelLists([r["qid"] for r in records], [docids for docids, _, _ in lists], ranking, mask,
                    prefix)


@dataclasses.dataclass
class Dataset:
  """A BEIR-layout directory: corpus, queries and the splits present.

  A split is `qrels/{split}.tsv` (its queries are those judged), or, for question sets that have
  answers but no relevance judgements (NQ-open, TriviaQA), `splits/{split}.txt`: its query ids,
  one per line. Qrels win when both exist.
  """

  root: str
  corpus: Mapping[str, Document]  # read from disk on demand (`corpus.LazyCorpus`)
  queries: dict[str, Query]

  def qrels(self, split: str) -> Qrels:
    path = os.path.join(self.root, "qrels", f"{split}.tsv")
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path}: no qrels for split {split!r}")
    return load_qrels(path)

  def has_qrels(self, split: str) -> bool:
    return os.path.exists(os.path.join(self.root, "qrels", f"{split}.tsv"))

  def _split_ids_path(self, split: str) -> str:
    return os.path.join(self.root, "splits", f"{split}.txt")

  def has_split(self, split: str) -> bool:
    return self.has_qrels(split) or os.path.exists(self._split_ids_path(split))

  def split_queries(self, split: str) -> dict[str, Query]:
    """Queries of a split: those with qrels in it in queries.jsonl order, else the split's id list."""
    if self.has_qrels(split):
      qrels = self.qrels(split)
      self._check_known(os.path.join(self.root, "qrels", f"{split}.tsv"), qrels)
      return {qid: q for qid, q in self.queries.items() if qid in qrels}
    path = self._split_ids_path(split)
    if not os.path.exists(path):
      raise FileNotFoundError(f"{self.root}: split {split!r} has neither qrels/{split}.tsv nor "
                              f"splits/{split}.txt")
    qids = load_split_ids(path)
    self._check_known(path, qids)
    return {qid: self.queries[qid] for qid in qids}

  def _check_known(self, path: str, qids: Iterable[str]) -> None:
    missing = [qid for qid in qids if qid not in self.queries]
    if missing:
      others = f" ({len(missing) - 1} more query ids are missing too)" if len(missing) > 1 else ""
      raise DataError(path, first_line_of(path, missing[0]),
                      f"query {missing[0]!r} is not in {os.path.join(self.root, 'queries.jsonl')}"
                      f"{others}")


def load_beir(root: str | os.PathLike, corpus_file: str = "corpus.jsonl", *,
              cache_dir: str | None = None) -> Dataset:
  """The data set in `root`; its passages are read from the corpus file on demand, through an
  index kept under `cache_dir` (`data.cache_dir`; None: built in memory each time)."""
  root = os.fspath(root)
  corpus_path = corpus_file if os.path.isabs(corpus_file) else os.path.join(root, corpus_file)
  for p in (corpus_path, os.path.join(root, "queries.jsonl")):
    if not os.path.exists(p):
      raise FileNotFoundError(f"{p} not found: expected a BEIR-layout directory "
                              "(corpus.jsonl, queries.jsonl, qrels/{split}.tsv or splits/{split}.txt)")
  return Dataset(root, corpus_lib.open_corpus(corpus_path, cache_dir=cache_dir),
                 load_queries(os.path.join(root, "queries.jsonl")))
