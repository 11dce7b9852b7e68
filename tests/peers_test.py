"""peers.Run: the shared-workdir check, barriers and failure notices, with threads as processes.

The JAX side (the token broadcast, JAX's heartbeat) is exercised by tests/multihost_test.py.
"""

import threading
import time

import pytest

from interdistill_jax import peers


class Exited(SystemExit):
  """What the stand-in for os._exit raises where it is called outside the watcher thread."""


def _runs(directories, timeout=5.0):
  """One Run per directory (process i in directories[i]), each recording when it exits."""
  exits = {}

  def exit_as(i):
    def exit_process(status):
      exits[i] = status
      if threading.current_thread().name != "peers-watch":  # the watcher just ends its loop
        raise Exited(i)
    return exit_process

  return [peers.Run(str(d), index=i, count=len(directories), timeout=timeout,
                    exit_process=exit_as(i)) for i, d in enumerate(directories)], exits


def _in_threads(*calls):
  """Runs each call in its own thread; returns {index: result or the exception raised}."""
  out = {}

  def target(i, call):
    try:
      out[i] = call()
    except BaseException as e:  # noqa: BLE001
      out[i] = e

  threads = [threading.Thread(target=target, args=(i, c)) for i, c in enumerate(calls)]
  for t in threads:
    t.start()
  for t in threads:
    t.join(30)
    assert not t.is_alive(), "a call did not return"
  return out


def test_processes_sharing_the_directory_see_each_other(tmp_path):
  runs, _ = _runs([tmp_path] * 3)
  assert _in_threads(*(r.join for r in runs)) == {0: [], 1: [], 2: []}


def test_separate_directories_are_reported_as_not_shared(tmp_path):
  runs, _ = _runs([tmp_path / "host0", tmp_path / "host1"], timeout=0.3)
  start = time.monotonic()
  unseen = _in_threads(*(r.join for r in runs))
  assert time.monotonic() - start < 5  # bounded by the timeout
  assert unseen == {0: [1], 1: [0]}
  error = runs[1].not_shared(unseen[1], [])
  assert isinstance(error, ValueError)  # main prints it as one line
  message = str(error)
  assert "the workdir is not shared between the processes" in message
  assert f"process 1 does not see process 0's {tmp_path / 'host1' / 'joined.0'}" in message
  assert "after 0.3 s" in message and "a disk per host" in message and "\n" not in message
  # A process that sees the others, but is not seen by them, names the one that is blind.
  assert "process 1 does not see process 0's" in str(runs[0].not_shared([], [1]))


def test_a_barrier_waits_for_every_process(tmp_path):
  runs, _ = _runs([tmp_path] * 2)
  order = []

  def late():
    time.sleep(0.5)
    order.append("late arrives")
    runs[1].barrier("stage")

  def early():
    runs[0].barrier("stage")
    order.append("early passes")

  _in_threads(early, late)
  assert order == ["late arrives", "early passes"]
  # Barriers are counted: the next one waits again.
  _in_threads(lambda: runs[0].barrier("next"), lambda: runs[1].barrier("next"))


def test_processes_out_of_step_at_a_barrier_stop(tmp_path):
  runs, _ = _runs([tmp_path] * 2)
  out = _in_threads(lambda: runs[0].barrier("label"), lambda: runs[1].barrier("train_ranker"))
  assert isinstance(out[0], RuntimeError)
  assert "barrier 0 is 'label' on process 0 and 'train_ranker' on process 1" in str(out[0])


