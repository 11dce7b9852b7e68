"""One run per workdir: `workdir/.lock` is held for as long as a run uses the workdir.

The lock is an fcntl lock, and so local: on a local or mounted workdir it is the workdir's own
`.lock`, which excludes a second run on any host that mounts it with working locks. A workdir in
a bucket (`gs://...`) cannot hold one: its lock is a local file named by the workdir's address
(`layout.local_mirror`), which excludes a second run on this host only. Across hosts, a run's
processes are told apart from another run's by `peers.start` (each run meets in its own
`.peers/<token>/` directory), but nothing stops two separate runs on two hosts from sharing one
bucket workdir: do not start them.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time

from absl import logging

from interdistill_jax import files, layout


class WorkdirBusy(RuntimeError):
  """Another run holds the workdir."""


def lock_path(workdir: str, *, local_dir: str | None = None) -> str:
  """The file whose lock holds `workdir`: its `.lock`, or for a workdir in a bucket, a local
  file under `local_dir` (`data.cache_dir`) named by the workdir's address."""
  path = layout.lock(workdir)
  if files.is_local(path):
    return path
  if not local_dir:
    raise ValueError(f"{workdir}: a workdir in a bucket needs a local directory for its lock "
                     "(data.cache_dir)")
  return layout.local_mirror(local_dir, path)


def lock_workdir(workdir: str, *, wait: bool = False, local_dir: str | None = None):
  """Holds `workdir`'s lock until the returned file is closed (or the process ends: the OS frees
  the lock when a run dies, even by SIGKILL). A second run on the same workdir refuses, naming
  the first one's host and pid, or with `wait` blocks until the first one is done.

  `local_dir` is where the lock of a workdir in a bucket is kept (see the module docstring)."""
  files.makedirs(workdir)
  path = lock_path(workdir, local_dir=local_dir)
  if path != layout.lock(workdir):
    logging.warning("%s is in a bucket: its lock is the local file %s, which excludes a second "
                    "run on this host only; on other hosts nothing does (the start-up check "
                    "meets only this run's processes): run one experiment per workdir", workdir,
                    path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
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
