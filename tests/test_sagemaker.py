"""SageMaker dispatch: the exact request, following the job, and unpacking what it made.

Never real AWS: moto_server on loopback (which completes a job at once and writes nothing,
so these tests put the job's artifacts in S3 themselves), or botocore's Stubber.
"""
import copy
import dataclasses
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import time
from datetime import datetime, timezone
from pathlib import Path

import boto3
import pytest
import yaml
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from coughlab.aws.container import GPU_INSTANCE
from coughlab.aws.sagemaker import (
    IMAGE_CUDA,
    LOG_GROUP,
    AwsSettings,
    Clients,
    JobPaths,
    SageMakerError,
    check_outcome,
    cost_line,
    driver_warning,
    follow_job,
    job_name,
    job_paths,
    make_clients,
    run_training_job,
    settings_from_env,
    training_job_request,
    upload_features,
    validate_job_config,
    wait_for_job,
)
from coughlab.checkpoint import fingerprint
from coughlab.config import SageMakerConfig, compose, load_params
from coughlab.nets import build_net, save_model
from coughlab.stages import train as train_stage

from helpers import conf, make_features, write_params
from iam_docs import policy_for

ROOT = Path(__file__).resolve().parents[1]
ROLE = "arn:aws:iam::123456789012:role/coughlab-training"
BUCKET = "coughlab-test"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/coughlab-train:3f2a9c1"
SETTINGS = AwsSettings(role=ROLE, bucket=BUCKET, image=IMAGE, region="us-east-1")
JOB = "coughlab-test-job"
PARAMS = conf(
    "seed=7", "lr=0.01", "audio.windows=1", "model.width=8", "model.dropout=0.1",
    "train=sagemaker", "train.epochs=3", "train.batch_size=8", "train.weight_decay=0.02",
    "train.spec_augment.freq_mask=4", "train.spec_augment.time_mask=8",
    "train.spec_augment.n_masks=1", "train.balance=label",
    "train.sagemaker.instance_type=ml.m5.xlarge", "train.sagemaker.volume_size_gb=10",
    "train.sagemaker.max_run_seconds=600", "train.sagemaker.max_wait_seconds=1200",
    "train.sagemaker.s3_prefix=exp/coughlab")


def expected_request(fp: str) -> dict:
    """Written out by hand: what AWS must receive for PARAMS and SETTINGS."""
    root = f"s3://{BUCKET}/exp/coughlab"
    return {
        "TrainingJobName": JOB,
        "RoleArn": ROLE,
        "AlgorithmSpecification": {"TrainingImage": IMAGE, "TrainingInputMode": "File"},
        "HyperParameters": {
            "seed": "7", "lr": "0.01",
            "audio.sample_rate": "16000", "audio.clip_seconds": "3.0", "audio.n_fft": "1024",
            "audio.hop_length": "256", "audio.n_mels": "64", "audio.f_min": "20.0",
            "audio.f_max": "7600.0", "audio.band_mean_norm": "false",
            "audio.windows": "1", "audio.max_seconds": "30.0",
            "model.arch": '"cnn"', "model.width": "8", "model.dropout": "0.1",
            "train.backend": '"sagemaker"', "train.epochs": "3", "train.batch_size": "8",
            "train.weight_decay": "0.02", "train.spec_augment.freq_mask": "4",
            "train.spec_augment.time_mask": "8", "train.spec_augment.n_masks": "1",
            "train.channel_augment.gain": "0.0", "train.channel_augment.tilt": "0.0",
            "train.balance": '"label"', "train.members": "1",
            "train.sagemaker.instance_type": '"ml.m5.xlarge"',
            "train.sagemaker.volume_size_gb": "10", "train.sagemaker.max_run_seconds": "600",
            "train.sagemaker.max_wait_seconds": "1200",
            "train.sagemaker.s3_prefix": '"exp/coughlab"',
        },
        # The container's checkpoint fingerprint includes it: new code never resumes old weights.
        "Environment": {"COUGHLAB_TRAINING_IMAGE": IMAGE},
        "InputDataConfig": [{
            "ChannelName": "features",
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix",
                                            "S3Uri": f"{root}/input/{fp}/features/",
                                            "S3DataDistributionType": "FullyReplicated"}},
            "InputMode": "File",
        }],
        "OutputDataConfig": {"S3OutputPath": f"{root}/output/"},
        "ResourceConfig": {"InstanceType": "ml.m5.xlarge", "InstanceCount": 1,
                           "VolumeSizeInGB": 10},
        "StoppingCondition": {"MaxRuntimeInSeconds": 600, "MaxWaitTimeInSeconds": 1200},
        "EnableManagedSpotTraining": True,
        "CheckpointConfig": {"S3Uri": f"{root}/checkpoints/{fp}/",
                             "LocalPath": "/opt/ml/checkpoints"},
        "Tags": [{"Key": "coughlab:fingerprint", "Value": fp}],
    }


