"""Permutation parsing: every answer becomes a permutation, and every repair is counted."""

from hypothesis import given, settings
from hypothesis import strategies as st

from interdistill_jax.teachers import parsing


def test_clean_answer_needs_no_repair():
  r = parsing.parse_permutation("[2] > [3] > [1]", 3)
  assert r.order == (1, 2, 0)
  assert r.prefix == 3
  assert r.repairs == {}
  assert not r.repaired and not r.failed


def test_prose_around_a_full_ranking_is_cosmetic():
  r = parsing.parse_permutation("Sure! The ranking is: [2] > [1] > [3]. Hope this helps.", 3)
  assert r.order == (1, 0, 2)
  assert r.repairs == {"prose": 1}
  assert not r.repaired
  assert r.prefix == 3


def test_duplicates_are_dropped_and_the_missing_id_follows_in_candidate_order():
  r = parsing.parse_permutation("[3] > [1] > [3] > [2]", 5)
  assert r.order == (2, 0, 1, 3, 4)
  assert r.prefix == 3
  assert r.repairs == {"duplicate": 1, "missing": 2}
  assert r.repaired
  assert "[4], [5] missing" in r.problem and "[3] repeated" in r.problem


def test_out_of_range_ids_are_skipped_and_counted():
  r = parsing.parse_permutation("[0] > [2] > [7] > [1]", 2)
  assert r.order == (1, 0)
  assert r.prefix == 2
  assert r.repairs == {"out_of_range": 2}
  assert r.repaired
  assert "[0], [7] not between [1] and [2]" in r.problem


def test_bare_numbers_are_accepted_but_flagged():
  r = parsing.parse_permutation("2 > 1 > 3", 3)
  assert r.order == (1, 0, 2)
  assert r.repairs == {"unbracketed": 1}
  assert not r.repaired


def test_an_answer_without_ids_fails_and_keeps_candidate_order():
  r = parsing.parse_permutation("I cannot rank these passages.", 4)
  assert r.order == (0, 1, 2, 3)
  assert r.prefix == 0
  assert r.failed and r.repaired
  assert r.repairs == {"unparsable": 1}


def test_truncated_answer_keeps_the_ranked_prefix():
  r = parsing.parse_permutation("[4] > [2] > [", 4)
  assert r.order == (3, 1, 0, 2)
  assert r.prefix == 2
  assert r.repairs["missing"] == 2


_answer_tokens = st.one_of(
    st.integers(-3, 40).map(lambda i: f"[{i}]"),
    st.integers(0, 40).map(str),
    st.sampled_from([" > ", ">", ", ", " ", "\n", "[", "]", "Passage", "the best is", ".", "[ 3 ]"]),
    st.text(max_size=5),
)


@settings(max_examples=300, deadline=None)
@given(n=st.integers(0, 30), pieces=st.lists(_answer_tokens, max_size=40))
def test_parser_always_returns_a_permutation_of_its_candidates(n, pieces):
  r = parsing.parse_permutation("".join(pieces), n)
  assert sorted(r.order) == list(range(n))
  assert 0 <= r.prefix <= n
  assert all(k in parsing.REPAIR_KINDS and v > 0 for k, v in r.repairs.items())
  if r.prefix < n:
    assert r.repairs.get("missing", 0) + r.repairs.get("unparsable", 0) > 0


@settings(max_examples=100, deadline=None)
@given(perm=st.permutations(list(range(12))))
def test_any_clean_permutation_parses_exactly(perm):
  text = " > ".join(f"[{i + 1}]" for i in perm)
  r = parsing.parse_permutation(text, 12)
  assert r.order == tuple(perm)
  assert r.prefix == 12 and r.repairs == {}
