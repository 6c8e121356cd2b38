#!/usr/bin/env bash
# Node setup for cluster/aws/vlsa-a100.yaml, run once per node by `ray up`.
#
# Writes, readable by the node user only:
#   ~/.ray/auth_token  the Ray cluster token (the default path Ray reads when RAY_AUTH_MODE=token)
#   ~/.vlsa/env        variables every Ray process inherits from `ray start`: MLflow client settings and,
#                      on EFA nodes, the NCCL / libfabric settings for A100 multi-node training.
# Secrets come from AWS Secrets Manager through the instance role; none is passed on a command line.
set -euo pipefail
umask 077

RAY_TOKEN_SECRET="${VLSA_RAY_TOKEN_SECRET:-vlsa/ray-auth-token}"
MLFLOW_SECRET="${VLSA_MLFLOW_SECRET:-vlsa/mlflow-client}"

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

cat >> ~/.vlsa/env <<'EOF'
PATH="$HOME/venv/bin:$PATH"
TORCH_NCCL_ASYNC_ERROR_HANDLING=1
NCCL_DEBUG=WARN
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
