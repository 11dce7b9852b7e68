"""The RAG reader: prompt, SQuAD scoring of scripted answers, cache and resume, the SmolLM2 path."""

import json

import pytest

from interdistill_jax import data, defaults, metrics, reader
from interdistill_jax.teachers import prompt
from interdistill_jax.teachers.base import Passage, Request
from interdistill_jax.teachers.testing import Fault, FakeLLMServer

CORPUS = {
    "d0": data.Document("d0", "Hamlet", "Hamlet is a tragedy written by William Shakespeare."),
    "d1": data.Document("d1", "Paris", "Paris is the capital and largest city of France."),
    "d2": data.Document("d2", "Everest", "Mount Everest is the highest mountain above sea level."),
    "d3": data.Document("d3", "", "Bananas are rich in potassium."),
}
QUERIES = {
    "q0": data.Query("q0", "who wrote hamlet", {"answers": ["William Shakespeare", "Shakespeare"]}),
    "q1": data.Query("q1", "what is the capital of france", {"answers": ["Paris"]}),
    "q2": data.Query("q2", "what is the highest mountain", {"answers": ["Mount Everest"]}),
    "q3": data.Query("q3", "a question without answers", {}),
}
RUN = {"q0": {"d0": 3.0, "d3": 2.0, "d1": 1.0}, "q1": {"d3": 3.0, "d1": 2.0, "d2": 1.0},
       "q2": {"d2": 3.0, "d0": 2.0, "d1": 1.0}, "q3": {"d3": 1.0}}
# With one passage the reader knows nothing; with more it answers as scripted.
SCRIPT = {"who wrote hamlet": "Answer: the William Shakespeare\nHe wrote it around 1600.",
          "what is the capital of france": "Paris, France",
          "what is the highest mountain": "K2"}


def _answer(query, passages):
  return SCRIPT[query] if len(passages) > 1 else "I do not know"


def _reader_config(server, **fields):
  cfg = defaults.reader_config()
  cfg.update(dict(enabled=True, backend="openai", model="reader-model", base_url=server.url + "/v1",
                  ks=(1, 3), backoff_base=0.01, timeout=5.0))
  cfg.update(fields)
  return cfg


def _dataset(tmp_path):
  return data.Dataset(str(tmp_path / "data"), CORPUS, QUERIES)


def test_prompt_holds_the_question_and_the_passages_best_first():
  chat = reader.build_chat("who  wrote\nhamlet", ["(Title: Hamlet) written by Shakespeare", "other"])
  assert [role for role, _ in chat] == ["system", "user"]
  user = chat[1][1]
  assert user.index("[1] (Title: Hamlet) written by Shakespeare") < user.index("[2] other")
  assert user.endswith("Question: who wrote hamlet\nAnswer:")
  assert reader.passage_text(CORPUS["d0"]).startswith("(Title: Hamlet) Hamlet is")
  assert reader.passage_text(CORPUS["d3"]) == "Bananas are rich in potassium."


def test_answers_are_cut_to_their_first_line():
  assert reader.clean_answer("Answer: Paris\nbecause ...") == "Paris"
  assert reader.clean_answer("\n  1901 \n") == "1901"
  assert reader.clean_answer("") == ""


def test_generation_requests_are_keyed_apart_and_ranking_keys_are_unchanged():
  passages = (Passage("d", "t"),)
  ranking = Request("q", passages)
  assert set(ranking.key_fields()) == {"query", "passages", "corrections"}
  generation = Request("q", passages, chat=(("user", "hi"),), stop=("\n",))
  assert generation.key_fields()["chat"] == [["user", "hi"]]
  assert prompt.messages(generation) == [{"role": "user", "content": "hi"}]
  ranking_messages = prompt.messages(ranking)
  assert ranking_messages[0]["role"] == "system" and "Rank" in ranking_messages[1]["content"]


def test_reader_scores_scripted_answers_and_a_rerun_makes_no_call(tmp_path):
  workdir = tmp_path / "work"
  with FakeLLMServer(answer_fn=_answer) as server:
    cfg = _reader_config(server)
    agg, per_query = reader.rag_metrics(cfg, str(workdir), _dataset(tmp_path), QUERIES, RUN,
                                        "baseline", seed=0, cache_dir="")
    assert server.total_answered == 6  # 3 questions with answers x 2 values of k
    # k=1: "I do not know" everywhere. k=3: EM 1 (articles and the second line dropped), 0, 0.
    f1_paris = 2 * (1 / 2 * 1) / (1 / 2 + 1)
    assert agg["rag.em@1"] == 0.0 and agg["rag.f1@1"] == 0.0
    assert agg["rag.em@3"] == pytest.approx(1 / 3)
    assert agg["rag.f1@3"] == pytest.approx((1.0 + f1_paris + 0.0) / 3)
    assert agg["rag.questions"] == 3
    assert per_query["rag.em@3"] == {"q0": 1.0, "q1": 0.0, "q2": 0.0}
    lines = [json.loads(x) for x in (workdir / "eval" / "rag" / "baseline.jsonl").open()]
    assert len(lines) == 6 and {(x["qid"], x["k"]) for x in lines} == {
        (q, k) for q in ("q0", "q1", "q2") for k in (1, 3)}
    q0 = next(x for x in lines if x["qid"] == "q0" and x["k"] == 3)
    assert q0 == {"qid": "q0", "k": 3, "prediction": "the William Shakespeare",
                  "answers": ["William Shakespeare", "Shakespeare"], "em": 1.0, "f1": 1.0}
    stats = json.loads((workdir / "eval" / "rag" / "baseline.stats.json").read_text())
    assert stats["reader"]["prompt_version"] == reader.PROMPT_VERSION
    assert stats["calls"]["answered"] == 6

    again, _ = reader.rag_metrics(cfg, str(workdir), _dataset(tmp_path), QUERIES, RUN, "baseline",
                                  seed=0, cache_dir="")
    assert again == agg and server.total_answered == 6
    stats = json.loads((workdir / "eval" / "rag" / "baseline.stats.json").read_text())
    assert stats["calls"]["answered"] == 0 and stats["calls"]["cache_hits"] == 6
    assert (workdir / "eval" / "reader_cache.sqlite").exists()


