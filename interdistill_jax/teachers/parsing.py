"""Permutation extraction from an LLM's answer, with every repair counted.

The result is always a permutation of the window's candidates. Repairs come in two kinds:
  - cosmetic (`prose` around the ranking, `unbracketed` ids): the ranking itself is intact;
  - content (`duplicate`, `out_of_range`, `missing`, `unparsable`): the answer did not rank every
    candidate exactly once. Ids the answer did rank keep its order (the trusted prefix); the rest
    keep candidate order after them, and the window is flagged as repaired.
"""

from __future__ import annotations

import collections
import dataclasses
import re

COSMETIC = ("prose", "unbracketed")
CONTENT = ("duplicate", "out_of_range", "missing", "unparsable")
REPAIR_KINDS = COSMETIC + CONTENT

_BRACKETED = re.compile(r"\[\s*(\d+)\s*\]")
_BARE = re.compile(r"\d+")
_SEPARATORS = re.compile(r"[\s>,;|]+")


@dataclasses.dataclass(frozen=True)
class ParseResult:
  """A window's parsed answer.

  order: permutation of range(n), best first (0-based candidate indices).
  prefix: how many leading positions of `order` come from the answer.
  repairs: repair kind -> count (only kinds that occurred).
  """
  order: tuple[int, ...]
  prefix: int
  repairs: dict[str, int]
  problem: str = ""

  @property
  def repaired(self) -> bool:
    """True when the ranking itself needed a repair (cosmetic fixes do not count)."""
    return any(self.repairs.get(k, 0) for k in CONTENT)

  @property
  def failed(self) -> bool:
    """True when the answer ranked nothing at all."""
    return self.prefix == 0 and len(self.order) > 0


def parse_permutation(text: str, n: int) -> ParseResult:
  """Parses `[3] > [1] > [2]` (1-based ids) for a window of `n` candidates; never raises."""
  repairs: collections.Counter[str] = collections.Counter()
  matches = list(_BRACKETED.finditer(text))
  if not matches:
    matches = list(_BARE.finditer(text))
    if matches:
      repairs["unbracketed"] += 1
  if not matches:
    repairs["unparsable"] += 1 if n else 0
    return ParseResult(tuple(range(n)), 0, dict(+repairs), "it contains no identifiers")

  residue = text[:matches[0].start()] + text[matches[-1].end():]
  residue += "".join(text[a.end():b.start()] for a, b in zip(matches, matches[1:]))
  if _SEPARATORS.sub("", residue):
    repairs["prose"] += 1

  ranked: list[int] = []
  seen: set[int] = set()
  duplicates, out_of_range = [], []
  for m in matches:
    ident = int(m.group(1) if m.re is _BRACKETED else m.group(0))
    if not 1 <= ident <= n:
      repairs["out_of_range"] += 1
      out_of_range.append(ident)
    elif ident - 1 in seen:
      repairs["duplicate"] += 1
      duplicates.append(ident)
    else:
      seen.add(ident - 1)
      ranked.append(ident - 1)
  missing = [i for i in range(n) if i not in seen]
  if missing:
    repairs["missing"] += len(missing)
  order = tuple(ranked + missing)
  return ParseResult(order, len(ranked), dict(+repairs),
                     _describe(missing, duplicates, out_of_range, n))


def _describe(missing: list[int], duplicates: list[int], out_of_range: list[int], n: int) -> str:
  def ids(xs):
    return ", ".join(f"[{x}]" for x in sorted(set(xs)))
  parts = []
  if missing:
    parts.append(f"{ids([i + 1 for i in missing])} missing")
  if duplicates:
    parts.append(f"{ids(duplicates)} repeated")
  if out_of_range:
    parts.append(f"{ids(out_of_range)} not between [1] and [{n}]")
  return "; ".join(parts)
