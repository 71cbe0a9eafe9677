"""docs/iam.md's policies checked by a policy engine: moto_server with IAM enforcement on.

Each scenario (the deploy, the SageMaker launch with the features missing and present, `dvc
push`, `dvc pull`, the one-time setup) runs as an IAM user or assumed role holding exactly its
policy from docs/iam.md (placeholders filled in), against tests/moto_iam_server.py, which logs
every decision. With the documented policy a scenario must pass with no denial; with any one
action the engine checked removed, it must be refused that action. Actions the engine cannot
see are named in INVISIBLE with the reason, and must be exactly the documented ones it never
checked, so a new unchecked action fails here until someone says why.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import boto3
import botocore.session
import pytest
from botocore.awsrequest import AWSResponse

from coughlab.aws.deploy import __main__ as cli
from coughlab.aws.errors import iam_action

from conftest import free_port, post_json, queue_lambda_results
from helpers import make_features
from iam_docs import IAM_MD, listed, statements_for, trust_policies

ROOT = Path(__file__).resolve().parents[1]
ACCOUNT, REGION = "123456789012", "eu-west-1"
PLACEHOLDERS = {"DVC_BUCKET": "coughlab-dvc", "ARTIFACTS": "coughlab-artifacts",
                "BUCKET": "coughlab-sm", "UPLOADS": "coughlab-uploads", "ACCOUNT": ACCOUNT,
                "REGION": REGION, "OWNER/REPO": "someone/coughlab", "DEVELOPER": "dev"}
OPERATION_HEADER = "X-Coughlab-Operation"
WHY_NOT_SEEN = {
    "implied": "implied by a request (AWS checks it besides the operation's own action); moto "
               "checks only the operation's",
    "service": "used by AWS itself on the caller's behalf, which moto does not do",
    "docker": "used by `docker push`/`docker login`, outside Python",
    "unimplemented": "moto 5.2.5 does not implement the operation (tests/test_deploy.py answers "
                     "it locally)",
    "ctrl-c": "only on Ctrl-C, which moto cannot stop (it has no StopTrainingJob)",
    "console": "a console step (quota requests), no API call in the checklist",
}
# Documented actions the engine cannot see in a scenario, and why (WHY_NOT_SEEN).
INVISIBLE = {
    "deployer": {"iam:PassRole": "implied", "s3:GetObject": "service",
                 "lambda:GetAccountSettings": "unimplemented",
                 # only with --image-uri: Lambda pulls the image with the deployer's rights
                 "ecr:BatchGetImage": "service", "ecr:GetDownloadUrlForLayer": "service",
                 "ecr:GetRepositoryPolicy": "service", "ecr:SetRepositoryPolicy": "service"},
    "caller": {"iam:PassRole": "implied", "sagemaker:AddTags": "implied",
               "sagemaker:StopTrainingJob": "ctrl-c",
               **{action: "docker" for action in (
                   "ecr:GetAuthorizationToken", "ecr:BatchCheckLayerAvailability",
                   "ecr:InitiateLayerUpload", "ecr:UploadLayerPart", "ecr:CompleteLayerUpload",
                   "ecr:PutImage", "ecr:BatchGetImage")}},
    "dvc-remote": {},
    "ci": {},
    "setup": {"servicequotas:ListServiceQuotas": "console",
              "servicequotas:RequestServiceQuotaIncrease": "console"},
}


def filled(text: str) -> str:
    for placeholder, value in PLACEHOLDERS.items():  # DVC_BUCKET before BUCKET
        text = text.replace(placeholder, value)
    return text


def policy_document(role: str, without: str | None = None) -> str:
    """`role`'s documented permission policy, filled in, less the action `without`."""
    statements = json.loads(filled(json.dumps(statements_for(role))))
    kept = []
    for statement in statements:
        actions = [action for action in listed(statement["Action"]) if action != without]
        if actions:
            kept.append(statement | {"Action": actions})
    return json.dumps({"Version": "2012-10-17", "Statement": kept})


def documented_actions(role: str) -> set[str]:
    return {action for statement in statements_for(role) for action in listed(statement["Action"])}


# --- the enforcing moto_server ----------------------------------------------------------------

