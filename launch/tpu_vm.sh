#!/usr/bin/env bash
# Runs interdistill_jax on a Cloud TPU VM or pod slice with jax[tpu]: create or reuse it, sync the code
# and install on every worker, run the same command on every worker with --multihost (JAX finds the
# coordinator and process ids from the TPU environment), fetch the workdir from worker 0, optionally
# delete. On a pod slice the workers share one workdir: pass --workdir an absolute path on storage
# every worker mounts (NFS, GCS FUSE); a workdir on each worker's own disk is refused at start-up.
#
#   launch/tpu_vm.sh --name my-v5e --zone us-west4-a --accelerator v5litepod-16 [--delete_after] -- \
#       --config=configs/scifact.py --config.task=evaluate --config.model.dtype=bfloat16
#
# See --help for every option, and the README section "Multi-host and cloud launch".
set -euo pipefail

SCRIPT="tpu_vm.sh"
DEFAULT_NAME="interdistill-tpu"
DEFAULT_ZONE="us-west4-a"
JAX_EXTRA="tpu"
ADD_MULTIHOST=1
PRE_INSTALL=""

ACCELERATOR="v5litepod-8"
RUNTIME_VERSION=""
SPOT=0

# shellcheck source=cloud_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/cloud_common.sh"

extra_usage() {
  cat <<EOF

TPU options:
  --accelerator TYPE      accelerator type, e.g. v4-8, v5litepod-8, v5litepod-16 (a pod slice: every
                          worker runs the command), v5p-8, v6e-8 (default ${ACCELERATOR})
  --runtime_version V     TPU software version (default from the type: v2/v3/v4 tpu-ubuntu2204-base,
                          v5litepod v2-alpha-tpuv5-lite, v5p v2-alpha-tpuv5, v6e v2-alpha-tpuv6e)
  --spot                  a Spot TPU (cheaper; can be preempted)
EOF
}

parse_extra_option() {
  case "$1" in
    --accelerator | --accelerator=*) option_value --accelerator "$@"; ACCELERATOR="$VALUE" ;;
    --runtime_version | --runtime_version=*) option_value --runtime_version "$@"; RUNTIME_VERSION="$VALUE" ;;
    --spot) SPOT=1; CONSUMED=1 ;;
    *) CONSUMED=0 ;;
  esac
}

check_options() {
  [[ $ACCELERATOR =~ ^v[0-9][a-z0-9]*-[0-9]+$ ]] \
    || die "--accelerator must look like v5litepod-8 or v4-32, got '${ACCELERATOR}'"
  if [[ -z $RUNTIME_VERSION ]]; then
    case "$ACCELERATOR" in
      v2-* | v3-* | v4-*) RUNTIME_VERSION="tpu-ubuntu2204-base" ;;
      v5litepod-* | v5e-*) RUNTIME_VERSION="v2-alpha-tpuv5-lite" ;;
      v5p-*) RUNTIME_VERSION="v2-alpha-tpuv5" ;;
      v6e-*) RUNTIME_VERSION="v2-alpha-tpuv6e" ;;
      *) die "no default runtime version for ${ACCELERATOR}; pass --runtime_version" ;;
    esac
  fi
  [[ $RUNTIME_VERSION =~ ^[a-z0-9.-]+$ ]] || die "bad --runtime_version '${RUNTIME_VERSION}'"
}

# --zone and, when given, --project: appended to every gcloud command.
where() {
  WHERE=(--zone "$ZONE")
  if [[ -n $PROJECT ]]; then WHERE+=(--project "$PROJECT"); fi
}

vm_status() {
  where
  gcloud compute tpus tpu-vm describe "$NAME" "${WHERE[@]}" --format 'value(state)'
}

vm_create() {
  where
  local flags=(--accelerator-type "$ACCELERATOR" --version "$RUNTIME_VERSION")
  if ((SPOT)); then flags+=(--spot); fi
  run gcloud compute tpus tpu-vm create "$NAME" "${WHERE[@]}" "${flags[@]}"
}

vm_start() {
  where
  run gcloud compute tpus tpu-vm start "$NAME" "${WHERE[@]}"
}

vm_delete() {
  where
  run gcloud compute tpus tpu-vm delete "$NAME" "${WHERE[@]}" --quiet
}

# $1: "all" (every worker of a pod slice, in parallel) or a worker number.
vm_ssh() {
  where
  run gcloud compute tpus tpu-vm ssh "$NAME" "${WHERE[@]}" --quiet "--worker=$1" \
    --ssh-flag=-oServerAliveInterval=60 --command "$2"
}

vm_scp_to() {
  where
  run gcloud compute tpus tpu-vm scp "${WHERE[@]}" --quiet --worker=all "$1" "${NAME}:$2"
}

vm_scp_from() {
  where
  run gcloud compute tpus tpu-vm scp "${WHERE[@]}" --quiet --worker=0 --recurse "${NAME}:$1" "$2"
}

launch_main "$@"
