"""One clear line for an AWS error: a first run on a new account says what to do, no traceback.

    from coughlab.aws.errors import explain
    try:
        ...boto3 calls...
    except (BotoCoreError, ClientError) as err:
        sys.exit(f"train failed: {explain(err)}")

`explain(error, service=None) -> str` takes any botocore.exceptions.ClientError or
BotoCoreError and returns one line (no newline) that names:
- for a quota error (SageMaker's ResourceLimitExceeded, Lambda's unreserved-concurrency
  minimum, LimitExceeded...): the quota's name as AWS words it and the Service Quotas console
  page where to request an increase;
- for AccessDenied (and S3's bare "403" to a HEAD request): the IAM action that was denied
  (from AWS's message, else from the operation) and that docs/iam.md lists the policies;
- for missing/expired/invalid credentials, an unreachable endpoint, a missing region or
  throttling: what to fix; anything else: the operation, AWS's code and message.
`service` (the boto3 service name, e.g. "s3") helps name the action where AWS's message does
not (S3 says only "Access Denied"); without it the service is looked up from the operation.

`iam_action(service, operation)` is the IAM action an API operation is authorised by (mostly
"<prefix>:<Operation>", but e.g. S3 ListObjectsV2 -> s3:ListBucket, Lambda Invoke ->
lambda:InvokeFunction); the IAM tests use it to check docs/iam.md against the calls the code makes.
"""
from __future__ import annotations

import functools
import re

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    WaiterError,
)

QUOTAS_CONSOLE = "https://console.aws.amazon.com/servicequotas/home/services/{code}/quotas"
# IAM service prefixes that are not the boto3 service name.
IAM_PREFIX = {"service-quotas": "servicequotas"}
# API operations authorised by an IAM action of another name.
IAM_ACTION = {
    ("s3", "ListObjectsV2"): "s3:ListBucket",
    ("s3", "ListObjects"): "s3:ListBucket",
    ("s3", "HeadBucket"): "s3:ListBucket",
    ("s3", "HeadObject"): "s3:GetObject",
    ("s3", "CreateMultipartUpload"): "s3:PutObject",
    ("s3", "UploadPart"): "s3:PutObject",
    ("s3", "CompleteMultipartUpload"): "s3:PutObject",
    ("s3", "DeleteObjects"): "s3:DeleteObject",
    ("s3", "ListMultipartUploads"): "s3:ListBucketMultipartUploads",
    ("s3", "ListParts"): "s3:ListMultipartUploadParts",
    ("s3", "PutBucketLifecycleConfiguration"): "s3:PutLifecycleConfiguration",
    ("lambda", "Invoke"): "lambda:InvokeFunction",
    ("lambda", "InvokeWithResponseStream"): "lambda:InvokeFunction",
}
# Services the project calls, to find an operation's service when the caller did not say.
KNOWN_SERVICES = ("s3", "lambda", "sagemaker", "logs", "service-quotas", "sts", "ecr")
# A refused HEAD request has no body to name the error: botocore's code is the HTTP status.
FORBIDDEN = "403"
DENIED = {FORBIDDEN, "AccessDenied", "AccessDeniedException", "UnauthorizedOperation",
          "UnauthorizedException", "AuthorizationError", "AuthorizationErrorException"}
BAD_CREDENTIALS = {"InvalidClientTokenId", "UnrecognizedClientException", "ExpiredToken",
                   "ExpiredTokenException", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                   "InvalidSignatureException", "RequestExpired"}
THROTTLED = {"Throttling", "ThrottlingException", "TooManyRequestsException",
             "RequestLimitExceeded", "SlowDown", "ProvisionedThroughputExceededException"}
QUOTA_CODES = {"ResourceLimitExceeded", "LimitExceededException", "LimitExceeded",
               "ServiceQuotaExceededException", "CodeStorageExceededException", "TooManyBuckets"}
