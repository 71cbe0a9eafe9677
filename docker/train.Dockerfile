# Training image for train.backend=sagemaker (docs/sagemaker.md).
# SageMaker starts it as `docker run <image> train`; the entrypoint is coughlab.aws.container,
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

# torch 2.14.1, torchvision 0.29.1 and torchaudio 2.11.0, all three built for CUDA 12.6, from
# PyTorch's own index, not PyPI's builds for CUDA 13.0. All three from the one index: each
# wheel's extensions link one CUDA runtime (libcudart.so.12 here), and torchaudio checks its
# CUDA against torch's at import, so one PyPI (CUDA 13) package beside the others breaks
# `import torchaudio` and with it every job (tests/test_container.py reads this line and
# pyproject.toml's pins; the build checks the installed ELF files below).
# - CUDA 13 needs an NVIDIA driver >= 580 on the host; a CUDA 12.x build runs on any driver
#   >= 525.60.13 (CUDA minor-version compatibility). The default instance type is chosen for a
#   documented R535+ driver (docs/sagemaker.md: Which GPU instance).
# - 12.6 is the only CUDA that torch 2.14 ships for every SageMaker GPU family: its builds cover
#   sm_50-sm_90 (V100 ml.p3, T4 ml.g4dn, A10G ml.g5, L4 ml.g6 via sm_86, A100 ml.p4d, H100
#   ml.p5); CUDA 13.x builds drop Volta (ml.p3) altogether.
# On a host whose driver is too old the container logs the driver and fails with that reason in
# output/failure instead of training on the CPU (coughlab.aws.container.check_device).
ARG TORCH_VARIANT=cu126
ARG TORCH_INDEX=https://download.pytorch.org/whl/${TORCH_VARIANT}
RUN pip install --index-url "${TORCH_INDEX}" \
        torch==2.14.1+${TORCH_VARIANT} torchvision==0.29.1+${TORCH_VARIANT} \
        torchaudio==2.11.0+${TORCH_VARIANT}

# The other dependencies, from pyproject.toml alone: this layer is rebuilt when the pins
# change, not on every source edit. The torch family's pins (==2.14.1, ==0.29.1, ==2.11.0)
# are already satisfied by the +cu126 builds, so pip keeps them.
COPY pyproject.toml README.md ./
RUN mkdir -p src/coughlab && touch src/coughlab/__init__.py \
    && pip install . && pip uninstall -y coughlab && rm -rf src \
    && python -c "import torch; assert 'cu' + torch.version.cuda.replace('.', '') \
        == '${TORCH_VARIANT}', torch.__version__"

# `selfcheck` fails the build unless every torch-family extension links torch's CUDA runtime
# and a one-epoch training run on synthetic features goes through the whole training path
# (coughlab.aws.container -> coughlab.training -> torchaudio, torchvision, fastai, dvclive) on the CPU.
COPY src ./src
RUN pip install --no-deps . && python -m coughlab.aws.container selfcheck

ENTRYPOINT ["python", "-m", "coughlab.aws.container"]
