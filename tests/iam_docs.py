"""docs/iam.md's policies as data: the permission policy under each bold heading.

The IAM tests check the code against these (tests/test_iam.py, tests/test_iam_enforced.py);
the documented JSON is the single source, with ACCOUNT, REGION, BUCKET... as placeholders.
"""
from __future__ import annotations

import fnmatch
import json
import re
from pathlib import Path

IAM_MD = Path(__file__).resolve().parents[1] / "docs" / "iam.md"
# Who runs what -> the start of the bold heading its policy sits under in docs/iam.md.
POLICIES = {
    "setup": "Once per account and region",
    "caller": "You (or CI), to run",
    "sagemaker-execution": "The SageMaker execution role",
    "deployer": "The Lambda deployer",
    "lambda-execution": "The Lambda execution role",
    "dvc-remote": "You, to push to and pull from the DVC remote",
    "ci": "CI",
}


def iam_md_policies(text: str) -> dict[str, list[dict]]:
    """docs/iam.md's permission policies (```json blocks), under the bold heading above them.

    Trust policies (statements with a Principal) say who may assume a role, not what it may
    do, and are left out.
    """
    policies = {}
    for chunk in text.split("\n**")[1:]:
        statements = [statement for block in re.findall(r"```json\n(.*?)```", chunk, re.S)
                      for statement in json.loads(block)["Statement"]
                      if "Principal" not in statement]
        policies[chunk.split("**", 1)[0]] = statements
    return policies


def trust_policies(text: str) -> dict[str, list[dict]]:
    """The trust policies (statements with a Principal), under the same headings."""
    trusts = {}
    for chunk in text.split("\n**")[1:]:
        trusts[chunk.split("**", 1)[0]] = [
            statement for block in re.findall(r"```json\n(.*?)```", chunk, re.S)
            for statement in json.loads(block)["Statement"] if "Principal" in statement]
    return trusts


def statements_for(role: str, text: str | None = None) -> list[dict]:
    """The permission statements of `role`'s policy (see POLICIES), placeholders as written."""
    policies = iam_md_policies(IAM_MD.read_text() if text is None else text)
    matches = [statements for heading, statements in policies.items()
               if heading.startswith(POLICIES[role])]
    assert len(matches) == 1, f"docs/iam.md has no single heading **{POLICIES[role]}...**"
    return matches[0]


def listed(value) -> list:
    return [value] if isinstance(value, str) else list(value)


def allowed_actions(statements: list[dict]) -> set[str]:
    return {action for statement in statements if statement["Effect"] == "Allow"
            for action in listed(statement["Action"])}


def allows(patterns: set[str], action: str) -> bool:
    """IAM action matching: case-insensitive, with * and ? wildcards."""
    return any(fnmatch.fnmatchcase(action.lower(), pattern.lower()) for pattern in patterns)


def policy_for(role: str) -> set[str]:
    return allowed_actions(statements_for(role))
