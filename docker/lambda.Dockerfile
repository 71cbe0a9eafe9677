# Container-image alternative to the zip `make deploy-lambda` ships (for when the package
# outgrows Lambda's 250 MB unzipped limit). Same pins, same handler, same model layout:
#   python -m coughlab.deploy --check-only                 # the release gate, on build/lambda
#   docker build -f docker/lambda.Dockerfile -t coughlab-lambda .
#   docker tag/push to ECR, then
#   python -m coughlab.deploy --image-uri <account>.dkr.ecr.<region>.amazonaws.com/coughlab:<tag>
# docker/lambda.Dockerfile.dockerignore keeps the build context to the four files used.
FROM public.ecr.aws/lambda/python:3.12

COPY lambda/requirements.txt /tmp/requirements.txt
RUN pip install --no-cache-dir --no-compile --require-hashes --only-binary=:all: \
        -r /tmp/requirements.txt --target "${LAMBDA_TASK_ROOT}" \
    && rm /tmp/requirements.txt

COPY lambda/handler.py ${LAMBDA_TASK_ROOT}/
COPY build/lambda/model.onnx build/lambda/model.json ${LAMBDA_TASK_ROOT}/model/

CMD ["handler.handler"]
