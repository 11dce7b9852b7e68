"""Open-domain QA question sets (NQ-open, TriviaQA) as a BEIR-layout directory without qrels.

These sets have questions and answer strings but no relevance judgements, and their corpus is a
DPR passage TSV (`psgs_w100.tsv`: `id text title`) that `data.corpus_file` names. Nothing here
needs judgements: labels come from the teacher, and evaluation scores answers (`top{k}_acc`, DPR's
string match, and the reader's EM / F1). `materialize` writes, once per source:

  queries.jsonl       `_id`, `text`, `metadata.answers` (+ `metadata.source`)
  splits/{split}.txt  the query ids of each split (`data.train_split`, `data.test_split`)
  qa_source.json      what it was built from; written last, so its presence means complete

Sources (`data.qa.format`):
  - "dpr":  DPR's question files, `question<TAB>["answer 1", "answer 2"]` per line (a Python
            list literal, as in `nq-train.qa.csv` / `trivia-test.qa.csv`); `data.qa.train` and
            `data.qa.test` are their paths.
  - "tfds": tensorflow-datasets `natural_questions_open` (`question`, `answer`: list of strings) or
            `trivia_qa/unfiltered.nocontext` / `trivia_qa/rc.nocontext` (`question`, `question_id`,
            `answer.aliases`, `answer.normalized_aliases`); `data.qa.train` and `data.qa.test`
            are split names (DPR's NQ and TriviaQA test sets are these `validation` splits).
"""

from __future__ import annotations

import ast
import csv
import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np
from absl import logging

from interdistill_jax import data as data_lib

FORMATS = ("dpr", "tfds")
_VERSION = 1  # Bump when the materialised layout changes: existing directories are rebuilt.


@dataclasses.dataclass(frozen=True)
class Question:
  qid: str
  text: str
  answers: tuple[str, ...]
  source: str  # Where it came from: "file:line" or "tfds:name[split]#index".


def read_dpr_questions(path: str | os.PathLike, split: str) -> list[Question]:
  """DPR's question file: `question<TAB>["answer", ...]` per line; ids `{split}-{line index}`."""
  questions = []
  with open(path, encoding="utf-8", newline="") as f:
    reader = csv.reader(f, delimiter="\t")
    for index, row in enumerate(reader):
      lineno = reader.line_num
      if not row or not "".join(row).strip():
        continue
      if len(row) != 2:
        raise data_lib.DataError(path, lineno, f"expected 'question<TAB>[answers]', got {len(row)} "
                                 "tab-separated fields")
      question, answers_field = row
      try:
        answers = ast.literal_eval(answers_field.strip())
      except (ValueError, SyntaxError):
        raise data_lib.DataError(path, lineno, f"answers {answers_field[:80]!r} are not a list "
                                 "literal like [\"answer 1\", \"answer 2\"]") from None
      if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
        raise data_lib.DataError(path, lineno, "answers must be a list of strings")
      questions.append(_question(f"{split}-{index}", question, answers, f"{path}:{lineno}",
                                 path, lineno))
  if not questions:
    raise data_lib.DataError(path, None, "no questions")
  return questions


def _question(qid: str, text: str, answers: Iterable[str], source: str, path, lineno) -> Question:
  text = " ".join(text.split())
  answers = tuple(dict.fromkeys(a.strip() for a in answers if a.strip()))
  if not text:
    raise data_lib.DataError(path, lineno, "empty question")
  if not answers:
    raise data_lib.DataError(path, lineno, "no answer")
  return Question(qid, text, answers, source)


def _str(value: Any) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _strings(value: Any) -> list[str]:
  if value is None:
    return []
  if isinstance(value, (str, bytes)):
    return [_str(value)]
  return [_str(v) for v in (value.tolist() if isinstance(value, np.ndarray) else value)]


def _field(record: Mapping[str, Any], dotted: str) -> Any:
  """`record["answer"]["aliases"]` or a flattened `record["answer.aliases"]`."""
  if dotted in record:
    return record[dotted]
  value: Any = record
  for part in dotted.split("."):
    if not isinstance(value, Mapping) or part not in value:
      return None
    value = value[part]
  return value


def questions_from_records(records: Iterable[Mapping[str, Any]], *, name: str,
                           split: str) -> list[Question]:
  """Questions from tensorflow-datasets records (as `tfds.as_numpy` yields them: bytes, arrays).

  NQ-open's `answer` is a list of strings; TriviaQA's is a dict whose `aliases` and
  `normalized_aliases` (nested, or flattened as `answer.aliases`) are the accepted answers. Ids are
  `{split}-{index}`, the record's position in the split.
  """
  questions = []
  where = f"tfds:{name}[{split}]"
  for index, record in enumerate(records):
    answer = _field(record, "answer")
    if isinstance(answer, Mapping) or _field(record, "answer.aliases") is not None:
      answers = (_strings(_field(record, "answer.aliases"))
                 + _strings(_field(record, "answer.normalized_aliases")))
      if not answers:
        answers = _strings(_field(record, "answer.value"))
    else:
      answers = _strings(answer)
    question = _field(record, "question")
    if question is None:
      raise data_lib.DataError(where, index, "record without a 'question' field")
    questions.append(_question(f"{split}-{index}", _str(question), answers, f"{where}#{index}",
                               where, index))
  if not questions:
    raise data_lib.DataError(where, None, "no questions")
  return questions


