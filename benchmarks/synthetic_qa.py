"""A synthetic open-domain QA set in DPR's formats, its answers planted in known passages.

`generate` writes, into one directory, from a seed alone:

  psgs_w100.tsv     `num_passages` passages as DPR's `id<TAB>text<TAB>title` (its header, ids 1..N),
                    about 100 words each from the encoder's vocabulary; streamed, never in memory
  nq-train.qa.csv   DPR's question files, `question<TAB>["answer"]` per line: `num_train` and
  nq-test.qa.csv    `num_test` questions of random words, each answered by a made-up word
                    ("xq" and five letters) that appears in one passage of the corpus, its gold
  plan.json         the planting: each question's gold and distractor rows and their cosines,
                    and the answer accuracy the planting implies

and the corpus's embeddings as a finished shard store where `retrieve` looks for them
(`retrieval.shard_store_dir`), so that no passage is encoded. The query embeddings are the real
ones: the config's encoder embeds the questions, and each question's passages are planted around
its embedding q: its gold at cosine c_g, and `distractors` more passages (its words, no answer) at
cosines c_d, as e = c q + sqrt(1 - c^2) u with u a random unit vector orthogonal to q. c_g is
uniform in [0.55, 0.95] except for a `lost_fraction` of questions whose gold lies at [0.15, 0.35],
among the background; c_d is uniform in [0.45, 0.85]. Every other passage is background: unit
vectors around 1,000 random centres (clusters, as real embeddings have), far from every question.
A question's top-k answer accuracy then depends on how many of its distractors outrank its gold,
and, for lost golds, on how many background passages do: `planted_accuracy` is what the initial
retriever scores when no other passage comes between (passages of other questions and the
background can only lower it, but for ties within float16's rounding of the stored embeddings).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Iterator, Sequence

import numpy as np

CORPUS_FILE = "psgs_w100.tsv"
QUESTION_FILES = {"train": "nq-train.qa.csv", "test": "nq-test.qa.csv"}
PASSAGE_WORDS = 100
QUESTION_WORDS = 7
TITLE_WORDS = 2
_CHUNK = 10_000  # passages generated per step
_CENTRES = 1_000


@dataclasses.dataclass(frozen=True)
class Plan:
  """What is generated; every passage, question and embedding is a function of these."""

  num_passages: int
  num_train: int = 1000
  num_test: int = 500
  distractors: int = 10
  lost_fraction: float = 0.1
  seed: int = 0

  @property
  def num_questions(self) -> int:
    return self.num_train + self.num_test

  @property
  def num_planted(self) -> int:
    return self.num_questions * (1 + self.distractors)


@dataclasses.dataclass(frozen=True)
class Question:
  split: str
  text: str
  answer: str
  gold_cos: float
  distractor_cos: tuple[float, ...]


def vocabulary(vocab_path: str) -> np.ndarray:
  """Whole lowercase words of a WordPiece vocabulary (no pieces, no "xq" words: those are the
  answers), in file order."""
  with open(vocab_path, encoding="utf-8") as f:
    words = [w.strip() for w in f]
  return np.array([w for w in words if w.isascii() and w.isalpha() and w.islower()
                   and 3 <= len(w) <= 12 and not w.startswith("xq")])


def answer(j: int) -> str:
  """Question j's answer: a word no passage but its gold holds."""
  letters = []
  for _ in range(5):
    j, r = divmod(j, 26)
    letters.append(chr(97 + r))
  return "xq" + "".join(reversed(letters))


def _rng(plan: Plan, *stream: int) -> np.random.Generator:
  return np.random.default_rng([plan.seed, *stream])


def questions(plan: Plan, words: np.ndarray) -> list[Question]:
  """The questions, train first: random words, a made-up answer, the planted cosines."""
  if plan.num_questions > 26 ** 5:
    raise ValueError(f"at most {26 ** 5} questions, asked for {plan.num_questions}")
  rng = _rng(plan, 1)
  out = []
  for j in range(plan.num_questions):
    text = "what " + " ".join(words[rng.integers(0, len(words), QUESTION_WORDS)])
    lost = rng.random() < plan.lost_fraction
    gold = rng.uniform(0.15, 0.35) if lost else rng.uniform(0.55, 0.95)
    others = tuple(rng.uniform(0.45, 0.85, plan.distractors).tolist())
    out.append(Question("train" if j < plan.num_train else "test", text, answer(j), float(gold),
                        others))
  return out


