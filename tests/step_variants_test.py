"""benchmarks/step_variants.py builds each variant's model as it says, and the rest as it was."""

import sys
import pathlib

import jax.numpy as jnp
from flax import nnx

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
from benchmarks import step_variants  # noqa: E402

from interdistill_jax import defaults, hf_weights  # noqa: E402


def _norms(model):
  return [m for _, m in nnx.iter_graph(model) if isinstance(m, nnx.LayerNorm)]


def test_a_variant_changes_the_norms_and_the_config_only_while_it_builds():
  section = defaults.base_config().ranker.model
  with step_variants._variant(hf_weights, {"hidden_act": "gelu_new"}, "bfloat16"):
    model, _ = hf_weights.load_cross_encoder(section, head="residual")
  norms = _norms(model)
  assert len(norms) == 2 * (1 + 2 * 6)  # joint encoder and query tower: embeddings, 2 per layer
  assert all(n.dtype == jnp.bfloat16 and n.scale[...].dtype == jnp.float32 for n in norms)
  assert all(layer.approximate_gelu for layer in model.bert.layers)
  plain, _ = hf_weights.load_cross_encoder(section, head="residual")
  assert all(n.dtype is None for n in _norms(plain))
  assert not any(layer.approximate_gelu for layer in plain.bert.layers)
