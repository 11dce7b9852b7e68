"""A simulated teacher: rankings from qrels, with set noise, position bias and malformed answers.

Not an LLM. It exists for tests and controlled experiments (how much does teacher noise hurt the
student?), and says so: backend "simulated", and `"simulated": true` in every provenance record.
Its answers go through the same prompt accounting, cache and parser as a real teacher's.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Mapping

from interdistill_jax.teachers import prompt
from interdistill_jax.teachers.base import Answer, Backend, Request

MALFORMATIONS = ("duplicate", "missing", "out_of_range", "prose", "unparsable")


class SimulatedBackend(Backend):
  """Scores each passage rel + noise * N(0, 1) + position_bias * (earliness in [0, 1]); answers best first.

  Args:
    relevance: query text -> docid -> graded relevance (unjudged documents score 0).
    noise: standard deviation of the Gaussian noise added to each relevance grade.
    position_bias: bonus for the first passage shown, falling linearly to 0 for the last.
    malformed_rate: probability that an answer is malformed (one of `MALFORMATIONS`).
    seed: with the request, determines every random draw, so answers never depend on call order.
  """

  name = "simulated"
  remote = False
  prompt_version = prompt.PROMPT_VERSION

  def __init__(self, relevance: Mapping[str, Mapping[str, int]], *, model: str = "",
               noise: float = 0.0, position_bias: float = 0.0, malformed_rate: float = 0.0,
               seed: int = 0):
    super().__init__(model or "simulated-from-qrels")
    if not 0.0 <= malformed_rate <= 1.0:
      raise ValueError(f"teacher.sim_malformed_rate must be in [0, 1], got {malformed_rate}")
    self.relevance = relevance
    self.noise, self.position_bias = noise, position_bias
    self.malformed_rate, self.seed = malformed_rate, seed
    self._counter = prompt.ApproxTokenCounter()

  def identity(self) -> dict:
    return super().identity() | {"noise": self.noise, "position_bias": self.position_bias,
                                 "malformed_rate": self.malformed_rate, "seed": self.seed}

  def provenance(self) -> dict:
    return super().provenance() | {"simulated": True, "noise": self.noise,
                                   "position_bias": self.position_bias,
                                   "malformed_rate": self.malformed_rate}

  def ranking(self, request: Request, rng: random.Random) -> list[int]:
    rels = self.relevance.get(request.query, {})
    n = len(request.passages)
    scores = []
    for i, p in enumerate(request.passages):
      earliness = (n - 1 - i) / (n - 1) if n > 1 else 0.0
      scores.append(rels.get(p.docid, 0) + self.noise * rng.gauss(0.0, 1.0)
                    + self.position_bias * earliness)
    return sorted(range(n), key=lambda i: (-scores[i], i))

  async def answer(self, request: Request) -> Answer:
    digest = hashlib.sha256(json.dumps([self.seed, request.key_fields()], sort_keys=True).encode())
    rng = random.Random(digest.digest())
    order = self.ranking(request, rng)
    text = " > ".join(f"[{i + 1}]" for i in order)
    if rng.random() < self.malformed_rate:
      text = _malform(order, rng.choice(MALFORMATIONS), rng)
    messages = prompt.messages(request)
    return Answer(text=text,
                  prompt_tokens=sum(self._counter.count(m["content"]) for m in messages),
                  completion_tokens=self._counter.count(text))


def _malform(order: list[int], kind: str, rng: random.Random) -> str:
  ids = [i + 1 for i in order]
  n = len(ids)
  if kind == "duplicate" and n > 1:
    j = rng.randrange(1, n)
    ids[j] = ids[rng.randrange(0, j)]
  elif kind == "missing" and n > 1:
    ids = ids[:rng.randrange(1, n)]  # An answer cut short.
  elif kind == "out_of_range":
    ids.insert(rng.randrange(0, n + 1), n + 1 + rng.randrange(0, 5))
  elif kind == "prose":
    return "Here is the ranking: " + " > ".join(f"[{i}]" for i in ids) + ". I hope this helps."
  elif kind == "unparsable":
    return "I cannot determine which passages are relevant to this query."
  return " > ".join(f"[{i}]" for i in ids)