def tar_gz(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def job_artifacts(tmp_path: Path) -> dict[str, bytes]:
    """What the container leaves in /opt/ml/model and /opt/ml/output/data."""
    model_pt = save_model(build_net(PARAMS.model), PARAMS, tmp_path / "job-model").read_bytes()
    curves = {"metrics.json": b'{"train_loss": 0.2, "step": 2}',
              "plots/metrics/train_loss.tsv": b"step\ttrain_loss\n0\t0.5\n1\t0.3\n2\t0.2\n"}
    return {"model.tar.gz": tar_gz({"model.pt": model_pt}), "output.tar.gz": tar_gz(curves),
            "model.pt": model_pt, **curves}


def put_job_output(s3, artifacts: dict[str, bytes]) -> None:
    for name in ("model.tar.gz", "output.tar.gz"):
        s3.put_object(Bucket=BUCKET, Key=f"exp/coughlab/output/{JOB}/output/{name}",
                      Body=artifacts[name])


def put_job_log(logs, lines: list[str]) -> None:
    stream = f"{JOB}/algo-1-1767225600"
    logs.create_log_group(logGroupName=LOG_GROUP)
    logs.create_log_stream(logGroupName=LOG_GROUP, logStreamName=stream)
    now_ms = int(time.time() * 1000)  # CloudWatch drops events older than 14 days
    logs.put_log_events(logGroupName=LOG_GROUP, logStreamName=stream, logEvents=[
        {"timestamp": now_ms + i, "message": line} for i, line in enumerate(lines)])


def record_requests(client, operation: str) -> list[dict]:
    sent: list[dict] = []
    client.meta.events.register(f"provide-client-params.{client.meta.service_model.service_name}"
                                f".{operation}",
                                lambda params, **_: sent.append(copy.deepcopy(params)))
    return sent


def test_dispatch_sends_the_exact_request_and_unpacks_the_model(aws_env, tmp_path, capsys):
    clients = make_clients("us-east-1")
    clients.s3.create_bucket(Bucket=BUCKET)
    sent = record_requests(clients.sagemaker, "CreateTrainingJob")
    features = make_features(tmp_path / "features")
    artifacts = job_artifacts(tmp_path)
    put_job_output(clients.s3, artifacts)
    put_job_log(clients.logs, ["epoch 0 train_loss 0.5", "epoch 2 train_loss 0.2"])
    model_dir, live_dir = tmp_path / "build" / "model", tmp_path / "reports" / "train"
    model_dir.mkdir(parents=True)
    (model_dir / "stale.pt").write_bytes(b"from an earlier run")

    path = run_training_job(PARAMS, features, model_dir, live_dir, SETTINGS, clients, name=JOB,
                            poll_seconds=0)

    fp = fingerprint(PARAMS, features, IMAGE)
    assert sent == [expected_request(fp)]
    uploaded = clients.s3.list_objects_v2(Bucket=BUCKET, Prefix=f"exp/coughlab/input/{fp}/")
    assert {o["Key"].rsplit("/", 1)[1] for o in uploaded["Contents"]} == {"train.npz", "valid.npz"}
    body = clients.s3.get_object(Bucket=BUCKET, Key=f"exp/coughlab/input/{fp}/features/train.npz")
    assert body["Body"].read() == (features / "train.npz").read_bytes()
    assert path == model_dir / "model.pt"
    assert sorted(p.name for p in model_dir.iterdir()) == ["model.pt"]  # replaced, not merged
    assert path.read_bytes() == artifacts["model.pt"]
    assert (live_dir / "metrics.json").read_bytes() == artifacts["metrics.json"]
    assert ((live_dir / "plots" / "metrics" / "train_loss.tsv").read_bytes()
            == artifacts["plots/metrics/train_loss.tsv"])
    out = capsys.readouterr().out
    assert f"sagemaker: {JOB} Completed/Completed" in out
    assert "[algo-1-1767225600] epoch 2 train_loss 0.2" in out


def test_artifact_without_model_leaves_the_previous_model(aws_env, tmp_path):
    clients = make_clients("us-east-1")
    clients.s3.create_bucket(Bucket=BUCKET)
    put_job_output(clients.s3, {**job_artifacts(tmp_path),
                                "model.tar.gz": tar_gz({"notes.txt": b"no model here"})})
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "model.pt").write_bytes(b"previous")
    with pytest.raises(SageMakerError, match=r"model.tar.gz has no model.pt"):
        run_training_job(PARAMS, make_features(tmp_path / "features"), model_dir,
                         tmp_path / "live", SETTINGS, clients, name=JOB, poll_seconds=0)
    assert (model_dir / "model.pt").read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def stubbed(service: str) -> tuple[object, Stubber]:
    client = boto3.client(service, region_name="us-east-1", aws_access_key_id="x",
                          aws_secret_access_key="x")
    return client, Stubber(client)


def test_request_passes_botocore_validation_for_create_training_job(tmp_path):
    sm, stub = stubbed("sagemaker")
    features = make_features(tmp_path / "features")
    fp = fingerprint(PARAMS, features, IMAGE)
    request = training_job_request(job_paths(JOB, fp, BUCKET, "exp/coughlab"), PARAMS, SETTINGS, fp)
    assert request == expected_request(fp)
    stub.add_response("create_training_job", {"TrainingJobArn": f"arn:aws:sagemaker:us-east-1:"
                                              f"123456789012:training-job/{JOB}"},
                      expected_params=expected_request(fp))
    with stub:
        sm.create_training_job(**request)  # botocore validates it against the API model
    stub.assert_no_pending_responses()


def described(status: str, secondary: str, message: str = "", **extra) -> dict:
    return {"TrainingJobName": JOB, "TrainingJobArn": f"arn:aws:sagemaker:us-east-1:1:t/{JOB}",
            "ModelArtifacts": {"S3ModelArtifacts": f"s3://{BUCKET}/o/{JOB}/output/model.tar.gz"},
            "TrainingJobStatus": status, "SecondaryStatus": secondary,
            "StoppingCondition": {"MaxRuntimeInSeconds": 600},
            "CreationTime": datetime(2026, 1, 1, tzinfo=timezone.utc),
            "SecondaryStatusTransitions": [{"Status": secondary, "StartTime": datetime(2026, 1, 1),
                                            "StatusMessage": message}], **extra}