@dataclass
class Engine:
    url: str
    decisions: Path

    def reset(self) -> None:
        """An empty backend, enforcement off (the tests set up as nobody in particular)."""
        self.enforce(False)
        urllib.request.urlopen(urllib.request.Request(f"{self.url}/moto-api/reset",
                                                      method="POST")).close()
        post_json(f"{self.url}/moto-api/config", {"lambda": {"use_docker": False}})
        self.decisions.write_text("")

    def enforce(self, on: bool) -> None:
        request = urllib.request.Request(f"{self.url}/moto-api/reset-auth", method="POST",
                                         data=b"0" if on else b"inf",
                                         headers={"Content-Type": "text/plain"})
        urllib.request.urlopen(request).close()

    def checked(self, principal: str) -> list[dict]:
        """The decisions the engine made for `principal` (a user name or role name)."""
        records = [json.loads(line) for line in self.decisions.read_text().splitlines()]
        return [r for r in records if r["principal"].split(":", 5)[-1].split("/")[1] == principal]


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    decisions = tmp_path_factory.mktemp("iam") / "decisions.jsonl"
    port = free_port()
    env = os.environ | {"COUGHLAB_IAM_DECISIONS": str(decisions),
                        "MOTO_LAMBDA_CONCURRENCY_QUOTA": "1000",
                        "MOTO_IAM_LOAD_MANAGED_POLICIES": "true"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "moto_iam_server.py"),
                             "-H", "127.0.0.1", "-p", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(150):
        try:
            urllib.request.urlopen(f"{url}/moto-api/", timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None:
                pytest.fail("tests/moto_iam_server.py did not start")
            time.sleep(0.2)
    yield Engine(url, decisions)
    os.kill(proc.pid, signal.SIGTERM)
    proc.wait(timeout=10)


@pytest.fixture
def aws(engine, monkeypatch):
    """boto3 pointed at the engine, admin-free: credentials come from the identity under test."""
    engine.reset()
    for key in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE",
                "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    for key, value in {"AWS_ACCESS_KEY_ID": "AKIASETUPSETUPSETUP0", "AWS_SECRET_ACCESS_KEY": "x",
                       "AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION,
                       "AWS_ENDPOINT_URL": engine.url}.items():
        monkeypatch.setenv(key, value)
    original = botocore.session.Session.create_client

    def naming_operations(session, *args, **kwargs):  # the engine logs which operation it was
        client = original(session, *args, **kwargs)
        client.meta.events.register("before-sign", lambda request, operation_name, **_:
                                    request.headers.__setitem__(OPERATION_HEADER, operation_name))
        return client

    monkeypatch.setattr(botocore.session.Session, "create_client", naming_operations)
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    yield engine
    engine.enforce(False)


def act_as(monkeypatch, credentials: dict) -> None:
    """From now on boto3 (and child processes) sign with `credentials`."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", credentials["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", credentials["SecretAccessKey"])
    if "SessionToken" in credentials:
        monkeypatch.setenv("AWS_SESSION_TOKEN", credentials["SessionToken"])
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)


def user_with(role: str, name: str, without: str | None = None) -> dict:
    """An IAM user holding `role`'s documented policy (less `without`); its access key."""
    iam = boto3.client("iam")
    iam.create_user(UserName=name)
    iam.put_user_policy(UserName=name, PolicyName=role, PolicyDocument=policy_document(role,
                                                                                       without))
    return iam.create_access_key(UserName=name)["AccessKey"]


def role_with(role: str, name: str, without: str | None = None) -> dict:
    """An IAM role with `role`'s documented trust and permission policy, assumed: its keys."""
    iam = boto3.client("iam")
    heading = next(h for h in trust_policies(IAM_MD.read_text()) if h.startswith("CI"))
    trust = {"Version": "2012-10-17", "Statement": trust_policies(IAM_MD.read_text())[heading]}
    arn = iam.create_role(RoleName=name, AssumeRolePolicyDocument=filled(json.dumps(trust)))[
        "Role"]["Arn"]
    iam.put_role_policy(RoleName=name, PolicyName=role, PolicyDocument=policy_document(role,
                                                                                       without))
    return boto3.client("sts").assume_role(RoleArn=arn, RoleSessionName="ci")["Credentials"]


def outcome(run) -> str | None:
    """None if `run` went through, else what stopped it."""
    try:
        run()
    except SystemExit as stop:
        return str(stop)
    except Exception as error:  # noqa: BLE001 - any refusal counts, its text is the evidence
        return f"{type(error).__name__}: {error}"
    return None


# --- scenarios ------------------------------------------------------------------------------

