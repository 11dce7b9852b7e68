"""Task `label`: labels.jsonl as DESIGN.md specifies, resumable after SIGKILL, honest stats."""

import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest

from interdistill_jax import data, defaults, labeling, layout, teachers
from interdistill_jax.teachers.testing import Fault, FakeLLMServer
from tests.conftest import REPO, data_path

WORDS = ("apple banana cherry grape lemon mango orange peach pear plum kiwi lime fig date melon "
         "berry olive onion pepper carrot").split()
NUM_QUERIES, NUM_DOCS, NUM_CANDIDATES = 12, 80, 30
SECRET = "sk-do-not-leak-0123456789abcdef"


@pytest.fixture
def dataset(tmp_path):
  """A synthetic BEIR directory and a workdir with candidates/train.trec (30 per query)."""
  rng = random.Random(0)
  root, workdir = tmp_path / "data", tmp_path / "work"
  (root / "qrels").mkdir(parents=True)
  (workdir / "candidates").mkdir(parents=True)
  with open(root / "corpus.jsonl", "w") as f:
    for i in range(NUM_DOCS):
      f.write(json.dumps({"_id": f"d{i}", "title": f"doc {i}",
                          "text": " ".join(rng.choice(WORDS) for _ in range(12))}) + "\n")
  with open(root / "queries.jsonl", "w") as f:
    for i in range(NUM_QUERIES):
      f.write(json.dumps({"_id": f"q{i}", "text": " ".join(rng.sample(WORDS, 4))}) + "\n")
  with open(root / "qrels" / "train.tsv", "w") as f:
    f.write("query-id\tcorpus-id\tscore\n")
    for i in range(NUM_QUERIES):
      f.write(f"q{i}\td{(5 * i) % NUM_DOCS}\t1\n")
  run = {f"q{i}": {f"d{d}": float(NUM_CANDIDATES - r) for r, d in
                   enumerate(rng.sample(range(NUM_DOCS), NUM_CANDIDATES))} for i in range(NUM_QUERIES)}
  data.write_trec_run(workdir / "candidates" / "train.trec", run, "init")
  return root, workdir


def _config(root, **teacher):
  config = defaults.base_config()
  config.task = "label"
  config.data.dir = str(root)
  config.data.cache_dir = str(root.parent / "cache")  # the corpus index
  config.label.num_candidates = NUM_CANDIDATES
  config.teacher.update(teacher)
  return config


def _labels(workdir):
  return data.load_labels(os.path.join(workdir, "labels", "labels.jsonl"))


def _stats(workdir, name="stats.json"):
  with open(os.path.join(workdir, "labels", name)) as f:
    return json.load(f)


def _content(records):
  """Labels keyed by qid (file order may differ between runs)."""
  out = {}
  for r in records:
    r = json.loads(json.dumps(r))
    assert "time" not in r["teacher"]  # identical runs write identical lines
    out[r["qid"]] = r
  return out


def test_labels_follow_the_artifact_contract(dataset):
  root, workdir = dataset
  labeling.run(_config(root, sim_noise=0.3), str(workdir))
  records = _labels(workdir)
  run = data.read_trec_run(workdir / "candidates" / "train.trec")
  assert len(records) == NUM_QUERIES
  for r in records:
    assert set(r) == {"qid", "docids", "ranking", "ranked_prefix", "repaired", "teacher"}
    assert r["docids"] == data.ranked(run[r["qid"]])[:NUM_CANDIDATES]
    assert sorted(r["ranking"]) == sorted(r["docids"])
    assert r["ranked_prefix"] == NUM_CANDIDATES and r["repaired"] is False
    t = r["teacher"]
    assert t["backend"] == "simulated" and t["simulated"] is True
    assert t["prompt_version"] == "rankgpt-single-turn-v1" and "time" not in t
    assert t["windows"] == {"parsed": 2}
  stats = _stats(workdir)
  assert stats["teacher"]["simulated"] is True
  assert stats["queries"] == {"selected": NUM_QUERIES, "already_labelled": 0,
                              "labelled": NUM_QUERIES, "dropped": 0, "failed": 0}
  assert stats["windows"] == {"parsed": 2 * NUM_QUERIES}
  assert stats["calls"]["answered"] == 2 * NUM_QUERIES
  assert stats["cost_usd"]["this_run"] == 0.0


