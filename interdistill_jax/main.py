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

from interdistill_jax import checks, defaults, models, peers, tasks, teachers
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
    "others, each with a line naming it (JAX's own heartbeat, the backstop, gets twice this).")
_VERBOSE_ERRORS = flags.DEFINE_bool("verbose_errors", False,
                                    "Show the Python traceback of an input or config error too.")

# What a user can fix (bad input, a config value, a missing asset, a stale artifact, an LLM API
# that refuses the key or has no quota left): one line and exit status 1. Anything else is a bug
# and keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError,
               teachers.CallFailed)

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


def run(config, workdir: str, *, peer_timeout: float = 60.0) -> None:
  """Checks every section of the config, then holds the workdir and runs `config.task` in it.

  A bad value anywhere stops the run here, before anything is computed or written (the check
  only reads the workdir, to see which pipeline stages are complete). With several processes,
  every process first proves that it sees the others' files in the workdir (`peers.start`).
  """
  checks.check_config(config, workdir=workdir)
  task = tasks.resolve(config.task)
  # Every process stops here together when the workdir is not shared.
  peers.start(workdir, timeout=peer_timeout)
  # The processes of a multi-process run share the workdir: process 0 holds it for them all.
  import jax  # noqa: PLC0415
  lock = (lock_workdir(workdir, local_dir=config.data.cache_dir) if jax.process_index() == 0
          else None)
  peers.prune(workdir)
  task(config, workdir)
  peers.finish()
  del lock


def _fail(lines) -> None:
  sys.stderr.write("".join(f"error: {line}\n" for line in lines))
  sys.stderr.write("(--verbose_errors shows the traceback)\n")
  sys.exit(1)


def _unknown_override(argv: list[str]) -> str | None:
  """The first `--config.a.b=v` of `argv` that names no declared field, as a problem line."""
  import difflib  # noqa: PLC0415
  for arg in argv:
    if not arg.startswith("--config."):
      continue
    path = arg[len("--config."):].split("=", 1)[0].split(".")
    node = defaults.base_config()
    for i, key in enumerate(path):
      if not hasattr(node, "keys") or key not in node:
        known = list(node.keys()) if hasattr(node, "keys") else []
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"; did you mean {'.'.join(path[:i] + close)}?" if close else ""
        return f"--config.{'.'.join(path)}: unknown field {'.'.join(path[:i + 1])} (not declared " \
               f"in interdistill_jax/defaults.py){hint}"
      node = node[key]
  return None


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a bad `--config.a.b=v` said in one line like every user error."""
  verbose = any(a in ("--verbose_errors", "--verbose_errors=true", "--verbose_errors=True")
                for a in argv)
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    if verbose:
      raise
    _fail([str(e)])
  except (AttributeError, KeyError, TypeError, ValueError) as e:  # raised by config overrides
    if verbose:
      raise
    _fail([_unknown_override(argv) or f"{type(e).__name__}: {e}"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  models.prepare_backend(_CONFIG.value)  # XLA_FLAGS, before JAX starts its backends
  import jax  # noqa: PLC0415 (after flag parsing: XLA_FLAGS may come from the launcher)
  if _MULTIHOST.value:
    # Twice the peers' own bound: a silent process is named by `peers` before JAX aborts.
    seconds = max(1, round(_PEER_TIMEOUT.value))
    jax.distributed.initialize(**distributed_kwargs(), heartbeat_timeout_seconds=2 * seconds,
                               shutdown_timeout_seconds=seconds)
    logging.info("process %d/%d: %d local of %d devices", jax.process_index(), jax.process_count(),
                 jax.local_device_count(), jax.device_count())
  config = _CONFIG.value
  workdir = _WORKDIR.value or default_workdir(flags.FLAGS["config"].config_filename)
  logging.info("task=%s workdir=%s", config.task, workdir)
  try:
    run(config, workdir, peer_timeout=_PEER_TIMEOUT.value)
  except BaseException as e:  # noqa: BLE001 (with several processes, every failure is told to the others)
    user_error = isinstance(e, (WorkdirBusy, *USER_ERRORS))
    if peers.current() is None:  # one process, or one that never joined its peers
      if not user_error or _VERBOSE_ERRORS.value:
        raise
      _fail(str(e).splitlines())
    if not user_error or _VERBOSE_ERRORS.value:
      traceback.print_exc()
    if user_error:
      _report(e)
    peers.fail(str(e) if user_error else f"{type(e).__name__}: {e}")


def _report(error: BaseException) -> None:
  sys.stderr.write("".join(f"error: {line}\n" for line in str(error).splitlines()))
  sys.stderr.write("(--verbose_errors shows the traceback)\n")
  sys.stderr.flush()


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  app.run(main, flags_parser=parse_flags)