def tfds_records(name: str, split: str, data_dir: str = "") -> Iterator[Mapping[str, Any]]:
  """A tensorflow-datasets split as numpy records (prepared by tfds; downloads if allowed).

  Uses `tfds.load` when TensorFlow is installed, else `tfds.data_source` (array_record, no TF).
  """
  import importlib.util

  import tensorflow_datasets as tfds
  kwargs = dict(split=split, data_dir=os.path.expanduser(data_dir) if data_dir else None)
  if importlib.util.find_spec("tensorflow") is not None:
    yield from tfds.as_numpy(tfds.load(name, **kwargs))
  else:
    yield from tfds.data_source(name, builder_kwargs={"file_format": "array_record"}, **kwargs)


def load_questions(qa: ml_collections.ConfigDict, source: str, split: str) -> list[Question]:
  """One split's questions; `source` is a DPR file (format "dpr") or a tfds split name."""
  if qa.format == "dpr":
    path = os.path.expanduser(source)
    if not source:
      raise FileNotFoundError(f"data.qa.{split} is empty: pass the DPR question file of the {split} "
                              f"split (question<TAB>[answers]), e.g. --config.data.qa.{split}=/path/"
                              f"nq-{split}.qa.csv")
    if not os.path.exists(path):
      raise FileNotFoundError(f"data.qa.{split}: question file {path!r} not found")
    return read_dpr_questions(path, split)
  if qa.format == "tfds":
    records = tfds_records(qa.tfds_name, source, qa.tfds_data_dir)
    return questions_from_records(records, name=qa.tfds_name, split=source)
  raise ValueError(f"data.qa.format must be one of {FORMATS}, got {qa.format!r}")


def sample_train(questions: Sequence[Question], num: int, seed: int) -> list[Question]:
  """`num` questions drawn without replacement by a seeded generator, in source order (0: all)."""
  if num <= 0 or num >= len(questions):
    return list(questions)
  picked = np.random.default_rng(seed).choice(len(questions), size=num, replace=False)
  return [questions[i] for i in sorted(picked.tolist())]


def source_spec(data_config: ml_collections.ConfigDict) -> dict[str, Any]:
  """What identifies a materialised directory: the source, its files' sizes and times, the sizes."""
  qa = data_config.qa
  spec: dict[str, Any] = {"version": _VERSION, "format": qa.format, "num_train": qa.num_train,
                          "num_test": qa.num_test, "seed": qa.seed,
                          "splits": [data_config.train_split, data_config.test_split]}
  for split in ("train", "test"):
    source = qa[split]
    if qa.format == "dpr":
      path = os.path.realpath(os.path.expanduser(source))
      st = os.stat(path) if os.path.exists(path) else None
      spec[split] = [path, st.st_size if st else None, int(st.st_mtime) if st else None]
    else:
      spec[split] = [qa.tfds_name, source, qa.tfds_data_dir]
  return spec


def target_dir(data_config: ml_collections.ConfigDict, spec: Mapping[str, Any]) -> str:
  """`data.dir`, or a directory under `data.cache_dir` named by the source."""
  if data_config.dir:
    return os.path.expanduser(data_config.dir)
  digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
  name = data_config.name or (data_config.qa.tfds_name.replace("/", "_")
                              if data_config.qa.format == "tfds" else "qa")
  return os.path.join(os.path.expanduser(data_config.cache_dir), "qa", f"{name}-{digest}")


def _check_corpus(data_config: ml_collections.ConfigDict) -> None:
  path = os.path.expanduser(data_config.corpus_file)
  if not os.path.isabs(path) or not os.path.exists(path):
    raise FileNotFoundError(
        f"data.corpus_file={data_config.corpus_file!r}: a question set needs the absolute path of a "
        "DPR passage TSV (id<TAB>text<TAB>title, e.g. psgs_w100.tsv); pass "
        "--config.data.corpus_file=/abs/path/psgs_w100.tsv")


def materialize(data_config: ml_collections.ConfigDict) -> str:
  """The BEIR-layout directory of `data.qa`'s questions, written unless already complete."""
  _check_corpus(data_config)
  qa = data_config.qa
  spec = source_spec(data_config)
  root = target_dir(data_config, spec)
  marker = os.path.join(root, "qa_source.json")
  if os.path.exists(marker):
    with open(marker, encoding="utf-8") as f:
      if json.load(f) == spec:
        return root
    logging.warning("%s was built from another source or size; rebuilding it", root)
    os.remove(marker)
  train = sample_train(load_questions(qa, qa.train, "train"), qa.num_train, qa.seed)
  test = load_questions(qa, qa.test, "test")
  if qa.num_test > 0:
    test = test[:qa.num_test]
  records = [{"_id": q.qid, "text": q.text,
              "metadata": {"answers": list(q.answers), "source": q.source}} for q in [*train, *test]]
  data_lib.atomic_write_text(os.path.join(root, "queries.jsonl"), "".join(
      json.dumps(r, ensure_ascii=False) + "\n" for r in records))
  for split, questions in ((data_config.train_split, train), (data_config.test_split, test)):
    data_lib.atomic_write_text(os.path.join(root, "splits", f"{split}.txt"),
                               "".join(q.qid + "\n" for q in questions))
  data_lib.write_json(marker, spec)
  logging.info("Wrote %d training and %d test questions (%s) to %s", len(train), len(test),
               qa.format, root)
  return root
