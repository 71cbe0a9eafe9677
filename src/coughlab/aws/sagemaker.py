"""train.backend=sagemaker: run the train stage as a SageMaker managed-spot training job.

The stage uploads build/features/{train,valid}.npz, starts a job on our image
(docker/train.Dockerfile, entrypoint coughlab.aws.container) with the training params as
hyperparameters, follows it, and unpacks the job's model.tar.gz into build/model and its
curves (output.tar.gz) into reports/train: the same files the local backend writes, so
dvc.lock records the stage the same way whichever backend ran it.

It talks to the API with boto3, not the SageMaker SDK: the request below is exactly what
AWS receives (tests pin it), and boto3 is a few MB where the SDK is about 1 GB.

Account-specific settings come from the environment, never from params.yaml:
COUGHLAB_SM_ROLE (execution role ARN), COUGHLAB_SM_BUCKET, COUGHLAB_SM_IMAGE (ECR image URI),
AWS_REGION (else boto3's default); credentials from the usual boto3 chain. S3 layout under
s3://$COUGHLAB_SM_BUCKET/<train.sagemaker.s3_prefix>/:
  input/<fingerprint>/features/ the uploaded train.npz and valid.npz (each tagged with its
                             sha256, so a re-run with the same params and features reuses them)
  checkpoints/<fingerprint>/ epoch checkpoints, shared by every job with the same params and
                             features, so a re-run after a failed or stopped job resumes
  output/<job>/output/       model.tar.gz and output.tar.gz

A re-run whose fingerprint has a job still InProgress (the launcher died: network drop, closed
laptop) follows that job instead of starting a second one on the same checkpoints. Every AWS
error ends as one SageMakerError line (coughlab.aws.errors: the quota to raise, the IAM
action denied) that also says what stays in S3 and what a re-run does.
"""
from __future__ import annotations

import os
import tarfile
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from coughlab.atomic import atomic_dir
from coughlab.aws.container import CHANNEL, TRAINING_SPLITS, check_features, hyperparameters
from coughlab.aws.errors import explain
from coughlab.checkpoint import fingerprint
from coughlab.config import Params, SageMakerConfig
from coughlab.digest import sha256_file
from coughlab.nets import MODEL_FILE
from coughlab.progress import progress_bar

ENV_ROLE = "COUGHLAB_SM_ROLE"
ENV_BUCKET = "COUGHLAB_SM_BUCKET"
ENV_IMAGE = "COUGHLAB_SM_IMAGE"
# Set inside the job to the image URI, so the checkpoint fingerprint covers the code that trains.
ENV_TRAINING_IMAGE = "COUGHLAB_TRAINING_IMAGE"
CONTAINER_CHECKPOINTS = "/opt/ml/checkpoints"
LOG_GROUP = "/aws/sagemaker/TrainingJobs"
TERMINAL_STATUSES = ("Completed", "Failed", "Stopped")
# Status polls back off while nothing changes: 10 s, 20 s, 40 s, then every 60 s; back to 10 s
# at each status change, so transitions are seen quickly and a 2-hour job costs ~130 calls.
POLL_SECONDS = 10
MAX_POLL_SECONDS = 60
# CloudWatch Logs error codes that mean "later", not "never": the tail backs off and retries.
THROTTLING_CODES = ("ThrottlingException", "Throttling", "TooManyRequestsException",
                    "RequestLimitExceeded", "ServiceUnavailableException")
MAX_SKIPPED_POLLS = 8  # backoff cap: logs are read at least every 9 polls
CURVES_FILE = "metrics.json"  # dvclive's summary; output.tar.gz must hold it


# The NVIDIA driver AWS documents per SageMaker GPU family (the driver table of "Best practices
# to minimize interruptions during GPU driver upgrades", docs.aws.amazon.com/sagemaker/latest/
# dg/inference-gpu-drivers.html; written for inference hosts, the only per-family driver list
# SageMaker publishes). The image's CUDA 12.6 needs a driver >= 525.60.13.
DOCUMENTED_DRIVERS = {"ml.p2": 470, "ml.p3": 470, "ml.p4d": 470, "ml.p4de": 470, "ml.g4dn": 470,
                      "ml.g5": 470, "ml.g6": 535, "ml.p5": 535, "ml.p5e": 550, "ml.p5en": 550}
