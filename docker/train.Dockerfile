# Training image for train.backend=sagemaker (docs/sagemaker.md).
# SageMaker starts it as `docker run <image> train`; the entrypoint is coughlab.container,
# which follows the /opt/ml contract (hyperparameters, the "features" channel, checkpoints,
# model/, output/failure). Build from the repository root, as a single-platform image with no
# attestation manifests (what SageMaker and Lambda pull; docs/sagemaker.md shows the push):
#   docker buildx build --platform linux/amd64 --provenance=false --load \
#       -f docker/train.Dockerfile -t coughlab-train .
#
# Base image: pin it by digest for a reproducible build, e.g.
#   --build-arg BASE_IMAGE=python:3.11-slim@$(docker buildx imagetools inspect python:3.11-slim \
#       --format '{{json .Manifest.Digest}}' | jq -r .)
# No digest is committed: the machines this repository is developed on cannot pull images, and
# a digest copied from elsewhere could not be checked here (docs/sagemaker.md: Container images).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# Deterministic cuBLAS, so a spot job resumed on a GPU ends with the same weights.
ENV CUBLAS_WORKSPACE_CONFIG=:4096:8

WORKDIR /opt/coughlab

# torch 2.14.1 built for CUDA 12.6, from PyTorch's own index, not PyPI's build for CUDA 13.0:
# - CUDA 13 needs an NVIDIA driver >= 580 on the host; a CUDA 12.x build runs on any driver
#   >= 525.60.13 (CUDA minor-version compatibility). SageMaker does not document its training
#   hosts' drivers; the GPU drivers it documents for its ML instances are R470, R535 (CUDA 12.2)
#   and R550 (CUDA 12.4), so 580 cannot be assumed and 12.x is what those hosts run.
# - 12.6 is the only CUDA that torch 2.14 ships for every SageMaker GPU family: its builds cover
#   sm_50-sm_90 (V100 ml.p3, T4 ml.g4dn, A10G ml.g5, L4 ml.g6 via sm_86, A100 ml.p4d, H100
#   ml.p5); CUDA 13.x builds drop Volta (ml.p3) altogether.
# On an R470 host no CUDA 12 build starts without NVIDIA's forward-compatibility libraries: the
# container then logs the driver and fails with that reason in output/failure instead of
# training on the CPU (coughlab.container.check_device).
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu126
RUN pip install --index-url "${TORCH_INDEX}" torch==2.14.1+cu126 torchvision==0.29.1+cu126

# The other dependencies, from pyproject.toml alone: this layer is rebuilt when the pins
# change, not on every source edit. torch==2.14.1 is already satisfied by the CUDA 12.6 build.
COPY pyproject.toml README.md ./
RUN mkdir -p src/coughlab && touch src/coughlab/__init__.py \
    && pip install . && pip uninstall -y coughlab && rm -rf src \
    && python -c "import torch; assert torch.version.cuda == '12.6', torch.version.cuda"

COPY src ./src
RUN pip install --no-deps . && python -m coughlab.container --help > /dev/null

ENTRYPOINT ["python", "-m", "coughlab.container"]