def test_wait_prints_each_status_change_and_gives_up_on_unreadable_logs(capsys):
    sm, sm_stub = stubbed("sagemaker")
    logs, logs_stub = stubbed("logs")
    for desc in (described("InProgress", "Starting", "Preparing the instances for training"),
                 described("InProgress", "Starting", "Preparing the instances for training"),
                 described("InProgress", "Interrupted", "Spot capacity reclaimed"),
                 described("Completed", "Completed", "Training job completed")):
        sm_stub.add_response("describe_training_job", desc, {"TrainingJobName": JOB})
    logs_stub.add_client_error("describe_log_streams", "ResourceNotFoundException")
    logs_stub.add_client_error("describe_log_streams", "AccessDeniedException")
    with sm_stub, logs_stub:  # a third logs call would fail: none is stubbed
        desc = wait_for_job(Clients(None, sm, logs), JOB, poll_seconds=0, sleep=lambda s: None)
    assert desc["TrainingJobStatus"] == "Completed"
    lines = capsys.readouterr().out.splitlines()
    status_lines = [re.sub(r"after \d+s", "after Ns", line) for line in lines if "after" in line]
    assert status_lines == [
        f"sagemaker: {JOB} InProgress/Starting after Ns: Preparing the instances for training",
        f"sagemaker: {JOB} InProgress/Interrupted after Ns: Spot capacity reclaimed",
        f"sagemaker: {JOB} Completed/Completed after Ns: Training job completed"]
    assert lines.count("sagemaker: cannot read CloudWatch logs (AccessDeniedException); "
                       "following status only") == 1


def interrupt_once():
    """A sleep that is Ctrl-C'd the first time and records the later calls."""
    calls = []

    def sleep(seconds):
        calls.append(seconds)
        if len(calls) == 1:
            raise KeyboardInterrupt

    return sleep, calls


def test_ctrl_c_while_waiting_stops_the_job_and_waits_until_it_has_stopped(capsys):
    sm, stub = stubbed("sagemaker")
    stub.add_response("describe_training_job", described("InProgress", "Training"),
                      {"TrainingJobName": JOB})
    stub.add_response("stop_training_job", {}, {"TrainingJobName": JOB})
    for status, secondary in [("Stopping", "Stopping"), ("Stopping", "Stopping"),
                              ("Stopped", "Stopped")]:
        stub.add_response("describe_training_job", described(status, secondary),
                          {"TrainingJobName": JOB})
    logs, logs_stub = stubbed("logs")
    logs_stub.add_client_error("describe_log_streams", "ResourceNotFoundException")
    sleep, calls = interrupt_once()

    job = job_paths(JOB, "ab" * 32, BUCKET, "coughlab")
    with stub, logs_stub, pytest.raises(KeyboardInterrupt):
        follow_job(Clients(None, sm, logs), job, poll_seconds=30, sleep=sleep)
    stub.assert_no_pending_responses()
    assert calls == [30, 30, 60]  # the interrupted poll, then two while Stopping, backing off
    out = capsys.readouterr().out
    assert (f"sagemaker: {JOB} is Stopped; re-running the stage resumes from "
            f"{job.checkpoint_uri}") in out


def test_ctrl_c_after_the_job_ended_still_raises_the_interrupt(capsys):
    """StopTrainingJob on a finished job is a ValidationException: it must not hide Ctrl-C."""
    sm, stub = stubbed("sagemaker")
    stub.add_response("describe_training_job", described("InProgress", "Uploading"),
                      {"TrainingJobName": JOB})
    stub.add_client_error("stop_training_job", "ValidationException",
                          "The job status is Completed", expected_params={"TrainingJobName": JOB})
    stub.add_response("describe_training_job", described("Completed", "Completed"),
                      {"TrainingJobName": JOB})
    logs, logs_stub = stubbed("logs")
    logs_stub.add_client_error("describe_log_streams", "ResourceNotFoundException")
    sleep, calls = interrupt_once()

    job = job_paths(JOB, "ab" * 32, BUCKET, "coughlab")
    with stub, logs_stub, pytest.raises(KeyboardInterrupt):
        follow_job(Clients(None, sm, logs), job, poll_seconds=30, sleep=sleep)
    stub.assert_no_pending_responses()
    out = capsys.readouterr().out
    assert re.search(rf"could not stop {JOB} \(.*The job status is Completed\); "
                     r"it is Completed", out)


def test_log_tail_keeps_going_after_throttling(capsys):
    sm, sm_stub = stubbed("sagemaker")
    logs, logs_stub = stubbed("logs")
    for status in ("InProgress", "InProgress", "InProgress", "Completed"):
        sm_stub.add_response("describe_training_job", described(status, "Training"),
                             {"TrainingJobName": JOB})
    stream = f"{JOB}/algo-1-1767225600"
    streams = {"logStreams": [{"logStreamName": stream}]}
    where = {"logGroupName": LOG_GROUP, "logStreamNamePrefix": f"{JOB}/"}
    logs_stub.add_response("describe_log_streams", streams, where)  # poll 1: reads a line
    logs_stub.add_response("get_log_events", {
        "events": [{"timestamp": 1, "message": "epoch 0"}], "nextForwardToken": "f/1"},
        {"logGroupName": LOG_GROUP, "logStreamName": stream, "startFromHead": True})
    logs_stub.add_response("get_log_events", {"events": [], "nextForwardToken": "f/1"},
                           {"logGroupName": LOG_GROUP, "logStreamName": stream,
                            "startFromHead": True, "nextToken": "f/1"})
    logs_stub.add_client_error("describe_log_streams", "ThrottlingException", "Rate exceeded",
                               expected_params=where)  # poll 2; poll 3 is skipped
    logs_stub.add_response("describe_log_streams", streams, where)  # poll 4: goes on from f/1
    logs_stub.add_response("get_log_events", {
        "events": [{"timestamp": 2, "message": "epoch 1"}], "nextForwardToken": "f/2"},
        {"logGroupName": LOG_GROUP, "logStreamName": stream, "startFromHead": True,
         "nextToken": "f/1"})
    logs_stub.add_response("get_log_events", {"events": [], "nextForwardToken": "f/2"},
                           {"logGroupName": LOG_GROUP, "logStreamName": stream,
                            "startFromHead": True, "nextToken": "f/2"})
    with sm_stub, logs_stub:
        wait_for_job(Clients(None, sm, logs), JOB, poll_seconds=0, sleep=lambda s: None)
    logs_stub.assert_no_pending_responses()
    out = capsys.readouterr().out
    assert "[algo-1-1767225600] epoch 0" in out and "[algo-1-1767225600] epoch 1" in out
    assert "ThrottlingException; retrying in 2 polls" in out
    assert "following status only" not in out