IMAGE_CUDA = "12.6"
IMAGE_MIN_DRIVER = 525


class SageMakerError(Exception):
    """The job cannot be started or did not produce a model; the message says why."""


@dataclass(frozen=True)
class AwsSettings:
    role: str
    bucket: str
    image: str
    region: str | None


@dataclass(frozen=True)
class JobPaths:
    """One job's name and S3 locations."""
    name: str
    input_uri: str
    checkpoint_uri: str
    output_uri: str


@dataclass(frozen=True)
class Clients:
    s3: object
    sagemaker: object
    logs: object


def settings_from_env(env=os.environ) -> AwsSettings:
    missing = [name for name in (ENV_ROLE, ENV_BUCKET, ENV_IMAGE) if not env.get(name)]
    if missing:
        raise SageMakerError(f"train.backend=sagemaker needs {', '.join(missing)} in the "
                             "environment (docs/sagemaker.md)")
    role = env[ENV_ROLE]
    if not role.startswith("arn:"):
        raise SageMakerError(f"{ENV_ROLE}={role!r} must be an IAM role ARN "
                             "(arn:aws:iam::<account>:role/<name>)")
    return AwsSettings(role=role, bucket=env[ENV_BUCKET], image=env[ENV_IMAGE],
                       region=env.get("AWS_REGION"))


def make_clients(region: str | None) -> Clients:
    import boto3

    session = boto3.session.Session(region_name=region)
    return Clients(session.client("s3"), session.client("sagemaker"), session.client("logs"))


def validate_job_config(cfg: SageMakerConfig) -> None:
    """Reject settings SageMaker would refuse (or that defeat spot) before uploading anything."""
    problems = []
    if not cfg.instance_type.startswith("ml."):
        problems.append(f"instance_type {cfg.instance_type!r} is not a SageMaker type (ml.*)")
    if cfg.volume_size_gb < 1:
        problems.append(f"volume_size_gb must be at least 1, not {cfg.volume_size_gb}")
    if cfg.max_run_seconds < 1:
        problems.append(f"max_run_seconds must be at least 1, not {cfg.max_run_seconds}")
    if cfg.max_wait_seconds <= cfg.max_run_seconds:
        problems.append(f"max_wait_seconds ({cfg.max_wait_seconds}) must exceed max_run_seconds "
                        f"({cfg.max_run_seconds}): the difference is the time a spot job may "
                        "wait for capacity and restart after interruptions")
    if problems:
        raise SageMakerError("train.sagemaker: " + "; ".join(problems))


def driver_warning(instance_type: str) -> str | None:
    """A warning when AWS documents a driver too old for the image's CUDA on this family.

    A warning, not a refusal: training hosts' drivers are not documented and may be newer.
    """
    family = instance_type.rsplit(".", 1)[0]
    driver = DOCUMENTED_DRIVERS.get(family)
    if driver is None or driver >= IMAGE_MIN_DRIVER:
        return None
    return (f"sagemaker: warning: AWS documents NVIDIA driver {driver} for {family}, older than "
            f"the {IMAGE_MIN_DRIVER} the image's CUDA {IMAGE_CUDA} needs; if the job fails with "
            "'cannot use CUDA', use ml.g6.xlarge (driver 535) or a CPU type")


def job_name(fingerprint_hex: str, now: datetime | None = None) -> str:
    """Unique per launch, 37 characters (SageMaker allows 63), traceable to the params."""
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%d-%H%M%S")
    return f"coughlab-{fingerprint_hex[:12]}-{stamp}"


def job_name_prefix(fingerprint_hex: str) -> str:
    return f"coughlab-{fingerprint_hex[:12]}-"


def job_paths(name: str, fingerprint_hex: str, bucket: str, prefix: str) -> JobPaths:
    root = f"s3://{bucket}/{prefix.strip('/')}"
    return JobPaths(name=name, input_uri=f"{root}/input/{fingerprint_hex}/{CHANNEL}/",
                    checkpoint_uri=f"{root}/checkpoints/{fingerprint_hex}/",
                    output_uri=f"{root}/output/")


