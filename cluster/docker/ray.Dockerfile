# The image of every Ray pod (cluster/k8s/*.yaml): Ray 2.60 with CUDA, the pinned requirements, the project.
#
#   docker build -f cluster/docker/ray.Dockerfile -t your-registry.example.com/vlsa-ray:0.1.0 .
#
# EKS GPU nodes provide the EFA kernel driver; the user-space part (libfabric and aws-ofi-nccl, the NCCL
# plugin for EFA) comes from the EFA installer, without kernel modules.
FROM rayproject/ray:2.60.0-py311-gpu

ARG EFA_INSTALLER_VERSION=1.38.0
USER root
RUN cd /tmp \
    && curl -fsSLO https://efa-installer.amazonaws.com/aws-efa-installer-${EFA_INSTALLER_VERSION}.tar.gz \
    && tar -xf aws-efa-installer-${EFA_INSTALLER_VERSION}.tar.gz && cd aws-efa-installer \
    && ./efa_installer.sh -y --skip-kmod --skip-limit-conf --no-verify \
    && cd / && rm -rf /tmp/aws-efa-installer* /var/lib/apt/lists/*
ENV LD_LIBRARY_PATH=/opt/amazon/efa/lib:/opt/amazon/ofi-nccl/lib:${LD_LIBRARY_PATH}
USER ray

WORKDIR /home/ray/vlsa
COPY --chown=ray:users requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt
COPY --chown=ray:users . .
RUN pip install --no-cache-dir --no-deps -e .