def test_tar_filter_needs_a_python_that_has_it():
    """download_tar uses tarfile's `filter=`, added in 3.11.4: pip must refuse older Pythons."""
    import tomllib

    from packaging.specifiers import SpecifierSet

    spec = SpecifierSet(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
                        ["requires-python"])
    assert "3.11.3" not in spec and "3.11.4" in spec and "3.12.0" in spec


def test_failed_and_stopped_jobs_say_why_and_where_the_checkpoints_are():
    job = JobPaths(JOB, "s3://b/in/", "s3://b/checkpoints/ab/", "s3://b/out/")
    failed = described("Failed", "Failed", FailureReason="AlgorithmError: ValueError: bad npz")
    with pytest.raises(SageMakerError, match=f"{JOB} failed: AlgorithmError: ValueError: bad npz"):
        check_outcome(failed, job)
    with pytest.raises(SageMakerError,
                       match=r"Stopped/MaxWaitTimeExceeded; .* s3://b/checkpoints/ab/"):
        check_outcome(described("Stopped", "MaxWaitTimeExceeded"), job)
    check_outcome(described("Completed", "Completed"), job)


def test_cost_line_reports_the_spot_saving():
    desc = described("Completed", "Completed", TrainingTimeInSeconds=1000,
                     BillableTimeInSeconds=300)
    assert cost_line(desc) == ("sagemaker: 1000s of training, 300s billed "
                               "(managed spot saved 70%)")
    assert cost_line(described("Completed", "Completed")) is None


@pytest.mark.parametrize("change, problem", [
    ({"max_wait_seconds": 3600}, r"max_wait_seconds \(3600\) must exceed max_run_seconds \(3600\)"),
    ({"instance_type": "g4dn.xlarge"}, "not a SageMaker type"),
    ({"volume_size_gb": 0}, "volume_size_gb must be at least 1"),
])
def test_job_settings_are_checked_before_anything_is_sent(tmp_path, change, problem):
    params = copy.deepcopy(PARAMS)
    params.train.sagemaker = dataclasses.replace(params.train.sagemaker,
                                                 **{"max_run_seconds": 3600, **change})
    with pytest.raises(SageMakerError, match=problem):
        # no client at all: a request would fail with AttributeError, not SageMakerError
        run_training_job(params, tmp_path, tmp_path / "m", tmp_path / "l", SETTINGS,
                         Clients(None, None, None))


def test_settings_come_from_the_environment_and_name_what_is_missing():
    with pytest.raises(SageMakerError, match="COUGHLAB_SM_ROLE, COUGHLAB_SM_IMAGE"):
        settings_from_env({"COUGHLAB_SM_BUCKET": BUCKET})
    with pytest.raises(SageMakerError, match="must be an IAM role ARN"):
        settings_from_env({"COUGHLAB_SM_ROLE": "coughlab", "COUGHLAB_SM_BUCKET": BUCKET,
                           "COUGHLAB_SM_IMAGE": IMAGE})
    assert settings_from_env({"COUGHLAB_SM_ROLE": ROLE, "COUGHLAB_SM_BUCKET": BUCKET,
                              "COUGHLAB_SM_IMAGE": IMAGE, "AWS_REGION": "us-east-1"}) == SETTINGS


def test_job_name_is_a_valid_sagemaker_name():
    name = job_name("0123456789abcdef" * 4, datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc))
    assert name == "coughlab-0123456789ab-20260102-030405"
    assert re.fullmatch(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}", name)


def test_sagemaker_group_inherits_the_local_one_and_passes_validation():
    """conf/train/sagemaker.yaml holds no copy of local.yaml: Hydra's defaults list brings it."""
    local, remote = (compose(ROOT / "conf", [f"train={group}"])["train"]
                     for group in ("local", "sagemaker"))
    assert remote.pop("backend") == "sagemaker" and local.pop("backend") == "local"
    validate_job_config(SageMakerConfig(**remote["sagemaker"]))
    assert remote == local
    own = yaml.safe_load((ROOT / "conf" / "train" / "sagemaker.yaml").read_text())
    assert own == {"defaults": ["local", "_self_"], "backend": "sagemaker"}