def test_max_questions_reads_only_the_first_questions(tmp_path):
  with FakeLLMServer(answer_fn=_answer) as server:
    agg, _ = reader.rag_metrics(_reader_config(server, max_questions=2, ks=(3,)),
                                str(tmp_path / "w"), _dataset(tmp_path), QUERIES, RUN, "baseline",
                                seed=0, cache_dir="")
    assert agg["rag.questions"] == 2 and server.total_answered == 2
    assert agg["rag.em@3"] == 0.5


def test_a_failed_call_stops_the_run_and_the_rerun_pays_only_for_it(tmp_path):
  with FakeLLMServer(answer_fn=_answer) as server:
    server.faults.append(Fault(status=500))
    cfg = _reader_config(server, max_retries=0, concurrency=1)
    with pytest.raises(RuntimeError, match="1 calls failed"):
      reader.rag_metrics(cfg, str(tmp_path / "w"), _dataset(tmp_path), QUERIES, RUN, "baseline",
                         seed=0, cache_dir="")
    assert server.total_answered == 5
    agg, _ = reader.rag_metrics(cfg, str(tmp_path / "w"), _dataset(tmp_path), QUERIES, RUN,
                                "baseline", seed=0, cache_dir="")
    assert server.total_answered == 6 and agg["rag.em@3"] == pytest.approx(1 / 3)


def test_the_simulated_backend_is_not_a_reader():
  config = defaults.base_config()
  config.reader.backend = "simulated"
  with pytest.raises(ValueError, match="reader.backend"):
    reader.backend_config(config.reader)


def test_the_backend_config_is_the_teacher_section_with_the_readers_client_fields():
  config = defaults.base_config()
  config.reader.update(dict(backend="openai", model="m", rpm=7, max_passage_tokens=50, ks=(3,)))
  out = reader.backend_config(config.reader)
  teacher = defaults.teacher_config()
  assert set(out) == set(teacher) and out.is_locked
  client = defaults.client_config()
  assert {k: out[k] for k in client} == {k: config.reader[k] for k in client}
  assert {k: out[k] for k in teacher if k not in client} == {k: teacher[k] for k in teacher
                                                               if k not in client}
  config.reader.backend = "llamacpp"  # n_ctx 0: room for max(ks) passages
  assert reader.backend_config(config.reader).n_ctx == 3 * (50 + 32) + 512


@pytest.mark.slow  # llama.cpp, ~25 s
def test_smollm2_reader_answers_in_one_short_line(tmp_path):
  pytest.importorskip("llama_cpp")
  from interdistill_jax.teachers import llamacpp_backend
  try:
    llamacpp_backend.packaged_model_path()
  except FileNotFoundError as e:
    pytest.skip(str(e))
  config = defaults.base_config()
  config.reader.update(dict(enabled=True, backend="llamacpp", ks=(1,), n_threads=2,
                            max_output_tokens=16, max_passage_tokens=48))
  queries = {"q0": QUERIES["q0"]}
  agg, _ = reader.rag_metrics(config.reader, str(tmp_path), _dataset(tmp_path), queries, RUN,
                              "baseline", seed=config.seed, cache_dir=config.data.cache_dir)
  line = json.loads((tmp_path / "eval" / "rag" / "baseline.jsonl").read_text())
  assert line["prediction"] and "\n" not in line["prediction"]
  assert line["f1"] == pytest.approx(metrics.f1_score(line["prediction"], line["answers"]), abs=1e-6)
  stats = json.loads((tmp_path / "eval" / "rag" / "baseline.stats.json").read_text())
  assert stats["reader"]["backend"] == "llamacpp" and 0 < stats["calls"]["completion_tokens"] <= 16
  again, _ = reader.rag_metrics(config.reader, str(tmp_path), _dataset(tmp_path), queries, RUN,
                                "baseline", seed=config.seed, cache_dir=config.data.cache_dir)
  stats = json.loads((tmp_path / "eval" / "rag" / "baseline.stats.json").read_text())
  assert again == agg and stats["calls"]["answered"] == 0
