"""interdistill_jax: Intermediate Distillation of black-box LLM rankings into dense retrievers."""

__version__ = "0.1.0"