def test_noiseless_simulated_teacher_puts_the_relevant_document_first(dataset):
  root, workdir = dataset
  # Make sure every query's relevant document is among its candidates.
  run = data.read_trec_run(workdir / "candidates" / "train.trec")
  for i in range(NUM_QUERIES):
    run[f"q{i}"][f"d{(5 * i) % NUM_DOCS}"] = 0.5
    run[f"q{i}"].pop(data.ranked(run[f"q{i}"])[-2], None)
  data.write_trec_run(workdir / "candidates" / "train.trec", run, "init")
  labeling.run(_config(root), str(workdir))
  records = _labels(workdir)
  assert len(records) == NUM_QUERIES
  for r in records:
    assert r["ranking"][0] == f"d{(5 * int(r['qid'][1:])) % NUM_DOCS}"
  # One relevant document per query, always ranked first: the teacher's nDCG@10 is 1.
  quality = _stats(workdir)["quality"]
  assert quality["queries"] == NUM_QUERIES and quality["teacher_ndcg@10"] == 1.0
  assert quality["initial_ndcg@10"] < 1.0


def test_fewer_labelled_queries_are_a_subset_of_more():
  qids = [f"q{i}" for i in range(50)]
  # label.sample_seed -1 (the default): the first queries of the run file, as always.
  assert labeling.select_queries(qids, max_queries=10) == qids[:10]
  assert labeling.select_queries(qids, max_queries=0, sample_seed=3) == qids
  for seed in (0, 1):
    sizes = [labeling.select_queries(qids, max_queries=n, sample_seed=seed) for n in (5, 10, 30, 50)]
    for smaller, larger in zip(sizes, sizes[1:]):
      assert set(smaller) < set(larger)
    assert [len(s) for s in sizes] == [5, 10, 30, 50]
    assert sizes[0] == [q for q in qids if q in set(sizes[0])]  # in the run file's order
    assert sizes[1] != qids[:10]  # a sample, not the first ones
  assert (labeling.select_queries(qids, max_queries=10, sample_seed=0)
          != labeling.select_queries(qids, max_queries=10, sample_seed=1))


def test_a_sampled_selection_labels_those_queries(dataset):
  root, workdir = dataset
  config = _config(root)
  config.label.max_queries, config.label.sample_seed = 5, 0
  labeling.run(config, str(workdir))
  run = data.read_trec_run(workdir / "candidates" / "train.trec")
  want = labeling.select_queries(list(run), max_queries=5, sample_seed=0)
  assert sorted(r["qid"] for r in _labels(workdir)) == sorted(want)


def test_a_rerun_on_a_warm_cache_makes_no_calls_and_gives_the_same_labels(dataset):
  root, workdir = dataset
  config = _config(root, sim_noise=1.0, sim_malformed_rate=0.3)
  labeling.run(config, str(workdir))
  first = _content(_labels(workdir))
  os.remove(workdir / "labels" / "labels.jsonl")
  labeling.run(config, str(workdir))
  assert _content(_labels(workdir)) == first
  calls = _stats(workdir)["calls"]
  assert calls["sent"] == 0 and calls["cache_hits"] == 2 * NUM_QUERIES


def test_resume_skips_written_queries_and_drops_a_cut_last_line(dataset):
  root, workdir = dataset
  config = _config(root, sim_noise=1.0)
  labeling.run(config, str(workdir))
  full = _content(_labels(workdir))
  path = workdir / "labels" / "labels.jsonl"
  lines = path.read_text().splitlines(keepends=True)
  path.write_text("".join(lines[:5]) + lines[5][:40])  # As if killed mid-write.
  labeling.run(config, str(workdir))
  assert _content(_labels(workdir)) == full
  stats = _stats(workdir)
  assert stats["queries"]["already_labelled"] == 5 and stats["queries"]["labelled"] == NUM_QUERIES - 5
  assert stats["labels"]["queries"] == NUM_QUERIES and stats["calls"]["sent"] == 0


