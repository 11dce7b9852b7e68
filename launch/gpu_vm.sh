#!/usr/bin/env bash
# Runs interdistill_jax on a Compute Engine GPU VM (Deep Learning VM image, NVIDIA driver 580) with
# jax[cuda13]: create or reuse the VM, sync the code, install, run, fetch the workdir, optionally delete.
#
#   launch/gpu_vm.sh --name my-l4 --zone us-central1-a [--project P] [--delete_after] -- \
#       --config=configs/scifact.py --config.task=evaluate --config.model.dtype=bfloat16
#
# See --help for every option, and the README section "Multi-host and cloud launch".
set -euo pipefail

SCRIPT="gpu_vm.sh"
DEFAULT_NAME="interdistill-gpu"
DEFAULT_ZONE="us-central1-a"
JAX_EXTRA="cuda13"
ADD_MULTIHOST=0
# The first boot installs the driver: wait until nvidia-smi answers (runs on the VM).
# shellcheck disable=SC2016
PRE_INSTALL='for i in $(seq 60); do nvidia-smi >/dev/null 2>&1 && break; sleep 10; done; nvidia-smi -L'

MACHINE_TYPE="g2-standard-8"
ACCELERATOR="nvidia-l4"
GPU_COUNT=1
IMAGE_FAMILY="common-cu129-ubuntu-2204-nvidia-580"
IMAGE_PROJECT="deeplearning-platform-release"
DISK_SIZE="200GB"
SPOT=0

# shellcheck source=cloud_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/cloud_common.sh"

extra_usage() {
  cat <<EOF

GPU options:
  --machine_type TYPE  machine type (default ${MACHINE_TYPE})
  --accelerator TYPE   GPU type, e.g. nvidia-l4, nvidia-tesla-a100, nvidia-h100-80gb (default ${ACCELERATOR});
                       "none" for machine types that come with their GPUs and take no --accelerator
  --gpu_count N        GPUs (default ${GPU_COUNT})
  --image_family F     boot image family in ${IMAGE_PROJECT} (default ${IMAGE_FAMILY};
                       jax[cuda13] needs an NVIDIA driver >= 580)
  --disk_size SIZE     boot disk (default ${DISK_SIZE})
  --spot               a Spot VM (cheaper; can be preempted)
EOF
}

parse_extra_option() {
  case "$1" in
    --machine_type | --machine_type=*) option_value --machine_type "$@"; MACHINE_TYPE="$VALUE" ;;
    --accelerator | --accelerator=*) option_value --accelerator "$@"; ACCELERATOR="$VALUE" ;;
    --gpu_count | --gpu_count=*) option_value --gpu_count "$@"; GPU_COUNT="$VALUE" ;;
    --image_family | --image_family=*) option_value --image_family "$@"; IMAGE_FAMILY="$VALUE" ;;
    --disk_size | --disk_size=*) option_value --disk_size "$@"; DISK_SIZE="$VALUE" ;;
    --spot) SPOT=1; CONSUMED=1 ;;
    *) CONSUMED=0 ;;
  esac
}

check_options() {
  [[ $GPU_COUNT =~ ^[1-9][0-9]*$ ]] || die "--gpu_count must be a positive integer, got '${GPU_COUNT}'"
  [[ $ACCELERATOR =~ ^[a-z0-9-]+$ ]] || die "bad --accelerator '${ACCELERATOR}'"
  [[ $MACHINE_TYPE =~ ^[a-z0-9-]+$ ]] || die "bad --machine_type '${MACHINE_TYPE}'"
  [[ $IMAGE_FAMILY =~ ^[a-z0-9-]+$ ]] || die "bad --image_family '${IMAGE_FAMILY}'"
}

# --zone and, when given, --project: appended to every gcloud command.
where() {
  WHERE=(--zone "$ZONE")
  if [[ -n $PROJECT ]]; then WHERE+=(--project "$PROJECT"); fi
}

vm_status() {
  where
  gcloud compute instances describe "$NAME" "${WHERE[@]}" --format 'value(status)'
}

vm_create() {
  where
  local flags=(--machine-type "$MACHINE_TYPE")
  if [[ $ACCELERATOR != none ]]; then
    flags+=(--accelerator "type=${ACCELERATOR},count=${GPU_COUNT}")
  fi
  flags+=(--image-family "$IMAGE_FAMILY" --image-project "$IMAGE_PROJECT" --boot-disk-size "$DISK_SIZE"
    --maintenance-policy TERMINATE --metadata install-nvidia-driver=True)
  if ((SPOT)); then flags+=(--provisioning-model SPOT); fi
  run gcloud compute instances create "$NAME" "${WHERE[@]}" "${flags[@]}"
}

vm_start() {
  where
  run gcloud compute instances start "$NAME" "${WHERE[@]}"
}

vm_delete() {
  where
  run gcloud compute instances delete "$NAME" "${WHERE[@]}" --quiet
}

# One VM: "all" and "0" are the same worker.
vm_ssh() {
  where
  run gcloud compute ssh "$NAME" "${WHERE[@]}" --quiet --ssh-flag=-oServerAliveInterval=60 --command "$2"
}

vm_scp_to() {
  where
  run gcloud compute scp "${WHERE[@]}" --quiet "$1" "${NAME}:$2"
}

vm_scp_from() {
  where
  run gcloud compute scp "${WHERE[@]}" --quiet --recurse "${NAME}:$1" "$2"
}

launch_main "$@"
