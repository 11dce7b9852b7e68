"""Local stand-ins for LLM servers, for tests and benchmarks (127.0.0.1 only).

`FakeLLMServer` speaks two wire protocols on one port:
  - OpenAI chat completions: `POST /v1/chat/completions`
  - Gemini generateContent:   `POST /{version}/models/{model}:generateContent`
It answers listwise prompts as a consistent teacher (passages ranked by word overlap with the
query, ties by position), or whatever `answer_fn(query, passages)` returns (a reader's scripted
answers), and replays scripted faults: 429 with Retry-After, 5xx, answers slower
than the client's timeout, and malformed permutations. It counts every prompt it answered, keyed by
a hash of the prompt, so tests can prove that no answered prompt was sent twice.

Run `python -m interdistill_jax.teachers.testing --latency=0.3` to serve from a separate process;
the first line it prints is the port.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import hashlib
import json
import re
import sys
import threading
from collections.abc import Callable, Sequence

from aiohttp import web

_PASSAGE_RE = re.compile(r"^\[(\d+)\] (.*)$", re.M)
_QUERY_RE = re.compile(r"Search Query: (.*?)\.\s*\nRank the", re.S)
_QUESTION_RE = re.compile(r"^Question: (.*)$", re.M)  # a reader's question-answering prompt
_WORD_RE = re.compile(r"\w+")


@dataclasses.dataclass
class Fault:
  """One scripted misbehaviour, consumed by the next request.

  status: HTTP status to return instead of an answer (0: answer normally).
  retry_after: value of the Retry-After header, if any.
  delay: seconds to wait before responding (longer than the client timeout simulates a timeout).
  text: answer text to return instead of the consistent ranking (a malformed permutation).
  code: the error's `code` in an OpenAI error body (e.g. "insufficient_quota" with status 429).
  """
  status: int = 0
  retry_after: str | None = None
  delay: float = 0.0
  text: str | None = None
  code: str | None = None


def overlap_ranking(query: str, passages: Sequence[str]) -> list[int]:
  """Indices of `passages`, best first: more distinct query words first, ties by position."""
  words = set(_WORD_RE.findall(query.lower()))
  scores = [len(words & set(_WORD_RE.findall(p.lower()))) for p in passages]
  return sorted(range(len(passages)), key=lambda i: (-scores[i], i))


def consistent_answer(query: str, passages: Sequence[str]) -> str:
  """The RankGPT-format answer of the consistent teacher: `[2] > [1] > [3]`."""
  return " > ".join(f"[{i + 1}]" for i in overlap_ranking(query, passages))


def parse_listwise_prompt(texts: Sequence[str]) -> tuple[str, list[str]]:
  """Query and passage texts recovered from the user turns of a RankGPT-style or reader prompt."""
  passages: dict[int, str] = {}
  query = ""
  for text in texts:
    for m in _PASSAGE_RE.finditer(text):
      passages.setdefault(int(m.group(1)), m.group(2))
    q = _QUERY_RE.search(text) or _QUESTION_RE.search(text)
    if q and not query:
      query = q.group(1)
  return query, [passages[i] for i in sorted(passages)]


class FakeLLMServer:
  """An aiohttp server in a background thread; use as a context manager.

  Attributes:
    answered: prompt hash -> number of successful (200) answers sent for it.
    requests: number of requests received, faults included.
    faults: scripted faults, consumed one per request in arrival order.
  """

  def __init__(self, *, latency: float = 0.0,
               answer_fn: Callable[[str, list[str]], str] = consistent_answer,
               hold_after: int | None = None):
    self.latency = latency
    self.answer_fn = answer_fn
    self.hold_after = hold_after
    self.faults: collections.deque[Fault] = collections.deque()
    self.answered: collections.Counter[str] = collections.Counter()
    self.requests = 0
    self.held = threading.Event()
    self.auth_headers: list[str] = []
    self._release: asyncio.Event | None = None
    self._lock = threading.Lock()
    self._loop: asyncio.AbstractEventLoop | None = None
    self._runner: web.AppRunner | None = None
    self._thread: threading.Thread | None = None
    self.port = 0

  @property
  def url(self) -> str:
    return f"http://127.0.0.1:{self.port}"

  @property
  def total_answered(self) -> int:
    with self._lock:
      return sum(self.answered.values())

  def release(self) -> None:
    """Stops holding requests (see `hold_after`)."""
    self.hold_after = None
    if self._loop and self._release:
      self._loop.call_soon_threadsafe(self._release.set)

  def _app(self) -> web.Application:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", self._openai)
    app.router.add_post(r"/{version}/models/{model}:generateContent", self._gemini)
    app.router.add_get("/stats", self._stats)
    return app

  async def _stats(self, request: web.Request) -> web.Response:
    with self._lock:
      return web.json_response({"requests": self.requests, "answered": sum(self.answered.values()),
                                "distinct_prompts": len(self.answered)})

  async def _common(self, prompt_hash: str) -> Fault:
    with self._lock:
      self.requests += 1
      fault = self.faults.popleft() if self.faults else Fault()
    if self.hold_after is not None and self.total_answered >= self.hold_after:
      self.held.set()
      await self._release.wait()
    if self.latency or fault.delay:
      await asyncio.sleep(self.latency + fault.delay)
    return fault

  def _record(self, request: web.Request, prompt_hash: str) -> None:
    # A client that gave up (timeout) never receives the answer: it does not count as answered.
    if request.transport is None or request.transport.is_closing():
      return
    with self._lock:
      self.answered[prompt_hash] += 1

  @staticmethod
  def _error(status: int, retry_after: str | None, body: dict) -> web.Response:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return web.json_response(body, status=status, headers=headers)

  async def _openai(self, request: web.Request) -> web.Response:
    body = await request.json()
    self.auth_headers.append(request.headers.get("Authorization", ""))
    messages = body.get("messages", [])
    prompt_hash = _hash([body.get("model"), messages])
    fault = await self._common(prompt_hash)
    if fault.status:
      return self._error(fault.status, fault.retry_after,
                         {"error": {"message": f"scripted {fault.status}", "type": fault.code or "fake",
                                    "code": fault.code}})
    query, passages = parse_listwise_prompt([m["content"] for m in messages if m["role"] == "user"])
    text = fault.text if fault.text is not None else self.answer_fn(query, passages)
    prompt_tokens = sum(len(m["content"].split()) for m in messages)
    self._record(request, prompt_hash)
    return web.json_response({
        "id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": body.get("model"),
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": text}}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(text.split()),
                  "total_tokens": prompt_tokens + len(text.split())},
    })

  async def _gemini(self, request: web.Request) -> web.Response:
    body = await request.json()
    self.auth_headers.append(request.headers.get("x-goog-api-key", ""))
    contents = body.get("contents", [])
    prompt_hash = _hash([request.match_info["model"], body.get("systemInstruction"), contents])
    fault = await self._common(prompt_hash)
    if fault.status:
      return self._error(fault.status, fault.retry_after, {"error": {
          "code": fault.status, "message": f"scripted {fault.status}",
          "status": "RESOURCE_EXHAUSTED" if fault.status == 429 else "INTERNAL"}})
    texts = ["".join(p.get("text", "") for p in c.get("parts", []))
             for c in contents if c.get("role", "user") == "user"]
    query, passages = parse_listwise_prompt(texts)
    text = fault.text if fault.text is not None else self.answer_fn(query, passages)
    prompt_tokens = sum(len(t.split()) for t in texts)
    self._record(request, prompt_hash)
    return web.json_response({
        "candidates": [{"content": {"role": "model", "parts": [{"text": text}]},
                        "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": prompt_tokens, "candidatesTokenCount": len(text.split()),
                          "totalTokenCount": prompt_tokens + len(text.split())},
        "modelVersion": request.match_info["model"],
    })

  def start(self, port: int = 0) -> "FakeLLMServer":
    ready = threading.Event()

    def serve():
      self._loop = asyncio.new_event_loop()
      asyncio.set_event_loop(self._loop)
      self._release = asyncio.Event()
      self._runner = web.AppRunner(self._app(), access_log=None)
      self._loop.run_until_complete(self._runner.setup())
      site = web.TCPSite(self._runner, "127.0.0.1", port)
      self._loop.run_until_complete(site.start())
      self.port = site._server.sockets[0].getsockname()[1]
      ready.set()
      self._loop.run_forever()
      self._loop.run_until_complete(self._runner.cleanup())
      self._loop.close()

    self._thread = threading.Thread(target=serve, daemon=True)
    self._thread.start()
    ready.wait(10)
    return self

  def stop(self) -> None:
    if self._loop is not None:
      self.release()
      self._loop.call_soon_threadsafe(self._loop.stop)
      self._thread.join(10)
      self._loop = None

  def __enter__(self) -> "FakeLLMServer":
    return self.start()

  def __exit__(self, *exc) -> None:
    self.stop()


def _hash(obj) -> str:
  return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--port", type=int, default=0)
  parser.add_argument("--latency", type=float, default=0.0)
  args = parser.parse_args(argv)
  server = FakeLLMServer(latency=args.latency).start(args.port)
  sys.stdout.write(f"{server.port}\n")
  sys.stdout.flush()
  try:
    # Serves until stdin closes, so the parent process controls its lifetime.
    sys.stdin.read()
  finally:
    server.stop()


if __name__ == "__main__":
  main()
