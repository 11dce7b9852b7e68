"""Retrieval-augmented QA: a reader LLM answers each question from a system's top-k passages.

A reader is any generating teacher backend (`openai`, `gemini`, `llamacpp`), configured by
`config.reader`, and called through the same cached, retrying, rate-limited `Runner` as labelling.
Every answer is committed to `{workdir}/eval/reader_cache.sqlite` before it is used, so a killed
evaluation resumes and a rerun makes no call. Predictions are scored with SQuAD's EM and F1
(`metrics.exact_match`, `metrics.f1_score`) against the questions' `metadata.answers`.

For each system `evaluate` adds `rag.em@{k}` and `rag.f1@{k}` (and `rag.questions`) to
`eval/{system}.json`, and writes `eval/rag/{system}.jsonl` (one line per question and k:
qid, k, prediction, answers, em, f1) and `eval/rag/{system}.stats.json` (reader, calls, time).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
from absl import logging
from tqdm import tqdm

from interdistill_jax import data as data_lib
from interdistill_jax import defaults, layout, metrics, teachers
from interdistill_jax.teachers import prompt
from interdistill_jax.teachers.base import Passage, Request
from interdistill_jax.teachers.cache import Cache, open_cache
from interdistill_jax.teachers.runner import Runner

# Changing the prompt below changes what the reader is asked: bump the version, which keys the
# cache (with the prompt text itself) and is recorded in eval/rag/*.stats.json.
PROMPT_VERSION = "rag-short-answer-v1"
SYSTEM = "Answer the question using the passages. Reply with the answer only, in a few words."
STOP = ("\n",)
BACKENDS = ("openai", "gemini", "llamacpp")


def passage_text(doc: data_lib.Document) -> str:
  """A passage as the reader sees it: its title, then its text."""
  return f"(Title: {doc.title}) {doc.text}" if doc.title else doc.text


def build_chat(question: str, passages: Sequence[str]) -> tuple[tuple[str, str], ...]:
  """(role, content) turns asking for a short answer to `question` from `passages` (best first)."""
  body = "\n".join(f"[{i}] {p}" for i, p in enumerate(passages, start=1))
  question = " ".join(question.split())
  return (("system", SYSTEM), ("user", f"{body}\n\nQuestion: {question}\nAnswer:"))


def clean_answer(text: str) -> str:
  """The first non-empty line of a reply, without an echoed `Answer:` prefix."""
  for line in text.splitlines():
    line = line.strip()
    if line:
      if line.lower().startswith("answer:"):
        line = line[len("answer:"):].strip()
      return line
  return ""


def backend_config(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config.reader` as the `config.teacher` section that `teachers.make_backend` reads."""
  if cfg.backend not in BACKENDS:
    raise ValueError(f"reader.backend must be one of {BACKENDS}, got {cfg.backend!r}")
  out = defaults.teacher_config()
  out.update({key: cfg[key] for key in defaults.client_config()})
  out.mode = "listwise"  # the generating path; the reader's requests carry their own prompt
  if cfg.backend == "llamacpp" and cfg.n_ctx <= 0:
    per_passage = cfg.max_passage_tokens + 32 if cfg.max_passage_tokens > 0 else 512
    out.n_ctx = max(cfg.ks) * per_passage + 512
  return out


def _top_k(run: data_lib.Run, qid: str, k: int) -> list[str]:
  return data_lib.ranked(run.get(qid, {}), depth=k)


async def _answer_all(runner: Runner, requests: Mapping[Any, Request],
                      desc: str) -> tuple[dict[Any, str], dict[Any, str]]:
  """Raw answers by key, and the keys whose calls failed (a fatal failure raises)."""
  answers: dict[Any, str] = {}
  failed: dict[Any, str] = {}
  bar = tqdm(total=len(requests), desc=desc, unit="call")

  async def one(key, request: Request) -> None:
    try:
      answer, _ = await runner.answer(request)
    except teachers.CallFailed as e:
      if e.fatal:
        raise
      failed[key] = str(e)
      logging.error("reader call for %s failed: %s", key, e)
    else:
      answers[key] = answer.text
    bar.update(1)
    bar.set_postfix(calls=runner.stats.answered, cached=runner.stats.cache_hits, refresh=False)

  try:
    await asyncio.gather(*(one(key, r) for key, r in requests.items()))
  finally:
    bar.close()
  return answers, failed


async def _read(cfg: ml_collections.ConfigDict, cache_path: str, dataset: data_lib.Dataset,
                queries: Mapping[str, data_lib.Query], run: data_lib.Run, qids: Sequence[str],
                system: str, seed: int, local_dir: str) -> tuple[dict, dict, dict, dict]:
  with open_cache(cache_path, local_dir=local_dir) as cache:
    backend = teachers.make_backend(backend_config(cfg), seed=seed)
    try:
      return await _read_with(cfg, cache, backend, dataset, queries, run, qids, system, seed)
    finally:
      await backend.aclose()


