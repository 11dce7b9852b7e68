"""Any OpenAI-compatible chat-completions server: OpenAI, vLLM, SGLang, Ollama, llama.cpp server.

The official `openai` SDK does the HTTP; its own retries are off (`max_retries=0`) so that the
runner's policy (backoff, Retry-After, counting by cause) is the only one.
"""

from __future__ import annotations

from interdistill_jax.teachers import prompt
from interdistill_jax.teachers.base import (Answer, Backend, PermanentError, Request, TransientError,
                                            error_for_status, parse_retry_after)


class OpenAIBackend(Backend):
  """Listwise ranking through `POST {base_url}/chat/completions`."""

  name = "openai"
  prompt_version = prompt.PROMPT_VERSION

  def __init__(self, model: str, *, api_key: str | None, base_url: str = "", timeout: float = 60.0,
               temperature: float = 0.0, max_output_tokens: int = 0):
    super().__init__(model, temperature=temperature, max_output_tokens=max_output_tokens)
    import openai
    if not model:
      raise ValueError("teacher.model is required for the openai backend (e.g. gpt-4o-mini)")
    if not api_key and not base_url:
      raise ValueError("the openai backend needs OPENAI_API_KEY in the environment "
                       "(or teacher.base_url for a local server that takes no key)")
    self._openai = openai
    self._key = api_key
    # Local servers (vLLM, Ollama, ...) usually take no key, but the SDK insists on one.
    self._client = openai.AsyncOpenAI(api_key=api_key or "no-key", base_url=base_url or None,
                                      timeout=timeout, max_retries=0)

  async def answer(self, request: Request) -> Answer:
    openai = self._openai
    kwargs = dict(model=self.model, temperature=self.temperature,
                  messages=prompt.messages(request))
    if self.max_output_tokens > 0:
      kwargs["max_tokens"] = self.max_output_tokens
    try:
      response = await self._client.chat.completions.create(**kwargs)
    except openai.APITimeoutError as e:
      raise TransientError("timeout", str(e)) from None
    except openai.APIConnectionError as e:
      raise TransientError("connection", str(e)) from None
    except openai.APIStatusError as e:
      # A server may echo the key it refused: it never reaches a message, log or file.
      message = str(e).replace(self._key, "<API key>") if self._key else str(e)
      raise _classify(e.status_code, message, e.response.headers, e.body) from None
    if not response.choices:
      raise TransientError("server_error", "response without choices")
    usage = response.usage
    return Answer(text=response.choices[0].message.content or "",
                  prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
                  completion_tokens=getattr(usage, "completion_tokens", 0) or 0)

  async def aclose(self) -> None:
    await self._client.close()


def _classify(status: int, message: str, headers, body) -> Exception:
  retry_after = parse_retry_after(headers)
  code = body.get("code") if isinstance(body, dict) else None
  if status == 429 and code == "insufficient_quota":
    # OpenAI reports an exhausted balance as 429 too; waiting will not fix it.
    return PermanentError(f"the account's quota is exhausted ({message}): add credit or raise the "
                          "limit, then run again", fatal=True)
  return error_for_status(status, message, retry_after)
