"""Exported directories load in transformers / sentence-transformers and back into our models alike."""

import json
import os
import types

import huggingface_hub
import jax.numpy as jnp
import numpy as np
import pytest
import yaml
from flax import nnx

from interdistill_jax import data as data_lib
from interdistill_jax import defaults, hf_export, hf_weights, models, sharding, tokenization
from tests.conftest import data_path, run_reference

MAX_LEN = 256
SECRET = "hf_test_secret_value_5eb1c0de"

_REFERENCE = r"""
import json, sys, torch
from sentence_transformers import CrossEncoder, SentenceTransformer
from transformers import AutoModel
retriever, ranker, original, inputs_file = sys.argv[1:5]
inputs = json.load(open(inputs_file))
out = {}
st = SentenceTransformer(retriever, device="cpu")
out["max_seq_length"] = st.max_seq_length
out["embeddings"] = st.encode(inputs["passages"], batch_size=25).tolist()
out["original"] = SentenceTransformer(original, device="cpu").encode(inputs["passages"][:10]).tolist()
_, info = AutoModel.from_pretrained(retriever, output_loading_info=True)
out["loading_info"] = {k: sorted(map(str, v)) for k, v in info.items()}
ce = CrossEncoder(ranker, device="cpu")
out["activation"] = type(ce.activation_fn).__name__
out["scores"] = ce.predict([tuple(p) for p in inputs["pairs"]], batch_size=20).tolist()
print(json.dumps(out))
"""


def _perturb(bert: models.Bert, rng: np.random.Generator, scale: float = 0.05) -> None:
  """Noise on a few weights, so an export that copied the source file instead would show."""
  for param in (bert.word_emb.embedding, bert.layers[1].query.kernel, bert.layers[3].ffn_in.bias,
                bert.layers[5].ffn_norm.scale):
    param[...] = param[...] + scale * jnp.asarray(rng.standard_normal(param.shape), jnp.float32)


@nnx.jit(static_argnames="tower")
def _encode(model, ids, tts, mask, tower):
  return model.encode(ids, tts, mask, tower=tower)


def _embed(model: models.DualEncoder, tok: tokenization.Tokenizer, texts, tower="doc") -> np.ndarray:
  """[N, H] embeddings, in batches of one fixed shape (one compilation)."""
  out, size = [], min(25, len(texts))
  for start in range(0, len(texts), size):
    seqs = tok.encode(texts[start:start + size], MAX_LEN)
    b = tokenization.pad_batch(seqs, range(len(seqs)), size, MAX_LEN, tok.pad_id)
    out.append(np.asarray(_encode(model, b.input_ids, b.token_type_ids, b.attention_mask, tower))[:len(seqs)])
  return np.concatenate(out)


def _score(model: models.CrossEncoder, tok: tokenization.Tokenizer, pairs) -> np.ndarray:
  encoded = tok.encode_pairs([q for q, _ in pairs], [p for _, p in pairs], MAX_LEN)
  ids, tts = [e[0] for e in encoded], [e[1] for e in encoded]
  b = tokenization.pad_batch(ids, range(len(ids)), len(ids), max(map(len, ids)), tok.pad_id, types=tts)
  return np.asarray(model(b.input_ids, b.token_type_ids, b.attention_mask))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  """A perturbed retriever and a perturbed ranker with a random head, exported, and our outputs."""
  scifact = data_path("scifact")
  corpus = list(data_lib.load_corpus(scifact / "corpus.jsonl").values())
  queries = list(data_lib.load_queries(scifact / "queries.jsonl").values())
  passages = [d.full_text() for d in corpus[:100]]
  pairs = [(queries[i].text, passages[i]) for i in range(20)]

  config = defaults.base_config()
  rng = np.random.default_rng(0)
  retriever, ckpt = hf_weights.load_dual_encoder(config.model)
  _perturb(retriever.query_tower, rng)
  ranker, _ = hf_weights.load_cross_encoder(config.ranker.model)
  _perturb(ranker.bert, rng)
  ranker.pooler.bias[...] = ranker.pooler.bias[...] + 0.1
  ranker.classifier.kernel[...] = jnp.asarray(rng.normal(0, 0.3, (384, 1)), jnp.float32)
  ranker.classifier.bias[...] = jnp.asarray([0.7], jnp.float32)

  out = tmp_path_factory.mktemp("export")
  card = {"dataset": "scifact", "datasets": ["scifact"]}
  hf_export.export_dual_encoder(retriever, ckpt.dir, str(out / "retriever"), card=card,
                                max_seq_length=MAX_LEN, max_query_length=64)
  hf_export.export_cross_encoder(ranker, ckpt.dir, str(out / "ranker"), card=card, max_length=MAX_LEN)
  tok = tokenization.Tokenizer(ckpt.dir)
  return types.SimpleNamespace(
      dir=out, source=ckpt.dir, retriever=retriever, ranker=ranker, tok=tok, passages=passages,
      pairs=pairs, embeddings=_embed(retriever, tok, passages), scores=_score(ranker, tok, pairs))


