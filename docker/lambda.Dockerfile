# Container-image alternative to the zip `make deploy-lambda` ships (for when the package
# outgrows Lambda's 250 MB unzipped limit). Same pins, same handler, same model layout:
#   python -m coughlab.aws.deploy --check-only                 # the release gate, on build/lambda
#   docker buildx build --platform linux/amd64 --provenance=false --load \
#       -f docker/lambda.Dockerfile -t coughlab-lambda .
# and to push it to ECR (Docker media types, one manifest; docs/sagemaker.md: Container images):
#   docker buildx build --platform linux/amd64 --provenance=false \
#       --output type=image,push=true,oci-mediatypes=false \
#       -f docker/lambda.Dockerfile -t <account>.dkr.ecr.<region>.amazonaws.com/coughlab:<tag> .
#   python -m coughlab.aws.deploy --image-uri <account>.dkr.ecr.<region>.amazonaws.com/coughlab:<tag>
# --platform linux/amd64: the function is x86_64 whatever machine builds it. --provenance=false:
# current BuildKit otherwise pushes an OCI image index with an attestation manifest, which
# Lambda rejects ("image manifest, config or layer media type ... is not supported").
# docker/lambda.Dockerfile.dockerignore keeps the build context to the four files used.
#
# Base image: pin it by digest for a reproducible build, e.g.
#   --build-arg BASE_IMAGE=public.ecr.aws/lambda/python:3.12@$(docker buildx imagetools inspect \
#       public.ecr.aws/lambda/python:3.12 --format '{{json .Manifest.Digest}}' | jq -r .)
# No digest is committed: the machines this repository is developed on cannot pull images, and
# a digest copied from elsewhere could not be checked here (docs/sagemaker.md: Container images).
ARG BASE_IMAGE=public.ecr.aws/lambda/python:3.12
FROM ${BASE_IMAGE}

COPY lambda/requirements.txt /tmp/requirements.txt
RUN pip install --no-cache-dir --no-compile --require-hashes --only-binary=:all: \
        -r /tmp/requirements.txt --target "${LAMBDA_TASK_ROOT}" \
    && rm /tmp/requirements.txt

# Lambda runs the image as a non-root user: whatever modes the files have here (export-lambda's
# outputs were once 0600), the image gets world-readable ones (BuildKit's COPY --chmod).
# model/ is made first, 0755: since BuildKit 0.21 (Docker 28.1) COPY --chmod=0644 gives the
# folders it creates 0644 too, which that user cannot enter (moby/buildkit#5943). A symbolic
# --chmod=u=rwX,go=rX would keep them 0755, but builders older than Dockerfile syntax 1.14
# refuse it. tests/test_image_layout.py replays these lines as BuildKit does.
RUN mkdir -m 0755 "${LAMBDA_TASK_ROOT}/model"
COPY --chmod=0644 lambda/handler.py lambda/page.html ${LAMBDA_TASK_ROOT}/
COPY --chmod=0644 build/lambda/model.onnx build/lambda/model.json build/lambda/model_card.md \
    ${LAMBDA_TASK_ROOT}/model/
# Lambda runs the image read-only: a module without its bytecode here is compiled again at every
# cold start (numpy & co: about 0.2 s). Unchecked-hash .pyc files hold whatever the files' dates;
# the zip carries the same (coughlab.aws.deploy.package.compile_bytecode).
RUN python -m compileall -q --invalidation-mode unchecked-hash "${LAMBDA_TASK_ROOT}"

CMD ["handler.handler"]