def test_a_failure_stops_a_peer_waiting_at_a_barrier_with_its_message(tmp_path, capsys):
  runs, exits = _runs([tmp_path] * 2)
  runs[1].watch()

  def waits():
    runs[1].barrier("label")  # process 0 never comes: only its failure ends this

  def fails():
    time.sleep(0.3)
    runs[0].fail("labels/x.trec not found:\n run `retrieve` first")

  start = time.monotonic()
  waiter = threading.Thread(target=waits, daemon=True)
  waiter.start()
  out = _in_threads(fails)
  assert time.monotonic() - start < 10
  # The failing process left once its peer had seen the failure; the peer left too.
  assert isinstance(out[0], Exited) and exits == {0: 1, 1: 1}
  assert (tmp_path / "error.0").read_text() == "labels/x.trec not found: run `retrieve` first\n"
  assert (tmp_path / "stopped.1").exists() and (tmp_path / "exited.0").exists()
  assert "error: process 0 of 2 failed: labels/x.trec not found: run `retrieve` first" \
      in capsys.readouterr().err


def test_a_failure_no_peer_acknowledges_still_exits_within_the_timeout(tmp_path):
  runs, exits = _runs([tmp_path] * 3, timeout=0.5)
  start = time.monotonic()
  out = _in_threads(lambda: runs[2].fail("boom"))
  assert isinstance(out[0], Exited) and exits == {2: 1}
  assert time.monotonic() - start < 5


def test_a_finished_run_stops_watching(tmp_path):
  runs, exits = _runs([tmp_path] * 2)
  runs[0].watch()
  runs[0].unwatch()
  (tmp_path / "error.1").write_text("late failure\n")
  time.sleep(1.2)
  assert exits == {}


def test_a_silent_peer_is_named_and_stops_the_others(tmp_path, capsys):
  # Three processes; process 2 joined, then died without a word (it never watches nor pulses).
  runs, exits = _runs([tmp_path] * 3, timeout=0.6)
  assert _in_threads(*(r.join for r in runs)) == {0: [], 1: [], 2: []}
  start = time.monotonic()
  runs[0].watch()
  runs[1].watch()
  deadline = start + 10
  while len(exits) < 2 and time.monotonic() < deadline:
    time.sleep(0.05)
  assert exits == {0: 1, 1: 1}
  assert time.monotonic() - start >= 0.6  # not before the timeout
  err = capsys.readouterr().err
  for line in [l for l in err.splitlines() if l.startswith("error: ")]:
    assert line.startswith("error: process 2 of 3 (host ") and "stopped answering" in line, err
    assert "alive.2" in line
  assert err.count("stopped answering") == 2
  assert (tmp_path / "stopped.0").exists() and (tmp_path / "stopped.1").exists()


def test_peers_that_keep_pulsing_are_never_taken_for_dead(tmp_path):
  runs, exits = _runs([tmp_path] * 2, timeout=0.4)
  for r in runs:
    r.watch()
  time.sleep(2.0)  # five timeouts
  for r in runs:
    r.unwatch()
  assert exits == {}
  alive = [p.name for p in tmp_path.glob("alive.0.*")]
  assert len(alive) == 1 and int(alive[0].split(".")[2]) >= 10  # the latest count alone


def test_each_look_at_the_peers_is_one_listing_however_many_they_are(tmp_path, monkeypatch):
  """On a bucket every request counts: a look for failed and silent peers among 63 others
  reads one listing, and no file unless a peer failed."""
  runs, _ = _runs([tmp_path] * 64)
  for r in runs[1:]:
    r.pulse()
  calls = []
  for name in ("exists", "read_text", "listdir"):
    real = getattr(peers.files, name)
    monkeypatch.setattr(peers.files, name,
                        lambda *a, _name=name, _real=real: calls.append(_name) or _real(*a))
  names = runs[0]._names()
  assert runs[0].failed_peer(names) is None and runs[0].silent_peer(0.0, names) is None
  assert calls == ["listdir"]


def test_a_peer_that_left_in_words_is_not_taken_for_silent(tmp_path):
  runs, _ = _runs([tmp_path] * 2, timeout=0.2)
  runs[1].pulse()
  now = time.monotonic()
  assert runs[0].silent_peer(now) is None  # first heard
  assert runs[0].silent_peer(now + 0.1) is None
  assert runs[0].silent_peer(now + 0.3) == (1, pytest.approx(0.3))
  (tmp_path / "exited.1").write_text("")
  assert runs[0].silent_peer(now + 0.5) is None
