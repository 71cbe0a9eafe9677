"""pytest plugin: record every AWS operation the project's code makes, for the IAM policy test.

Every botocore client created while the tests run (boto3.client, boto3 sessions, moto_server
or Stubber alike) gets a `provide-client-params` hook, which botocore fires for each API call
before anything else, also when a Stubber answers it or the call then fails. Each call is
attributed to the code that made it: the innermost stack frame from `src/coughlab` or from
the Lambda handler decides (deploy -> the Lambda deployer, sagemaker/train -> the caller of a
SageMaker job, container -> the SageMaker execution role, lambda/handler.py -> the Lambda
execution role); a call from a thread (s3transfer's workers) falls back to the code that
created the client. Calls the tests make themselves (creating buckets, reading results) have
no such frame and are not recorded. Code in another coughlab module is recorded as
`unmapped:<module>`, so the IAM test fails until someone says whose policy covers it.

Each call maps to the IAM actions it needs (coughlab.aws.errors.iam_action, plus the actions a
request implies, e.g. iam:PassRole for a role it names); a CreateTrainingJob request also
records what SageMaker itself does with the execution role for it.

The recording is kept per session (`recorded(config)`) and, with COUGHLAB_AWS_CALLS_OUT set,
written there as JSON at the end, for tests/test_iam.py.
"""
from __future__ import annotations

import json
import os
import sys
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

import botocore.session
import pytest

import coughlab
from coughlab.aws.errors import iam_action

PACKAGE = Path(coughlab.__file__).resolve().parent
OUT_ENV = "COUGHLAB_AWS_CALLS_OUT"
# Which policy (docs/iam.md) covers calls made by which module (or package).
ROLE_OF_MODULE = {
    "coughlab.aws.deploy": "deployer",
    "coughlab.aws.sagemaker": "caller",
    "coughlab.stages.train": "caller",
    "coughlab.aws.container": "sagemaker-execution",
}
LAMBDA_HANDLER_ROLE = "lambda-execution"
# Lambda pulls an image with the deployer's credentials and grants itself access to the repo.
IMAGE_ACTIONS = ("ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:GetRepositoryPolicy",
                 "ecr:SetRepositoryPolicy")
# What SageMaker does with the execution role for a training job, by the part of the request
# that needs it (SageMaker Developer Guide, "CreateTrainingJob API: Execution Role Permissions",
# https://docs.aws.amazon.com/sagemaker/latest/dg/sagemaker-roles.html).
TRAINING_ROLE_ACTIONS = {
    "always": ("logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents",
               "logs:DescribeLogStreams", "cloudwatch:PutMetricData"),
    "InputDataConfig": ("s3:ListBucket", "s3:GetObject"),
    "OutputDataConfig": ("s3:PutObject",),
    # Checkpoints sync both ways and SageMaker mirrors deletions.
    "CheckpointConfig": ("s3:ListBucket", "s3:GetObject", "s3:PutObject", "s3:DeleteObject"),
    "ecr-image": ("ecr:GetAuthorizationToken", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer",
                  "ecr:BatchCheckLayerAvailability"),
}


@dataclass(frozen=True)
class Call:
    role: str
    service: str
    operation: str
    actions: tuple[str, ...]
    test: str


def implied_actions(service: str, operation: str, params: dict) -> list[str]:
    """IAM actions a request needs besides its own: roles it passes, tags, code it points at."""
    code_operations = ("CreateFunction", "UpdateFunctionCode")
    code = params.get("Code", params) if operation in code_operations else {}
    actions = []
    if params.get("Role") or params.get("RoleArn"):
        actions.append("iam:PassRole")
    if params.get("Tags"):
        actions.append("sagemaker:AddTags" if service == "sagemaker" else f"{service}:TagResource")
    if code.get("S3Bucket"):  # Lambda fetches the zip with the caller's permissions
        actions.append("s3:GetObject")
    if code.get("ImageUri"):
        actions.extend(IMAGE_ACTIONS)
    return actions


def training_role_actions(params: dict) -> list[str]:
    """What the execution role must allow for SageMaker to run this CreateTrainingJob request."""
    parts = ["always", *(key for key in ("InputDataConfig", "OutputDataConfig", "CheckpointConfig")
                         if params.get(key))]
    if ".dkr.ecr." in params.get("AlgorithmSpecification", {}).get("TrainingImage", ""):
        parts.append("ecr-image")
    return [action for part in parts for action in TRAINING_ROLE_ACTIONS[part]]