@pytest.fixture(scope="module")
def reference(exported, tmp_path_factory):
  inputs = tmp_path_factory.mktemp("ref") / "inputs.json"
  inputs.write_text(json.dumps({"passages": exported.passages, "pairs": exported.pairs}))
  stdout = run_reference(_REFERENCE, str(exported.dir / "retriever"), str(exported.dir / "ranker"),
                         exported.source, str(inputs))
  return json.loads(stdout.strip().splitlines()[-1])


def _cosines(a, b) -> np.ndarray:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


@pytest.mark.slow  # PyTorch and sentence-transformers in a subprocess
def test_sentence_transformers_embeds_exported_retriever_like_ours(exported, reference):
  theirs = np.asarray(reference["embeddings"])
  assert theirs.shape == exported.embeddings.shape == (100, 384)
  assert reference["max_seq_length"] == MAX_LEN
  assert _cosines(theirs, exported.embeddings).min() >= 0.9999
  # The exported weights are the perturbed ones, not a copy of the source checkpoint.
  assert _cosines(reference["original"], exported.embeddings[:10]).min() < 0.999


@pytest.mark.slow  # PyTorch and sentence-transformers in a subprocess
def test_cross_encoder_scores_exported_ranker_like_ours(exported, reference):
  assert reference["activation"] == "Identity"  # predict() returns the raw logit, as ours does.
  theirs = np.asarray(reference["scores"])
  assert theirs.shape == exported.scores.shape == (20,)
  assert np.abs(theirs - exported.scores).max() <= 1e-4
  assert np.ptp(exported.scores) > 0.1  # The random head makes scores that can disagree.


@pytest.mark.slow  # PyTorch and sentence-transformers in a subprocess
def test_automodel_loads_retriever_without_missing_or_unexpected_weights(reference):
  info = reference["loading_info"]
  assert info["missing_keys"] == [] and info["unexpected_keys"] == []
  assert info.get("mismatched_keys", []) == []


@pytest.mark.slow  # the `exported` fixture: ~20 s
def test_exported_directories_load_back_into_our_models(exported):
  config = defaults.base_config()
  config.model.init = str(exported.dir / "retriever")
  retriever, ckpt = hf_weights.load_dual_encoder(config.model)
  assert (ckpt.pooling, ckpt.normalize) == ("mean", True)
  np.testing.assert_allclose(_embed(retriever, exported.tok, exported.passages[:10]),
                             exported.embeddings[:10], atol=1e-5)
  config.ranker.model.init = str(exported.dir / "ranker")
  ranker, _ = hf_weights.load_cross_encoder(config.ranker.model)
  np.testing.assert_allclose(_score(ranker, exported.tok, exported.pairs), exported.scores, atol=1e-5)


@pytest.mark.slow  # the `exported` fixture: ~20 s
def test_exported_tokenizer_has_no_fixed_padding_or_truncation(exported):
  with open(exported.dir / "retriever" / "tokenizer.json") as f:
    tok = json.load(f)
  assert tok["padding"] is None and tok["truncation"] is None
  with open(exported.dir / "retriever" / "tokenizer_config.json") as f:
    assert json.load(f)["model_max_length"] == MAX_LEN


