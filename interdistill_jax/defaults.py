"""Default values for every config section; `configs/*.py` start from `base_config()`.

A field left at its default here is a choice the paper leaves open (DESIGN.md): each is a
config value, overridable from the command line as `--config.section.field=value`.

Every section is locked (`ConfigDict.lock()`): `configs/*.py`, command-line overrides and code
may set the fields declared here, and setting any other (a typo) raises an error that names it.
A new setting is declared here, with its default, before anything sets it.
"""

import ml_collections


def _section(fields: dict) -> ml_collections.ConfigDict:
  """A locked section: its fields can be changed, but none can be added."""
  return ml_collections.ConfigDict(fields).lock()


def data_config() -> ml_collections.ConfigDict:
  return _section(dict(
      dir="",                  # BEIR-layout directory (corpus.jsonl, queries.jsonl, qrels/).
      name="",                 # Data set name for reports; default: the directory's basename.
      corpus_file="corpus.jsonl",  # Relative to dir, or absolute (a DPR .tsv works too).
      download_url="",         # Public zip fetched into cache_dir when dir is missing.
      cache_dir="~/.cache/interdistill_jax/datasets",
      train_split="train",
      test_split="test",
      qa=qa_data_config(),
  ))


def qa_data_config() -> ml_collections.ConfigDict:
  """Question sets with answers but no qrels (NQ-open, TriviaQA) over a DPR passage TSV.

  With `format` set, the questions are written once as a BEIR-layout directory (queries.jsonl with
  metadata.answers, splits/{train,test}.txt) in `data.dir`, or under `data.cache_dir` when it is
  empty; `data.corpus_file` is the passage TSV (an absolute path).
  """
  return _section(dict(
      format="",               # "" (data.dir is BEIR), "tfds" or "dpr" (question<TAB>["answer", ...]).
      tfds_name="natural_questions_open",  # or "trivia_qa/unfiltered.nocontext".
      tfds_data_dir="",        # tensorflow-datasets data_dir ("" = its default).
      train="train",           # tfds split name, or the DPR question file of the training split.
      test="validation",       # tfds split name, or the DPR question file of the test split.
      num_train=1000,          # Training questions, a seeded sample (0 = all).
      num_test=0,              # Test questions, the first ones in order (0 = all).
      seed=0,                  # Seeds the training sample.
  ))


def model_config() -> ml_collections.ConfigDict:
  return _section(dict(
      init="",                 # HF directory, Hub id, or "" for the packaged all-MiniLM-L6-v2.
      pooling="",              # "", "mean" or "cls"; "" follows the checkpoint's 1_Pooling config.
      normalize=-1,            # -1 follows the checkpoint (2_Normalize module); 0 or 1 to force.
      max_query_length=64,
      max_doc_length=256,
      dtype="float32",         # Compute dtype: "float32" or "bfloat16" (params stay float32).
      # "auto": cuDNN fused attention on a GPU in bfloat16 (not while training with attention
      # dropout), XLA otherwise; or force "xla" / "cudnn"; "cudnn_dropout" also trains with
      # attention dropout inside cuDNN's fused attention (masks drawn by cuDNN, not the seed).
      attention="auto",
      # Training only: >= 0 overrides the checkpoint's attention dropout. 0 lets training use
      # the fused cuDNN attention too (jax.nn has no dropout inside it); -1 keeps the checkpoint's.
      attention_dropout=-1.0,
  ))


def encode_config() -> ml_collections.ConfigDict:
  return _section(dict(
      # Global batch (all devices); padded so shapes never change. 0: chosen for the platform,
      # 64 on GPU/TPU, about 1024 tokens per device on CPU (sharding.inference_batch_size).
      batch_size=0,
      # Lengths each batch is padded up to (each compiles once): fine steps waste little compute.
      buckets=(16, 32, 48, 64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512),
      cache=True,              # Store corpus embeddings under workdir/embeddings/ and reuse.
      # Keep the corpus's token ids under data.cache_dir/tokens/ (per tokenizer, corpus and
      # passage length): encoding it again, with any model on the same tokenizer, reads no text.
      token_cache=True,
      # > 0: encode the corpus into on-disk shards of this many passages (bounded memory,
      # resumable per shard, each process its own shards); 0: in memory (small corpora).
      shard_size=0,
      shard_dtype="float16",   # Storage dtype of the shards: "float16" (half the disk) or "float32".
  ))


