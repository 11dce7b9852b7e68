"""Gemini through the `google-genai` SDK (`generateContent`), base URL configurable.

The SDK's own retries are off (`HttpRetryOptions(attempts=1)`, which also stops its hidden retry
on connection errors) so that the runner's policy is the only one.
"""

from __future__ import annotations

import re

from interdistill_jax.teachers import prompt
from interdistill_jax.teachers.base import (Answer, Backend, Request, TransientError,
                                            error_for_status, parse_retry_after)

_DURATION = re.compile(r"^\s*([0-9.]+)s\s*$")


class GeminiBackend(Backend):
  """Listwise ranking with the RankGPT prompt: system turn as `system_instruction`, the rest as contents."""

  name = "gemini"
  prompt_version = prompt.PROMPT_VERSION

  def __init__(self, model: str, *, api_key: str | None, base_url: str = "", api_version: str = "",
               timeout: float = 60.0, temperature: float = 0.0, max_output_tokens: int = 0):
    super().__init__(model, temperature=temperature, max_output_tokens=max_output_tokens)
    from google import genai
    from google.genai import errors, types
    if not model:
      raise ValueError("teacher.model is required for the gemini backend (e.g. gemini-2.0-flash)")
    if not api_key and not base_url:
      raise ValueError("the gemini backend needs GEMINI_API_KEY or GOOGLE_API_KEY in the environment")
    self._types, self._errors = types, errors
    self._key = api_key
    http_options = types.HttpOptions(
        base_url=base_url or None, api_version=api_version or None,
        timeout=max(1, int(timeout * 1000)), retry_options=types.HttpRetryOptions(attempts=1))
    self._client = genai.Client(api_key=api_key or "no-key", http_options=http_options)

  async def answer(self, request: Request) -> Answer:
    import aiohttp
    types = self._types
    messages = prompt.messages(request)
    system = "\n".join(m["content"] for m in messages if m["role"] == "system")
    contents = [types.Content(role="model" if m["role"] == "assistant" else "user",
                              parts=[types.Part(text=m["content"])])
                for m in messages if m["role"] != "system"]
    config = types.GenerateContentConfig(
        system_instruction=system, temperature=self.temperature,
        max_output_tokens=self.max_output_tokens if self.max_output_tokens > 0 else None)
    try:
      response = await self._client.aio.models.generate_content(
          model=self.model, contents=contents, config=config)
    except self._errors.APIError as e:
      raise _classify(e, self._key) from None
    except (TimeoutError, aiohttp.ServerTimeoutError) as e:
      raise TransientError("timeout", f"timed out: {e!r}") from None
    except aiohttp.ClientError as e:
      raise TransientError("connection", repr(e)) from None
    usage = response.usage_metadata
    completion = 0
    if usage is not None:
      # Thinking models bill their thoughts as output tokens.
      completion = (usage.candidates_token_count or 0) + (usage.thoughts_token_count or 0)
    return Answer(text=_text(response), prompt_tokens=(usage.prompt_token_count or 0) if usage else 0,
                  completion_tokens=completion)

  async def aclose(self) -> None:
    await self._client.aio.aclose()


def _text(response) -> str:
  """The first candidate's text parts (thoughts excluded); "" when the answer was blocked or empty."""
  if not response.candidates or response.candidates[0].content is None:
    return ""
  parts = response.candidates[0].content.parts or []
  return "".join(p.text for p in parts if p.text and not getattr(p, "thought", False))


def _classify(e, key: str | None = None) -> Exception:
  code = e.code or 0
  message = f"{code} {e.status}: {e.message}"
  if key:  # a server may echo the key it refused: it never reaches a message, log or file
    message = message.replace(key, "<API key>")
  retry_after = parse_retry_after(getattr(e.response, "headers", None))
  if retry_after is None:
    retry_after = _retry_info(e.details)
  return error_for_status(code, message, retry_after)


def _retry_info(details) -> float | None:
  """`google.rpc.RetryInfo.retryDelay` ("12s"), which Gemini sends instead of a Retry-After header."""
  error = details.get("error", details) if isinstance(details, dict) else {}
  for d in error.get("details", []) if isinstance(error, dict) else []:
    if isinstance(d, dict) and d.get("@type", "").endswith("google.rpc.RetryInfo"):
      m = _DURATION.match(str(d.get("retryDelay", "")))
      if m:
        return float(m.group(1))
  return None