def test_separate_towers_export_as_query_and_doc_models(tmp_path):
  config = defaults.base_config()
  model, ckpt = hf_weights.load_dual_encoder(config.model, shared=False)
  _perturb(model.query_tower, np.random.default_rng(1))
  hf_export.export_dual_encoder(model, ckpt.dir, str(tmp_path / "retriever"), card={},
                                max_seq_length=MAX_LEN, max_query_length=64)
  tok = tokenization.Tokenizer(ckpt.dir)
  texts = ["a claim about protein folding", "another one, about gene 7"]
  for tower in ("query", "doc"):
    config.model.init = str(tmp_path / "retriever" / tower)
    loaded, _ = hf_weights.load_dual_encoder(config.model)
    np.testing.assert_allclose(_embed(loaded, tok, texts), _embed(model, tok, texts, tower=tower),
                               atol=1e-5)
  with open(tmp_path / "retriever" / "query" / "sentence_bert_config.json") as f:
    assert json.load(f)["max_seq_length"] == 64


class _FakeHfApi:
  """Records what the exporter asks of the Hub client."""

  calls: list = []

  def __init__(self, token=None, **kwargs):
    self.calls.append(("init", token))

  def create_repo(self, repo_id, *, repo_type=None, private=None, exist_ok=False, **kwargs):
    self.calls.append(("create_repo", repo_id, repo_type, private, exist_ok))

  def upload_folder(self, *, repo_id, folder_path, repo_type=None, **kwargs):
    self.calls.append(("upload_folder", repo_id, os.fspath(folder_path), repo_type))


def _write_fake_experiment(workdir):
  data_lib.write_json(workdir / "eval" / "baseline.json", {
      "dataset": "scifact", "split": "test", "system": "baseline", "num_queries": 300,
      "metrics": {"ndcg@10": 0.64513, "recall@100": 0.925, "mrr@10": 0.6109}})
  teacher = {"backend": "openai", "model": "gpt-test-mini", "prompt_version": "v1", "mode": "listwise"}
  records = [{"qid": str(i), "docids": ["a", "b"], "ranking": ["b", "a"], "ranked_prefix": 2,
              "repaired": False, "teacher": teacher} for i in range(3)]
  data_lib.atomic_write_text(workdir / "labels" / "labels.jsonl",
                             "".join(json.dumps(r) + "\n" for r in records))
  data_lib.write_json(workdir / "labels" / "stats.json", {
      "teacher": teacher, "split": "train", "queries": {"selected": 3, "labelled": 3, "dropped": 0},
      "calls": {"answered": 3, "cache_hits": 0}, "cache": {"ledger": [{"tokens": 1}]},
      "quality": {"queries": 3, "kendall_tau": 0.2, "top1_agreement": 0.5,
                  "teacher_top1_initial_rank": 2.0, "judged_queries": 3, "initial_ndcg@10": 0.66,
                  "teacher_ndcg@10": 0.61, "teacher_gain_ndcg@10": -0.05, "teacher_better": False}})


@pytest.fixture(scope="module")
def pushed(tmp_path_factory):
  """`run` on a workdir with eval results and labels, pushing through a fake Hub client."""
  workdir = tmp_path_factory.mktemp("workdir")
  _write_fake_experiment(workdir)
  config = defaults.base_config()
  config.data.name = "scifact"
  config.export.push_to_hub = True
  config.export.push_untrained = True
  config.export.repo_id_retriever = "someone/retriever"
  config.export.repo_id_ranker = "someone/ranker"
  config.export.repo_id_labels = "someone/labels"
  _FakeHfApi.calls = []
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(huggingface_hub, "HfApi", _FakeHfApi)
    mp.setenv("HF_TOKEN", SECRET)
    hf_export.run(config, str(workdir))
  return workdir, list(_FakeHfApi.calls)


def _card(path):
  text = path.read_text()
  _, front, body = text.split("---\n", 2)
  return yaml.safe_load(front), body


