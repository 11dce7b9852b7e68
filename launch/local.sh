#!/usr/bin/env bash
# Runs `python -m interdistill_jax.main` on this host, as one process or as N JAX processes joined
# through jax.distributed over 127.0.0.1, so the multi-host code paths run on a single machine.
#
#   launch/local.sh [options] -- <main.py arguments>
#
# Options:
#   --num_processes N        processes to start (default 1: exec main.py directly)
#   --devices_per_process D  simulated CPU devices per process: sets
#                            XLA_FLAGS=--xla_force_host_platform_device_count=D (other XLA_FLAGS are
#                            kept); default: XLA_FLAGS is left as it is
#   --port P                 coordinator port on 127.0.0.1 (default: a free port)
#   --dry_run                print each process's environment and command ("+ " lines), run nothing
#   -h, --help               this text
#
# With N > 1, process i gets INTERDISTILL_COORDINATOR=127.0.0.1:PORT, INTERDISTILL_NUM_PROCESSES=N and
# INTERDISTILL_PROCESS_ID=i, and `--multihost` is added to its arguments (main.py passes these to
# jax.distributed.initialize). Each process writes stdout and stderr to
# ${LOG_DIR:-/tmp}/interdistill_proc<i>.log, and the same lines appear here prefixed with "[proc i] ".
# SIGINT/SIGTERM stop every process; when one process fails the others are stopped, and the script
# exits with the failed process's status. The processes share --workdir (one machine, one disk), as
# main.py requires of every multi-process run.
#
# Environment: PYTHON (default: .venv/bin/python of this repository), LOG_DIR (default /tmp).
#
# Example (2 processes x 2 simulated CPU devices = 4 global devices):
#   JAX_PLATFORMS=cpu launch/local.sh --num_processes 2 --devices_per_process 2 -- \
#       --config=configs/beir.py --config.task=retrieve --config.data.dir=../shared/data/nq_oracle
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-${REPO}/.venv/bin/python}"
LOG_DIR="${LOG_DIR:-/tmp}"
GRACE_SECONDS=10

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p;}' "${BASH_SOURCE[0]}"; }
die() { echo "local.sh: $*" >&2; echo "usage: launch/local.sh [--num_processes N] [--devices_per_process D] [--port P] [--dry_run] -- <main.py arguments>" >&2; exit 2; }

# Prints a command as one shell-quoted line.
shquote() {
  if [[ $1 =~ ^[A-Za-z0-9_./=:,@%+-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}
print_cmd() {
  local out="+" word
  for word in "$@"; do out+=" $(shquote "$word")"; done
  printf '%s\n' "$out"
}

num_processes=1
devices=""
port=""
dry_run=0
found_separator=0
while (($#)); do
  case "$1" in
    --num_processes | --devices_per_process | --port)
      (($# >= 2)) || die "$1 needs a value"
      case "$1" in
        --num_processes) num_processes="$2" ;;
        --devices_per_process) devices="$2" ;;
        --port) port="$2" ;;
      esac
      shift 2 ;;
    --num_processes=*) num_processes="${1#*=}"; shift ;;
    --devices_per_process=*) devices="${1#*=}"; shift ;;
    --port=*) port="${1#*=}"; shift ;;
    --dry_run) dry_run=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) found_separator=1; shift; break ;;
    *) die "unknown option '$1' (main.py arguments go after --)" ;;
  esac