async def _read_with(cfg: ml_collections.ConfigDict, cache: Cache, backend,
                     dataset: data_lib.Dataset, queries: Mapping[str, data_lib.Query],
                     run: data_lib.Run, qids: Sequence[str], system: str,
                     seed: int) -> tuple[dict, dict, dict, dict]:
  backend.prompt_version = PROMPT_VERSION  # before the runner takes the backend's identity
  runner = Runner.from_section(backend, cache, cfg, seed=seed)
  counter = backend.token_counter() or prompt.make_token_counter(cfg.tokenizer)
  shown: dict[str, str] = {}  # docid -> passage text cut to the budget, computed once
  requests: dict[tuple[str, int], Request] = {}
  for k in cfg.ks:
    for qid in qids:
      docids = _top_k(run, qid, k)
      for d in docids:
        if d not in shown:
          shown[d] = prompt.truncate_passages([passage_text(dataset.corpus[d])], counter,
                                              cfg.max_passage_tokens)[0]
      question = queries[qid].text
      chat = build_chat(question, [shown[d] for d in docids])
      requests[(qid, k)] = Request(question, tuple(Passage(d, shown[d]) for d in docids),
                                   chat=chat, stop=STOP)
  start = time.monotonic()
  answers, failed = await _answer_all(runner, requests, f"reader ({backend.name}, {system})")
  seconds = time.monotonic() - start
  return answers, failed, runner.stats.to_json(), {
      "provenance": backend.provenance(), "seconds": round(seconds, 3)}


def rag_metrics(cfg: ml_collections.ConfigDict, workdir: str, dataset: data_lib.Dataset,
                queries: Mapping[str, data_lib.Query], run: data_lib.Run, system: str, *,
                seed: int, cache_dir: str) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
  """Reader EM / F1 at each `reader.ks` for one system's run.

  Args:
    cfg: `config.reader`.
    workdir: the experiment directory; the cache and predictions go under `eval/`.
    dataset: for the passages' texts.
    queries: the evaluated split's queries; those with answers are read (the first
      `reader.max_questions` of them when it is positive).
    run: the system's ranking, qid -> docid -> score.
    system: the system's name (file names).
    seed: `config.seed`; seeds the backend and the retry jitter.
    cache_dir: `data.cache_dir`, where the cache is mirrored while in use when the workdir is a
      bucket.

  Returns:
    (aggregate, per_query): aggregate holds `rag.em@{k}`, `rag.f1@{k}` (means over the questions
    read) and `rag.questions`; per_query[`rag.em@{k}`][qid] is one question's score.

  Raises:
    teachers.CallFailed: when some calls failed after every retry (answered ones are cached:
      rerun), or one failed in a way that stops the run (a refused key, an exhausted quota).
  """
  qids = [qid for qid, q in queries.items() if q.answers]
  if cfg.max_questions > 0:
    qids = qids[:cfg.max_questions]
  if not qids:
    logging.warning("reader: no question of %s has answers; no RAG metrics", system)
    return {}, {}
  out_dir = layout.eval_file(workdir, "rag")
  answers, failed, calls, info = asyncio.run(_read(
      cfg, layout.eval_file(workdir, "reader_cache.sqlite"), dataset, queries, run, qids, system,
      seed, cache_dir))
  if failed:
    raise teachers.CallFailed(
        f"reader: {len(failed)} calls failed for system {system!r} (e.g. "
        f"{next(iter(failed.values()))}); run `evaluate` again: answered calls are cached",
        cause="retries")
  aggregate: dict[str, float] = {}
  per_query: dict[str, dict[str, float]] = {}
  lines = []
  for k in cfg.ks:
    em, f1 = per_query.setdefault(f"rag.em@{k}", {}), per_query.setdefault(f"rag.f1@{k}", {})
    for qid in qids:
      gold = queries[qid].answers
      prediction = clean_answer(answers[(qid, k)])
      em[qid], f1[qid] = metrics.exact_match(prediction, gold), metrics.f1_score(prediction, gold)
      lines.append({"qid": qid, "k": k, "prediction": prediction, "answers": gold, "em": em[qid],
                    "f1": round(f1[qid], 6)})
    aggregate[f"rag.em@{k}"] = sum(em.values()) / len(qids)
    aggregate[f"rag.f1@{k}"] = sum(f1.values()) / len(qids)
  aggregate["rag.questions"] = len(qids)
  data_lib.atomic_write_text(os.path.join(out_dir, f"{system}.jsonl"),
                             "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines))
  data_lib.write_json(os.path.join(out_dir, f"{system}.stats.json"), {
      "system": system, "reader": info["provenance"] | {"prompt_version": PROMPT_VERSION},
      "ks": list(cfg.ks), "questions": len(qids), "max_passage_tokens": cfg.max_passage_tokens,
      "calls": calls, "seconds": info["seconds"],
      "seconds_per_question": round(info["seconds"] / len(qids), 3)})
  logging.info("reader (%s) on %s, %d questions: %s; %d calls, %d from cache, %.1fs", cfg.backend,
               system, len(qids), {k: round(v, 4) for k, v in aggregate.items()}, calls["answered"],
               calls["cache_hits"], info["seconds"])
  return aggregate, per_query