def test_labels_of_other_settings_are_moved_aside_never_extended(dataset):
  root, workdir = dataset
  labeling.run(_config(root), str(workdir))
  first = open(layout.labels(str(workdir))).read()
  config = _config(root)
  config.label.num_candidates = 20
  labeling.run(config, str(workdir))  # another list length: labelled afresh, the old ones kept
  (moved,) = os.listdir(workdir / "stale")
  assert moved.startswith("label-") and (workdir / "stale" / moved / "labels.jsonl").read_text() == first
  records = _labels(workdir)
  assert len(records) == NUM_QUERIES and {len(r["docids"]) for r in records} == {20}
  # Labels from before inputs were recorded cannot be told apart by settings: resuming them with
  # another teacher or other candidates is refused, never mixed.
  os.remove(layout.started(layout.labels_dir(str(workdir))))
  stats = _stats(workdir)
  data.write_json(layout.label_stats(str(workdir)), {k: v for k, v in stats.items()
                                                     if k not in ("inputs", "fingerprint")})
  with pytest.raises(data.DataError, match="other candidates"):
    labeling.run(_config(root), str(workdir))
  config = _config(root, model="another-simulation")
  config.label.num_candidates = 20
  with pytest.raises(data.DataError, match="model"):
    labeling.run(config, str(workdir))
  assert len(os.listdir(workdir / "stale")) == 1  # nothing more was moved


def test_the_teacher_draws_from_teacher_seed_not_from_the_runs_seed(dataset, tmp_path):
  """Runs that differ only in `seed` learn the same labels (a sweep shares one label stage between
  them, whichever labels first); `teacher.seed` draws another noisy teacher, so labels made under
  one are relabelled under another, the old ones moved aside."""
  root, workdir = dataset
  labeling.run(_config(root, sim_noise=1.0), str(workdir))
  first = _content(_labels(workdir))
  other = tmp_path / "other"
  shutil.copytree(workdir / "candidates", other / "candidates")
  config = _config(root, sim_noise=1.0)
  config.seed = 5
  labeling.run(config, str(other))
  assert _content(_labels(other)) == first
  labeling.run(_config(root, sim_noise=1.0, seed=3), str(workdir))
  redrawn = _content(_labels(workdir))
  assert redrawn.keys() == first.keys()
  assert sum(redrawn[q]["ranking"] != first[q]["ranking"] for q in first) >= NUM_QUERIES // 2
  (moved,) = os.listdir(workdir / "stale")
  assert _content(data.load_labels(str(workdir / "stale" / moved / "labels.jsonl"))) == first


@pytest.mark.parametrize("policy", ["prefix", "retry", "drop"])
def test_failure_policies(dataset, policy):
  root, workdir = dataset
  config = _config(root, sim_noise=0.5, sim_malformed_rate=0.4)
  config.label.on_failure = policy
  labeling.run(config, str(workdir))
  records, stats = _labels(workdir), _stats(workdir)
  repaired_windows = stats["windows"].get("repaired", 0) + stats["windows"].get("failed", 0)
  if policy == "prefix":
    assert len(records) == NUM_QUERIES and repaired_windows > 0
    assert sum(r["repaired"] for r in records) == stats["labels"]["repaired"] > 0
    assert any(r["ranked_prefix"] < NUM_CANDIDATES for r in records)
  elif policy == "retry":
    assert len(records) == NUM_QUERIES and stats["reasks"] > 0
    assert stats["calls"]["answered"] == 2 * NUM_QUERIES + stats["reasks"]
  else:
    assert stats["queries"]["dropped"] == len(stats["dropped_qids"]) > 0
    assert len(records) + stats["queries"]["dropped"] == NUM_QUERIES
    assert not any(r["repaired"] for r in records)
    assert not set(stats["dropped_qids"]) & {r["qid"] for r in records}
  assert records  # "drop" keeps the queries whose answers parsed
  for r in records:
    assert sorted(r["ranking"]) == sorted(r["docids"])
    if not r["repaired"]:
      assert r["ranked_prefix"] == NUM_CANDIDATES