# Quotas whose error does not name them: (service, code, message contains) -> quota name.
UNNAMED_QUOTAS = {
    ("lambda", "InvalidParameterValueException", "UnreservedConcurrentExecution"):
        "Concurrent executions",
    ("lambda", "CodeStorageExceededException", ""): "Function and layer storage",
    ("s3", "TooManyBuckets", ""): "General purpose buckets",
}


def iam_action(service: str, operation: str) -> str:
    """The IAM action that authorises `operation` (a botocore operation name) of `service`."""
    return IAM_ACTION.get((service, operation), f"{IAM_PREFIX.get(service, service)}:{operation}")


@functools.cache
def _services_of(operation: str) -> tuple[str, ...]:
    import botocore.session

    session = botocore.session.get_session()
    return tuple(service for service in KNOWN_SERVICES
                 if operation in session.get_service_model(service).operation_names)


def _service_for(operation: str, service: str | None) -> str | None:
    if service:
        return service
    candidates = _services_of(operation)
    return candidates[0] if len(candidates) == 1 else None


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def quota_name(service: str | None, code: str, message: str) -> str | None:
    """The quota an error hit, as AWS names it (SageMaker quotes it: service limit '...')."""
    quoted = re.search(r"service limit '([^']+)'", message)
    if quoted:
        return quoted.group(1)
    for (svc, err_code, marker), name in UNNAMED_QUOTAS.items():
        if service == svc and code == err_code and marker in message:
            return name
    return None


def _explain_client_error(error: ClientError, service: str | None) -> str:
    info = error.response.get("Error", {})
    code, message = info.get("Code", "Unknown"), _one_line(info.get("Message", ""))
    operation = error.operation_name
    service = _service_for(operation, service)
    name = quota_name(service, code, message)
    if name or code in QUOTA_CODES:
        where = QUOTAS_CONSOLE.format(code=service) if service else QUOTAS_CONSOLE.split("/home")[0]
        quota = f"the quota {name!r}" if name else f"a {service or 'service'} quota"
        return (f"{operation} hit {quota} ({code}: {message}); request an increase in the "
                f"Service Quotas console: {where}")
    if code in DENIED:
        named = re.search(r"perform: ([\w-]+:\w+)", message)
        action = named.group(1) if named else (iam_action(service, operation) if service
                                               else f"the action for {operation}")
        resource = re.search(r"on resource: (\S+)", message)
        on = f" on {resource.group(1)}" if resource else ""
        line = (f"access denied: {operation} needs {action}{on}, which the policy of the "
                f"identity you run as does not allow; add it (docs/iam.md lists each policy)")
        if code == FORBIDDEN and operation == "HeadObject":
            line += ("; or the object is missing and s3:ListBucket on the bucket is not allowed "
                     "(S3 then answers 403, not 404)")
        return line
    if code in BAD_CREDENTIALS:
        return (f"AWS rejected the credentials ({code} on {operation}: {message}); refresh them "
                "(`aws sso login`, new keys) or check AWS_PROFILE")
    if code in THROTTLED:
        return f"AWS throttled {operation} ({code}: {message}); wait a minute and re-run"
    return f"AWS {operation} failed: {code}: {message}"


def explain(error: ClientError | BotoCoreError, service: str | None = None) -> str:
    """One line saying what went wrong with an AWS call and what to do about it."""
    if isinstance(error, ClientError):
        return _explain_client_error(error, service)
    if isinstance(error, NoCredentialsError):
        return ("no AWS credentials found: set AWS_PROFILE (or AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY), or run `aws configure` / `aws sso login`")
    if isinstance(error, NoRegionError):
        return "no AWS region set: export AWS_REGION (e.g. eu-west-1) or pass --region"
    if isinstance(error, EndpointConnectionError):
        return (f"could not reach {error.kwargs.get('endpoint_url')}: check the network and "
                "that the region offers this service")
    if isinstance(error, WaiterError) and "Error" in (error.last_response or {}):
        reason = ClientError(error.last_response, error.kwargs.get("name"))
        return (f"while waiting ({error.kwargs.get('name')}): "
                f"{_explain_client_error(reason, service)}")
    return _one_line(error)
