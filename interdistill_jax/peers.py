"""The processes of a multi-process run: one shared workdir, barriers through it, and a failure
anywhere stopping every process.

The contract: the workdir is storage every process sees (NFS, a mounted bucket, or a bucket
itself: `gs://...`, through `files.py`; each barrier file is one object). Process 0 alone
writes what a stage shares (candidates, labels, done markers, fusion.json); the others read it
from the same path once a barrier says it is there. So:

- `start` proves the contract before anything runs: process 0 draws a run token and broadcasts
  it, each process writes `<workdir>/.peers/<token>/joined.<i>` and waits (`timeout` seconds) to
  see every other process's file. If one does not, every process stops with one line naming the
  process, the path and the likely cause (a disk per host).
- `barrier(name)` waits until every process has written its file for it. It polls the shared
  directory instead of blocking in a collective, and bounds nothing by itself: a failure ends it.
- `fail(message)` is how a process that fails leaves: it writes `error.<i>` with its one-line
  error, waits (bounded) until every other process has seen it, and exits. Each process watches
  for its peers' error files from a thread and, on seeing one, prints that process's error and
  exits (also when it is blocked in a collective).
- A process that dies without a word (SIGKILL, out of memory, a lost host) is seen by its
  silence: each watcher thread replaces its `alive.<i>.<count>` file by the next count every
  `timeout / 8` seconds, and a peer whose count has not moved for `timeout` seconds is taken for
  dead. Every process that sees it prints one line naming that process (its host and pid from
  `joined`) and exits with status 1. JAX's own heartbeat (`main` gives it twice the timeout)
  stays the backstop for a process whose Python is alive but whose runtime is not.
- Each look at the peers (twice a second) reads one listing of the run's directory, however many
  processes there are, and a file only when a peer failed.

With one process every function here does nothing.
"""

from __future__ import annotations

import datetime
import os
import secrets
import socket
import sys
import threading
import time

from absl import logging

from interdistill_jax import data, files, layout

_TOKEN_BYTES = 32
_POLL_MAX = 0.5  # seconds between two looks at the shared directory, at most


class WorkdirNotShared(ValueError):
  """The processes of a run do not see one another's files in the workdir."""