def test_queries_whose_calls_keep_failing_are_reported_not_written(dataset, monkeypatch):
  root, workdir = dataset
  monkeypatch.setenv("OPENAI_API_KEY", SECRET)
  with FakeLLMServer() as server:
    server.faults.extend([Fault(status=500)] * 2)  # The first query's two attempts.
    config = _config(root, backend="openai", model="m", base_url=server.url + "/v1",
                     max_retries=1, backoff_base=0.001, concurrency=1)
    config.label.max_queries = 3
    with pytest.raises(RuntimeError, match="1 queries could not be labelled"):
      labeling.run(config, str(workdir))
    stats = _stats(workdir, "stats.partial.json")
    assert list(stats["failed_qids"]) == ["q0"] and stats["queries"]["failed"] == 1
    assert not (workdir / "labels" / "stats.json").exists()  # The stage is not complete.
    assert {r["qid"] for r in _labels(workdir)} == {"q1", "q2"}
    labeling.run(config, str(workdir))  # A rerun retries only the failed query.
    assert {r["qid"] for r in _labels(workdir)} == {"q0", "q1", "q2"}
    assert _stats(workdir)["calls"]["answered"] == 2
    assert not (workdir / "labels" / "stats.partial.json").exists()


def test_a_rejected_key_stops_the_run_and_is_reported(dataset, monkeypatch):
  root, workdir = dataset
  monkeypatch.setenv("OPENAI_API_KEY", SECRET)
  with FakeLLMServer() as server:
    server.faults.append(Fault(status=401))
    config = _config(root, backend="openai", model="m", base_url=server.url + "/v1", concurrency=1)
    with pytest.raises(teachers.CallFailed, match="401"):
      labeling.run(config, str(workdir))
    assert server.requests == 1
  stats = _stats(workdir, "stats.partial.json")
  assert "401" in stats["stopped_by"] and stats["queries"]["labelled"] == 0
  assert not (workdir / "labels" / "stats.json").exists()


@pytest.mark.parametrize("backend", ["openai", "gemini"])
def test_api_keys_reach_the_server_but_no_output_or_log(dataset, monkeypatch, caplog, backend):
  root, workdir = dataset
  caplog.set_level(logging.DEBUG)  # Whatever the SDKs log at their most verbose.
  monkeypatch.setenv("OPENAI_API_KEY" if backend == "openai" else "GOOGLE_API_KEY", SECRET)
  monkeypatch.delenv("GEMINI_API_KEY", raising=False)
  with FakeLLMServer() as server:
    server.faults.extend([Fault(status=429, retry_after="0"), Fault(status=500),
                          Fault(text="[1] > [1]")])
    base_url = server.url + "/v1" if backend == "openai" else server.url
    config = _config(root, backend=backend, model="m", base_url=base_url, api_version="v1beta",
                     backoff_base=0.001)
    config.label.max_queries = 3
    labeling.run(config, str(workdir))
    assert server.auth_headers and all(SECRET in h for h in server.auth_headers)
  assert "rate_limit" in caplog.text  # The logs were captured, retries included...
  assert SECRET not in caplog.text     # ...and never show the key.
  files = [p for p in workdir.rglob("*") if p.is_file()]
  assert {"labels.jsonl", "stats.json", "llm_cache.sqlite"} <= {p.name for p in files}
  for p in files:
    assert SECRET.encode() not in p.read_bytes(), p


_CONFIG_FILE = '''
"""Label a tiny synthetic set through a local fake OpenAI server."""
from interdistill_jax import defaults


def get_config():
  config = defaults.base_config()
  config.task = "label"
  config.data.dir = {root!r}
  config.data.cache_dir = {root!r} + "-cache"
  config.teacher.backend = "openai"
  config.teacher.model = "fake-model"
  config.teacher.base_url = {url!r}
  config.teacher.concurrency = 3
  config.teacher.backoff_base = 0.01
  config.teacher.timeout = 20.0
  config.label.num_candidates = {num_candidates}
  return config
'''


def _write_config(path, root, url):
  path.write_text(_CONFIG_FILE.format(root=str(root), url=url + "/v1", num_candidates=NUM_CANDIDATES))
  return path


