"""Where a trained retriever gains and loses relevant passages at depth k, never on test queries.

  .venv/bin/python benchmarks/recall_churn.py --config=configs/scifact.py \
      --config.data.dir=../shared/data/scifact --config.seed=0 --workdir=runs/s0

For the labelled training queries of the workdir, split as `distill` split them (the seed's
training and dev slices), every relevant (query, passage) pair of the training qrels is ranked
over the whole corpus by the initial and by the trained retriever (`--system`'s directory). Per
slice: Recall@k of both, the pairs that left the top k ("lost") and those that entered it
("gained"), with their ranks before and after. The teacher only ranked the top
`label.num_candidates`, so what happens beyond them is what the retriever generalised, not what
it was shown. The trained retriever is loaded as evaluate loads it, its weights interpolated
with the initial ones by `distill.interpolation` (`--alpha` overrides it; 1: the trained weights
alone). Prints JSON.
"""

import json

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from interdistill_jax import data as data_lib
from interdistill_jax import assets, layout, retrieval, retrievers, search, sharding, tokenization, train

_CONFIG = config_flags.DEFINE_config_file("config", None, "The config the workdir was run with.")
_WORKDIR = flags.DEFINE_string("workdir", None, "The run's workdir.")
_SYSTEM = flags.DEFINE_string("system", "retriever", "The trained retriever's directory in it.")
_K = flags.DEFINE_integer("k", 100, "The depth of the recall.")
_ALPHA = flags.DEFINE_float("alpha", None, "Weight of the trained parameters (1: the trained "
                            "retriever; 0: the initial one); default distill.interpolation.")
_DEPTH = 1000  # ranks beyond this are reported as DEPTH + 1


def churn(initial: dict, trained: dict, k: int) -> dict:
  """Recall@k of both rank arrays (one rank per relevant pair) and what moved across k."""
  lost = (initial <= k) & (trained > k)
  gained = (initial > k) & (trained <= k)
  return {"pairs": int(len(initial)),
          f"recall@{k}_initial": float((initial <= k).mean()),
          f"recall@{k}_trained": float((trained <= k).mean()),
          "lost": int(lost.sum()), "gained": int(gained.sum()),
          "lost_ranks": sorted(zip(initial[lost].tolist(), trained[lost].tolist())),
          "gained_ranks": sorted(zip(initial[gained].tolist(), trained[gained].tolist()))}


def main(_):
  config, workdir, k = _CONFIG.value, _WORKDIR.value, _K.value
  mesh = sharding.mesh_from_config(config.mesh)
  dataset = assets.load_dataset(config.data)
  labels = data_lib.load_labels(layout.labels(workdir), dataset)
  train_qids, dev_qids = train.dev_split([r["qid"] for r in labels], config.distill.dev_fraction,
                                         config.seed)
  qrels = dataset.qrels(config.label.split)
  initial = retrieval.Encoder.from_config(config, mesh=mesh)
  docids, index = retrieval.corpus_index(workdir, initial, dataset, retrieve_config=config.retrieve,
                                         encode_config=config.encode, data_config=config.data,
                                         seed=config.seed)
  alpha = config.distill.interpolation if _ALPHA.value is None else _ALPHA.value
  model, ckpt, _ = retrievers.load_distilled(config.model, f"{workdir}/{_SYSTEM.value}", mesh=mesh,
                                             param_rules=config.mesh.param_rules, seed=config.seed,
                                             interpolation=alpha)
  trained = retrieval.Encoder(model, tokenization.Tokenizer(ckpt.dir), encode_config=config.encode,
                              model_config=config.model, mesh=mesh,
                              param_rules=config.mesh.param_rules)
  qids = [r["qid"] for r in labels]
  texts = [dataset.queries[q].text for q in qids]
  ranks = {}
  for name, encoder in (("initial", initial), ("trained", trained)):
    run = search.search_run(index, docids, qids, encoder.encode(texts, tower="query"), _DEPTH)
    ranks[name] = {q: {d: i + 1 for i, d in enumerate(data_lib.ranked(run[q]))} for q in qids}
  out = {"benchmark": "recall_churn", "workdir": workdir, "system": _SYSTEM.value, "k": k,
         "seed": config.seed, "alpha": alpha}
  for part, part_qids in (("train", train_qids), ("dev", dev_qids)):
    pairs = [(q, d) for q in part_qids for d, g in qrels.get(q, {}).items() if g > 0]
    before, after = (np.array([ranks[n][q].get(d, _DEPTH + 1) for q, d in pairs])
                     for n in ("initial", "trained"))
    out[part] = churn(before, after, k)
  print(json.dumps(out, indent=1))


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
