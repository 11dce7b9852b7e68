"""BEIR SciFact: 5,183 abstracts, 809 train and 300 test claims. The paper's method end to end.

Everything (retrieve -> label -> train_ranker -> distill -> evaluate), sized to finish in under
2 hours on a 2-core CPU: the teacher re-ranks the top 20 of each training query; the ranker learns
the teacher's first choice (top-1 ListMLE) among all 20, on 96-token pairs, for 1.5 epochs (273
steps of 4 queries x 20 pairs, checked on dev every 30) at a learning rate of 1e-4. Lists of 20,
not the initial top 10: the teacher's first choice lies at initial ranks 11-20 for 21% of the
training queries, which a list of 10 never shows the ranker (seed 0, dev ListMLE of the teacher's
rankings: ranker alone 2.2206 against 2.3211 with lists of 10; initial retriever 2.3491; the
distilled retriever 2.2216 against 2.2589). The packaged MiniLM is a
bi-encoder, so the ranker takes the residual head (`ranker.head="auto"`): the bi-encoder score
plus a joint [CLS] head that starts at zero, trained end to end, so it starts as the initial
retriever (a plain [CLS] head from this checkpoint re-ranked far below the initial retriever).
What it learns on top is small, so the ranker's dev fusion with the initial retriever teaches
(`ranker.fuse_initial="fit"`), over each training query's top 50 candidates, all scored by the
ranker (`distill.depth=50`): of the ranker alone or fused, over the 20 labelled candidates or the
top 50, the lowest dev ListMLE of the teacher's rankings (benchmarks/recipes.py, seed 0;
benchmarks/results/scifact_recipes_s0.json). The query tower is distilled (the corpus is encoded
once), with the teacher temperature matched to the initial retriever's sharpness, for 8 epochs at
5e-5 (184 steps), with in-batch negatives beside the KL (`distill.in_batch_weight=0.5`: each query
against every candidate of its batch, the teacher's best positive), which the lists alone never
show it; the ranker re-ranks the top 100 for its own evaluation. Of in-batch weights 0, 0.05, 0.2,
0.5 and 1 (seed 0's dev slice, benchmarks/results/scifact_in_batch_s0.json): dev ListMLE 2.2216,
2.2153, 2.2070, 2.2079, 2.2182; 0.2 and 0.5 tie (under 0.001) and 0.5 keeps more relevant dev
passages in the top 100 over the whole corpus (Recall@100 0.9568 against 0.9444; initial 0.9630).
Every trained retriever is then used halfway between its initial and trained weights
(`distill.interpolation=0.5`, the default): over the three seeds' dev slices the mean nDCG@10 is
highest there (0.7033 against 0.7000 at 1; benchmarks/results/scifact_interpolation_dev.json),
and the training slices lose far fewer relevant passages from their top 100
(benchmarks/results/scifact_recall_churn.json).
The no-ranker ablation (`distill.teacher=llm`) learns the LLM's first choice, the trust the ranker gets
(`distill.llm_top_k=-1`: ranker.top_k), by ListMLE: of ListMLE and KL to a rank-based target, each
over the LLM's whole order or its first choice, the lowest dev ListMLE (seed 0). With a
real cross-encoder checkpoint, set ranker.model.init (the "auto" head is then its classifier).

  python -m interdistill_jax.main --config=configs/scifact.py --config.data.dir=../shared/data/scifact

The default teacher is `simulated` (rankings from the train qrels with noise: a controlled stand-in
for an LLM, named as such in every artifact). With a real LLM:

  GEMINI_API_KEY=... python -m interdistill_jax.main --config=configs/scifact.py \
      --config.teacher.backend=gemini --config.teacher.model=gemini-2.5-flash
  OPENAI_API_KEY=... python -m interdistill_jax.main --config=configs/scifact.py \
      --config.teacher.backend=openai --config.teacher.model=gpt-4o-mini
  python -m interdistill_jax.main --config=configs/scifact.py --config.teacher.backend=openai \
      --config.teacher.base_url=http://localhost:8000/v1 --config.teacher.model=Qwen/Qwen2.5-7B-Instruct

One stage only: `--config.task=evaluate` (or retrieve, label, train_ranker, distill, export).
Without `data.dir`, the public BEIR zip is downloaded into ~/.cache/interdistill_jax/datasets
when the network allows it.
"""

from interdistill_jax import defaults


def get_config(arg=None):
  del arg
  config = defaults.base_config()
  config.task = "pipeline"
  config.pipeline.stages = ("retrieve", "label", "train_ranker", "distill", "evaluate")
  config.data.dir = "~/.cache/interdistill_jax/datasets/scifact"
  config.data.name = "scifact"
  config.data.download_url = (
      "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/scifact.zip")
  config.retrieve.k = 100
  config.label.num_candidates = 20
  config.teacher.backend = "simulated"
  config.teacher.sim_noise = 0.38  # re-ranks the top 20 to nDCG@10 of about 0.75 on train
  config.ranker.max_length = 96
  config.ranker.list_size = 20  # every candidate the teacher ranked (label.num_candidates)
  config.ranker.top_k = 1
  config.ranker.epochs = 1.5
  config.ranker.optim.learning_rate = 1e-4
  config.ranker.eval_every = config.ranker.checkpoint_every = 30
  config.ranker.fuse_initial = "fit"
  config.distill.list_size = 20
  config.distill.depth = 50
  config.distill.llm_loss = "listmle"
  config.distill.towers = "query"
  config.distill.teacher_temperature = 0.0  # auto: matched to the initial retriever's entropy
  config.distill.in_batch_weight = 0.5
  config.distill.epochs = 8.0
  config.distill.optim.learning_rate = 5e-5
  config.eval.rerank_depth = 100
  return config
