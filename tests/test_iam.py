"""IAM from the code: docs/iam.md's policies allow exactly what the code's AWS calls need.

The calls are those tests/aws_calls.py records while the tests of the deploy, the SageMaker
launch, the training container and the Lambda handler run (moto_server and Stubber alike),
each mapped to the IAM actions it needs. When this session ran all of those tests (e.g.
`make test`), their recording is used (these tests run last); otherwise (e.g. this file alone)
they are run once in a child pytest that writes its recording to a file.
"""
import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

import aws_calls
from iam_docs import POLICIES, allowed_actions, allows, iam_md_policies, policy_for

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("tests/test_deploy.py", "tests/test_sagemaker.py", "tests/test_container.py",
           "tests/test_handler.py")
# The policies whose roles the recorder attributes calls to (the others, the setup identity's,
# the DVC remote's and CI's, are checked by tests/test_iam_enforced.py alone).
RECORDED_ROLES = ("caller", "sagemaker-execution", "deployer", "lambda-execution")
# Actions a policy needs for what runs outside Python: policy -> {action: what uses it}.
NOT_CALLED_FROM_PYTHON = {
    "caller": {action: "`docker push` of the training image (docs/sagemaker.md)" for action in (
        "ecr:GetAuthorizationToken", "ecr:BatchCheckLayerAvailability", "ecr:InitiateLayerUpload",
        "ecr:UploadLayerPart", "ecr:CompleteLayerUpload", "ecr:PutImage", "ecr:BatchGetImage")},
}

pytestmark = pytest.mark.after_aws_tests


def in_session(config: pytest.Config) -> list[dict] | None:
    """This session's recording, if it ran every test of SOURCES (None if it did not)."""
    rec = aws_calls.recorder(config)
    wanted = {node for node in rec.collected if node.split("::")[0] in SOURCES}
    ran_all = {source for source in SOURCES if any(n.startswith(f"{source}::") for n in wanted)}
    if ran_all != set(SOURCES):
        return None
    failed = sorted(wanted & rec.failed)
    assert not failed, f"the tests whose AWS calls are checked failed: {failed}"
    assert wanted <= rec.passed, f"did not run: {sorted(wanted - rec.passed)}"
    return [vars(call) for call in rec.calls]


def in_child_pytest(tmp_path: Path) -> list[dict]:
    out = tmp_path / "aws-calls.json"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-m", "not slow",
         *SOURCES], cwd=ROOT, env=os.environ | {aws_calls.OUT_ENV: str(out)},
        capture_output=True, text=True)
    assert result.returncode == 0, f"the recorded tests failed:\n{result.stdout[-3000:]}"
    return json.loads(out.read_text())["calls"]


@pytest.fixture(scope="module")
def recorded(request, tmp_path_factory) -> dict[str, dict[str, list[str]]]:
    """role -> IAM action -> where it was needed (operation, test), from the recording."""
    calls = in_session(request.config) or in_child_pytest(tmp_path_factory.mktemp("aws-calls"))
    needs: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for call in calls:
        for action in call["actions"]:
            needs[call["role"]][action].append(f"{call['service']} {call['operation']} in "
                                               f"{call['test']}")
    return needs


def test_every_call_the_code_makes_belongs_to_a_documented_policy(recorded):
    unmapped = sorted(set(recorded) - set(RECORDED_ROLES))
    assert not unmapped, ("calls from code no policy covers (add the module to tests/aws_calls.py "
                          f"ROLE_OF_MODULE and its actions to docs/iam.md): {unmapped}")
    assert set(RECORDED_ROLES) <= set(recorded)


@pytest.mark.parametrize("role", RECORDED_ROLES)
def test_policy_allows_every_action_the_code_needs(recorded, role):
    allowed = policy_for(role)
    missing = {action: where[0] for action, where in recorded[role].items()
               if not allows(allowed, action)}
    assert not missing, (f"docs/iam.md **{POLICIES[role]}** does not allow:\n" + "\n".join(
        f"  {action} (needed by {where})" for action, where in sorted(missing.items())))


@pytest.mark.parametrize("role", RECORDED_ROLES)
def test_policy_allows_nothing_the_code_does_not_need(recorded, role):
    needed = set(recorded[role]) | set(NOT_CALLED_FROM_PYTHON.get(role, {}))
    unused = sorted(pattern for pattern in policy_for(role)
                    if not any(allows({pattern}, action) for action in needed))
    assert not unused, (f"docs/iam.md **{POLICIES[role]}** allows what no recorded call needs: "
                        f"{unused}")


def test_iam_md_parsing_sees_each_policy_and_no_trust_policy():
    policies = iam_md_policies((ROOT / "docs" / "iam.md").read_text())
    for role in POLICIES:
        assert policy_for(role), role
    assert not any(allows(allowed_actions(statements), "sts:AssumeRole")
                   for statements in policies.values())


def test_the_recorder_attributes_calls_to_the_code_that_makes_them(request, monkeypatch):
    import boto3
    from botocore.stub import Stubber

    from coughlab.aws.deploy import release

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    rec = aws_calls.recorder(request.config)
    before = len(rec.calls)
    client = boto3.client("lambda", region_name="us-east-1")
    with Stubber(client) as stubber:
        alias = {"Name": "live", "FunctionVersion": "3"}
        stubber.add_response("get_alias", alias, {"FunctionName": "f", "Name": "live"})
        stubber.add_response("get_alias", alias, {"FunctionName": "f", "Name": "live"})
        client.get_alias(FunctionName="f", Name="live")  # the test's own call: not recorded
        release.current_alias(client, "f", "live")  # the deploy's: needs lambda:GetAlias
    assert [(c.role, c.operation, c.actions) for c in rec.calls[before:]] == [
        ("deployer", "GetAlias", ("lambda:GetAlias",))]
