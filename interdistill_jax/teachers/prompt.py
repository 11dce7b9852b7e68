"""The listwise prompt (RankGPT style, versioned), passage token budgets, and sliding windows.

Changing any text below changes what the teacher is asked: bump `PROMPT_VERSION`, which keys the
cache and is recorded with every label, so old and new answers are never mixed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from interdistill_jax.teachers.base import Correction, Passage, Request, TokenCounter

# Sun et al. 2023 ("Is ChatGPT Good at Search?"), RankGPT's permutation-generation instructions, in
# the single-turn layout of RankVicuna / RankZephyr: one user message holds every passage. (RankGPT's
# original spends two extra turns per passage, which costs tokens and, in the SDKs, client time.)
PROMPT_VERSION = "rankgpt-single-turn-v1"
SYSTEM = ("You are RankGPT, an intelligent assistant that can rank passages based on their "
          "relevancy to the query.")

# Query likelihood (Sachan et al. 2022, UPR): score a passage by log P(query | passage).
QL_PROMPT_VERSION = "upr-query-likelihood-v1"
QL_PREFIX = "Passage: {passage}\nPlease write a question based on this passage.\nQuestion:"


def _clean(text: str) -> str:
  return " ".join(text.split())


def build_messages(query: str, passages: Sequence[Passage],
                   corrections: Sequence[Correction] = ()) -> list[dict[str, str]]:
  """Chat messages (`role`, `content`) asking for a permutation of `passages`, ids 1-based."""
  num = len(passages)
  query = _clean(query)
  body = "\n".join(f"[{i}] {_clean(p.text)}" for i, p in enumerate(passages, start=1))
  messages = [
      {"role": "system", "content": SYSTEM},
      {"role": "user", "content": (
          f"I will provide you with {num} passages, each indicated by number identifier []. \n"
          f"Rank the passages based on their relevance to query: {query}.\n\n{body}\n\n"
          f"Search Query: {query}. \nRank the {num} passages above based on their relevance to the "
          "search query. The passages should be listed in descending order using identifiers. The "
          "most relevant passages should be listed first. The output format should be [] > [], "
          "e.g., [1] > [2]. Only response the ranking results, do not say any word or explain.")},
  ]
  for c in corrections:
    messages.append({"role": "assistant", "content": c.answer})
    messages.append({"role": "user", "content": (
        f"That answer is not a valid ranking: {c.problem}. Rank all {num} passages again, each "
        f"identifier from [1] to [{num}] exactly once, in the format [] > []. Only respond with "
        "the ranking.")})
  return messages


def messages(request: Request) -> list[dict[str, str]]:
  """The chat messages (`role`, `content`) to send: the request's `chat`, or the listwise ranking
  prompt."""
  if request.chat:
    return [{"role": role, "content": content} for role, content in request.chat]
  return build_messages(request.query, request.passages, request.corrections)


def ql_prefix(passage: str) -> str:
  """The text a query-likelihood scorer conditions on; the query's tokens follow it."""
  return QL_PREFIX.format(passage=_clean(passage))


class ApproxTokenCounter:
  """A tokenizer-free estimate: word pieces of up to 5 characters, and each punctuation mark.

  Errs towards more tokens than common BPE vocabularies, so a budget is rarely exceeded; set
  `teacher.tokenizer` to a `tokenizer.json` for exact counts.
  """

  _PIECE = re.compile(r"\w{1,5}|[^\w\s]")

  def count(self, text: str) -> int:
    return sum(1 for _ in self._PIECE.finditer(text))

  def truncate(self, text: str, max_tokens: int) -> str:
    for i, m in enumerate(self._PIECE.finditer(text)):
      if i == max_tokens:
        return text[:m.start()].rstrip()
    return text


class HFTokenCounter:
  """Exact counts from a Hugging Face `tokenizer.json` (the `tokenizers` library)."""

  def __init__(self, path: str):
    import tokenizers
    self._tok = tokenizers.Tokenizer.from_file(path)
    self._tok.no_truncation()
    self._tok.no_padding()

  def count(self, text: str) -> int:
    return len(self._tok.encode(text, add_special_tokens=False).ids)

  def truncate(self, text: str, max_tokens: int) -> str:
    offsets = self._tok.encode(text, add_special_tokens=False).offsets
    if len(offsets) <= max_tokens:
      return text
    return text[:offsets[max_tokens - 1][1]] if max_tokens > 0 else ""


def make_token_counter(tokenizer: str) -> TokenCounter:
  """`tokenizer`: "" for the estimate, or a path to a Hugging Face `tokenizer.json`."""
  return HFTokenCounter(tokenizer) if tokenizer else ApproxTokenCounter()


def truncate_passages(texts: Sequence[str], counter: TokenCounter, max_tokens: int) -> list[str]:
  """Each text cut to at most `max_tokens` tokens (0: no limit)."""
  if max_tokens <= 0:
    return [_clean(t) for t in texts]
  return [counter.truncate(_clean(t), max_tokens) for t in texts]


def window_spans(n: int, window: int, stride: int) -> list[tuple[int, int]]:
  """`[start, end)` spans over `n` candidates, back to front, the last one starting at 0.

  With window w and stride s < w, every window's best w - s items move on into the next window,
  so the final ranking's top w - s are exactly the teacher's top w - s over all n candidates.
  (RankGPT's loop drops the front when (n - w) is not a multiple of s; this one does not.)
  """
  if window < 1 or not 1 <= stride <= window:
    raise ValueError(f"need window >= 1 and 1 <= stride <= window, got window={window}, stride={stride}")
  spans = []
  end = n
  while n > 0:
    start = max(0, end - window)
    spans.append((start, end))
    if start == 0:
      break
    end -= stride
  return spans


def apply_window(order: list[int], trusted: list[bool], span: tuple[int, int],
                 window_order: Sequence[int], window_prefix: int) -> None:
  """Re-orders `order[start:end]` in place by `window_order` (indices into the window).

  `trusted[i]` records whether position i was last placed by the teacher (True) or left in place by
  a repair (False); a query's `ranked_prefix` is the number of leading trusted positions.
  """
  start, end = span
  current = order[start:end]
  order[start:end] = [current[j] for j in window_order]
  trusted[start:end] = [k < window_prefix for k in range(end - start)]


def leading_trusted(trusted: Sequence[bool]) -> int:
  k = 0
  while k < len(trusted) and trusted[k]:
    k += 1
  return k
