"""Black-box LLM teachers: one interface, `await teacher.rank(query, passages)` -> ranking + provenance.

Backends: `openai` (any OpenAI-compatible server), `gemini` (google-genai), `llamacpp` (in-process
GGUF, listwise or query likelihood) and `simulated` (from qrels; for tests and controlled
experiments). `make_teacher(config.teacher, ...)` builds one from the config.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import ml_collections
from absl import logging

from interdistill_jax.teachers import prompt
from interdistill_jax.teachers.base import POINTWISE, Backend, Passage
from interdistill_jax.teachers.cache import Cache
from interdistill_jax.teachers.runner import CallFailed, Runner
from interdistill_jax.teachers.teacher import ListwiseTeacher, PointwiseTeacher, QueryRanking, Teacher

BACKENDS = ("openai", "gemini", "llamacpp", "simulated")
# The environment variables each remote backend takes its API key from, first one first.
KEY_VARS = {"openai": ("OPENAI_API_KEY",), "gemini": ("GEMINI_API_KEY", "GOOGLE_API_KEY")}
__all__ = ["BACKENDS", "KEY_VARS", "CallFailed", "Passage", "QueryRanking", "Teacher", "api_key", "make_backend",
           "make_teacher"]


def api_key(backend: str) -> str | None:
  """The backend's API key from the environment: the only place keys are read.

  Keys go straight to the SDK client; they are never logged, cached or written to any output.
  """
  values = [os.environ.get(name) for name in KEY_VARS.get(backend, ())]
  present = [v for v in values if v]
  if len(set(present)) > 1:
    logging.warning("%s are set and differ; using %s", " and ".join(KEY_VARS[backend]),
                    KEY_VARS[backend][0])
  return present[0] if present else None


def make_backend(cfg: ml_collections.ConfigDict, *,
                 relevance: Mapping[str, Mapping[str, int]] | None = None, seed: int = 0) -> Backend:
  """The backend `cfg.backend` names (cfg is `config.teacher`)."""
  if cfg.mode != "listwise" and cfg.backend != "llamacpp":
    raise ValueError(f"teacher.mode={cfg.mode!r} needs teacher.backend='llamacpp' "
                     f"({cfg.backend!r} only ranks listwise)")
  if cfg.backend == "openai":
    from interdistill_jax.teachers.openai_backend import OpenAIBackend
    return OpenAIBackend(cfg.model, api_key=api_key("openai"), base_url=cfg.base_url,
                         timeout=cfg.timeout, temperature=cfg.temperature,
                         max_output_tokens=cfg.max_output_tokens)
  if cfg.backend == "gemini":
    from interdistill_jax.teachers.gemini_backend import GeminiBackend
    return GeminiBackend(cfg.model, api_key=api_key("gemini"), base_url=cfg.base_url,
                         api_version=cfg.api_version, timeout=cfg.timeout,
                         temperature=cfg.temperature, max_output_tokens=cfg.max_output_tokens)
  if cfg.backend == "llamacpp":
    from interdistill_jax.teachers.llamacpp_backend import LlamaCppBackend
    return LlamaCppBackend(cfg.model, mode=cfg.mode, n_ctx=cfg.n_ctx, n_threads=cfg.n_threads,
                           temperature=cfg.temperature, max_output_tokens=cfg.max_output_tokens,
                           max_passage_tokens=cfg.max_passage_tokens, seed=seed)
  if cfg.backend == "simulated":
    from interdistill_jax.teachers.simulated import SimulatedBackend
    if relevance is None:
      raise ValueError("the simulated teacher needs qrels for the labelled split")
    return SimulatedBackend(relevance, model=cfg.model, noise=cfg.sim_noise,
                            position_bias=cfg.sim_position_bias,
                            malformed_rate=cfg.sim_malformed_rate, seed=seed)
  raise ValueError(f"teacher.backend must be one of {BACKENDS}, got {cfg.backend!r}")


def make_teacher(cfg: ml_collections.ConfigDict, *, cache: Cache, on_failure: str = "prefix",
                 reasks: int = 2, relevance: Mapping[str, Mapping[str, int]] | None = None,
                 seed: int = 0) -> Teacher:
  """A teacher over a cached, rate-limited runner.

  Args:
    cfg: `config.teacher`.
    cache: where answers are stored before they are used.
    on_failure, reasks: the malformed-answer policy (`config.label`), see `ListwiseTeacher`.
    relevance: query text -> docid -> grade, for the simulated backend only.
    seed: `config.seed`; seeds the retry jitter (timing only). The teacher's answers draw from
      `cfg.seed`, so every run's seed learns the same labels.
  """
  backend = make_backend(cfg, relevance=relevance, seed=cfg.seed)
  runner = Runner.from_section(backend, cache, cfg, seed=seed)
  counter = backend.token_counter() or prompt.make_token_counter(cfg.tokenizer)
  if backend.mode == POINTWISE:
    return PointwiseTeacher(runner, counter=counter, max_passage_tokens=cfg.max_passage_tokens)
  return ListwiseTeacher(runner, counter=counter, max_passage_tokens=cfg.max_passage_tokens,
                         window=cfg.window, stride=cfg.stride, on_failure=on_failure, reasks=reasks)