def split_s3_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://"):
        raise SageMakerError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[len("s3://"):].partition("/")
    return bucket, key


def training_job_request(job: JobPaths, params: Params, settings: AwsSettings,
                         fingerprint_hex: str) -> dict:
    """The CreateTrainingJob request: our image, spot with checkpoints, params as strings."""
    cfg = params.train.sagemaker
    return {
        "TrainingJobName": job.name,
        "RoleArn": settings.role,
        "AlgorithmSpecification": {"TrainingImage": settings.image, "TrainingInputMode": "File"},
        "HyperParameters": hyperparameters(params),
        "Environment": {ENV_TRAINING_IMAGE: settings.image},
        "InputDataConfig": [{
            "ChannelName": CHANNEL,
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": job.input_uri,
                                            "S3DataDistributionType": "FullyReplicated"}},
            "InputMode": "File",
        }],
        "OutputDataConfig": {"S3OutputPath": job.output_uri},
        "ResourceConfig": {"InstanceType": cfg.instance_type, "InstanceCount": 1,
                           "VolumeSizeInGB": cfg.volume_size_gb},
        "StoppingCondition": {"MaxRuntimeInSeconds": cfg.max_run_seconds,
                              "MaxWaitTimeInSeconds": cfg.max_wait_seconds},
        "EnableManagedSpotTraining": True,
        "CheckpointConfig": {"S3Uri": job.checkpoint_uri, "LocalPath": CONTAINER_CHECKPOINTS},
        "Tags": [{"Key": "coughlab:fingerprint", "Value": fingerprint_hex}],
    }


def uploaded_sha256(s3, bucket: str, key: str) -> str | None:
    """The sha256 an earlier upload_features recorded on the object; None if it is not there.

    Listed before the HEAD: S3 answers a HEAD of a missing key 403, not 404, to a caller
    without s3:ListBucket, so a HEAD alone cannot tell "not uploaded yet" from "forbidden".
    """
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1).get("Contents", [])
    if not any(entry["Key"] == key for entry in listed):
        return None
    return s3.head_object(Bucket=bucket, Key=key).get("Metadata", {}).get("sha256")


def upload_features(s3, features_dir: Path, input_uri: str) -> None:
    """Upload only the splits training reads; the test split never leaves the machine.

    A file already there with the same sha256 (a re-run after a failed start) is not sent
    again. S3 makes an object visible only once its upload completed, so none is half there.
    """
    bucket, prefix = split_s3_uri(input_uri)
    for split in TRAINING_SPLITS:
        path = features_dir / f"{split}.npz"
        digest = sha256_file(path)
        if uploaded_sha256(s3, bucket, f"{prefix}{path.name}") == digest:
            print(f"sagemaker: {input_uri}{path.name} is already uploaded", flush=True)
            continue
        with progress_bar(total=path.stat().st_size, unit="B", unit_scale=True,
                          desc=f"upload {path.name}") as bar:
            s3.upload_file(str(path), bucket, f"{prefix}{path.name}", Callback=bar.update,
                           ExtraArgs={"Metadata": {"sha256": digest}})


def find_running_job(sagemaker, fingerprint_hex: str, checkpoint_uri: str) -> dict | None:
    """The InProgress job launched for this fingerprint, if any (DescribeTrainingJob's answer).

    Found by the deterministic name prefix, confirmed by its checkpoint prefix (which holds
    the whole fingerprint, and the bucket and s3_prefix): that is the job a second launch
    would collide with.
    """
    prefix = job_name_prefix(fingerprint_hex)
    pages = sagemaker.get_paginator("list_training_jobs").paginate(
        NameContains=prefix, StatusEquals="InProgress")
    for page in pages:
        for summary in page["TrainingJobSummaries"]:
            if not summary["TrainingJobName"].startswith(prefix):
                continue
            desc = sagemaker.describe_training_job(TrainingJobName=summary["TrainingJobName"])
            if (desc.get("CheckpointConfig") or {}).get("S3Uri") == checkpoint_uri \
                    and desc["TrainingJobStatus"] == "InProgress":
                return desc
    return None


