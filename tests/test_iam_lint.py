"""Every policy in docs/iam.md linted by parliament (AWS's action, resource and condition key
reference, as parliament ships it), with the placeholders filled in as an account would.

parliament's checks of validity (actions, resource ARNs, condition keys, structure: WRONG) must
find nothing in a permission policy. Its other findings, its community auditors' included, flag
powerful grants; each is answered in COMMUNITY_FINDINGS (why the policy needs it and what bounds
it), and a new one fails until it is. Trust policies get two findings, answered in
TRUST_POLICY_FINDINGS: parliament reads a policy as an identity policy, which must name a
Resource, and knows no OIDC provider.
"""
import json
import warnings

import pytest
from test_iam_enforced import filled

from iam_docs import IAM_MD, iam_md_policies, trust_policies

# parliament's findings that mean a policy is wrong (the rest flag powerful grants).
WRONG = {"MALFORMED", "MALFORMED_JSON", "UNKNOWN_ACTION", "UNKNOWN_PREFIX", "UNKNOWN_PRINCIPAL",
         "UNKNOWN_FEDERATION_SOURCE", "UNKNOWN_OPERATOR", "MISMATCHED_TYPE",
         "UNKNOWN_CONDITION_FOR_ACTION", "RESOURCE_MISMATCH", "INVALID_ARN",
         "RESOURCE_STAR", "MISMATCHED_TYPE_OPERATION_TO_NULL"}
# (finding, detail) parliament reports on a trust policy, and why each is right as it is.
TRUST_POLICY_FINDINGS = {
    ("MALFORMED", "Statement contains neither Resource nor NotResource"):
        "a trust policy has no Resource: IAM refuses one there",
    ("UNKNOWN_FEDERATION_SOURCE", "arn:aws:iam::123456789012:oidc-provider/"
                                  "token.actions.githubusercontent.com"):
        "GitHub's OIDC provider; parliament knows SAML providers and a fixed list of web "
        "identity providers only",
}


# Findings on powerful grants: (policy heading start, finding, actions) -> the answer.
COMMUNITY_FINDINGS = {
    ("Once per account", "PERMISSIONS_MANAGEMENT_ACTIONS", "iam:attachrolepolicy "
     "iam:createopenidconnectprovider iam:createrole iam:putrolepolicy iam:putuserpolicy"):
        "the setup creates the roles and gives the developers their policies; each action is "
        "limited to the named roles, the one managed policy, GitHub's provider and DEVELOPER",
    ("Once per account", "PRIVILEGE_ESCALATION", "iam:putuserpolicy"):
        "an administrator's policy by design: it gives DEVELOPER (only) the documented policies",
    ("Once per account", "RESOURCE_POLICY_PRIVILEGE_ESCALATION", ""):
        "a lifecycle rule can expire objects the setup cannot delete: that is the rule's purpose "
        "(inputs and checkpoints of BUCKET only)",
    ("You (or CI)", "CREDENTIALS_EXPOSURE", "ecr:getauthorizationtoken"):
        "`docker login` to push the training image needs the registry token",
    ("You (or CI)", "PERMISSIONS_MANAGEMENT_ACTIONS", "iam:passrole"):
        "passes only coughlab-sagemaker, only to sagemaker.amazonaws.com",
    ("The SageMaker execution role", "CREDENTIALS_EXPOSURE", "ecr:getauthorizationtoken"):
        "SageMaker pulls the training image with it",
    ("The Lambda deployer", "PERMISSIONS_MANAGEMENT_ACTIONS", "ecr:setrepositorypolicy "
     "iam:passrole lambda:addpermission lambda:removepermission"):
        "the public URL grants (coughlab's alias only), the function role (coughlab-lambda only, "
        "to lambda.amazonaws.com) and Lambda's image pull grant (--image-uri only)",
    ("The Lambda deployer", "PRIVILEGE_ESCALATION", "iam:passrole lambda:createfunction "
     "lambda:invokefunction"):
        "deploying means creating and invoking the function with its role; both are limited to "
        "function coughlab and role coughlab-lambda, which can only write its logs",
    ("The Lambda deployer", "PRIVILEGE_ESCALATION", "lambda:updatefunctioncode"):
        "replacing coughlab's code is what a deploy does; the role it runs with writes logs only",
}


def community_findings(heading: str, statements: list[dict]) -> set[tuple[str, str, str]]:
    """The community auditors' findings on a policy, keyed as in COMMUNITY_FINDINGS."""
    found = set()
    for issue, detail, location in findings(statements, community=True):
        actions = " ".join(sorted(location.get("actions", []))) if isinstance(location, dict) \
            else ""
        start = next((key[0] for key in COMMUNITY_FINDINGS if heading.startswith(key[0])), heading)
        found.add((start, issue, actions))
    return found


def findings(statements: list[dict], community: bool = False) -> set:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # parliament 1.6.4 imports the deprecated pkg_resources
        from parliament import analyze_policy_string

    policy = filled(json.dumps({"Version": "2012-10-17", "Statement": statements}))
    analysed = analyze_policy_string(policy, include_community_auditors=community).findings
    if community:
        return {(f.issue, str(f.detail), _plain(f.location)) for f in analysed}
    return {(finding.issue, str(finding.detail)) for finding in analysed
            if finding.issue in WRONG}


class _plain(dict):
    """A finding's location, hashable."""

    def __hash__(self) -> int:
        return hash(json.dumps(self, sort_keys=True, default=str))


PERMISSIONS = {heading.split("**")[0][:60]: statements
               for heading, statements in iam_md_policies(IAM_MD.read_text()).items() if statements}
TRUSTS = {heading.split("**")[0][:60]: statements
          for heading, statements in trust_policies(IAM_MD.read_text()).items() if statements}


@pytest.mark.parametrize("heading", PERMISSIONS)
def test_every_permission_policy_is_valid(heading):
    assert findings(PERMISSIONS[heading]) == set()


@pytest.mark.parametrize("heading", PERMISSIONS)
def test_every_other_finding_is_answered(heading):
    unanswered = community_findings(heading, PERMISSIONS[heading]) - set(COMMUNITY_FINDINGS)
    assert not unanswered, f"answer these in COMMUNITY_FINDINGS, or fix the policy: {unanswered}"


@pytest.mark.parametrize("heading", TRUSTS)
def test_trust_policies_have_only_the_answered_findings(heading):
    assert findings(TRUSTS[heading]) <= set(TRUST_POLICY_FINDINGS)


def test_the_lint_finds_what_it_should():
    """A typo'd action and a condition key the action does not support are both reported."""
    bad = [{"Effect": "Allow", "Action": "s3:GetObjects", "Resource": "arn:aws:s3:::b/*"},
           {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::b/*",
            "Condition": {"StringEquals": {"lambda:FunctionUrlAuthType": "NONE"}}}]
    assert {issue for issue, _ in findings(bad)} >= {"UNKNOWN_ACTION",
                                                      "UNKNOWN_CONDITION_FOR_ACTION"}