def test_train_stage_with_sagemaker_backend_needs_the_aws_settings(tmp_path, monkeypatch):
    write_params(tmp_path, "train=sagemaker")
    monkeypatch.chdir(tmp_path)
    for name in ("COUGHLAB_SM_ROLE", "COUGHLAB_SM_BUCKET", "COUGHLAB_SM_IMAGE"):
        monkeypatch.delenv(name, raising=False)
    assert load_params().train.backend == "sagemaker"
    with pytest.raises(SystemExit, match="train: train.backend=sagemaker needs COUGHLAB_SM_ROLE"):
        train_stage.main([])
    write_params(tmp_path, "train.backend=kubernetes")
    with pytest.raises(SystemExit, match="'kubernetes' is unknown; use local or sagemaker"):
        train_stage.main([])


# --- Errors, re-attach, polling (issue 18, points 6 and 8) -----------------------------------

SPOT_QUOTA_MESSAGE = (
    "The account-level service limit 'ml.g4dn.xlarge for spot training job usage' is 0 "
    "Instances, with current utilization of 0 Instances and a request delta of 1 Instances. "
    "Please use AWS Service Quotas to request an increase for this quota. If AWS Service "
    "Quotas is not available, contact AWS support to request an increase for this quota.")
DENIED_MESSAGE = (
    "User: arn:aws:iam::123456789012:user/dev is not authorized to perform: "
    "sagemaker:CreateTrainingJob on resource: arn:aws:sagemaker:us-east-1:123456789012:"
    "training-job/coughlab-0123 because no identity-based policy allows the "
    "sagemaker:CreateTrainingJob action")


def no_running_job(stub: Stubber, fp: str) -> None:
    stub.add_response("list_training_jobs", {"TrainingJobSummaries": []},
                      {"NameContains": f"coughlab-{fp[:12]}-", "StatusEquals": "InProgress"})


def stage_workdir(tmp_path: Path, monkeypatch) -> Path:
    """A directory the train stage runs in: params.yaml for train=sagemaker, the features."""
    write_params(tmp_path, "train=sagemaker", "train.epochs=2")
    make_features(tmp_path / "build" / "features")
    monkeypatch.chdir(tmp_path)
    for name, value in {"COUGHLAB_SM_ROLE": ROLE, "COUGHLAB_SM_BUCKET": BUCKET,
                        "COUGHLAB_SM_IMAGE": IMAGE}.items():
        monkeypatch.setenv(name, value)
    return tmp_path


@pytest.mark.parametrize("code, message, expected", [
    ("ResourceLimitExceeded", SPOT_QUOTA_MESSAGE,
     "train: CreateTrainingJob hit the quota 'ml.g4dn.xlarge for spot training job usage' "
     "(ResourceLimitExceeded: " + SPOT_QUOTA_MESSAGE + "); request an increase in the Service "
     "Quotas console: https://console.aws.amazon.com/servicequotas/home/services/sagemaker/"
     "quotas. No job was started; the features stay in {input} and a re-run with the same "
     "params and features reuses them"),
    ("AccessDeniedException", DENIED_MESSAGE,
     "train: access denied: CreateTrainingJob needs sagemaker:CreateTrainingJob on "
     "arn:aws:sagemaker:us-east-1:123456789012:training-job/coughlab-0123, which the policy of "
     "the identity you run as does not allow; add it (docs/iam.md lists each policy). No job "
     "was started; the features stay in {input} and a re-run with the same params and "
     "features reuses them"),
])
def test_a_refused_job_is_one_line_and_the_rerun_reuses_the_upload(
        aws_env, tmp_path, monkeypatch, capsys, code, message, expected):
    """The first run on a new account: spot GPU quota 0, or a policy without the action."""
    workdir = stage_workdir(tmp_path, monkeypatch)
    params = load_params()
    features = workdir / "build" / "features"
    fp = fingerprint(params, features, IMAGE)
    real = make_clients("us-east-1")
    real.s3.create_bucket(Bucket=BUCKET)
    sm, stub = stubbed("sagemaker")
    monkeypatch.setattr("coughlab.aws.sagemaker.make_clients",
                        lambda region: Clients(real.s3, sm, real.logs))
    no_running_job(stub, fp)
    stub.add_client_error("create_training_job", code, message, http_status_code=400)
    with stub, pytest.raises(SystemExit) as exit_:
        train_stage.main([])
    input_uri = f"s3://{BUCKET}/coughlab/input/{fp}/features/"
    assert str(exit_.value) == expected.format(input=input_uri)
    assert "\n" not in str(exit_.value)
    listed = real.s3.list_objects_v2(Bucket=BUCKET, Prefix="coughlab/")["Contents"]
    assert sorted(o["Key"] for o in listed) == [f"coughlab/input/{fp}/features/train.npz",
                                               f"coughlab/input/{fp}/features/valid.npz"]
    capsys.readouterr()

    # Quota granted: the re-run sends no feature byte again and starts the job.
    no_running_job(stub, fp)
    stub.add_response("create_training_job", {"TrainingJobArn": "arn:aws:sagemaker:us-east-1:"
                                              "123456789012:training-job/x"})
    stub.add_client_error("describe_training_job", "AccessDeniedException",
                          "User: u is not authorized to perform: sagemaker:DescribeTrainingJob")
    with stub, pytest.raises(SystemExit, match=r"train: lost track of coughlab-[0-9a-f]{12}-\d{8}"
                             r"-\d{6}: access denied: DescribeTrainingJob needs sagemaker:"
                             r"DescribeTrainingJob.*re-running the stage follows it again"):
        train_stage.main([])
    out = capsys.readouterr().out
    assert f"{input_uri}train.npz is already uploaded" in out
    assert f"{input_uri}valid.npz is already uploaded" in out