def paths_of(desc: dict) -> JobPaths:
    """A described job's own name and S3 locations."""
    return JobPaths(name=desc["TrainingJobName"],
                    input_uri=desc["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"],
                    checkpoint_uri=desc["CheckpointConfig"]["S3Uri"],
                    output_uri=desc["OutputDataConfig"]["S3OutputPath"])


class LogTail:
    """Print a job's new CloudWatch log lines; quiet until its streams exist.

    Logs are a convenience: without access to them (or under moto, where the job never logs)
    the status lines alone still follow the job. Throttling and connection errors only delay
    them: the tail skips 1, 2, 4... (at most MAX_SKIPPED_POLLS) polls and resumes where it was,
    since each stream's position is kept.
    """

    def __init__(self, logs, job: str):
        self.logs, self.job = logs, job
        self.tokens: dict[str, str] = {}
        self.readable = True
        self.backoff = 0  # polls to skip after the next transient error
        self.skip = 0

    def poll(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        if not self.readable:
            return
        if self.skip:
            self.skip -= 1
            return
        try:
            streams = self.logs.describe_log_streams(
                logGroupName=LOG_GROUP, logStreamNamePrefix=f"{self.job}/")["logStreams"]
            for stream in streams:
                self.print_new_events(stream["logStreamName"])
        except ClientError as exc:
            code = exc.response["Error"]["Code"]
            if code in THROTTLING_CODES:
                self.back_off(code)
            elif code != "ResourceNotFoundException":  # not yet: the job has not logged
                print(f"sagemaker: cannot read CloudWatch logs ({code}); following status only")
                self.readable = False
        except BotoCoreError as exc:  # connection dropped, endpoint unreachable...
            self.back_off(type(exc).__name__)
        else:
            self.backoff = 0

    def back_off(self, why: str) -> None:
        self.backoff = min(max(1, 2 * self.backoff), MAX_SKIPPED_POLLS)
        self.skip = self.backoff
        print(f"sagemaker: CloudWatch logs: {why}; retrying in {self.backoff + 1} polls",
              flush=True)

    def print_new_events(self, stream: str) -> None:
        host = stream.removeprefix(f"{self.job}/")
        while True:
            request = {"logGroupName": LOG_GROUP, "logStreamName": stream, "startFromHead": True}
            if stream in self.tokens:
                request["nextToken"] = self.tokens[stream]
            page = self.logs.get_log_events(**request)
            for event in page["events"]:
                print(f"[{host}] {event['message'].rstrip()}")
            token = page["nextForwardToken"]
            done = not page["events"] or token == self.tokens.get(stream)
            self.tokens[stream] = token
            if done:
                return


def progress_line(desc: dict, elapsed: float) -> str:
    transitions = desc.get("SecondaryStatusTransitions") or [{}]
    message = transitions[-1].get("StatusMessage", "")
    return (f"sagemaker: {desc['TrainingJobName']} {desc['TrainingJobStatus']}/"
            f"{desc['SecondaryStatus']} after {elapsed:.0f}s" + (f": {message}" if message else ""))


def poll_delays(first: float, cap: float):
    """first, 2*first, 4*first ... capped at `cap`: the pauses between unchanged polls."""
    delay = first
    while True:
        yield delay
        delay = min(cap, delay * 2)


def wait_for_job(clients: Clients, job: str, poll_seconds: float = POLL_SECONDS,
                 sleep=time.sleep, max_poll_seconds: float = MAX_POLL_SECONDS) -> dict:
    """Poll until the job ends, printing each status change and the job's log lines.

    The pause doubles while the status stays the same (up to max_poll_seconds) and starts
    again from poll_seconds when it changes.
    """
    tail = LogTail(clients.logs, job)
    started, last_state = time.monotonic(), None
    while True:
        desc = clients.sagemaker.describe_training_job(TrainingJobName=job)
        state = (desc["TrainingJobStatus"], desc["SecondaryStatus"])
        if state != last_state:
            print(progress_line(desc, time.monotonic() - started), flush=True)
            last_state = state
            delays = poll_delays(poll_seconds, max(poll_seconds, max_poll_seconds))
        tail.poll()
        if desc["TrainingJobStatus"] in TERMINAL_STATUSES:
            return desc
        sleep(next(delays))


def follow_job(clients: Clients, job: JobPaths, poll_seconds: float = POLL_SECONDS,
               sleep=time.sleep) -> dict:
    """`wait_for_job`, except that Ctrl-C also stops the job: a job nobody follows still bills."""
    try:
        return wait_for_job(clients, job.name, poll_seconds, sleep)
    except KeyboardInterrupt:
        stop_job(clients, job, poll_seconds, sleep)
        raise


def stop_job(clients: Clients, job: JobPaths, poll_seconds: float = POLL_SECONDS,
             sleep=time.sleep) -> None:
    """Ask SageMaker to stop the job and wait until it has; never hides the interrupt.

    A job that already ended cannot be stopped (ValidationException): say how it ended. Any
    other refusal is reported too, and the caller re-raises the KeyboardInterrupt either way.
    A second Ctrl-C while waiting leaves the job stopping on its own.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        clients.sagemaker.stop_training_job(TrainingJobName=job.name)
    except (ClientError, BotoCoreError) as exc:
        status = job_status(clients, job.name)
        print(f"sagemaker: interrupted: could not stop {job.name} ({exc}); it is {status}. "
              f"Check it with `aws sagemaker describe-training-job --training-job-name "
              f"{job.name}`", flush=True)
        return
    print(f"sagemaker: interrupted: stopping {job.name}...", flush=True)
    delays = poll_delays(poll_seconds, max(poll_seconds, MAX_POLL_SECONDS))
    while (status := job_status(clients, job.name)) not in (*TERMINAL_STATUSES, "unknown"):
        sleep(next(delays))
    print(f"sagemaker: {job.name} is {status}; re-running the stage resumes from "
          f"{job.checkpoint_uri}", flush=True)


def job_status(clients: Clients, name: str) -> str:
    """The job's TrainingJobStatus, or "unknown" when it cannot be read."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return clients.sagemaker.describe_training_job(TrainingJobName=name)["TrainingJobStatus"]
    except (ClientError, BotoCoreError):
        return "unknown"


def check_outcome(desc: dict, job: JobPaths) -> None:
    status = desc["TrainingJobStatus"]
    if status == "Completed":
        return
    if status == "Failed":
        raise SageMakerError(f"training job {job.name} failed: "
                             f"{desc.get('FailureReason', 'no reason given')}. Its log: "
                             f"CloudWatch {LOG_GROUP}, streams {job.name}/algo-1-*")
    raise SageMakerError(f"training job {job.name} ended {status}/{desc['SecondaryStatus']}; "
                         f"its checkpoints stay in {job.checkpoint_uri} and re-running the "
                         "stage with the same params and features resumes from them")


def cost_line(desc: dict) -> str | None:
    """Billed vs. trained seconds: what managed spot saved on this job."""
    trained, billed = desc.get("TrainingTimeInSeconds"), desc.get("BillableTimeInSeconds")
    if not trained or billed is None:
        return None
    return (f"sagemaker: {trained}s of training, {billed}s billed "
            f"(managed spot saved {1 - billed / trained:.0%})")


def download_tar(s3, uri: str, dest: Path, required: str) -> None:
    """Unpack the tar.gz at `uri` into `dest`, replacing it in one rename."""
    from botocore.exceptions import ClientError

    bucket, key = split_s3_uri(uri)
    try:
        size = s3.head_object(Bucket=bucket, Key=key)["ContentLength"]
    except ClientError as exc:
        raise SageMakerError(f"cannot read {uri}: {explain(exc, 's3')}") from None
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=dest.parent) as tmp:
        archive = Path(tmp) / Path(key).name
        with progress_bar(total=size, unit="B", unit_scale=True,
                          desc=f"download {archive.name}") as bar:
            s3.download_file(bucket, key, str(archive), Callback=bar.update)
        with atomic_dir(dest) as out, tarfile.open(archive) as tar:
            tar.extractall(out, filter="data")  # refuses absolute paths, .. and devices
            if not (out / required).is_file():
                raise SageMakerError(f"{uri} has no {required}; {dest} left as it was")