def retrieve_config() -> ml_collections.ConfigDict:
  return _section(dict(
      k=100,                   # Candidates written per query.
      splits=("train", "test"),
      block_size=4096,         # Corpus rows scored per matmul block in exact search (JAX).
      # Exact search kernel: "auto" (FAISS on CPU, JAX sharded over the mesh on GPU/TPU), or
      # "faiss" / "jax" to force one. Both give the same top-k up to exact ties.
      exact_backend="auto",
      index="exact",           # "exact", or FAISS "ivfpq" / "hnsw" (needs encode.shard_size > 0).
      nlist=0,                 # ivfpq: inverted lists; 0 = 4 sqrt(corpus size).
      pq_m=48,                 # ivfpq: PQ sub-quantizers (bytes per vector); must divide the dim.
      nprobe=64,               # ivfpq: lists visited per query.
      hnsw_m=32,               # hnsw: links per node.
      ef_search=256,           # hnsw: search beam width.
      refine=4,                # ivfpq/hnsw: re-score refine x k proposals with the stored embeddings.
  ))


def eval_config() -> ml_collections.ConfigDict:
  return _section(dict(
      split="test",
      k_values=(1, 3, 5, 10, 100, 1000),
      answer_ks=(1, 5, 20, 100),  # top-k answer accuracy, for query sets with answers.
      depth=1000,              # Documents retrieved per query for evaluation.
      rerank_depth=100,        # Baseline candidates the trained ranker re-ranks (system "ranker").
  ))


def client_config(**defaults) -> dict:
  """The LLM client's fields, shared by the teacher and the reader, with the `defaults` of the
  section that differ (a name not declared here is an error)."""
  fields = dict(
      # "openai", "gemini", "llamacpp" (in-process GGUF) or "simulated" (from qrels, not an LLM;
      # the teacher only).
      backend="simulated",
      model="",                # API model name; GGUF path for llamacpp ("" = packaged SmolLM2-135M).
      base_url="",             # OpenAI-compatible server (".../v1") or Gemini endpoint; "" = official.
      api_version="",          # Gemini API version ("" = the SDK's default).
      concurrency=8,           # Calls in flight at once.
      rpm=0,                   # Requests per minute; 0 means no limit.
      max_retries=6,           # Per call, on 429 / 5xx / timeouts / lost connections.
      backoff_base=1.0,        # Seconds before the first retry; doubles each retry, with jitter.
      backoff_max=60.0,
      max_retry_after=600.0,   # Longest server-requested (Retry-After) wait honoured, seconds.
      temperature=0.0,         # 0 = greedy.
      max_output_tokens=0,     # 0 = the server's default (llamacpp: enough for one permutation).
      timeout=60.0,            # Seconds per call.
      max_passage_tokens=300,  # Each passage cut to this many tokens in the prompt (0 = no cut).
      tokenizer="",            # tokenizer.json for exact budgets; "" = an estimate (llamacpp: its own).
      # llamacpp context; 0 = sized for the prompts (the teacher's mode, the reader's max(ks)
      # passages).
      n_ctx=0,
      n_threads=0,             # llamacpp CPU threads; 0 = all cores.
  )
  unknown = sorted(set(defaults) - set(fields))
  if unknown:
    raise KeyError(f"{unknown} are not LLM client fields")
  return fields | defaults


def teacher_config() -> ml_collections.ConfigDict:
  return _section(dict(
      **client_config(),
      mode="listwise",         # "listwise", or "query_likelihood" (llamacpp only: log P(q | passage)).
      window=20,               # Passages per listwise call; longer lists use sliding windows.
      stride=10,               # Window step, back to front; the top (window - stride) are exact.
      price_input_per_mtok=-1.0,   # USD per million prompt tokens; < 0 uses teachers/pricing.py.
      price_output_per_mtok=-1.0,  # USD per million completion tokens; < 0 uses the table.
      sim_noise=0.0,           # simulated: std of Gaussian noise added to relevance grades.
      sim_position_bias=0.0,   # simulated: score bonus for the first passage shown, 0 for the last.
      sim_malformed_rate=0.0,  # simulated: fraction of answers that are malformed.
      # The teacher's own random draws (the simulated teacher's noise and malformed answers,
      # llama.cpp's sampling). Not `seed`: runs that differ only in `seed` learn the same labels.
      seed=0,
  ))


