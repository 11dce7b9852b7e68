# shellcheck shell=bash
# Shared by launch/gpu_vm.sh and launch/tpu_vm.sh (sourced, not run): option parsing, printing of
# commands, and the steps create/reuse -> sync -> install -> run -> fetch -> delete.
#
# The sourcing script defines, before calling launch_main "$@":
#   SCRIPT                  its name, for messages
#   DEFAULT_NAME, DEFAULT_ZONE, JAX_EXTRA ("cuda13" or "tpu"), ADD_MULTIHOST (0 or 1)
#   parse_extra_option      handles its own options: sets CONSUMED to the words used, or 0
#   check_options           validates its own options after parsing
#   extra_usage             prints its own options
#   vm_status               prints the VM's state ("" when it does not exist)
#   vm_create, vm_start, vm_delete
#   vm_ssh WORKERS CMD      runs CMD on WORKERS ("all" or "0") through the remote login shell
#   vm_scp_to SRC DST       copies a local file to DST (relative to the remote home) on every worker
#   vm_scp_from SRC DSTDIR  copies SRC (a directory on worker 0) into the local DSTDIR
#   PRE_INSTALL             a remote shell snippet run before the install ("" for none)
# Bash 3.2 compatible (the default bash on macOS).

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CODE_DIR="interdistill_jax"            # on the VM, relative to the remote home directory
TARBALL_NAME="interdistill_jax.tar.gz"
ENV_FILE_NAME=".launch_env"

die() {
  echo "${SCRIPT}: $*" >&2
  echo "run launch/${SCRIPT} --help for the options" >&2
  exit 2
}
note() { echo "${SCRIPT}: $*" >&2; }