def planted_rows(plan: Plan) -> np.ndarray:
  """[questions, 1 + distractors] int64 corpus rows: each question's gold, then its distractors."""
  if plan.num_planted > plan.num_passages:
    raise ValueError(f"{plan.num_questions} questions x (1 gold + {plan.distractors} distractors) "
                     f"need {plan.num_planted} passages; the corpus has {plan.num_passages}")
  rows = _rng(plan, 2).choice(plan.num_passages, plan.num_planted, replace=False)
  return rows.astype(np.int64).reshape(plan.num_questions, 1 + plan.distractors)


class _Planted:
  """The planted rows of a range of corpus rows: (row, question, role; 0 = gold)."""

  def __init__(self, rows: np.ndarray):
    flat = rows.ravel()
    self._order = np.argsort(flat, kind="stable")
    self._sorted = flat[self._order]
    self._width = rows.shape[1]

  def between(self, start: int, stop: int) -> list[tuple[int, int, int]]:
    lo, hi = np.searchsorted(self._sorted, [start, stop])
    return [(int(self._sorted[i]), *divmod(int(self._order[i]), self._width)) for i in range(lo, hi)]


def _docid(row: int) -> str:
  return str(row + 1)  # DPR's ids: 1..N


def write_corpus(path: str, plan: Plan, words: np.ndarray, qs: Sequence[Question],
                 rows: np.ndarray) -> None:
  """The passage TSV, streamed `_CHUNK` passages at a time. A gold passage holds 3 of its
  question's words and the answer, a distractor the 3 words only, at random places."""
  planted = _Planted(rows)
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write("id\ttext\ttitle\n")
    for c, start in enumerate(range(0, plan.num_passages, _CHUNK)):
      n = min(_CHUNK, plan.num_passages - start)
      rng = _rng(plan, 3, c)
      text = words[rng.integers(0, len(words), (n, PASSAGE_WORDS))]
      title = words[rng.integers(0, len(words), (n, TITLE_WORDS))]
      lines = [[" ".join(t), " ".join(h)] for t, h in zip(text.tolist(), title.tolist())]
      for row, j, role in planted.between(start, start + n):
        own = text[row - start].tolist()
        q_words = qs[j].text.split()[1:]
        places = rng.choice(PASSAGE_WORDS, 4, replace=False)
        for p, w in zip(places[:3], rng.choice(q_words, 3, replace=False)):
          own[p] = w
        if role == 0:
          own[places[3]] = qs[j].answer
        lines[row - start][0] = " ".join(own)
      f.writelines(f"{_docid(start + i)}\t{t}\t{h}\n" for i, (t, h) in enumerate(lines))
  os.replace(tmp, path)


def write_questions(directory: str, qs: Sequence[Question]) -> dict[str, str]:
  """DPR's question files, one per split: `question<TAB>["answer"]`."""
  paths = {}
  for split, name in QUESTION_FILES.items():
    paths[split] = os.path.join(directory, name)
    with open(paths[split], "w", encoding="utf-8") as f:
      f.writelines(f"{q.text}\t{json.dumps([q.answer])}\n" for q in qs if q.split == split)
  return paths