def reader_config() -> ml_collections.ConfigDict:
  """The reader of retrieval-augmented QA in `evaluate`: a teacher backend used as a generator."""
  return _section(dict(
      **client_config(
          backend="llamacpp",      # A reader generates: not "simulated".
          max_output_tokens=32,    # A short answer.
          max_passage_tokens=200,  # Each passage is its title, then its text.
      ),
      enabled=False,           # QA configs turn it on; needs queries with metadata.answers.
      ks=(1, 5),               # Passages in the prompt: the top k of each system's run.
      max_questions=0,         # First questions of the split read (0 = all with answers).
  ))


def label_config() -> ml_collections.ConfigDict:
  return _section(dict(
      split="train",
      num_candidates=20,       # Top candidates of candidates/{split}.trec shown to the teacher.
      max_queries=0,           # 0 labels every query of the split.
      # max_queries > 0: -1 labels the first queries of candidates/{split}.trec; >= 0 a sample
      # seeded by it. Either way fewer queries are a subset of more (nested learning curves).
      sample_seed=-1,
      on_failure="prefix",     # Malformed answer: "prefix" (keep the ranked part), "retry", "drop".
      reasks=2,                # "retry": re-asks per window before falling back to "prefix".
      # Teacher audit (stats.json "quality"): with qrels for the labelled queries, a teacher whose
      # nDCG@10 on the lists is not above the initial order's is "warn"ed about (log, report,
      # model card) or "stop"s the run after labelling (labels kept); or "ignore".
      weak_teacher="warn",
  ))


def mesh_config() -> ml_collections.ConfigDict:
  """The device mesh every task builds once (`sharding.mesh_from_config`) and computes on."""
  return _section(dict(
      # Devices on the `data` axis (batches split along it): -1 = every device of every host;
      # n > 0 = the first n devices, on one process only (several processes need every device).
      data=-1,
      # Where parameters live: ((regex, layout), ...); the first regex that matches a parameter's
      # path ("bert/layers/0/ffn_in/kernel") places it, and its optimizer moments with it. Layout
      # "replicate", "fsdp" (split along its largest dimension that divides over `data`: FSDP /
      # ZeRO-3), or a PartitionSpec tuple such as (None, "data"). () replicates every parameter;
      # ((".*", "fsdp"),) shards them all (sharding.param_shardings).
      param_rules=(),
  ))


def optim_config(learning_rate: float) -> ml_collections.ConfigDict:
  return _section(dict(
      learning_rate=learning_rate,
      schedule="linear",       # "linear" or "cosine" decay after warmup, or "constant".
      warmup_fraction=0.1,
      weight_decay=0.01,
      max_grad_norm=1.0,
  ))


def ranker_config() -> ml_collections.ConfigDict:
  model = model_config()
  return _section(dict(
      model=model,             # Cross-encoder init: "" = the packaged MiniLM.
      # "cls": [CLS] -> linear head (BertForSequenceClassification), for cross-encoder checkpoints;
      # "residual": the bi-encoder score plus a zero-initialised [CLS] head, trained end to end,
      # so the ranker starts as the initial retriever (models.CrossEncoder); "auto": "cls" when
      # the checkpoint has a one-label classifier, else "residual".
      head="auto",
      max_length=256,          # Tokens of "[CLS] query [SEP] passage [SEP]".
      list_size=20,            # Candidates per query (pads shorter lists).
      prefix_only=True,        # ListMLE over the teacher-ranked prefix only (after repairs).
      top_k=0,                 # > 0: top-k ListMLE, only the first k teacher positions scored.
      # After training, a * ranker + b * initial retriever is fitted by ListMLE on the dev slice
      # (ranker/fusion.json; `evaluate` reports it as "ranker_fused"). "fit": that fused score is
      # the ranker wherever it scores (distillation, evaluation); "none": the ranker alone.
      fuse_initial="none",
      # Queries per step (x list_size pairs), whatever the device count: a batch that does not
      # split evenly over the mesh is padded with zero-weight rows.
      batch_size=4,
      score_batch_size=0,      # Pairs per forward pass when scoring; 0 as encode.batch_size.
      epochs=2.0,
      dev_fraction=0.1,        # Slice of the *training* queries for checkpoint selection.
      eval_every=50,
      checkpoint_every=50,
      # Steps between fetches of the train metrics (and the NaN check) from the devices; also
      # fetched at every eval and checkpoint step. metrics.jsonl still has every step.
      log_every=10,
      keep_checkpoints=2,
      optim=optim_config(3e-5),
  ))


