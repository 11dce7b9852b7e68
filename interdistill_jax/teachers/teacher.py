"""From a backend's answers to one query's ranking: sliding windows, parsing, the failure policy.

`rank(query, passages)` returns a `QueryRanking`: a permutation of the candidates, how much of it
the teacher actually ranked (`ranked_prefix`), whether anything was repaired, and the counts that
labels.jsonl and stats.json report.
"""

from __future__ import annotations

import abc
import asyncio
import collections
import dataclasses
from collections.abc import Sequence
from typing import Any

from interdistill_jax.teachers import parsing, prompt
from interdistill_jax.teachers.base import Backend, Correction, Passage, Request, TokenCounter
from interdistill_jax.teachers.runner import Runner

POLICIES = ("prefix", "retry", "drop")


@dataclasses.dataclass
class QueryRanking:
  """One query's result.

  order: permutation of range(len(passages)), best first.
  ranked_prefix: leading positions of `order` placed by the teacher (the rest are repairs).
  repaired: some window's answer needed a content repair.
  dropped: the `drop` policy rejected the query (`order` is then the candidate order).
  windows: window outcome ("parsed", "repaired", "failed") -> count.
  repairs: repair kind -> count, over every answer parsed (re-asks included).
  """
  order: list[int]
  ranked_prefix: int
  repaired: bool = False
  dropped: bool = False
  windows: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  repairs: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  reasks: int = 0
  prompt_tokens: int = 0
  completion_tokens: int = 0

  def summary(self) -> dict[str, Any]:
    """The per-query counts kept in labels.jsonl (deterministic: no timings, no cache state)."""
    return {"windows": dict(sorted(self.windows.items())), "repairs": dict(sorted(self.repairs.items())),
            "reasks": self.reasks, "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens}


class Teacher(abc.ABC):
  """Shared by both kinds: the backend, the runner, passage budgets."""

  def __init__(self, runner: Runner, *, counter: TokenCounter, max_passage_tokens: int):
    self.runner = runner
    self.backend: Backend = runner.backend
    self.counter = counter
    self.max_passage_tokens = max_passage_tokens

  def provenance(self) -> dict[str, Any]:
    return self.backend.provenance()

  def shown(self, passages: Sequence[Passage]) -> tuple[Passage, ...]:
    texts = prompt.truncate_passages([p.text for p in passages], self.counter, self.max_passage_tokens)
    return tuple(Passage(p.docid, t) for p, t in zip(passages, texts))

  @abc.abstractmethod
  async def rank(self, query: str, passages: Sequence[Passage]) -> QueryRanking:
    """Ranks `passages` (candidate order) for `query`. Raises `runner.CallFailed`."""

  async def aclose(self) -> None:
    await self.backend.aclose()


class ListwiseTeacher(Teacher):
  """RankGPT-style permutation generation over sliding windows, back to front.

  on_failure: what a window answer that needed a content repair becomes.
    "prefix": kept; the query's `ranked_prefix` stops where the repairs start.
    "retry":  re-asked up to `reasks` times, showing the model its mistake; then as "prefix"
              with the attempt that ranked the most candidates.
    "drop":   the whole query is dropped (and counted in stats.json).
  """

  def __init__(self, runner: Runner, *, counter: TokenCounter, max_passage_tokens: int,
               window: int, stride: int, on_failure: str = "prefix", reasks: int = 2):
    super().__init__(runner, counter=counter, max_passage_tokens=max_passage_tokens)
    if on_failure not in POLICIES:
      raise ValueError(f"label.on_failure must be one of {POLICIES}, got {on_failure!r}")
    prompt.window_spans(window, window, stride)  # Validates window and stride.
    self.window, self.stride = window, stride
    self.on_failure, self.reasks = on_failure, reasks

  def provenance(self) -> dict[str, Any]:
    return super().provenance() | {"window": self.window, "stride": self.stride,
                                   "max_passage_tokens": self.max_passage_tokens}

  async def rank(self, query: str, passages: Sequence[Passage]) -> QueryRanking:
    shown = self.shown(passages)
    n = len(shown)
    result = QueryRanking(order=list(range(n)), ranked_prefix=n)
    trusted = [True] * n
    for span in prompt.window_spans(n, self.window, self.stride):
      window = tuple(shown[i] for i in result.order[span[0]:span[1]])
      parsed = await self._rank_window(query, window, result)
      outcome = "failed" if parsed.failed else "repaired" if parsed.repaired else "parsed"
      result.windows[outcome] += 1
      if parsed.repaired:
        result.repaired = True
        if self.on_failure == "drop":
          result.dropped = True
          result.order, result.ranked_prefix = list(range(n)), 0
          return result
      prompt.apply_window(result.order, trusted, span, parsed.order, parsed.prefix)
    result.ranked_prefix = prompt.leading_trusted(trusted)
    return result

  async def _rank_window(self, query: str, window: tuple[Passage, ...],
                         result: QueryRanking) -> parsing.ParseResult:
    corrections: tuple[Correction, ...] = ()
    best: parsing.ParseResult | None = None
    for attempt in range(1 + (self.reasks if self.on_failure == "retry" else 0)):
      answer, _ = await self.runner.answer(Request(query, window, corrections))
      result.prompt_tokens += answer.prompt_tokens
      result.completion_tokens += answer.completion_tokens
      parsed = parsing.parse_permutation(answer.text, len(window))
      result.repairs.update(parsed.repairs)
      if best is None or parsed.prefix > best.prefix:
        best = parsed
      if not parsed.repaired:
        return parsed
      if attempt < self.reasks and self.on_failure == "retry":
        result.reasks += 1
        corrections += (Correction(answer.text, parsed.problem or "it is not a permutation"),)
    return best


class PointwiseTeacher(Teacher):
  """Ranks by one score per (query, passage) pair, e.g. log P(query | passage); nothing to repair."""

  def provenance(self) -> dict[str, Any]:
    return super().provenance() | {"max_passage_tokens": self.max_passage_tokens}

  async def rank(self, query: str, passages: Sequence[Passage]) -> QueryRanking:
    shown = self.shown(passages)
    answers = await asyncio.gather(*(self.runner.answer(Request(query, (p,))) for p in shown))
    scores = [a.scores[0] for a, _ in answers]
    order = sorted(range(len(shown)), key=lambda i: (-scores[i], i))
    result = QueryRanking(order=order, ranked_prefix=len(order))
    result.windows["scored"] = len(shown)
    result.prompt_tokens = sum(a.prompt_tokens for a, _ in answers)
    result.completion_tokens = sum(a.completion_tokens for a, _ in answers)
    return result
