"""Timing two implementations fairly on a small machine: one process at a time, taking turns.

A second heavy process merely alive beside the one being timed (idle, its model in memory) slowed
our ranker step by 13-16% on the 2-core CPU, run after run. So neither side is timed while the
other side's process exists: the coordinating process imports neither JAX nor PyTorch, and each
turn is a fresh worker process that warms up, times its share, prints one JSON line and exits.
The side going first alternates from round to round, so a machine whose speed drifts during the
run weighs on both sides alike.
"""

import json
import subprocess


def run_worker(argv: list[str], env: dict | None = None) -> dict:
  """Runs one worker to completion: the JSON object on its last line of stdout."""
  proc = subprocess.run(argv, capture_output=True, text=True, env=env)
  if proc.returncode != 0:
    raise RuntimeError(f"worker {argv[:3]} exited with {proc.returncode}:\n{proc.stderr[-3000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def take_turns(sides: dict[str, object], rounds: int) -> dict[str, list[dict]]:
  """`sides`: name -> fn(round) -> result dict, each call one worker. Round r runs the sides in
  order when r is even, in reverse when odd. Returns name -> [result of each round]."""
  names = list(sides)
  out = {name: [] for name in names}
  for r in range(rounds):
    for name in (names if r % 2 == 0 else names[::-1]):
      out[name].append(sides[name](r))
  return out
