"""Entrypoint: `python -m interdistill_jax.main --config=configs/<x>.py [--config.a.b=v] [--workdir=DIR]`.

Flags, then one call: `config.task` names a function `run(config, workdir)` in `tasks.TASKS`.
"""

import os
import sys
import traceback

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from interdistill_jax import peers, tasks
from interdistill_jax.locking import WorkdirBusy, lock_workdir

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Experiment directory; default runs/<config name>.")
_MULTIHOST = flags.DEFINE_bool("multihost", False,
                               "Call jax.distributed.initialize() (multi-host TPU/GPU, launch/*.sh).")
_PEER_TIMEOUT = flags.DEFINE_float(
    "peer_timeout", 60.0,
    "Several processes: seconds each waits at start-up to see the others' files in the shared "
    "workdir, and after which a process that stopped answering (killed, a lost host) stops the "
    "others (JAX's heartbeat timeout).")
_VERBOSE_ERRORS = flags.DEFINE_bool("verbose_errors", False,
                                    "Show the Python traceback of an input or config error too.")

# What a user can fix (bad input, a config value, a missing asset, a stale artifact): one line
# and exit status 1. Anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError)

# Set by launch/local.sh for each process; absent on TPU pods / SLURM, where JAX autodetects them.
DISTRIBUTED_ENV = ("INTERDISTILL_COORDINATOR", "INTERDISTILL_NUM_PROCESSES", "INTERDISTILL_PROCESS_ID")


def default_workdir(config_path: str) -> str:
  return os.path.join("runs", os.path.splitext(os.path.basename(config_path))[0])


def distributed_kwargs(environ=os.environ) -> dict:
  """Arguments of jax.distributed.initialize: from DISTRIBUTED_ENV if set, else {} (autodetect)."""
  present = [name for name in DISTRIBUTED_ENV if environ.get(name)]
  if not present:
    return {}
  if len(present) != len(DISTRIBUTED_ENV):
    raise app.UsageError(f"set all of {DISTRIBUTED_ENV} or none; only {present} are set")
  coordinator, num_processes, process_id = (environ[name] for name in DISTRIBUTED_ENV)
  return {"coordinator_address": coordinator, "num_processes": int(num_processes),
          "process_id": int(process_id)}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  import jax  # noqa: PLC0415 (after flag parsing: XLA_FLAGS may come from the launcher)
  if _MULTIHOST.value:
    seconds = max(1, round(_PEER_TIMEOUT.value))
    jax.distributed.initialize(**distributed_kwargs(), heartbeat_timeout_seconds=seconds,
                               shutdown_timeout_seconds=seconds)
    logging.info("process %d/%d: %d local of %d devices", jax.process_index(), jax.process_count(),
                 jax.local_device_count(), jax.device_count())
  config = _CONFIG.value
  workdir = _WORKDIR.value or default_workdir(flags.FLAGS["config"].config_filename)
  logging.info("task=%s workdir=%s", config.task, workdir)
  try:
    task = tasks.resolve(config.task)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  try:
    # Every process stops here together when the workdir is not shared.
    peers.start(workdir, timeout=_PEER_TIMEOUT.value)
  except USER_ERRORS as e:  # WorkdirNotShared is one
    _exit_with(e)
  try:
    # The processes of a multi-process run share the workdir: process 0 holds it for them all.
    lock = lock_workdir(workdir) if jax.process_index() == 0 else None
    peers.prune(workdir)
    task(config, workdir)
    peers.finish()
  except BaseException as e:  # noqa: BLE001 (with several processes, every failure is told to the others)
    user_error = isinstance(e, (WorkdirBusy, *USER_ERRORS))
    if peers.current() is None:
      if not user_error or _VERBOSE_ERRORS.value:
        raise
      _exit_with(e)
    if not user_error or _VERBOSE_ERRORS.value:
      traceback.print_exc()
    if user_error:
      _report(e)
    peers.fail(str(e) if user_error else f"{type(e).__name__}: {e}")
  del lock


def _report(error: BaseException) -> None:
  sys.stderr.write(f"error: {error}\n(--verbose_errors shows the traceback)\n")
  sys.stderr.flush()


def _exit_with(error: BaseException):
  _report(error)
  sys.exit(1)


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  app.run(main)