def test_model_cards_carry_metadata_and_experiment_numbers(pushed):
  workdir, _ = pushed
  meta, body = _card(workdir / "export" / "retriever" / "README.md")
  assert meta["library_name"] == "sentence-transformers"
  assert meta["pipeline_tag"] == "sentence-similarity"
  assert meta["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
  assert meta["datasets"] == ["scifact"] and "sentence-transformers" in meta["tags"]
  assert "| baseline | scifact | test | 300 | 0.6451 | 0.9250 | 0.6109 |" in body
  assert "| Labelled queries | 3 |" in body
  assert "`openai`" in body and "`gpt-test-mini`" in body
  assert "initial weights" in body  # No trained retriever in this workdir: the card says so.
  assert "calls.answered" in body and "ledger" not in body
  assert "WARNING: the teacher is not better than the initial retriever" in body  # the audit, loud
  meta, body = _card(workdir / "export" / "ranker" / "README.md")
  assert meta["pipeline_tag"] == "text-ranking" and "cross-encoder" in meta["tags"]
  assert "Identity" in body and "0.6451" in body
  meta, body = _card(workdir / "export" / "labels" / "README.md")
  assert meta["task_categories"] == ["text-retrieval"]
  assert "`gpt-test-mini`" in body and "Labelled queries: 3" in body


def test_push_uploads_each_folder_to_its_repo_without_storing_the_token(pushed):
  workdir, calls = pushed
  export = os.path.join(str(workdir), "export")
  assert calls[0] == ("init", SECRET)
  assert [c for c in calls if c[0] == "create_repo"] == [
      ("create_repo", "someone/retriever", "model", True, True),
      ("create_repo", "someone/ranker", "model", True, True),
      ("create_repo", "someone/labels", "dataset", True, True)]
  assert [c for c in calls if c[0] == "upload_folder"] == [
      ("upload_folder", "someone/retriever", os.path.join(export, "retriever"), "model"),
      ("upload_folder", "someone/ranker", os.path.join(export, "ranker"), "model"),
      ("upload_folder", "someone/labels", os.path.join(export, "labels"), "dataset")]
  assert sorted(os.listdir(os.path.join(export, "labels"))) == ["README.md", "labels.jsonl", "stats.json"]
  for root, _, files in os.walk(workdir):
    for name in files:
      with open(os.path.join(root, name), "rb") as f:
        assert SECRET.encode() not in f.read(), os.path.join(root, name)


def test_push_skips_untrained_models_unless_asked(tmp_path, monkeypatch):
  monkeypatch.setattr(huggingface_hub, "HfApi", _FakeHfApi)
  _FakeHfApi.calls = []
  export_config = defaults.export_config()
  export_config.repo_id_retriever, export_config.repo_id_labels = "someone/r", "someone/l"
  pushed = hf_export.push_to_hub(export_config, [
      hf_export.Exported("retriever", str(tmp_path / "r"), trained=False),
      hf_export.Exported("ranker", str(tmp_path / "k"), trained=True),  # No repo id: not pushed.
      hf_export.Exported("labels", str(tmp_path / "l"), trained=True)])
  assert pushed == {"labels": "someone/l"}
  assert [c[1] for c in _FakeHfApi.calls if c[0] == "upload_folder"] == ["someone/l"]


def test_push_without_any_repo_id_fails_before_exporting(tmp_path):
  config = defaults.base_config()
  config.export.push_to_hub = True
  with pytest.raises(ValueError, match="repo_id"):
    hf_export.run(config, str(tmp_path))
  assert not (tmp_path / "export").exists()


def test_trained_checkpoints_are_not_silently_replaced_by_initial_weights(tmp_path):
  config = defaults.base_config()
  load = dict(mesh=sharding.make_mesh(), param_rules=config.mesh.param_rules, seed=config.seed)
  assert hf_export._trained_model(config.ranker.model, str(tmp_path), "ranker", **load) is None
  (tmp_path / "ranker" / "checkpoints").mkdir(parents=True)
  with pytest.raises(RuntimeError, match="did not finish"):
    hf_export._trained_model(config.ranker.model, str(tmp_path), "ranker", **load)