def test_an_error_outside_the_sagemaker_module_is_one_line_too(tmp_path, monkeypatch):
    """No region anywhere: boto3 raises NoRegionError while making the clients."""
    stage_workdir(tmp_path, monkeypatch)
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    with pytest.raises(SystemExit, match=r"^train: no AWS region set: export AWS_REGION"):
        train_stage.main([])


def running_job(name: str, fp: str, status: str = "InProgress", secondary: str = "Training",
                prefix: str = "exp/coughlab") -> dict:
    root = f"s3://{BUCKET}/{prefix}"
    return described(
        status, secondary, TrainingJobName=name,
        ModelArtifacts={"S3ModelArtifacts": f"{root}/output/{name}/output/model.tar.gz"},
        CheckpointConfig={"S3Uri": f"{root}/checkpoints/{fp}/", "LocalPath": "/opt/ml/checkpoints"},
        OutputDataConfig={"S3OutputPath": f"{root}/output/"},
        InputDataConfig=[{"ChannelName": "features", "DataSource": {"S3DataSource": {
            "S3DataType": "S3Prefix", "S3Uri": f"{root}/input/{fp}/features/"}}}],
        AlgorithmSpecification={"TrainingImage": IMAGE, "TrainingInputMode": "File"},
        RoleArn=ROLE, ResourceConfig={"InstanceType": "ml.m5.xlarge", "InstanceCount": 1,
                                      "VolumeSizeInGB": 10})


def test_a_rerun_follows_the_job_already_running_for_its_fingerprint(aws_env, tmp_path, capsys):
    """The launcher died while its job trained: the re-run waits on that job, starts none."""
    features = make_features(tmp_path / "features")
    fp = fingerprint(PARAMS, features, IMAGE)
    orphan = f"coughlab-{fp[:12]}-20260101-000000"
    real = make_clients("us-east-1")
    real.s3.create_bucket(Bucket=BUCKET)
    artifacts = job_artifacts(tmp_path)
    for name in ("model.tar.gz", "output.tar.gz"):
        real.s3.put_object(Bucket=BUCKET, Key=f"exp/coughlab/output/{orphan}/output/{name}",
                           Body=artifacts[name])
    sm, stub = stubbed("sagemaker")
    logs, logs_stub = stubbed("logs")
    for _ in range(3):
        logs_stub.add_client_error("describe_log_streams", "ResourceNotFoundException")
    same_prefix_other_params = f"coughlab-{fp[:12]}-20251231-235959"
    stub.add_response("list_training_jobs", {"TrainingJobSummaries": [
        {"TrainingJobName": n, "TrainingJobArn": f"arn:aws:sagemaker:us-east-1:1:t/{n}",
         "CreationTime": datetime(2026, 1, 1), "TrainingJobStatus": "InProgress"}
        for n in (same_prefix_other_params, orphan)]},
        {"NameContains": f"coughlab-{fp[:12]}-", "StatusEquals": "InProgress"})
    stub.add_response("describe_training_job", running_job(same_prefix_other_params, "cd" * 32),
                      {"TrainingJobName": same_prefix_other_params})
    stub.add_response("describe_training_job", running_job(orphan, fp),
                      {"TrainingJobName": orphan})
    for status, secondary in [("InProgress", "Training"), ("InProgress", "Uploading"),
                              ("Completed", "Completed")]:
        stub.add_response("describe_training_job", running_job(orphan, fp, status, secondary),
                          {"TrainingJobName": orphan})
    model_dir, live_dir = tmp_path / "model", tmp_path / "live"
    with stub, logs_stub:  # no create_training_job is stubbed: starting one would fail
        path = run_training_job(PARAMS, features, model_dir, live_dir, SETTINGS,
                                Clients(real.s3, sm, logs), poll_seconds=0)
    stub.assert_no_pending_responses()
    assert path.read_bytes() == artifacts["model.pt"]
    assert (live_dir / "metrics.json").read_bytes() == artifacts["metrics.json"]
    assert "Contents" not in real.s3.list_objects_v2(Bucket=BUCKET, Prefix="exp/coughlab/input/")
    assert (f"sagemaker: {orphan} is already training these params and features (Training); "
            "following it instead of starting another") in capsys.readouterr().out


def test_a_job_of_the_same_name_prefix_but_other_checkpoints_is_not_reattached(aws_env, tmp_path):
    """12 hex digits of the fingerprint name a job; the checkpoint prefix holds all 64."""
    features = make_features(tmp_path / "features")
    fp = fingerprint(PARAMS, features, IMAGE)
    other = f"coughlab-{fp[:12]}-20251231-235959"
    real = make_clients("us-east-1")
    real.s3.create_bucket(Bucket=BUCKET)
    sm, stub = stubbed("sagemaker")
    stub.add_response("list_training_jobs", {"TrainingJobSummaries": [
        {"TrainingJobName": other, "TrainingJobArn": f"arn:aws:sagemaker:us-east-1:1:t/{other}",
         "CreationTime": datetime(2026, 1, 1), "TrainingJobStatus": "InProgress"}]})
    stub.add_response("describe_training_job", running_job(other, fp, prefix="elsewhere"),
                      {"TrainingJobName": other})
    stub.add_client_error("create_training_job", "ResourceLimitExceeded", SPOT_QUOTA_MESSAGE)
    with stub, pytest.raises(SageMakerError, match="No job was started"):
        run_training_job(PARAMS, features, tmp_path / "m", tmp_path / "l", SETTINGS,
                         Clients(real.s3, sm, None), poll_seconds=0)
    stub.assert_no_pending_responses()  # it tried to start its own