def _near(q: np.ndarray, cos: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Unit vectors [len(cos), dim] at the given cosines to the unit vector q."""
  u = rng.standard_normal((len(cos), q.shape[0]))
  u -= np.outer(u @ q, q)
  u /= np.linalg.norm(u, axis=1, keepdims=True)
  return cos[:, None] * q[None] + np.sqrt(1.0 - cos ** 2)[:, None] * u


def embedding_shards(plan: Plan, qs: Sequence[Question], rows: np.ndarray, query_emb: np.ndarray,
                     shard_size: int) -> Iterator[tuple[list[str], np.ndarray]]:
  """(docids, [n, dim] float32) of each shard of the corpus, in row order (see the docstring)."""
  dim = query_emb.shape[1]
  q = query_emb / np.linalg.norm(query_emb, axis=1, keepdims=True)
  centres = _rng(plan, 4).standard_normal((_CENTRES, dim), dtype=np.float32)
  planted = _Planted(rows)
  for s, start in enumerate(range(0, plan.num_passages, shard_size)):
    n = min(shard_size, plan.num_passages - start)
    rng = _rng(plan, 5, s)
    emb = rng.standard_normal((n, dim), dtype=np.float32)
    emb *= 0.5
    emb += centres[rng.integers(0, _CENTRES, n)]
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    for row, j, role in planted.between(start, start + n):
      cos = qs[j].gold_cos if role == 0 else qs[j].distractor_cos[role - 1]
      emb[row - start] = _near(q[j], np.array([cos]), _rng(plan, 6, j, role))[0]
    yield [_docid(r) for r in range(start, start + n)], emb.astype(np.float32)


def planted_rank(q: Question) -> int:
  """Where retrieval ranks a question's gold if no background passage comes between: 1 + the
  number of its distractors above it."""
  return 1 + sum(c > q.gold_cos for c in q.distractor_cos)


def planted_accuracy(ranks: Sequence[int], ks: Sequence[int]) -> dict[str, float]:
  """top{k}_acc of questions whose golds rank `ranks` (`planted_rank`)."""
  ranks = np.asarray(ranks)
  return {f"top{k}_acc": float(np.mean(ranks <= k)) for k in ks}


def generate(directory: str, plan: Plan, config, *, workdir: str, shard_size: int) -> dict:
  """Writes the corpus, the question files, plan.json and the embedding store that `retrieve`
  under `config` (its model, `data.corpus_file` = directory/psgs_w100.tsv, `encode.shard_dtype`)
  finds complete in `workdir`. Returns sizes and timings."""
  from interdistill_jax import assets, retrieval, sharding, shards  # noqa: PLC0415

  os.makedirs(directory, exist_ok=True)
  corpus_path = os.path.join(directory, CORPUS_FILE)
  if os.path.realpath(config.data.corpus_file) != os.path.realpath(corpus_path):
    raise ValueError(f"data.corpus_file={config.data.corpus_file!r}: the rehearsal writes "
                     f"{corpus_path}")
  t = {}
  start = time.perf_counter()
  words = vocabulary(os.path.join(assets.model_dir(config.model.init), "vocab.txt"))
  qs = questions(plan, words)
  rows = planted_rows(plan)
  write_corpus(corpus_path, plan, words, qs, rows)
  write_questions(directory, qs)
  t["corpus_s"] = time.perf_counter() - start
  start = time.perf_counter()
  encoder = retrieval.Encoder.from_config(config, mesh=sharding.mesh_from_config(config.mesh))
  query_emb = encoder.encode([q.text for q in qs], tower="query", desc="encode questions")
  del encoder
  t["questions_s"] = time.perf_counter() - start
  start = time.perf_counter()
  model_id = retrieval.model_id(config.model)
  corpus_id = retrieval.corpus_id(corpus_path, config.data.cache_dir)
  store_dir = retrieval.shard_store_dir(workdir, model_id=model_id, corpus_id=corpus_id,
                                        max_doc_length=config.model.max_doc_length,
                                        shard_dtype=config.encode.shard_dtype)
  settings = shards.store_settings(dtype=config.encode.shard_dtype, shard_size=shard_size,
                                   meta={"model": model_id, "corpus": corpus_id})
  store = shards.write_store(store_dir, embedding_shards(plan, qs, rows, query_emb, shard_size),
                             settings=settings)
  t["shards_s"] = time.perf_counter() - start
  record = {
      "plan": dataclasses.asdict(plan),
      "vocabulary_words": len(words),
      "questions": [{"split": q.split, "text": q.text, "answer": q.answer,
                     "gold": _docid(int(r[0])), "gold_cos": q.gold_cos,
                     "distractors": [_docid(int(x)) for x in r[1:]],
                     "distractor_cos": list(q.distractor_cos), "planted_rank": planted_rank(q)}
                    for q, r in zip(qs, rows)],
  }
  with open(os.path.join(directory, "plan.json"), "w", encoding="utf-8") as f:
    json.dump(record, f)
  return {"timings": t, "shard_store": store_dir, "num_shards": store.num_shards,
          "dim": store.dim, "corpus_mb": os.path.getsize(corpus_path) / 2**20,
          "shards_mb": _size_mb(store_dir)}


def _size_mb(directory: str) -> float:
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(directory)
             for f in files) / 2**20