class Run:
  """One multi-process run's directory in the shared workdir, as process `index` of `count`.

  Everything goes through files under `directory`, so the class works the same whether the
  processes are JAX's or threads of a test.
  """

  def __init__(self, directory: str, *, index: int, count: int, timeout: float,
               exit_process=os._exit):
    self.directory = directory
    self.index, self.count, self.timeout = index, count, timeout
    self._exit = exit_process
    self._barriers = 0
    self._stopping = threading.Lock()  # held by whichever path ends this process first
    self._watching = threading.Event()
    self._watcher: threading.Thread | None = None
    self._pulses = 0
    self._heard: dict[int, tuple[str | None, float]] = {}  # peer -> (last count read, when)
    files.makedirs(directory)

  def _path(self, kind: str, index: int) -> str:
    return os.path.join(self.directory, f"{kind}.{index}")

  def _others(self) -> list[int]:
    return [j for j in range(self.count) if j != self.index]

  def _names(self) -> set[str]:
    """One listing of the run's directory. Every look at the peers reads one listing, however
    many they are: on a bucket, each of n processes asking for n files twice a second would
    cost thousands of requests a second on a large pod."""
    return set(files.listdir(self.directory))

  def _without(self, kinds: tuple[str, ...], names: set[str] | None = None,
               gone: tuple[int, ...] = ()) -> list[int]:
    """The other processes (but `gone`) that wrote no file of `kinds` (error, stopped...)."""
    names = self._names() if names is None else names
    return [j for j in self._others()
            if j not in gone and not any(f"{k}.{j}" in names for k in kinds)]

  def _wait(self, done, timeout: float | None) -> bool:
    """Polls `done()` until it is true (True) or `timeout` seconds pass (False; None: never)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    pause = 0.02
    while not done():
      if deadline is not None and time.monotonic() >= deadline:
        return False
      time.sleep(pause)
      pause = min(2 * pause, _POLL_MAX)
    return True

  # --- start-up ---------------------------------------------------------------------------

  def join(self) -> list[int]:
    """Writes this process's `joined` file and waits up to `timeout` for the others' files;
    returns the processes whose file it did not see."""
    data.atomic_write_text(self._path("joined", self.index),
                           f"host {socket.gethostname()} pid {os.getpid()}\n")
    self._wait(lambda: not self._without(("joined",)), self.timeout)
    return self._without(("joined",))

  def not_shared(self, unseen: list[int], blind: list[int]) -> WorkdirNotShared:
    """The start-up error of this process: it does not see the files of `unseen`, or `blind`
    processes do not see its own."""
    hint = ("(a disk per host?); give every process the same --workdir on storage they all "
            "see (NFS, a mounted bucket)")
    if unseen:
      return WorkdirNotShared(
          f"the workdir is not shared between the processes: process {self.index} does not see "
          f"process {unseen[0]}'s {self._path('joined', unseen[0])} after {self.timeout:g} s {hint}")
    return WorkdirNotShared(
        f"the workdir is not shared between the processes: process {blind[0]} does not see "
        f"process {self.index}'s {self._path('joined', self.index)} after {self.timeout:g} s {hint}")

  # --- barriers ---------------------------------------------------------------------------

  def barrier(self, name: str) -> None:
    """Waits until every process has reached its barrier number k (this is the k-th), and
    stops when one reached another name there (the processes went out of step)."""
    k = self._barriers
    self._barriers += 1
    data.atomic_write_text(self._path(f"barrier-{k}", self.index), name)
    self._wait(lambda: not self._without((f"barrier-{k}",)), None)
    for j in self._others():
      path = self._path(f"barrier-{k}", j)
      theirs = files.read_text(path)
      if theirs != name:
        raise RuntimeError(f"the processes are out of step: barrier {k} is {name!r} on process "
                           f"{self.index} and {theirs!r} on process {j} ({path})")

  # --- failure ----------------------------------------------------------------------------

  def failed_peer(self, names: set[str] | None = None) -> tuple[int, str] | None:
    """(index, one-line error) of a peer that failed, or None (`names`: a listing just read)."""
    quiet = self._without(("error",), names)
    for j in self._others():
      if j not in quiet:
        return j, files.read_text(self._path("error", j)).strip()
    return None

  def fail(self, message: str) -> None:
    """Tells every other process that this one failed with `message`, waits (at most `timeout`)
    until each has seen it, and exits with status 1."""
    if not self._stopping.acquire(blocking=False):
      self._wait(lambda: False, None)  # the watcher is ending the process already
    data.atomic_write_text(self._path("error", self.index), " ".join(message.split()) + "\n")
    unseen = lambda: self._without(("stopped", "error"))  # noqa: E731
    if not self._wait(lambda: not unseen(), self.timeout):
      logging.warning("process %d: processes %s did not acknowledge its failure within %g s",
                      self.index, unseen(), self.timeout)
    self._leave()

  def _leave(self, gone: tuple[int, ...] = ()) -> None:
    """Exits with status 1; `gone`: peers known dead, not waited for."""
    data.atomic_write_text(self._path("exited", self.index), "")
    if self.index == 0:
      # Process 0 hosts JAX's coordination service: the others are aborted the moment it goes,
      # so it leaves last and they end with their own words.
      self._wait(lambda: not self._without(("exited", "stopped"), gone=gone), self.timeout)
      time.sleep(0.2)
    sys.stdout.flush()
    sys.stderr.flush()
    self._exit(1)

  def _on_peer_failure(self, index: int, message: str) -> None:
    self._stop(f"process {index} of {self.count} failed: {message}")

  def _stop(self, line: str, gone: tuple[int, ...] = ()) -> None:
    """Ends this process for a peer's sake with `line` (logged and on stderr), unless it is
    already ending (failing too: its own error file is its acknowledgement)."""
    if not self._stopping.acquire(blocking=False):
      return
    logging.error("%s", line)
    sys.stderr.write(f"error: {line}\n")
    data.atomic_write_text(self._path("stopped", self.index), "")
    self._leave(gone=gone)

  # --- silence ----------------------------------------------------------------------------

  def pulse(self) -> None:
    """This process's sign of life: an empty file `alive.<i>.<count>` whose count grows with
    every call (the previous one removed), so a listing shows every peer's count."""
    self._pulses += 1
    data.atomic_write_text(self._alive(self.index, self._pulses), "")
    if self._pulses > 1:
      files.remove(self._alive(self.index, self._pulses - 1))

  def _alive(self, index: int, count: int | str) -> str:
    return f"{self._path('alive', index)}.{count}"

  @staticmethod
  def _counts(names: set[str]) -> dict[int, int]:
    """Each process's latest count in a listing (`alive.<i>.<count>`)."""
    counts = {}
    for name in names:
      kind, _, rest = name.partition(".")
      index, _, count = rest.partition(".")
      if kind == "alive" and index.isdigit() and count.isdigit():
        counts[int(index)] = max(counts.get(int(index), 0), int(count))
    return counts

  def silent_peer(self, now: float, names: set[str] | None = None) -> tuple[int, float] | None:
    """(index, seconds since its count last moved) of a peer silent for `timeout` seconds at
    monotonic time `now`, or None (`names`: a listing just read). A peer is heard from the first
    call on: one that never pulses is silent `timeout` seconds after this process started
    watching."""
    names = self._names() if names is None else names
    counts = self._counts(names)
    quiet = self._without(("error", "stopped", "exited"), names)  # those that did not leave in words
    for j in self._others():
      count = counts.get(j)
      last, since = self._heard.get(j, (None, now))
      if j not in self._heard or count != last:
        self._heard[j] = (count, now)
        continue
      if now - since >= self.timeout and j in quiet:
        return j, now - since
    return None

  def _on_peer_silent(self, index: int, seconds: float) -> None:
    try:
      who = files.read_text(self._path("joined", index)).strip()
    except OSError:
      who = "host and pid unknown"
    self._stop(f"process {index} of {self.count} ({who}) stopped answering: no sign of life in "
               f"{self._alive(index, '*')} for {seconds:.0f} s (killed, out of memory, or its "
               "host lost; its own log says which); stopping this process too", gone=(index,))

  def watch(self) -> None:
    """Starts the thread that keeps this process's sign of life and ends the process when a
    peer reports a failure or falls silent."""
    self._watching.set()
    every = min(max(self.timeout / 8, 0.05), 10.0)  # between two pulses, and two looks for silence

    def loop():
      next_pulse = 0.0
      while self._watching.is_set():
        failed = silent = None
        try:
          names = self._names()
          failed = self.failed_peer(names)
          now = time.monotonic()
          if failed is None and now >= next_pulse:
            self.pulse()
            silent = self.silent_peer(now, names)
            next_pulse = now + every
        except OSError as e:  # a hiccup of the shared storage: look again
          logging.warning("process %d: could not read %s: %s", self.index, self.directory, e)
        if failed is not None:
          self._on_peer_failure(*failed)
          return
        if silent is not None:
          self._on_peer_silent(*silent)
          return
        time.sleep(min(_POLL_MAX, every))

    self._watcher = threading.Thread(target=loop, name="peers-watch", daemon=True)
    self._watcher.start()

  def unwatch(self) -> None:
    self._watching.clear()
    if self._watcher is not None:
      self._watcher.join()