def test_status_polls_back_off_while_nothing_changes_and_restart_on_a_change():
    sm, stub = stubbed("sagemaker")
    logs, logs_stub = stubbed("logs")
    states = [("InProgress", "Starting")] * 6 + [("InProgress", "Training")] * 3 + [
        ("Completed", "Completed")]
    for status, secondary in states:
        stub.add_response("describe_training_job", described(status, secondary),
                          {"TrainingJobName": JOB})
    for _ in states:
        logs_stub.add_client_error("describe_log_streams", "ResourceNotFoundException")
    pauses: list[float] = []
    with stub, logs_stub:
        wait_for_job(Clients(None, sm, logs), JOB, poll_seconds=10, sleep=pauses.append,
                     max_poll_seconds=60)
    assert pauses == [10, 20, 40, 60, 60, 60, 10, 20, 40]


def test_the_default_gpu_instance_has_a_documented_driver_for_the_images_cuda():
    """Point 7: ml.g4dn is documented with R470, on which no CUDA 12 build starts."""
    default = compose(ROOT / "conf", ["train=sagemaker"])["train"]["sagemaker"]["instance_type"]
    assert default == conf("train=sagemaker").train.sagemaker.instance_type
    assert GPU_INSTANCE.match(default)
    assert driver_warning(default) is None
    assert "driver 470 for ml.g4dn" in driver_warning("ml.g4dn.xlarge")
    assert driver_warning("ml.m5.xlarge") is None  # CPU: no driver involved
    dockerfile = (ROOT / "docker" / "train.Dockerfile").read_text()
    assert f"ARG TORCH_VARIANT=cu{IMAGE_CUDA.replace('.', '')}" in dockerfile


# --- Scale-out: a queued sweep of SageMaker jobs, each a DVC experiment --------------------

LRS = ("0.001", "0.003", "0.01")


def queue_status(repo: Path, env: dict) -> str:
    return subprocess.run(["dvc", "queue", "status"], cwd=repo, env=env, capture_output=True,
                          text=True).stdout


def worker_infos(repo: Path) -> list[Path]:
    """dvc-task's process info file of each queue worker ever started here."""
    return sorted((repo / ".dvc" / "tmp" / "exps" / "celery").glob("dvc-exp-worker-*.json"))


def live_workers(repo: Path) -> list[int]:
    """PIDs of the queue's celery workers still alive."""
    pids = []
    for info in worker_infos(repo):
        pid = json.loads(info.read_text()).get("pid")
        try:
            os.kill(pid, 0)
        except (OSError, TypeError):
            continue
        pids.append(pid)
    return pids


@pytest.mark.slow
def test_a_queued_lr_sweep_runs_as_parallel_sagemaker_jobs(aws_env, tmp_path):
    """`dvc exp run --queue -S train.backend=sagemaker -S 'lr=...'`, `dvc queue start -j 3`.

    Against moto_server behind FakeSageMaker (tests/fake_sagemaker.py), which trains each
    job with coughlab.aws.container as SageMaker would. CPU instance and 2 epochs keep it short.
    """
    from fake_sagemaker import FakeSageMaker
    from test_pipeline_e2e import ENV, clone_working_tree

    repo = clone_working_tree(tmp_path / "repo")
    env = {**ENV, **{k: v for k, v in os.environ.items() if k.startswith("AWS_")},
           "PYTHONPATH": str(repo / "src")}

    def run(*cmd: str, timeout: float = 600) -> str:
        proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True,
                              timeout=timeout)
        assert proc.returncode == 0, (f"{' '.join(cmd)}:\n{proc.stdout[-3000:]}\n"
                                      f"{proc.stderr[-3000:]}")
        return proc.stdout

    run(sys.executable, "-m", "coughlab.sample", "data")
    run("dvc", "repro", "featurize")  # the baseline: only train and what follows it re-run
    subprocess.run(["git", "commit", "-qam", "features", "--allow-empty"], cwd=repo, env=env,
                   check=True)
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)

    with FakeSageMaker(aws_env, tmp_path / "jobs") as fake:
        # What the queue's workers inherit: they are started by `dvc queue start` below.
        env.update({"AWS_ENDPOINT_URL": fake.url, "COUGHLAB_SM_ROLE": ROLE,
                    "COUGHLAB_SM_BUCKET": BUCKET, "COUGHLAB_SM_IMAGE": IMAGE,
                    "OMP_NUM_THREADS": "1"})
        try:
            run("dvc", "exp", "run", "--queue", "-S", "train.backend=sagemaker",
                "-S", "train.sagemaker.instance_type=ml.m5.xlarge", "-S", "train.epochs=2",
                "-S", f"lr={','.join(LRS)}")
            # Not through a pipe: the workers it spawns inherit it and would hold it open.
            with open(tmp_path / "queue-start.log", "w") as log:
                started = subprocess.run(["dvc", "queue", "start", "-j", "3"], cwd=repo,
                                         env=env, stdout=log, stderr=subprocess.STDOUT,
                                         timeout=120)
            assert started.returncode == 0, (tmp_path / "queue-start.log").read_text()
            deadline = time.monotonic() + 900
            while re.search(r"\b(Queued|Running)\b", status := queue_status(repo, env)):
                assert time.monotonic() < deadline, status
                time.sleep(5)
        finally:
            subprocess.run(["dvc", "queue", "stop", "--kill"], cwd=repo, env=env,
                           capture_output=True, timeout=120)
            deadline = time.monotonic() + 120  # the workers leave once told to
            while live_workers(repo) or "Worker status: 0 active, 0 idle" not in (
                    last := queue_status(repo, env)):
                assert time.monotonic() < deadline, f"queue workers still running:\n{last}"
                time.sleep(2)

    assert len(worker_infos(repo)) == 3  # what live_workers watched: -j 3 started three
    assert len(fake.jobs) == 3 and all(done.returncode == 0 for done in fake.jobs.values()), {
        name: done.stderr[-2000:] for name, done in fake.jobs.items()}
    starts, ends = zip(*fake.intervals.values())
    assert max(starts) < min(ends), "the three jobs did not train at the same time"
    assert status.count("Success") == 3, status

    shown = json.loads(run("dvc", "exp", "show", "--json"))
    exps = [exp for baseline in shown for exp in baseline.get("experiments") or []]
    results = {}
    for exp in exps:
        data = exp["revs"][0]["data"]
        lr = data["params"]["params.yaml"]["data"]["lr"]
        results[str(lr)] = (data["outs"]["build/model"]["hash"],
                            data["metrics"]["reports/metrics.json"]["data"])
    assert sorted(results) == sorted(str(float(lr)) for lr in LRS)
    assert len({model for model, _ in results.values()}) == 3  # a model of its own each

    sm = boto3.client("sagemaker", region_name="us-east-1")
    jobs = [sm.describe_training_job(TrainingJobName=j["TrainingJobName"])
            for j in sm.list_training_jobs()["TrainingJobSummaries"]]
    assert sorted(float(j["HyperParameters"]["lr"]) for j in jobs) == sorted(map(float, LRS))
    prefixes = {j["CheckpointConfig"]["S3Uri"] for j in jobs}
    assert len(prefixes) == 3
    for uri in prefixes:
        key = uri.removeprefix(f"s3://{BUCKET}/") + "checkpoint.json"
        assert json.loads(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())["epoch"] == 1