done
((found_separator)) || die "missing -- before the main.py arguments"
(($#)) || die "no main.py arguments after -- (at least --config=configs/<x>.py)"
[[ $num_processes =~ ^[1-9][0-9]*$ ]] \
  || die "--num_processes must be a positive integer, got '$num_processes'"
[[ -z $devices || $devices =~ ^[1-9][0-9]*$ ]] \
  || die "--devices_per_process must be a positive integer, got '$devices'"
[[ -z $port || ($port =~ ^[1-9][0-9]*$ && $port -le 65535) ]] \
  || die "--port must be a port number, got '$port'"
if ((!dry_run)) && [[ ! -x $PYTHON ]]; then
  echo "local.sh: $PYTHON is not an executable; run \`make setup\` or set PYTHON" >&2
  exit 2
fi

env_words=()
if [[ -n $devices ]]; then
  # Keep the other XLA flags, replace any device count already there.
  read -r -a old_flags <<<"${XLA_FLAGS:-}"
  new_flags=""
  for flag in ${old_flags[@]+"${old_flags[@]}"}; do
    [[ $flag == --xla_force_host_platform_device_count=* ]] || new_flags+="$flag "
  done
  export XLA_FLAGS="${new_flags}--xla_force_host_platform_device_count=${devices}"
  env_words+=("XLA_FLAGS=${XLA_FLAGS}")
fi

main_cmd=("$PYTHON" -m interdistill_jax.main "$@")

if ((num_processes == 1)); then
  if ((dry_run)); then
    print_cmd env ${env_words[@]+"${env_words[@]}"} "${main_cmd[@]}"
    exit 0
  fi
  exec "${main_cmd[@]}"
fi

# N > 1: every process joins the same jax.distributed job.
has_multihost=0
for arg in "$@"; do
  case "$arg" in --multihost | --multihost=*) has_multihost=1 ;; esac
done
((has_multihost)) || main_cmd+=(--multihost)

if [[ -z $port ]]; then
  if ((dry_run)) && [[ ! -x $PYTHON ]]; then
    port=12345
  else
    port="$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  fi
fi
coordinator="127.0.0.1:${port}"

log_file() { printf '%s/interdistill_proc%d.log' "$LOG_DIR" "$1"; }

if ((dry_run)); then
  for ((i = 0; i < num_processes; i++)); do
    print_cmd env "INTERDISTILL_COORDINATOR=${coordinator}" "INTERDISTILL_NUM_PROCESSES=${num_processes}" \
      "INTERDISTILL_PROCESS_ID=${i}" ${env_words[@]+"${env_words[@]}"} "${main_cmd[@]}"
    echo "# proc ${i} log: $(log_file "$i")"
  done
  exit 0
fi

mkdir -p "$LOG_DIR"
pids=()      # pid of process i
running=()   # 1 while process i has not been reaped

# Stops every process still running: SIGTERM, then SIGKILL after GRACE_SECONDS.
stop_all() {
  local i ticks=0 alive
  for i in "${!pids[@]}"; do
    if ((running[i])); then kill -TERM "${pids[i]}" 2>/dev/null || true; fi
  done
  while :; do
    alive=0
    for i in "${!pids[@]}"; do
      if ((running[i])) && kill -0 "${pids[i]}" 2>/dev/null; then alive=1; fi
    done
    ((alive)) || break
    if ((ticks >= GRACE_SECONDS * 5)); then
      for i in "${!pids[@]}"; do
        if ((running[i])); then kill -KILL "${pids[i]}" 2>/dev/null || true; fi
      done
      break
    fi
    sleep 0.2
    ticks=$((ticks + 1))
  done
  for i in "${!pids[@]}"; do
    if ((running[i])); then wait "${pids[i]}" 2>/dev/null || true; fi
    running[i]=0
  done
}

on_signal() {
  echo "local.sh: received SIG$1; stopping all ${num_processes} processes" >&2
  trap - INT TERM
  stop_all
  exit "$2"
}
trap 'on_signal INT 130' INT
trap 'on_signal TERM 143' TERM

echo "local.sh: ${num_processes} processes, coordinator ${coordinator}, logs $(log_file 0) ..." >&2
for ((i = 0; i < num_processes; i++)); do
  log="$(log_file "$i")"
  INTERDISTILL_COORDINATOR="$coordinator" INTERDISTILL_NUM_PROCESSES="$num_processes" \
    INTERDISTILL_PROCESS_ID="$i" PYTHONUNBUFFERED=1 \
    "${main_cmd[@]}" > >(tee "$log" | sed -u "s/^/[proc ${i}] /") 2>&1 &
  pids[i]=$!
  running[i]=1
done

# Polls so that a signal is handled at once (a trap runs as soon as `wait` is interrupted).
remaining=$num_processes
while ((remaining > 0)); do
  for i in "${!pids[@]}"; do
    ((running[i])) || continue
    kill -0 "${pids[i]}" 2>/dev/null && continue
    status=0
    wait "${pids[i]}" || status=$?
    running[i]=0
    remaining=$((remaining - 1))
    if ((status != 0)); then
      echo "local.sh: process ${i} exited with status ${status} (log: $(log_file "$i")); stopping the others" >&2
      trap - INT TERM
      stop_all
      exit "$status"
    fi
  done
  ((remaining > 0)) || break
  sleep 0.2 &
  wait $! || true
done
echo "local.sh: all ${num_processes} processes finished" >&2
