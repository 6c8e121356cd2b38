# The image of every Ray pod (cluster/k8s/*.yaml): Ray 2.60 with CUDA 13, Python 3.11, the pinned
# requirements, the project.
#
#   docker build -f cluster/docker/ray.Dockerfile \
#     --build-arg RAY_BASE_DIGEST=@sha256:<digest of the base tag> \
#     -t your-registry.example.com/vlsa-ray:0.1.0 .
#
# CUDA: the default Linux wheel of torch==2.13.0 (requirements.txt) is built for CUDA 13.0 and brings its own
# CUDA libraries; the base image's CUDA 13 toolkit matches it for anything compiled here (DeepSpeed ops).
# Nodes need an NVIDIA driver >= 580. cluster/README.md ("Images") says how to look up both build arguments.
#
# EKS GPU nodes provide the EFA kernel driver; the user-space part (libfabric and aws-ofi-nccl, the NCCL
# plugin for EFA) comes from the EFA installer, without kernel modules. The installer is verified against
# its SHA-256 before it runs; the build stops without one and on a mismatch (another EFA_INSTALLER_VERSION
# needs its own EFA_INSTALLER_SHA256 build argument).
ARG RAY_BASE_DIGEST=""
FROM rayproject/ray:2.60.0-py311-cu130${RAY_BASE_DIGEST}

ARG EFA_INSTALLER_VERSION=1.38.0
# SHA-256 of aws-efa-installer-1.38.0.tar.gz as AWS publishes it in the EFA user guide,
# https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/efa-verify.html (table "checksums for recent versions
# of EFA"), and as AWS ParallelCluster pins it: https://github.com/aws/aws-parallelcluster-cookbook/pull/2892
ARG EFA_INSTALLER_SHA256=4f436954f35ad53754b4d005fd8d0be63de3b4184de41a695b504bdce0fecb22
USER root
RUN test -n "${EFA_INSTALLER_SHA256}" || { echo "pass --build-arg EFA_INSTALLER_SHA256=..." >&2; exit 1; } \
    && cd /tmp \
    && curl -fsSLO https://efa-installer.amazonaws.com/aws-efa-installer-${EFA_INSTALLER_VERSION}.tar.gz \
    && echo "${EFA_INSTALLER_SHA256}  aws-efa-installer-${EFA_INSTALLER_VERSION}.tar.gz" | sha256sum --check --strict \
    && tar -xf aws-efa-installer-${EFA_INSTALLER_VERSION}.tar.gz && cd aws-efa-installer \
    && ./efa_installer.sh -y --skip-kmod --skip-limit-conf --no-verify \
    && cd / && rm -rf /tmp/aws-efa-installer* /var/lib/apt/lists/*
ENV LD_LIBRARY_PATH=/opt/amazon/efa/lib:/opt/amazon/ofi-nccl/lib:${LD_LIBRARY_PATH}
USER ray

WORKDIR /home/ray/vlsa
COPY --chown=ray:users requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt \
    && python -c 'import sys, torch; assert sys.version_info >= (3, 11); assert torch.version.cuda.startswith("13."), torch.version.cuda'
# .dockerignore keeps local state (.venv, runs/, mlruns/, .env, caches, .git) out of the image.
COPY --chown=ray:users . .
RUN pip install --no-cache-dir --no-deps -e .