def test_no_answer_to_create_says_the_job_may_exist_and_the_rerun_finds_it(aws_env, tmp_path):
    """A dropped connection is not a refusal: the job may be training; say so, in one line."""
    from botocore.exceptions import ConnectionClosedError

    features = make_features(tmp_path / "features")
    fp = fingerprint(PARAMS, features, IMAGE)
    real = make_clients("us-east-1")
    real.s3.create_bucket(Bucket=BUCKET)
    sm, stub = stubbed("sagemaker")
    no_running_job(stub, fp)

    def dropped(**request):
        raise ConnectionClosedError(endpoint_url="https://api.sagemaker.us-east-1.amazonaws.com")

    sm.create_training_job = dropped
    with stub, pytest.raises(SageMakerError) as raised:
        run_training_job(PARAMS, features, tmp_path / "m", tmp_path / "l", SETTINGS,
                         Clients(real.s3, sm, None), name=JOB, poll_seconds=0)
    message = str(raised.value)
    assert "\n" not in message
    assert message.endswith(
        f"SageMaker did not answer, so {JOB} may have started: a re-run with the same params "
        "and features follows it if it did, else starts one, reusing the features in "
        f"s3://{BUCKET}/exp/coughlab/input/{fp}/features/")
    assert "No job was started" not in message


class PolicyBoundS3:
    """S3 as AWS answers a principal allowed `actions`, for the calls upload_features makes.

    AWS's HeadObject reference: without s3:ListBucket on the bucket, a HEAD of a missing key is
    403 Forbidden, not 404 (and a HEAD has no body, so botocore's code is the bare "403").
    moto does not apply this rule, so it gets this stand-in.
    """

    def __init__(self, actions: set[str]):
        self.actions, self.objects = actions, {}

    def _require(self, action: str, operation: str) -> None:
        if action not in self.actions:
            raise ClientError({"Error": {"Code": "403", "Message": "Forbidden"},
                               "ResponseMetadata": {"HTTPStatusCode": 403}}, operation)

    def head_object(self, Bucket: str, Key: str) -> dict:
        self._require("s3:GetObject", "HeadObject")
        if Key not in self.objects:
            self._require("s3:ListBucket", "HeadObject")
            raise ClientError({"Error": {"Code": "404", "Message": "Not Found"},
                               "ResponseMetadata": {"HTTPStatusCode": 404}}, "HeadObject")
        return {"Metadata": self.objects[Key], "ContentLength": 1}

    def list_objects_v2(self, Bucket: str, Prefix: str, MaxKeys: int = 1000) -> dict:
        self._require("s3:ListBucket", "ListObjectsV2")
        keys = sorted(key for key in self.objects if key.startswith(Prefix))[:MaxKeys]
        return {"KeyCount": len(keys), **({"Contents": [{"Key": k} for k in keys]} if keys else {})}

    def upload_file(self, Filename: str, Bucket: str, Key: str, Callback=None,
                    ExtraArgs=None) -> None:
        self._require("s3:PutObject", "PutObject")
        self.objects[Key] = (ExtraArgs or {}).get("Metadata", {})


@pytest.mark.parametrize("already_there", [False, True], ids=["object missing", "object present"])
def test_the_features_upload_works_with_the_documented_caller_policy(tmp_path, capsys,
                                                                      already_there):
    """The first run (nothing uploaded yet) and the re-run, as docs/iam.md's caller."""
    s3 = PolicyBoundS3({action for action in policy_for("caller") if action.startswith("s3:")})
    features = make_features(tmp_path / "features")
    input_uri = f"s3://{BUCKET}/coughlab/input/{'f' * 64}/features/"
    if already_there:
        upload_features(s3, features, input_uri)
        capsys.readouterr()
    upload_features(s3, features, input_uri)
    assert sorted(s3.objects) == [f"coughlab/input/{'f' * 64}/features/{split}.npz"
                                  for split in ("train", "valid")]
    assert ("is already uploaded" in capsys.readouterr().out) == already_there

