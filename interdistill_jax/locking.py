"""One run per workdir: `workdir/.lock` is held for as long as a run uses the workdir."""

from __future__ import annotations

import fcntl
import os
import socket
import time

from interdistill_jax import layout


class WorkdirBusy(RuntimeError):
  """Another run holds the workdir."""


def lock_workdir(workdir: str, *, wait: bool = False):
  """Holds `workdir/.lock` until the returned file is closed (or the process ends: the OS frees
  the lock when a run dies, even by SIGKILL). A second run on the same workdir refuses, naming
  the first one's host and pid, or with `wait` blocks until the first one is done."""
  os.makedirs(workdir, exist_ok=True)
  path = layout.lock(workdir)
  f = open(path, "a+", encoding="utf-8")  # noqa: SIM115 (held until closed)
  try:
    fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
  except BlockingIOError:
    f.seek(0)
    holder = f.read().strip() or "another process"
    f.close()
    raise WorkdirBusy(f"{workdir} is in use by {holder}; wait for it, or use another --workdir") from None
  f.seek(0)
  f.truncate()
  f.write(f"host {socket.gethostname()} pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
  f.flush()
  return f