def deploy_scenario(aws: Engine, monkeypatch, tmp_path: Path, without: str | None) -> str | None:
    """First deploy (create, public URL, cap), a redeploy (update, IAM auth, no cap), rollback."""
    from test_deploy import PAGE_ANSWER, committed_repo, model_in, scored_answer, write_deps

    iam = boto3.client("iam")
    lambda_role = iam.create_role(RoleName="coughlab-lambda", AssumeRolePolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": []}))["Role"]["Arn"]
    boto3.client("s3").create_bucket(Bucket=PLACEHOLDERS["ARTIFACTS"],
                                     CreateBucketConfiguration={"LocationConstraint": REGION})
    keys = user_with("deployer", "deployer", without)
    repo, deps = committed_repo(tmp_path / "repo"), write_deps(tmp_path / "deps")
    monkeypatch.setattr(cli, "runtime_python", lambda: None)  # fake dependencies: no bytecode
    model_dir = model_in(repo, onnx=b"graph one")
    session = boto3.session.Session()
    session.events.register("before-call.lambda.GetAccountSettings", lambda **_: (
        AWSResponse("https://lambda", 200, {}, None),
        {"AccountLimit": {"ConcurrentExecutions": 1000, "UnreservedConcurrentExecutions": 1000}}))
    act_as(monkeypatch, keys)
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", session)
    common = ["--function", "coughlab", "--bucket", PLACEHOLDERS["ARTIFACTS"], "--role",
              lambda_role, "--repo", str(repo), "--model-dir", str(model_dir), "--deps-dir",
              str(deps), "--build-dir", str(tmp_path / "build")]
    aws.enforce(True)

    def deploy_twice_and_roll_back():
        queue_lambda_results(aws.url, PAGE_ANSWER, scored_answer(model_dir), region=REGION)
        cli.main(common)
        model_in(repo, onnx=b"graph two")
        queue_lambda_results(aws.url, PAGE_ANSWER, scored_answer(model_dir), region=REGION)
        cli.main([*common, "--url-auth", "AWS_IAM", "--reserved-concurrency", "none"])
        cli.main([*common, "--rollback"])

    return outcome(deploy_twice_and_roll_back)


def sagemaker_scenario(aws: Engine, monkeypatch, tmp_path: Path, without: str | None,
                       present: bool) -> str | None:
    """The train stage's launch as the caller: upload (or find) the features, start the job,
    follow it and its log, download the model."""
    from test_sagemaker import LOG_GROUP, PARAMS, job_artifacts

    from coughlab.aws.sagemaker import AwsSettings, make_clients, run_training_job
    from coughlab.checkpoint import fingerprint

    bucket, job = PLACEHOLDERS["BUCKET"], "coughlab-enforced-1"
    image = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/coughlab-train:1"
    params = _with_prefix(PARAMS, "coughlab")
    features = make_features(tmp_path / "features")
    fp = fingerprint(params, features, image)
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    artifacts = job_artifacts(tmp_path)
    for name in ("model.tar.gz", "output.tar.gz"):
        s3.put_object(Bucket=bucket, Key=f"coughlab/output/{job}/output/{name}",
                      Body=artifacts[name])
    if present:
        for split in ("train", "valid"):
            data = (features / f"{split}.npz").read_bytes()
            s3.put_object(Bucket=bucket, Key=f"coughlab/input/{fp}/features/{split}.npz", Body=data,
                          Metadata={"sha256": hashlib.sha256(data).hexdigest()})
    logs = boto3.client("logs")
    logs.create_log_group(logGroupName=LOG_GROUP)
    logs.create_log_stream(logGroupName=LOG_GROUP, logStreamName=f"{job}/algo-1-1")
    logs.put_log_events(logGroupName=LOG_GROUP, logStreamName=f"{job}/algo-1-1", logEvents=[
        {"timestamp": int(time.time() * 1000), "message": "epoch 0"}])
    execution_role = boto3.client("iam").create_role(
        RoleName="coughlab-sagemaker", AssumeRolePolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": []}))["Role"]["Arn"]
    keys = user_with("caller", "caller", without)
    act_as(monkeypatch, keys)
    settings = AwsSettings(role=execution_role, bucket=bucket, image=image, region=REGION)
    aws.enforce(True)
    return outcome(lambda: run_training_job(
        params, features, tmp_path / "model", tmp_path / "live", settings,
        make_clients(REGION), name=job, poll_seconds=0))


def _with_prefix(params, prefix: str):
    """PARAMS with train.sagemaker.s3_prefix = `prefix` (the documented policies' prefix)."""
    import dataclasses

    sagemaker = dataclasses.replace(params.train.sagemaker, s3_prefix=prefix)
    return dataclasses.replace(params, train=dataclasses.replace(params.train,
                                                                 sagemaker=sagemaker))


def dvc(repo: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "AWS_ENDPOINT_URL"}
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=env,
                          capture_output=True, text=True)


def dvc_scenario(aws: Engine, monkeypatch, tmp_path: Path, role: str,
                 without: str | None) -> str | None:
    """`dvc push` as the DVC remote's user, or, after it, `dvc pull` of a fresh copy as CI."""
    bucket = PLACEHOLDERS["DVC_BUCKET"]
    boto3.client("s3").create_bucket(Bucket=bucket,
                                     CreateBucketConfiguration={"LocationConstraint": REGION})
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    for args in (["init", "-q"], ["config", "core.analytics", "false"],
                 ["remote", "add", "-d", "storage", f"s3://{bucket}/coughlab"],
                 ["remote", "modify", "--local", "storage", "endpointurl", aws.url],
                 ["remote", "modify", "--local", "storage", "region", REGION]):
        assert dvc(repo, *args).returncode == 0
    (repo / "data").mkdir()
    for i in range(3):
        (repo / "data" / f"{i}.wav").write_bytes(os.urandom(1000 + i))
    assert dvc(repo, "add", "-q", "data").returncode == 0
    if role == "ci":  # what CI pulls was pushed before, by the remote's owner
        act_as(monkeypatch, user_with("dvc-remote", "owner"))
        aws.enforce(True)
        pushed = dvc(repo, "push")
        assert pushed.returncode == 0, pushed.stderr
        aws.enforce(False)
        for lost in (".dvc/cache", "data"):
            shutil.rmtree(repo / lost)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIASETUPSETUPSETUP0")
        monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
        keys = role_with("ci", "coughlab-dvc-ci", without)
    else:
        keys = user_with("dvc-remote", "dvc-user", without)
    act_as(monkeypatch, keys)
    aws.enforce(True)
    done = dvc(repo, "pull" if role == "ci" else "push")
    if done.returncode != 0:
        return done.stderr.strip()
    if role == "ci":
        assert sorted(p.name for p in (repo / "data").iterdir()) == ["0.wav", "1.wav", "2.wav"]
    return None


def setup_scenario(aws: Engine, monkeypatch, tmp_path: Path, without: str | None) -> str | None:
    """The one-time setup, as docs/sagemaker.md's checklist and docs/iam.md run it (as boto3
    calls, one per documented command)."""
    keys = user_with("setup", "admin", without)
    boto3.client("iam").create_user(UserName=PLACEHOLDERS["DEVELOPER"])
    act_as(monkeypatch, keys)
    aws.enforce(True)
    trust = json.dumps({"Version": "2012-10-17", "Statement": []})

    def run_the_checklist():
        s3, ecr, iam = boto3.client("s3"), boto3.client("ecr"), boto3.client("iam")
        for bucket in ("BUCKET", "ARTIFACTS", "DVC_BUCKET"):  # aws s3 mb s3://...
            s3.create_bucket(Bucket=PLACEHOLDERS[bucket],
                             CreateBucketConfiguration={"LocationConstraint": REGION})
        s3.put_bucket_lifecycle_configuration(  # the rule expiring inputs and checkpoints
            Bucket=PLACEHOLDERS["BUCKET"], LifecycleConfiguration={"Rules": [
                {"ID": prefix, "Filter": {"Prefix": f"coughlab/{prefix}/"}, "Status": "Enabled",
                 "Expiration": {"Days": 7}} for prefix in ("input", "checkpoints")]})
        for repository in ("coughlab-train", "coughlab"):  # aws ecr create-repository
            ecr.create_repository(repositoryName=repository)
        for role in ("coughlab-sagemaker", "coughlab-lambda", "coughlab-dvc-ci"):
            iam.create_role(RoleName=role, AssumeRolePolicyDocument=trust)
        for role, policy in (("coughlab-sagemaker", "sagemaker-execution"),
                             ("coughlab-dvc-ci", "ci")):
            iam.put_role_policy(RoleName=role, PolicyName=policy,
                                PolicyDocument=policy_document(policy))
        iam.attach_role_policy(RoleName="coughlab-lambda", PolicyArn="arn:aws:iam::aws:policy/"
                               "service-role/AWSLambdaBasicExecutionRole")
        iam.create_open_id_connect_provider(Url="https://token.actions.githubusercontent.com",
                                            ClientIDList=["sts.amazonaws.com"])
        for policy in ("caller", "deployer", "dvc-remote"):  # to the developer
            iam.put_user_policy(UserName=PLACEHOLDERS["DEVELOPER"], PolicyName=policy,
                                PolicyDocument=policy_document(policy))

    return outcome(run_the_checklist)


SCENARIOS = {
    "deployer": ("deployer", lambda aws, mp, tmp, without: deploy_scenario(aws, mp, tmp, without)),
    "caller, features missing": ("caller", lambda aws, mp, tmp, without: sagemaker_scenario(
        aws, mp, tmp, without, present=False)),
    "caller, features present": ("caller", lambda aws, mp, tmp, without: sagemaker_scenario(
        aws, mp, tmp, without, present=True)),
    "dvc-remote": ("dvc-user", lambda aws, mp, tmp, without: dvc_scenario(
        aws, mp, tmp, "dvc-remote", without)),
    "ci": ("coughlab-dvc-ci", lambda aws, mp, tmp, without: dvc_scenario(
        aws, mp, tmp, "ci", without)),
    "setup": ("admin", lambda aws, mp, tmp, without: setup_scenario(aws, mp, tmp, without)),
}


def policy_of(scenario: str) -> str:
    return scenario.split(",")[0]


# --- the checks ---------------------------------------------------------------------------------

@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_documented_policy_lets_the_scenario_through(aws, monkeypatch, tmp_path, scenario):
    principal, run = SCENARIOS[scenario]
    stopped = run(aws, monkeypatch, tmp_path, None)
    aws.enforce(False)
    decisions = aws.checked(principal)
    denied = sorted({(d["action"], d["resource"]) for d in decisions if not d["allowed"]})
    assert stopped is None and not denied, f"{stopped}; denied: {denied}"
    seen = {d["action"] for d in decisions}
    role = policy_of(scenario)
    assert seen, "the engine checked nothing: is enforcement on?"
    assert seen <= documented_actions(role)
    if scenario != "caller, features present":  # the first run uses every visible action
        unseen = documented_actions(role) - seen
        assert unseen == set(INVISIBLE[role]), (
            f"documented but never checked by the engine: {sorted(unseen - set(INVISIBLE[role]))}"
            f"; said to be invisible but checked: {sorted(set(INVISIBLE[role]) - unseen)}")
    disagreeing = sorted({(d["operation"], d["action"]) for d in decisions if d["operation"]
                          and iam_action(d["action"].split(":")[0], d["operation"]) != d["action"]})
    assert not disagreeing, f"coughlab.aws.errors.iam_action disagrees with the engine: " \
        f"{disagreeing}"


# One removal per step kind and service, run by default; the rest of the matrix only with
# `-m exhaustive` (each removal re-runs its scenario: about 10 s for the deploy; all 44 took
# 821 s on two busy cores, too long for every `make test`).
REPRESENTATIVE = {
    "deployer": {"s3:PutObject", "lambda:CreateFunction", "lambda:InvokeFunction",
                 "lambda:UpdateAlias", "lambda:PutFunctionConcurrency"},
    "caller, features missing": {"s3:ListBucket", "s3:PutObject", "sagemaker:CreateTrainingJob",
                                 "logs:GetLogEvents"},
    "caller, features present": {"s3:GetObject"},
    "dvc-remote": {"s3:PutObject"},
    "ci": {"s3:GetObject"},
    "setup": {"iam:CreateRole", "s3:PutLifecycleConfiguration", "ecr:CreateRepository"},
}


def removable() -> list:
    """(scenario, action) for every documented action the engine checks in that scenario."""
    cases = []
    for scenario in SCENARIOS:
        role = policy_of(scenario)
        if scenario == "caller, features present":
            actions = {"s3:ListBucket", "s3:GetObject"}  # the path that differs: finding them
        else:
            actions = documented_actions(role) - set(INVISIBLE[role])
        assert REPRESENTATIVE[scenario] <= actions, scenario
        cases += [pytest.param(scenario, action, id=f"{scenario}-{action}",
                               marks=() if action in REPRESENTATIVE[scenario] else
                               pytest.mark.exhaustive)
                  for action in sorted(actions)]
    return cases


@pytest.mark.parametrize("scenario,action", removable())
def test_removing_any_action_the_engine_sees_refuses_the_scenario(aws, monkeypatch, tmp_path,
                                                                  scenario, action):
    principal, run = SCENARIOS[scenario]
    run(aws, monkeypatch, tmp_path, action)
    aws.enforce(False)
    denied = {d["action"] for d in aws.checked(principal) if not d["allowed"]}
    assert action in denied, f"without {action} the engine refused only {sorted(denied)}"


def test_the_engine_refuses_what_no_policy_allows(aws, monkeypatch):
    """The engine is on: a user with no policy at all cannot even list buckets."""
    keys = boto3.client("iam").create_access_key(
        UserName=boto3.client("iam").create_user(UserName="nobody")["User"]["UserName"])
    act_as(monkeypatch, keys["AccessKey"])
    aws.enforce(True)
    with pytest.raises(boto3.client("s3").exceptions.ClientError, match="AccessDenied"):
        boto3.client("s3").list_buckets()