# --- the run of this process ---------------------------------------------------------------

_RUN: Run | None = None  # like jax.distributed's state: one per process


def current() -> Run | None:
  """This process's multi-process run, or None (one process, or before `start`)."""
  return _RUN


def _token() -> str:
  """The run token, drawn by process 0 and broadcast to every process."""
  import jax  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415
  from jax.experimental import multihost_utils  # noqa: PLC0415
  text = ""
  if jax.process_index() == 0:
    text = f"{datetime.datetime.now():%Y%m%d-%H%M%S}-{secrets.token_hex(4)}"
  raw = np.zeros(_TOKEN_BYTES, np.uint8)
  raw[:len(text)] = np.frombuffer(text.encode(), np.uint8)
  raw = np.asarray(multihost_utils.broadcast_one_to_all(raw))
  return raw.tobytes().rstrip(b"\0").decode()


def start(workdir: str, *, timeout: float) -> Run | None:
  """Joins this process to the run's directory in `workdir` and watches its peers; None with
  one process. Raises WorkdirNotShared, on every process, when one of them does not see the
  others' files within `timeout` seconds."""
  global _RUN
  import jax  # noqa: PLC0415
  if jax.process_count() == 1:
    return None
  import numpy as np  # noqa: PLC0415
  from jax.experimental import multihost_utils  # noqa: PLC0415
  token = _token()
  index, count = jax.process_index(), jax.process_count()
  problem = None
  try:
    run = Run(layout.peer_run(workdir, token), index=index, count=count, timeout=timeout)
    unseen = run.join()
  except OSError as e:  # a workdir this process cannot write: the others must not wait for it
    problem, unseen = e, [j for j in range(count) if j != index]
  # Every process learns who saw whom, so they all stop together rather than some waiting.
  saw = multihost_utils.process_allgather(np.array([j not in unseen for j in range(count)], np.int32))
  if problem is not None:
    raise problem
  blind = [j for j in range(count) if not saw[j][index]]
  if unseen or blind:
    raise run.not_shared(unseen, blind)
  logging.info("process %d of %d: the workdir %s is shared (run %s)", run.index, run.count,
               workdir, token)
  _RUN = run
  run.watch()
  return run


def prune(workdir: str) -> None:
  """Removes the directories of earlier runs (process 0, holding the workdir's lock)."""
  run = current()
  if run is None or run.index != 0:
    return
  parent = layout.peers_dir(workdir)
  for name in files.listdir(parent):
    path = os.path.join(parent, name)
    if path != run.directory:
      try:
        files.remove_tree(path)
      except OSError as e:  # another run's leftovers: not worth stopping this one for
        logging.warning("could not remove %s: %s", path, e)


def barrier(name: str) -> None:
  """Every process waits here for the others (no-op with one process)."""
  import jax  # noqa: PLC0415
  if jax.process_count() == 1:
    return
  if _RUN is None:
    raise RuntimeError(f"barrier {name!r}: a multi-process run needs peers.start(workdir) first "
                       "(interdistill_jax.main calls it)")
  _RUN.barrier(name)


def finish() -> None:
  """The end of this process's task: waits for the others, then stops watching them."""
  global _RUN
  if _RUN is None:
    return
  _RUN.barrier("finish")
  _RUN.unwatch()
  _RUN = None


def fail(message: str) -> None:
  """Reports this process's failure to the others and exits (returns only with one process)."""
  if _RUN is not None:
    _RUN.fail(message)