def _label_subprocess(config_path, workdir, log_path):
  env = dict(os.environ, OPENAI_API_KEY=SECRET, PYTHONUNBUFFERED="1")
  env.pop("XLA_FLAGS", None)
  return subprocess.Popen(
      [sys.executable, "-m", "interdistill_jax.main", f"--config={config_path}", "--config.task=label",
       f"--workdir={workdir}"], cwd=REPO, env=env, stdout=log_path.open("ab"), stderr=subprocess.STDOUT)


@pytest.mark.slow  # two `main` subprocesses
def test_sigkill_mid_run_then_resume_matches_an_uninterrupted_run(dataset, tmp_path, monkeypatch):
  root, workdir = dataset
  log = tmp_path / "label.log"
  with FakeLLMServer(latency=0.02, hold_after=9) as server:
    config_path = _write_config(tmp_path / "killed.py", root, server.url)
    proc = _label_subprocess(config_path, workdir, log)
    try:
      assert server.held.wait(90), log.read_text()[-3000:]
      time.sleep(0.5)  # Lets every answer already sent be committed; later requests stay held.
      proc.send_signal(signal.SIGKILL)
      assert proc.wait(30) == -signal.SIGKILL
    finally:
      proc.kill()
    written = _labels(workdir)
    answered_before_kill = set(server.answered)
    assert 1 <= len(written) < NUM_QUERIES
    assert not (workdir / "labels" / "stats.json").exists()  # Not complete: a pipeline reruns it.
    assert len(answered_before_kill) >= 9

    server.release()
    proc = _label_subprocess(config_path, workdir, log)
    assert proc.wait(120) == 0, log.read_text()[-3000:]
    # Every prompt was answered exactly once over both runs: nothing answered was sent again.
    assert max(server.answered.values()) == 1
    assert len(server.answered) == 2 * NUM_QUERIES
    stats = _stats(workdir)
    assert stats["queries"]["already_labelled"] == len(written)
    assert stats["calls"]["answered"] == 2 * NUM_QUERIES - len(answered_before_kill)
    # Queries cut off after their first window take that window from the cache.
    assert stats["calls"]["cache_hits"] == len(answered_before_kill) - 2 * len(written)
    assert set(server.auth_headers) == {f"Bearer {SECRET}"}  # The key was used...

  resumed = _content(_labels(workdir))
  monkeypatch.setenv("OPENAI_API_KEY", SECRET)
  reference_dir = tmp_path / "reference"
  (reference_dir / "candidates").mkdir(parents=True)
  (reference_dir / "candidates" / "train.trec").write_bytes(
      (workdir / "candidates" / "train.trec").read_bytes())
  with FakeLLMServer() as server:
    spec = {}
    exec(_write_config(tmp_path / "reference.py", root, server.url).read_text(), spec)
    labeling.run(spec["get_config"](), str(reference_dir))
  assert resumed == _content(_labels(reference_dir))
  assert any(r["ranking"] != r["docids"] for r in resumed.values())

  # ...and is nowhere in what the runs wrote, logs included.
  outputs = [log] + [p for d in (workdir, reference_dir) for p in d.rglob("*") if p.is_file()]
  assert any(p.name == "llm_cache.sqlite" for p in outputs)
  for p in outputs:
    assert SECRET.encode() not in p.read_bytes(), p


def test_optional_scifact_sample(tmp_path):
  root = data_path("scifact")
  dataset = data.load_beir(root)
  qrels = dataset.qrels("train")
  rng = random.Random(0)
  docids = sorted(dataset.corpus)
  run = {}
  for qid in list(qrels)[:5]:
    docs = {d: 0.0 for d in rng.sample(docids, 9)}
    docs.update({d: 0.0 for d in qrels[qid]})
    run[qid] = {d: float(len(docs) - i) for i, d in enumerate(sorted(docs))}
  data.write_trec_run(tmp_path / "candidates" / "train.trec", run, "random")
  config = _config(root)
  labeling.run(config, str(tmp_path))
  records = _labels(tmp_path)
  assert len(records) == len(run) == 5
  for r in records:
    relevant = {d for d, g in qrels[r["qid"]].items() if g > 0}
    assert set(r["ranking"][:len(relevant)]) == relevant