def distill_config() -> ml_collections.ConfigDict:
  return _section(dict(
      teacher="ranker",        # "ranker" (Intermediate Distillation, retriever/); "llm" (the
                               # no-ranker ablation on the LLM rankings, retriever_direct/);
                               # "qrels" (gold judgements, retriever_supervised/).
      llm_loss="listmle",      # teacher="llm": "listmle", or "kl" to a rank-based distribution.
      llm_top_k=-1,            # teacher="llm": the LLM's first k positions learnt (0: its whole
                               # trusted prefix; -1: ranker.top_k, the trust the ranker gets).
      list_size=20,            # Candidates per query of the labelled lists (teacher "llm", "qrels").
      # teacher="ranker": > 0 distils over each training query's top `depth` candidates of the
      # initial run, all scored by the ranker (deeper than the LLM saw); 0: the labelled lists.
      depth=0,
      towers="query",          # "query": train the query tower only (corpus embeddings reused);
                               # "both": train the shared tower (corpus re-encoded for eval).
      teacher_temperature=1.0, # <= 0: "auto", the temperature at which the ranker's softmaxes
                               # have the initial retriever's mean entropy on the training lists.
      student_temperature=0.05,
      in_batch_weight=0.0,     # Weight of an in-batch contrastive term (teacher top-1 positive).
      # The retriever every later stage uses (evaluate, export): its trainable weights taken
      # (1 - a) x initial + a x trained (weight-space ensembling, as WiSE-FT; 1: the trained
      # weights alone). Applied when the retriever is loaded, so changing it reruns evaluate
      # and export, not the training; distill records the dev figures at 0.25, 0.5 and 0.75.
      interpolation=0.5,
      batch_size=32,           # Queries per step (padded with zero-weight rows to split over the mesh).
      epochs=4.0,
      dev_fraction=0.1,
      eval_every=25,
      checkpoint_every=25,
      log_every=10,            # Steps between fetches of the train metrics (as ranker.log_every).
      keep_checkpoints=2,
      optim=optim_config(2e-5),
  ))


def export_config() -> ml_collections.ConfigDict:
  return _section(dict(
      push_to_hub=False,       # Upload export/ to the Hub (token from the HF_TOKEN environment variable).
      repo_id_retriever="",    # "owner/name" of the retriever's model repo; "" = not pushed.
      repo_id_ranker="",       # "owner/name" of the ranker's model repo; "" = not pushed.
      repo_id_labels="",       # "owner/name" of a data set repo for labels.jsonl; "" = not pushed.
      private=True,            # New repos are created private; publishing is a deliberate step.
      push_untrained=False,    # Also push a model exported from initial (untrained) weights.
      base_model="",           # Model card `base_model`; "" derives it from model.init.
      datasets=(),             # Model card `datasets`; () uses data.name.
      license="",              # Model card `license`; "" leaves it out.
  ))


def base_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.task = "evaluate"
  config.seed = 0
  config.mesh = mesh_config()
  config.data = data_config()
  config.model = model_config()
  config.encode = encode_config()
  config.retrieve = retrieve_config()
  config.teacher = teacher_config()
  config.label = label_config()
  config.ranker = ranker_config()
  config.distill = distill_config()
  config.eval = eval_config()
  config.reader = reader_config()
  config.export = export_config()
  config.pipeline = _section(dict(
      stages=("retrieve", "evaluate"),
  ))
  return config.lock()
