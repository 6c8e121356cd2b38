#!/usr/bin/env bash
# Node setup for cluster/aws/vlsa-a100.yaml, run once per node by `ray up`.
#
# Writes, readable by the node user only:
#   ~/.ray/auth_token  the Ray cluster token (the default path Ray reads when RAY_AUTH_MODE=token)
#   ~/.vlsa/env        variables every Ray process inherits from `ray start`: MLflow client settings, the
#                      Hugging Face token and cache, scratch paths and, on EFA nodes, the NCCL / libfabric
#                      settings for A100 multi-node training.
# and puts /scratch on the NVMe instance store (8x 1 TB on p4d/p4de; the root volume on the head): model
# downloads, the Hugging Face cache and checkpoints being written before their upload to S3 go there.
# Secrets come from AWS Secrets Manager through the instance role; none is passed on a command line.
set -euo pipefail
umask 077

RAY_TOKEN_SECRET="${VLSA_RAY_TOKEN_SECRET:-vlsa/ray-auth-token}"
MLFLOW_SECRET="${VLSA_MLFLOW_SECRET:-vlsa/mlflow-client}"
HF_SECRET="${VLSA_HF_SECRET:-vlsa/hf-token}"  # optional: needed for gated checkpoints (SD3-medium)

# The region of this instance, through IMDSv2 (the launcher config requires session tokens).
imds_token=$(curl -sS -X PUT http://169.254.169.254/latest/api/token -H "X-aws-ec2-metadata-token-ttl-seconds: 60")
region=$(curl -sS -H "X-aws-ec2-metadata-token: ${imds_token}" http://169.254.169.254/latest/meta-data/placement/region)

secret() {
  aws secretsmanager get-secret-value --region "${region}" --secret-id "$1" --query SecretString --output text
}

mkdir -p ~/.ray ~/.vlsa
secret "${RAY_TOKEN_SECRET}" > ~/.ray/auth_token

# The MLflow secret is a JSON object: MLFLOW_TRACKING_URI, MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD.
secret "${MLFLOW_SECRET}" | ~/venv/bin/python -c '
import json, shlex, sys
for key, value in json.load(sys.stdin).items():
    if key.startswith("MLFLOW_TRACKING_"):
        print(f"{key}={shlex.quote(str(value))}")
' > ~/.vlsa/env

if hf_token=$(secret "${HF_SECRET}" 2>/dev/null); then
  printf 'HF_TOKEN=%q\n' "${hf_token}" >> ~/.vlsa/env
fi

# Scratch on the NVMe instance store. The Deep Learning AMIs mount it (RAID0) at /opt/dlami/nvme; otherwise
# the instance-store devices are striped here. A node without instance store (the head) uses its root volume.
scratch_root=/opt/dlami/nvme
if ! mountpoint -q "${scratch_root}"; then
  mapfile -t disks < <(lsblk -dpno NAME,MODEL | awk '/Amazon EC2 NVMe Instance Storage/ {print $1}')
  if [ "${#disks[@]}" -gt 0 ]; then
    sudo mdadm --create /dev/md/vlsa-scratch --run --level=0 --raid-devices="${#disks[@]}" "${disks[@]}"
    sudo mkfs.xfs -f /dev/md/vlsa-scratch
    sudo mkdir -p "${scratch_root}" && sudo mount /dev/md/vlsa-scratch "${scratch_root}"
  else
    scratch_root="$HOME/scratch-root" && mkdir -p "${scratch_root}"
  fi
fi
sudo mkdir -p "${scratch_root}/vlsa" && sudo chown "$(id -u):$(id -g)" "${scratch_root}/vlsa"
sudo ln -sfn "${scratch_root}/vlsa" /scratch
mkdir -p /scratch/tmp /scratch/huggingface /scratch/vlsa-cache /scratch/triton ~/.cache
ln -sfn /scratch/vlsa-cache ~/.cache/vlsa  # model.cache_dir's default, ~/.cache/vlsa

cat >> ~/.vlsa/env <<'EOF'
PATH="$HOME/venv/bin:$PATH"
TORCH_NCCL_ASYNC_ERROR_HANDLING=1
NCCL_DEBUG=WARN
HF_HOME=/scratch/huggingface
TRITON_CACHE_DIR=/scratch/triton
TMPDIR=/scratch/tmp
EOF

# p4d.24xlarge: NCCL over EFA through the aws-ofi-nccl plugin, with GPUDirect RDMA. Bootstrap traffic stays
# on the ENA interface; fork safety is needed because Ray forks worker processes.
if [ -d /opt/amazon/efa ]; then
  plugin_dir=$(ls -d /opt/amazon/ofi-nccl/lib* /opt/aws-ofi-nccl/lib 2>/dev/null | head -n 1 || true)
  cat >> ~/.vlsa/env <<EOF
FI_PROVIDER=efa
FI_EFA_USE_DEVICE_RDMA=1
FI_EFA_FORK_SAFE=1
RDMAV_FORK_SAFE=1
NCCL_SOCKET_IFNAME=^lo,docker
LD_LIBRARY_PATH=/opt/amazon/efa/lib:${plugin_dir}:\${LD_LIBRARY_PATH:-}
EOF
fi