def start_job(clients: Clients, job: JobPaths, params: Params, settings: AwsSettings,
              fp: str, features_dir: Path) -> None:
    """Upload the features and create the job; an AWS refusal says what stays in S3."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        upload_features(clients.s3, features_dir, job.input_uri)
    except (ClientError, BotoCoreError) as exc:
        raise SageMakerError(f"uploading the features to {job.input_uri} failed: "
                             f"{explain(exc, 's3')}; nothing was started") from None
    try:
        clients.sagemaker.create_training_job(**training_job_request(job, params, settings, fp))
    except ClientError as exc:  # SageMaker answered: it refused
        raise SageMakerError(f"{explain(exc, 'sagemaker')}. No job was started; the features "
                             f"stay in {job.input_uri} and a re-run with the same params and "
                             "features reuses them") from None
    except BotoCoreError as exc:  # no answer: the job may exist all the same
        raise SageMakerError(f"{explain(exc, 'sagemaker')}. SageMaker did not answer, so "
                             f"{job.name} may have started: a re-run with the same params and "
                             "features follows it if it did, else starts one, reusing the "
                             f"features in {job.input_uri}") from None
    print(f"sagemaker: started {job.name} (checkpoints in {job.checkpoint_uri})", flush=True)


def run_training_job(params: Params, features_dir: Path, model_dir: Path, live_dir: Path,
                     settings: AwsSettings, clients: Clients, name: str | None = None,
                     poll_seconds: float = POLL_SECONDS) -> Path:
    """Find or start the job, follow it, download; returns model_dir/model.pt."""
    from botocore.exceptions import BotoCoreError, ClientError

    validate_job_config(params.train.sagemaker)
    check_features(features_dir)
    # The same fingerprint the container computes (it sees the image as $COUGHLAB_TRAINING_IMAGE),
    # so each image gets its own checkpoint prefix.
    fp = fingerprint(params, features_dir, settings.image)
    job = job_paths(name or job_name(fp), fp, settings.bucket, params.train.sagemaker.s3_prefix)
    try:
        running = find_running_job(clients.sagemaker, fp, job.checkpoint_uri)
    except (ClientError, BotoCoreError) as exc:
        raise SageMakerError(f"looking for a job already running these params failed: "
                             f"{explain(exc, 'sagemaker')}; nothing was started") from None
    if running:
        job = paths_of(running)
        print(f"sagemaker: {job.name} is already training these params and features "
              f"({running['SecondaryStatus']}); following it instead of starting another",
              flush=True)
    else:
        if warning := driver_warning(params.train.sagemaker.instance_type):
            print(warning, flush=True)
        start_job(clients, job, params, settings, fp, features_dir)
    try:
        desc = follow_job(clients, job, poll_seconds)
    except (ClientError, BotoCoreError) as exc:
        raise SageMakerError(f"lost track of {job.name}: {explain(exc, 'sagemaker')}; the job "
                             "goes on without us, and re-running the stage follows it again "
                             "(or stop it: aws sagemaker stop-training-job --training-job-name "
                             f"{job.name})") from None
    check_outcome(desc, job)
    if line := cost_line(desc):
        print(line)
    model_uri = desc["ModelArtifacts"]["S3ModelArtifacts"]
    try:
        download_tar(clients.s3, model_uri, model_dir, MODEL_FILE)
        download_tar(clients.s3, model_uri.rsplit("/", 1)[0] + "/output.tar.gz", live_dir,
                     CURVES_FILE)
    except (ClientError, BotoCoreError) as exc:
        raise SageMakerError(f"downloading {job.name}'s artifacts failed: {explain(exc, 's3')}; "
                             f"they stay in {model_uri.rsplit('/', 1)[0]}/") from None
    return model_dir / MODEL_FILE


def train_on_sagemaker(params: Params, features_dir: Path, model_dir: Path,
                       live_dir: Path) -> Path:
    """The train stage's sagemaker backend: settings from the environment, real AWS."""
    settings = settings_from_env()
    return run_training_job(params, features_dir, model_dir, live_dir, settings,
                            make_clients(settings.region))
