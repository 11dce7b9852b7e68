"""Estimated cost of a run: USD per million tokens, by model, overridable from the config.

List prices change and differ by tier, region and caching; these are published list prices for
standard (non-batch) requests at the time of writing. For a model not listed, or to use your own
contract's prices, set `teacher.price_input_per_mtok` and `teacher.price_output_per_mtok`.
"""

from __future__ import annotations

from typing import Any

# model -> (input, output) in USD per million tokens.
PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4-turbo": (10.00, 30.00),
    "gpt-3.5-turbo": (0.50, 1.50),
    "gemini-2.5-pro": (1.25, 10.00),
    "gemini-2.5-flash": (0.30, 2.50),
    "gemini-2.5-flash-lite": (0.10, 0.40),
    "gemini-2.0-flash": (0.10, 0.40),
    "gemini-2.0-flash-lite": (0.075, 0.30),
    "gemini-1.5-pro": (1.25, 5.00),
    "gemini-1.5-flash": (0.075, 0.30),
}
FREE_BACKENDS = ("simulated", "llamacpp")  # Run locally: no per-token price.


def price_for(backend: str, model: str, *, input_override: float = -1.0,
              output_override: float = -1.0) -> dict[str, Any]:
  """The (input, output) price used for estimates and where it came from.

  A negative override means "use the table". Returns prices of None when unknown.
  """
  if input_override >= 0 and output_override >= 0:
    return {"input_per_mtok": input_override, "output_per_mtok": output_override, "source": "config"}
  if backend in FREE_BACKENDS:
    return {"input_per_mtok": 0.0, "output_per_mtok": 0.0, "source": f"{backend} runs locally"}
  # Dated snapshots ("gpt-4o-mini-2024-07-18") cost what their family costs.
  name = model.rsplit("/", 1)[-1]
  match = max((m for m in PRICES if name == m or name.startswith(m + "-")), key=len, default=None)
  if match is None:
    return {"input_per_mtok": None, "output_per_mtok": None,
            "source": f"no price for {model!r}: set teacher.price_input_per_mtok/price_output_per_mtok"}
  inp, out = PRICES[match]
  return {"input_per_mtok": inp, "output_per_mtok": out, "source": f"table ({match})"}


def cost(price: dict[str, Any], prompt_tokens: int, completion_tokens: int) -> float | None:
  """Estimated USD, or None when the price is unknown."""
  if price["input_per_mtok"] is None:
    return None
  return round((prompt_tokens * price["input_per_mtok"]
                + completion_tokens * price["output_per_mtok"]) / 1e6, 6)