def role_of_module(module: str) -> str:
    """The policy covering a module's calls: its own entry, else its package's."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        role = ROLE_OF_MODULE.get(".".join(parts[:end]))
        if role:
            return role
    return f"unmapped:{module}"


TESTS = Path(__file__).resolve().parent
TEST_CODE = "tests"  # a call the test code makes itself (setup, checks, a stand-in for AWS)


def code_role(frame) -> str | None:
    """Whose call this is, from the innermost project or test frame on the stack.

    A project frame names the policy that must cover it; a test frame (a test setting up moto,
    or a fake AWS answer called from inside a project call) makes it the tests' own.
    """
    while frame is not None:
        filename = Path(frame.f_code.co_filename)
        if filename.name == "handler.py" and "recording_page" in frame.f_globals:
            return LAMBDA_HANDLER_ROLE
        if PACKAGE in filename.parents:
            module = frame.f_globals.get("__name__", "")
            if module != "coughlab.aws.errors":
                return role_of_module(module)
        if TESTS in filename.parents and filename != Path(__file__).resolve():
            return TEST_CODE
        frame = frame.f_back
    return None


class Recorder:
    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.current_test = ""
        self.passed: set[str] = set()  # passed or skipped
        self.failed: set[str] = set()
        self.collected: list[str] = []
        self._lock = threading.Lock()
        self._original = botocore.session.Session.create_client

    def install(self) -> None:
        recorder, original = self, self._original

        def create_client(session, *args, **kwargs):
            creator = code_role(sys._getframe(1))
            client = original(session, *args, **kwargs)
            client.meta.events.register(
                "provide-client-params",
                lambda params, model, **_: recorder.record(creator, model, params))
            return client

        botocore.session.Session.create_client = create_client

    def uninstall(self) -> None:
        botocore.session.Session.create_client = self._original

    def record(self, creator: str | None, model, params: dict) -> None:
        role = code_role(sys._getframe(1))
        if role is None and threading.current_thread() is not threading.main_thread():
            role = creator  # a worker thread (s3transfer): the code that made the client
        if role in (None, TEST_CODE):
            return
        service, operation = model.service_model.service_name, model.name
        actions = (iam_action(service, operation), *implied_actions(service, operation, params))
        calls = [Call(role, service, operation, actions, self.current_test)]
        if (service, operation) == ("sagemaker", "CreateTrainingJob"):
            calls.append(Call("sagemaker-execution", service, operation,
                              tuple(training_role_actions(params)), self.current_test))
        with self._lock:
            self.calls.extend(calls)


def recorder(config: pytest.Config) -> Recorder:
    return config.stash[RECORDER]


RECORDER = pytest.StashKey[Recorder]()


def pytest_configure(config: pytest.Config) -> None:
    global _active
    _active = config.stash[RECORDER] = Recorder()
    _active.install()
    config.addinivalue_line("markers", "after_aws_tests: run after every other test (it reads "
                            "the AWS calls they recorded)")


def pytest_unconfigure(config: pytest.Config) -> None:
    recorder(config).uninstall()


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    last = [item for item in items if item.get_closest_marker("after_aws_tests")]
    items[:] = [item for item in items if item not in last] + last


def pytest_collection_finish(session: pytest.Session) -> None:
    recorder(session.config).collected = [item.nodeid for item in session.items]


def pytest_runtest_setup(item: pytest.Item) -> None:
    recorder(item.config).current_test = item.nodeid


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.failed:
        _active.failed.add(report.nodeid)
    elif report.skipped or (report.when == "call" and report.passed):
        _active.passed.add(report.nodeid)  # ran to the end (a skipped test records nothing)


_active: Recorder | None = None  # the session's recorder (logreport hooks get no config)


def pytest_sessionfinish(session: pytest.Session) -> None:
    out = os.environ.get(OUT_ENV)
    if out:
        rec = recorder(session.config)
        Path(out).write_text(json.dumps({
            "calls": [asdict(call) for call in rec.calls], "collected": rec.collected,
            "passed": sorted(rec.passed), "failed": sorted(rec.failed)}, indent=1))
