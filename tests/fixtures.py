"""Small data and a tiny BERT checkpoint that tests build for themselves."""

import json
import pathlib
import shutil
import textwrap

import numpy as np

from interdistill_jax import assets, defaults

WORDS = ("protein gene cell virus brain heart drug cancer blood tumor immune therapy dose trial "
         "mouse human liver kidney lung bone muscle neuron signal receptor enzyme").split()


def tiny_bert(directory: pathlib.Path, *, layers=2, hidden=32, heads=4, seed=0, pooling="mean",
              normalize=True, hidden_dropout=0.1) -> pathlib.Path:
  """A randomly initialised BERT in Hugging Face layout, with MiniLM's tokenizer files.

  `hidden_dropout` is the checkpoint's `hidden_dropout_prob`, which no config field overrides
  (the attention dropout has one: `model.attention_dropout`).
  """
  from safetensors.numpy import save_file
  directory.mkdir(parents=True, exist_ok=True)
  src = pathlib.Path(assets.packaged_encoder_dir())
  for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
    shutil.copy(src / name, directory / name)
  cfg = dict(model_type="bert", architectures=["BertModel"], vocab_size=30522, hidden_size=hidden,
             num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=4 * hidden,
             max_position_embeddings=128, type_vocab_size=2, layer_norm_eps=1e-12,
             hidden_dropout_prob=hidden_dropout, attention_probs_dropout_prob=0.1, hidden_act="gelu",
             pad_token_id=0)
  (directory / "config.json").write_text(json.dumps(cfg))
  rng = np.random.default_rng(seed)
  w = lambda *shape: (0.05 * rng.standard_normal(shape)).astype(np.float32)  # noqa: E731
  t = {"embeddings.word_embeddings.weight": w(30522, hidden),
       "embeddings.position_embeddings.weight": w(128, hidden),
       "embeddings.token_type_embeddings.weight": w(2, hidden),
       "embeddings.LayerNorm.weight": np.ones(hidden, np.float32),
       "embeddings.LayerNorm.bias": np.zeros(hidden, np.float32)}
  for i in range(layers):
    p = f"encoder.layer.{i}."
    for name, (o, n) in {"attention.self.query": (hidden, hidden), "attention.self.key": (hidden, hidden),
                         "attention.self.value": (hidden, hidden), "attention.output.dense": (hidden, hidden),
                         "intermediate.dense": (4 * hidden, hidden), "output.dense": (hidden, 4 * hidden)}.items():
      t[p + name + ".weight"], t[p + name + ".bias"] = w(o, n), w(o)
    for name in ("attention.output.LayerNorm", "output.LayerNorm"):
      t[p + name + ".weight"] = np.ones(hidden, np.float32)
      t[p + name + ".bias"] = np.zeros(hidden, np.float32)
  t["pooler.dense.weight"], t["pooler.dense.bias"] = w(hidden, hidden), w(hidden)
  save_file(t, str(directory / "model.safetensors"))
  (directory / "1_Pooling").mkdir(exist_ok=True)
  (directory / "1_Pooling" / "config.json").write_text(json.dumps(
      {"word_embedding_dimension": hidden, "pooling_mode_mean_tokens": pooling == "mean",
       "pooling_mode_cls_token": pooling == "cls"}))
  modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
             {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
  if normalize:
    modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                    "type": "sentence_transformers.models.Normalize"})
  (directory / "modules.json").write_text(json.dumps(modules))
  return directory


def tiny_beir(directory: pathlib.Path, *, num_docs=60, num_train=16, num_test=8, seed=0,
              answers=False) -> pathlib.Path:
  """A synthetic BEIR directory: each query shares words with its one relevant document."""
  rng = np.random.default_rng(seed)
  directory.mkdir(parents=True, exist_ok=True)
  docs = []
  for i in range(num_docs):
    words = rng.choice(WORDS, size=12).tolist()
    docs.append({"_id": f"d{i}", "title": f"doc {i}", "text": " ".join(words)})
  queries, qrels = [], {"train": [], "test": []}
  for j in range(num_train + num_test):
    split = "train" if j < num_train else "test"
    target = int(rng.integers(num_docs))
    words = docs[target]["text"].split()[:4]
    q = {"_id": f"q{j}", "text": " ".join(words), "metadata": {}}
    if answers:
      q["metadata"]["answers"] = [words[0]]
    queries.append(q)
    qrels[split].append((q["_id"], docs[target]["_id"]))
  with open(directory / "corpus.jsonl", "w") as f:
    f.writelines(json.dumps(d) + "\n" for d in docs)
  with open(directory / "queries.jsonl", "w") as f:
    f.writelines(json.dumps(q) + "\n" for q in queries)
  (directory / "qrels").mkdir(exist_ok=True)
  for split, rows in qrels.items():
    with open(directory / "qrels" / f"{split}.tsv", "w") as f:
      f.write("query-id\tcorpus-id\tscore\n")
      f.writelines(f"{q}\t{d}\t1\n" for q, d in rows)
  return directory


def write_labels(path: pathlib.Path, dataset_dir: pathlib.Path, *, list_size=6, seed=0,
                 split="train") -> list[dict]:
  """labels.jsonl where the teacher ranks the relevant doc first and the rest at random."""
  rng = np.random.default_rng(seed)
  qrels = {}
  for line in (dataset_dir / "qrels" / f"{split}.tsv").read_text().splitlines()[1:]:
    q, d, _ = line.split("\t")
    qrels[q] = d
  num_docs = sum(1 for _ in open(dataset_dir / "corpus.jsonl"))
  records = []
  for q, rel in qrels.items():
    others = [f"d{i}" for i in rng.permutation(num_docs) if f"d{i}" != rel][:list_size - 1]
    docids = others[:2] + [rel] + others[2:]
    ranking = [rel] + [d for d in rng.permutation(others).tolist()]
    records.append({"qid": q, "docids": docids, "ranking": ranking,
                    "ranked_prefix": len(ranking) if q != "q1" else 2, "repaired": q == "q1",
                    "teacher": {"backend": "fixture"}})
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in records)
  return records


def small_config(bert: pathlib.Path, data_dir: pathlib.Path):
  """The default config at test size: `bert` for both models, lists of 6, 2 epochs of 4 queries."""
  c = defaults.base_config()
  c.data.dir = str(data_dir)
  c.data.cache_dir = str(pathlib.Path(data_dir).parent / "cache")  # the corpus index
  c.model.init = c.ranker.model.init = str(bert)
  c.model.max_doc_length = c.ranker.max_length = 32
  c.encode.buckets = (32,)
  r = c.ranker
  r.list_size, r.batch_size, r.epochs, r.dev_fraction = 6, 4, 2.0, 0.25
  r.eval_every = r.checkpoint_every = 2
  d = c.distill
  d.list_size, d.batch_size, d.epochs, d.dev_fraction = 6, 4, 2.0, 0.25
  d.eval_every = d.checkpoint_every = 2
  c.eval.depth, c.eval.rerank_depth = 20, 10
  return c


def write_config_file(path: pathlib.Path, config) -> None:
  """A configs/*.py-style file whose get_config() returns `config` (for `interdistill_jax.main`)."""
  path.write_text(textwrap.dedent(f"""
      import json
      import ml_collections
      def get_config(arg=None):
        return ml_collections.ConfigDict(json.loads({config.to_json()!r}))
      """))