# One word, quoted for a POSIX shell only when it needs it.
shquote() {
  if [[ $1 =~ ^[A-Za-z0-9_./=:,@%+-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}
# Words -> one shell-quoted line.
join_quoted() {
  local out="" word
  for word in "$@"; do out+="${out:+ }$(shquote "$word")"; done
  printf '%s' "$out"
}
# Prints a command as "+ <quoted words>"; with --dry_run that is all, otherwise it then runs.
run() {
  if ((DRY_RUN)); then
    printf '+ %s\n' "$(join_quoted "$@")"
  else
    printf '+ %s\n' "$(join_quoted "$@")" >&2
    "$@"
  fi
}

common_usage() {
  cat <<EOF
usage: launch/${SCRIPT} [options] -- <main.py arguments>

Creates (or reuses) the VM, syncs this repository's code (git archive of --ref) to ~/${CODE_DIR} on every
worker, installs jax[${JAX_EXTRA}] and requirements.txt in ~/${CODE_DIR}/.venv (Python 3.12 through uv),
runs \`python -m interdistill_jax.main <main.py arguments> --workdir=WORKDIR\` on every worker, copies
WORKDIR back from worker 0, and deletes the VM if asked.

Common options:
  --name NAME          VM name (default ${DEFAULT_NAME})
  --zone ZONE          zone (default ${DEFAULT_ZONE})
  --project PROJECT    project (default: gcloud's configured project)
  --workdir DIR        experiment directory on the VM, relative to ~/${CODE_DIR} (default runs/NAME);
                       a --workdir among the main.py arguments is used when this one is absent. On
                       a pod slice every worker must see it: an absolute path on storage all of them
                       mount (NFS, GCS FUSE); a per-worker disk is refused at start-up
  --fetch_to DIR       local directory that receives WORKDIR (default runs)
  --ref REF            git commit to ship (default HEAD; uncommitted changes are not shipped)
  --env_keys K1,K2     forward these local environment variables (e.g. OPENAI_API_KEY) to the run,
                       through a mode-600 file on the VM that the run reads and deletes; never on a
                       command line. Unset names are skipped with a warning
  --skip_install       do not run the install step (the VM's venv is already set up)
  --delete_after       delete the VM at the end (also when the run fails)
  --dry_run            print every command, one per line prefixed with "+ ", and run none
                       (the VM is assumed not to exist yet)
  -h, --help           this text
EOF
  extra_usage
}

NAME=""
ZONE=""
PROJECT=""
WORKDIR=""
FETCH_TO="runs"
REF="HEAD"
ENV_KEYS=""
SKIP_INSTALL=0
DELETE_AFTER=0
DRY_RUN=0
MAIN_ARGS=()
CONSUMED=0

# Sets VALUE from "--opt value" or "--opt=value"; CONSUMED to the words used.
option_value() {
  local opt="$1"
  shift
  case "$1" in
    *=*) VALUE="${1#*=}"; CONSUMED=1 ;;
    *)
      (($# >= 2)) || die "${opt} needs a value"
      VALUE="$2"
      CONSUMED=2
      ;;
  esac
}

parse_args() {
  local found_separator=0
  while (($#)); do
    CONSUMED=0
    parse_extra_option "$@"
    if ((CONSUMED)); then
      shift "$CONSUMED"
      continue
    fi
    case "$1" in
      --name | --name=*) option_value --name "$@"; NAME="$VALUE" ;;
      --zone | --zone=*) option_value --zone "$@"; ZONE="$VALUE" ;;
      --project | --project=*) option_value --project "$@"; PROJECT="$VALUE" ;;
      --workdir | --workdir=*) option_value --workdir "$@"; WORKDIR="$VALUE" ;;
      --fetch_to | --fetch_to=*) option_value --fetch_to "$@"; FETCH_TO="$VALUE" ;;
      --ref | --ref=*) option_value --ref "$@"; REF="$VALUE" ;;
      --env_keys | --env_keys=*) option_value --env_keys "$@"; ENV_KEYS="$VALUE" ;;
      --skip_install) SKIP_INSTALL=1; CONSUMED=1 ;;
      --delete_after) DELETE_AFTER=1; CONSUMED=1 ;;
      --dry_run) DRY_RUN=1; CONSUMED=1 ;;
      -h | --help) common_usage; exit 0 ;;
      --) found_separator=1; shift; break ;;
      *) die "unknown option '$1' (main.py arguments go after --)" ;;
    esac
    shift "$CONSUMED"
  done
  ((found_separator)) || die "missing -- before the main.py arguments"
  (($#)) || die "no main.py arguments after -- (at least --config=configs/<x>.py)"

  # A --workdir among the main.py arguments becomes the launcher's (it decides what is fetched).
  local arg expect_value=0 main_workdir=""
  for arg in "$@"; do
    if ((expect_value)); then
      main_workdir="$arg"
      expect_value=0
      continue
    fi
    case "$arg" in
      --workdir=*) main_workdir="${arg#*=}" ;;
      --workdir) expect_value=1 ;;
      *) MAIN_ARGS+=("$arg") ;;
    esac
  done
  ((!expect_value)) || die "--workdir among the main.py arguments needs a value"
  if [[ -n $main_workdir ]]; then
    [[ -z $WORKDIR || $WORKDIR == "$main_workdir" ]] \
      || die "two different workdirs: --workdir=${WORKDIR} and --workdir=${main_workdir} after --"
    WORKDIR="$main_workdir"
  fi

  NAME="${NAME:-$DEFAULT_NAME}"
  ZONE="${ZONE:-$DEFAULT_ZONE}"
  WORKDIR="${WORKDIR:-runs/${NAME}}"
  [[ $NAME =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] \
    || die "--name must be lowercase letters, digits and hyphens, starting with a letter: '${NAME}'"
  [[ $ZONE =~ ^[a-z0-9-]+$ ]] || die "bad --zone '${ZONE}'"
  [[ -z $PROJECT || $PROJECT =~ ^[a-z0-9:.-]+$ ]] || die "bad --project '${PROJECT}'"
  [[ -n $WORKDIR && $WORKDIR != */ ]] || die "bad --workdir '${WORKDIR}' (no trailing slash)"
  [[ -n $FETCH_TO ]] || die "--fetch_to is empty"
  [[ $ENV_KEYS =~ ^([A-Za-z_][A-Za-z0-9_]*(,[A-Za-z_][A-Za-z0-9_]*)*)?$ ]] \
    || die "--env_keys must be comma-separated variable names, got '${ENV_KEYS}'"
  if ((ADD_MULTIHOST)); then
    local has_multihost=0
    for arg in "${MAIN_ARGS[@]}"; do
      case "$arg" in --multihost | --multihost=*) has_multihost=1 ;; esac
    done
    ((has_multihost)) || MAIN_ARGS+=(--multihost)
  fi
  check_options
}

# WORKDIR as the remote shell sees it: relative paths are under ~/CODE_DIR.
remote_workdir() {
  case "$WORKDIR" in
    /*) printf '%s' "$WORKDIR" ;;
    *) printf '%s/%s' "$CODE_DIR" "$WORKDIR" ;;
  esac
}

ensure_vm() {
  local status=""
  if ((DRY_RUN)); then
    printf '# the VM is assumed not to exist (a real run reuses it when it does)\n'
  else
    status="$(vm_status 2>/dev/null || true)"
  fi
  case "$status" in
    "") note "creating ${NAME} in ${ZONE}"; vm_create ;;
    RUNNING | READY) note "reusing ${NAME} (${status})" ;;
    PROVISIONING | STAGING | CREATING | STARTING | RESTARTING) note "${NAME} is ${status}; waiting" ;;
    TERMINATED | STOPPED) note "starting ${NAME} (${status})"; vm_start ;;
    *) die "${NAME} is ${status}; resume, repair or delete it first" ;;
  esac
  # A new VM accepts ssh a little after it is created.
  if ((DRY_RUN)); then
    vm_ssh all "true"
  else
    local attempt
    for attempt in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
      if vm_ssh all "true" >/dev/null 2>&1; then return 0; fi
      note "waiting for ssh on ${NAME} (attempt ${attempt}/20)"
      sleep 15
    done
    die "no ssh to ${NAME} after 20 attempts"
  fi
}

TMP_DIR=""
cleanup_tmp() {
  if [[ -n $TMP_DIR ]]; then rm -rf "$TMP_DIR"; fi
}

sync_code() {
  local tarball
  if ((DRY_RUN)); then
    tarball="/tmp/${TARBALL_NAME}"
  else
    if ! git -C "$REPO" diff --quiet HEAD -- 2>/dev/null; then
      note "warning: uncommitted changes are not shipped (only --ref ${REF})"
    fi
    tarball="${TMP_DIR}/${TARBALL_NAME}"
  fi
  run git -C "$REPO" archive --format=tar.gz -o "$tarball" "$REF"
  vm_scp_to "$tarball" "$TARBALL_NAME"
  # Replace the code, keep the venv and the experiment directories.
  local keep top
  keep="! -name .venv ! -name runs"
  case "$WORKDIR" in
    /*) ;;
    *)
      top="${WORKDIR%%/*}"
      case "$top" in .venv | runs | . | ..) ;; *) keep+=" ! -name $(shquote "$top")" ;; esac
      ;;
  esac
  vm_ssh all "mkdir -p ${CODE_DIR} && cd ${CODE_DIR} && find . -mindepth 1 -maxdepth 1 ${keep} -exec rm -rf {} + && tar -xzf ../${TARBALL_NAME} && rm -f ../${TARBALL_NAME}"
}

install_deps() {
  local jax_version jax_req
  jax_version="$(sed -n 's/^jax==//p' "${REPO}/requirements.txt")"
  [[ -n $jax_version ]] || die "no jax==VERSION line in requirements.txt"
  jax_req="$(shquote "jax[${JAX_EXTRA}]==${jax_version}")"
  local remote
  remote="set -e; cd ${CODE_DIR}; export PATH=\"\$HOME/.local/bin:\$PATH\"; "
  remote+="${PRE_INSTALL:+${PRE_INSTALL}; }"
  remote+="command -v uv >/dev/null 2>&1 || curl -LsSf https://astral.sh/uv/install.sh | sh; "
  remote+="[ -x .venv/bin/python ] || uv venv --python 3.12 .venv; "
  remote+="uv pip install --python .venv/bin/python -r requirements.txt ${jax_req}; "
  remote+="uv pip install --python .venv/bin/python --no-deps -r requirements-assets.txt; "
  remote+="uv pip install --python .venv/bin/python --no-deps -e ."
  vm_ssh all "$remote"
}

# Writes the forwarded variables to a mode-600 file and copies it to every worker. With --dry_run
# only the names are printed, as $NAME placeholders.
forward_env() {
  FORWARDED=""
  [[ -n $ENV_KEYS ]] || return 0
  local key keys placeholders="" env_file
  IFS=',' read -r -a keys <<<"$ENV_KEYS"
  if ((!DRY_RUN)); then
    env_file="${TMP_DIR}/${ENV_FILE_NAME}"
    (umask 077 && : >"$env_file")
  else
    env_file="/tmp/${ENV_FILE_NAME}"
  fi
  for key in "${keys[@]}"; do
    if [[ -z ${!key+set} ]]; then
      note "warning: ${key} is not set here; not forwarded"
      continue
    fi
    FORWARDED+="${FORWARDED:+ }${key}"
    placeholders+=" ${key}=\$${key}"
    if ((!DRY_RUN)); then
      printf 'export %s=%s\n' "$key" "$(shquote "${!key}")" >>"$env_file"
    fi
  done
  [[ -n $FORWARDED ]] || return 0
  if ((DRY_RUN)); then
    printf '# %s (mode 600):%s\n' "$env_file" "$placeholders"
  fi
  vm_scp_to "$env_file" "${CODE_DIR}/${ENV_FILE_NAME}"
}

run_main() {
  local cmd="cd ${CODE_DIR} && "
  if [[ -n $FORWARDED ]]; then
    cmd+="set -a && . ./${ENV_FILE_NAME} && set +a && rm -f ./${ENV_FILE_NAME} && "
  fi
  cmd+="exec .venv/bin/python -m interdistill_jax.main $(join_quoted "${MAIN_ARGS[@]}" "--workdir=${WORKDIR}")"
  vm_ssh all "$cmd"
}

fetch_results() {
  run mkdir -p "$FETCH_TO"
  vm_scp_from "$(remote_workdir)" "$FETCH_TO"
}

launch_main() {
  parse_args "$@"
  if ((!DRY_RUN)); then
    command -v gcloud >/dev/null 2>&1 || die "gcloud not found (https://cloud.google.com/sdk/docs/install)"
    TMP_DIR="$(mktemp -d)"
    trap cleanup_tmp EXIT
  fi
  ensure_vm
  sync_code
  ((SKIP_INSTALL)) || install_deps
  forward_env
  local status=0
  run_main || status=$?
  if ((status != 0)); then note "the run failed with status ${status}; fetching what it wrote"; fi
  fetch_results || note "warning: could not fetch $(remote_workdir)"
  if ((DELETE_AFTER)); then vm_delete; fi
  if ((!DRY_RUN)); then
    note "results in ${FETCH_TO}/$(basename "$WORKDIR")"
  fi
  return "$status"
}
