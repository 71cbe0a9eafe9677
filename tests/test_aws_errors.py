"""coughlab.aws.errors: every botocore error becomes one line that says what to do."""
import pytest
from botocore.exceptions import (
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    WaiterError,
)

from coughlab.aws.errors import explain, iam_action

SPOT_QUOTA = ("The account-level service limit 'ml.g4dn.xlarge for spot training job usage' is 0 "
              "Instances, with current utilization of 0 Instances and a request delta of 1 "
              "Instances. Please use AWS Service Quotas to request an increase for this quota. If "
              "AWS Service Quotas is not available, contact AWS support to request an increase "
              "for this quota.")
LAMBDA_DENIED = ("User: arn:aws:iam::123456789012:user/dev is not authorized to perform: "
                 "lambda:GetPolicy on resource: arn:aws:lambda:eu-west-1:123456789012:function:"
                 "coughlab:live because no identity-based policy allows the "
                 "lambda:GetPolicy action")


def client_error(code: str, message: str, operation: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message}}, operation)


def test_a_sagemaker_quota_error_names_the_quota_and_where_to_request_it():
    line = explain(client_error("ResourceLimitExceeded", SPOT_QUOTA, "CreateTrainingJob"))
    assert "'ml.g4dn.xlarge for spot training job usage'" in line
    assert "https://console.aws.amazon.com/servicequotas/home/services/sagemaker/quotas" in line
    assert "\n" not in line


def test_the_lambda_unreserved_minimum_is_named_as_the_concurrency_quota():
    message = ("Specified ReservedConcurrentExecutions for function decreases account's "
               "UnreservedConcurrentExecution below its minimum value of [100].")
    line = explain(client_error("InvalidParameterValueException", message,
                                "PutFunctionConcurrency"))
    assert "'Concurrent executions'" in line
    assert "services/lambda/quotas" in line


@pytest.mark.parametrize("error,service,action", [
    (client_error("AccessDeniedException", LAMBDA_DENIED, "GetPolicy"), None, "lambda:GetPolicy"),
    (client_error("AccessDenied", "Access Denied", "PutObject"), "s3", "s3:PutObject"),
    (client_error("AccessDenied", "Access Denied", "ListObjectsV2"), None, "s3:ListBucket"),
    (client_error("AccessDenied", "Access Denied", "HeadObject"), None, "s3:GetObject"),
])
def test_access_denied_names_the_iam_action(error, service, action):
    line = explain(error, service)
    assert f"needs {action}" in line and "docs/iam.md" in line
    assert "\n" not in line


def test_other_errors_are_one_line_with_what_to_do():
    assert "aws configure" in explain(NoCredentialsError())
    assert "http://x:1" in explain(EndpointConnectionError(endpoint_url="http://x:1"))
    waited = WaiterError(name="FunctionActiveV2", reason="denied", last_response={
        "Error": {"Code": "AccessDeniedException", "Message": LAMBDA_DENIED}})
    assert "needs lambda:GetPolicy" in explain(waited)
    other = explain(client_error("ValidationException", "bad\nthing", "CreateTrainingJob"))
    assert other == "AWS CreateTrainingJob failed: ValidationException: bad thing"


def test_iam_actions_that_differ_from_the_operation_name():
    assert iam_action("s3", "ListObjectsV2") == "s3:ListBucket"
    assert iam_action("lambda", "Invoke") == "lambda:InvokeFunction"
    assert iam_action("lambda", "GetPolicy") == "lambda:GetPolicy"
    assert iam_action("service-quotas", "GetServiceQuota") == "servicequotas:GetServiceQuota"


def forbidden_head(operation: str) -> ClientError:
    """What botocore raises for a refused HEAD request: S3 sends no body, so the code is "403"."""
    return ClientError({"Error": {"Code": "403", "Message": "Forbidden"},
                        "ResponseMetadata": {"HTTPStatusCode": 403}}, operation)


@pytest.mark.parametrize("operation,service,action", [
    ("HeadObject", "s3", "s3:GetObject"),
    ("HeadObject", None, "s3:GetObject"),
    ("HeadBucket", "s3", "s3:ListBucket"),
])
def test_a_bare_403_names_the_action_it_needs(operation, service, action):
    line = explain(forbidden_head(operation), service)
    assert line.startswith(f"access denied: {operation} needs {action}"), line
    assert "docs/iam.md" in line and "\n" not in line


def test_a_403_on_head_object_also_names_the_list_permission_a_missing_object_needs():
    """Without s3:ListBucket, S3 answers a HEAD of a missing key 403 instead of 404."""
    line = explain(forbidden_head("HeadObject"), "s3")
    assert "missing" in line and "s3:ListBucket" in line
