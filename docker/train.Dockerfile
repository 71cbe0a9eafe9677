# Training image for train.backend=sagemaker (README: "Training on SageMaker managed spot").
# SageMaker starts it as `docker run <image> train`; the entrypoint is coughlab.container,
# which follows the /opt/ml contract (hyperparameters, the "features" channel, checkpoints,
# model/, output/failure). Build from the repository root:
#   docker build --platform linux/amd64 -f docker/train.Dockerfile -t coughlab-train .
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# Deterministic cuBLAS, so a spot job resumed on a GPU ends with the same weights.
ENV CUBLAS_WORKSPACE_CONFIG=:4096:8

WORKDIR /opt/coughlab

# Dependencies first, from pyproject.toml alone (torch with its CUDA libraries is several GB):
# this layer is rebuilt when the pins change, not on every source edit.
COPY pyproject.toml README.md ./
RUN mkdir -p src/coughlab && touch src/coughlab/__init__.py \
    && pip install . && pip uninstall -y coughlab && rm -rf src

COPY src ./src
RUN pip install --no-deps . && python -m coughlab.container --help > /dev/null

ENTRYPOINT ["python", "-m", "coughlab.container"]
