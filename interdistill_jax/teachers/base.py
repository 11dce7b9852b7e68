"""The teacher interface: what a backend is asked, what it answers, and how it fails.

A backend answers one `Request` (a query and a window of passages) with an `Answer`: the raw text
of a listwise ranking (`[2] > [1] > [3]`), or, for a pointwise backend, one score per passage.
A request that carries its own chat turns (`Request.chat`, e.g. a reader's question-answering
prompt) is answered with free text by the generating backends (`openai`, `gemini`, `llamacpp`).
Everything above a backend (retries, rate limits, caching, windows, parsing) is shared, so a new
backend is one class.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, ClassVar, Protocol

LISTWISE = "listwise"
POINTWISE = "pointwise"


@dataclasses.dataclass(frozen=True)
class Passage:
  docid: str
  text: str  # Already truncated to the prompt's token budget.


@dataclasses.dataclass(frozen=True)
class Correction:
  """A previous answer that was not a permutation, and what was wrong with it."""
  answer: str
  problem: str


@dataclasses.dataclass(frozen=True)
class Request:
  """One call: a query and the passages of one window, in the order shown to the teacher.

  `corrections` holds earlier malformed answers to the same window (the `retry` policy), so a
  re-ask is a different prompt with its own cache entry.

  `chat`, when set, is the whole prompt as (role, content) turns, sent instead of the listwise
  ranking prompt: a free-text generation. `stop` lists strings that end such an answer; a local
  backend stops generating there, remote ones return the full text, so callers cut at them too.
  """
  query: str
  passages: tuple[Passage, ...]
  corrections: tuple[Correction, ...] = ()
  chat: tuple[tuple[str, str], ...] = ()
  stop: tuple[str, ...] = ()

  def key_fields(self) -> dict[str, Any]:
    """What identifies this request (hashed into the cache key with the backend's identity).

    Docids are included because a simulated teacher's answer depends on them. `chat` and `stop`
    enter only when set, so the keys of ranking requests are the same as before they existed.
    """
    fields: dict[str, Any] = {
        "query": self.query,
        "passages": [[p.docid, p.text] for p in self.passages],
        "corrections": [[c.answer, c.problem] for c in self.corrections],
    }
    if self.chat:
      fields["chat"] = [list(turn) for turn in self.chat]
    if self.stop:
      fields["stop"] = list(self.stop)
    return fields


@dataclasses.dataclass(frozen=True)
class Answer:
  text: str = ""                     # Listwise: the model's raw output.
  scores: tuple[float, ...] = ()     # Pointwise: one score per passage, higher is better.
  prompt_tokens: int = 0
  completion_tokens: int = 0

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self) | {"scores": list(self.scores)}

  @classmethod
  def from_json(cls, obj: dict[str, Any]) -> "Answer":
    return cls(text=obj.get("text", ""), scores=tuple(obj.get("scores", ())),
               prompt_tokens=int(obj.get("prompt_tokens", 0)),
               completion_tokens=int(obj.get("completion_tokens", 0)))


class TransientError(Exception):
  """A failure worth retrying: rate limit, server error, timeout or lost connection.

  Attributes:
    cause: "rate_limit", "server_error", "timeout" or "connection" (stats count retries by cause).
    retry_after: seconds the server asked us to wait, if it said.
  """

  CAUSES = ("rate_limit", "server_error", "timeout", "connection")

  def __init__(self, cause: str, message: str, retry_after: float | None = None):
    assert cause in self.CAUSES, cause
    super().__init__(message)
    self.cause, self.retry_after = cause, retry_after


class PermanentError(Exception):
  """A failure that retrying cannot fix. `fatal` ones (bad key, unknown model) stop the whole run."""

  def __init__(self, message: str, *, fatal: bool = False):
    super().__init__(message)
    self.fatal = fatal


# What a status that stops the run means, said with the server's own message.
_FATAL = {401: "the server refused the API key", 403: "the API key has no access to this model",
          404: "no such model or endpoint (check the model name and base_url)"}


def error_for_status(status: int, message: str, retry_after: float | None) -> Exception:
  """The error an HTTP status means: 429, 408 and 5xx are retried; 401/403/404 stop the run."""
  if status == 429:
    return TransientError("rate_limit", message, retry_after)
  if status == 408:
    return TransientError("timeout", message, retry_after)
  if status >= 500:
    return TransientError("server_error", message, retry_after)
  if status in _FATAL:
    return PermanentError(f"{_FATAL[status]} ({message})", fatal=True)
  return PermanentError(message)


class TokenCounter(Protocol):
  """Counts and cuts text in some tokenizer's units."""

  def count(self, text: str) -> int: ...

  def truncate(self, text: str, max_tokens: int) -> str: ...


class Backend(abc.ABC):
  """One way of asking an LLM.

  Subclasses set `name` and `mode`, and implement `answer`. `identity()` must include every
  setting that changes answers (model, sampling), since it keys the cache; `provenance()` is what
  labels.jsonl records. Neither may contain credentials.
  """

  name: ClassVar[str]
  mode: ClassVar[str] = LISTWISE
  remote: ClassVar[bool] = True       # Remote calls get a client-side timeout and a price.
  prompt_version: str = ""

  def __init__(self, model: str, *, temperature: float = 0.0, max_output_tokens: int = 0):
    self.model = model
    self.temperature = temperature
    self.max_output_tokens = max_output_tokens

  def identity(self) -> dict[str, Any]:
    return {"backend": self.name, "model": self.model, "prompt_version": self.prompt_version,
            "temperature": self.temperature, "max_output_tokens": self.max_output_tokens}

  def provenance(self) -> dict[str, Any]:
    return {"backend": self.name, "model": self.model, "prompt_version": self.prompt_version,
            "mode": self.mode}

  @abc.abstractmethod
  async def answer(self, request: Request) -> Answer:
    """One call. Raises `TransientError` or `PermanentError`; never retries by itself."""

  def token_counter(self) -> TokenCounter | None:
    """The backend's own tokenizer for passage budgets, if it has one (None: the configured one)."""
    return None

  async def aclose(self) -> None:
    """Releases clients and models."""


def parse_retry_after(headers: Any) -> float | None:
  """Seconds to wait from `retry-after-ms` or `Retry-After` (seconds or an HTTP date), if present."""
  if headers is None:
    return None
  value = headers.get("retry-after-ms")
  if value is not None:
    try:
      return max(0.0, float(value) / 1000.0)
    except ValueError:
      pass
  value = headers.get("retry-after")
  if value is None:
    return None
  try:
    return max(0.0, float(value))
  except ValueError:
    pass
  import email.utils
  import time
  try:
    when = email.utils.parsedate_to_datetime(value)
  except (TypeError, ValueError):
    return None
  return max(0.0, when.timestamp() - time.time())
