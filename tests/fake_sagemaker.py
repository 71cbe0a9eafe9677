"""moto_server plus the one thing moto leaves out: a training job that trains.

moto completes a CreateTrainingJob at once and writes nothing. This loopback proxy forwards
every request to moto_server, and on a CreateTrainingJob also runs the job the way SageMaker
would, in a thread: it lays out /opt/ml from the request (hyperparameters, resourceconfig, the
S3 input channel, the checkpoints already under CheckpointConfig.S3Uri), runs
`python -m coughlab.aws.container train` on it, then syncs the checkpoints back and uploads
model.tar.gz and output.tar.gz under OutputDataConfig. Until it has, DescribeTrainingJob and
ListTrainingJobs answer InProgress/Training instead of moto's Completed (Failed if the
container failed), so the launcher polls as it would against SageMaker.
"""
from __future__ import annotations

import http.client
import http.server
import json
import os
import subprocess
import sys
import tarfile
import threading
import time
import traceback
from pathlib import Path
from urllib.parse import urlsplit

import boto3

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
              "proxy-authorization", "proxy-authenticate"}


def split_s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


class FakeSageMaker:
    def __init__(self, moto_url: str, workdir: Path):
        self.moto = urlsplit(moto_url)
        self.moto_url = moto_url
        self.workdir = workdir
        self.jobs: dict[str, subprocess.CompletedProcess] = {}
        self.intervals: dict[str, tuple[float, float]] = {}  # time.monotonic() start, end
        self.running: dict[str, threading.Thread] = {}
        self.lock = threading.Lock()
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    data = b""
                    while size := int(self.rfile.readline().split(b";")[0], 16):
                        data += self.rfile.read(size)
                        self.rfile.readline()
                    self.rfile.readline()
                    return data
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def forward(self):
                body = self.body()
                target = self.headers.get("X-Amz-Target", "")
                conn = http.client.HTTPConnection(fake.moto.hostname, fake.moto.port, timeout=120)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                headers["Content-Length"] = str(len(body))
                conn.request(self.command, self.path, body=body, headers=headers)
                answer = conn.getresponse()
                data = answer.read()
                if target == "SageMaker.CreateTrainingJob" and answer.status == 200:
                    fake.start_job(json.loads(body))
                elif target in ("SageMaker.DescribeTrainingJob", "SageMaker.ListTrainingJobs") \
                        and answer.status == 200:
                    data = json.dumps(fake.overlay(json.loads(data))).encode()
                self.send_response(answer.status, answer.reason)
                for key, value in answer.getheaders():
                    if key.lower() not in HOP_BY_HOP and key.lower() != "content-length":
                        self.send_header(key, value)
                # A HEAD answer's Content-Length is the object's size, not the empty body's.
                self.send_header("Content-Length", answer.getheader("Content-Length", "0")
                                 if self.command == "HEAD" else str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeSageMaker:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)

    def start_job(self, request: dict) -> None:
        name = request["TrainingJobName"]
        thread = threading.Thread(target=self.run_job, args=(request,), daemon=True)
        with self.lock:
            self.running[name] = thread
        thread.start()

    def state(self, name: str) -> tuple[str, str] | None:
        """The job's (status, secondary status) while ours differs from moto's; else None."""
        with self.lock:
            if name in self.running:
                return "InProgress", "Training"
            if name in self.jobs and self.jobs[name].returncode != 0:
                return "Failed", "Failed"
        return None

    def overlay(self, answer: dict) -> dict:
        """moto's answer, with each of our jobs' true status."""
        for job in [answer, *answer.get("TrainingJobSummaries", [])]:
            if "TrainingJobName" in job and (state := self.state(job["TrainingJobName"])):
                job["TrainingJobStatus"] = state[0]
                if "SecondaryStatus" in answer:
                    job["SecondaryStatus"] = state[1]
                if state[0] == "Failed":
                    job["FailureReason"] = "AlgorithmError: see the fake's captured stderr"
        return answer  # (ListTrainingJobs' StatusEquals was applied by moto, to its status)

    def wait(self, timeout: float) -> None:
        """Until every job started so far has ended."""
        for thread in list(self.running.values()):
            thread.join(timeout)

    def s3(self):
        return boto3.client("s3", endpoint_url=self.moto_url, region_name="us-east-1")

    def run_job(self, request: dict) -> None:
        """What SageMaker does between CreateTrainingJob and Completed, on this machine."""
        name = request["TrainingJobName"]
        started = time.monotonic()
        try:
            done = self.train(request)
        except Exception:  # the fake itself broke: the job fails, the test shows why
            done = subprocess.CompletedProcess([], -1, "", traceback.format_exc())
        with self.lock:
            self.jobs[name] = done
            self.intervals[name] = (started, time.monotonic())
            del self.running[name]

    def train(self, request: dict) -> subprocess.CompletedProcess:
        name = request["TrainingJobName"]
        base = self.workdir / name
        s3 = self.s3()
        (base / "input" / "config").mkdir(parents=True)
        (base / "input" / "config" / "hyperparameters.json").write_text(
            json.dumps(request["HyperParameters"]))
        (base / "input" / "config" / "resourceconfig.json").write_text(json.dumps(
            {"current_host": "algo-1", "hosts": ["algo-1"],
             "current_instance_type": request["ResourceConfig"]["InstanceType"]}))
        channel = request["InputDataConfig"][0]
        self.download_prefix(s3, channel["DataSource"]["S3DataSource"]["S3Uri"],
                             base / "input" / "data" / channel["ChannelName"])
        checkpoints = request["CheckpointConfig"]["S3Uri"]
        self.download_prefix(s3, checkpoints, base / "checkpoints")
        (base / "output" / "data").mkdir(parents=True)
        env = {**os.environ, **request.get("Environment", {}), "OMP_NUM_THREADS": "1"}
        for key in [k for k in env if k.startswith("AWS_")]:
            del env[key]  # the container gets the execution role, not the caller's settings
        done = subprocess.run([sys.executable, "-m", "coughlab.aws.container", "train",
                               "--base-dir", str(base)], env=env, capture_output=True,
                              text=True, timeout=600)
        if done.returncode == 0:
            self.publish(s3, request, base)
        return done

    def publish(self, s3, request: dict, base: Path) -> None:
        """SageMaker's end of a Completed job: checkpoints synced, model/ and output/data packed."""
        name = request["TrainingJobName"]
        checkpoints = request["CheckpointConfig"]["S3Uri"]
        bucket, prefix = split_s3(checkpoints)
        for path in sorted((base / "checkpoints").rglob("*")):
            if path.is_file():
                s3.upload_file(str(path), bucket,
                               prefix + path.relative_to(base / "checkpoints").as_posix())
        out_bucket, out_prefix = split_s3(request["OutputDataConfig"]["S3OutputPath"])
        for archive, folder in (("model.tar.gz", base / "model"),
                                ("output.tar.gz", base / "output" / "data")):
            packed = base / archive
            with tarfile.open(packed, "w:gz") as tar:
                for path in sorted(folder.rglob("*")):
                    tar.add(path, arcname=path.relative_to(folder).as_posix(), recursive=False)
            s3.upload_file(str(packed), out_bucket,
                           f"{out_prefix.rstrip('/')}/{name}/output/{archive}".lstrip("/"))

    @staticmethod
    def download_prefix(s3, uri: str, dest: Path) -> None:
        bucket, prefix = split_s3(uri)
        dest.mkdir(parents=True, exist_ok=True)
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                target = dest / obj["Key"][len(prefix):].lstrip("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                s3.download_file(bucket, obj["Key"], str(target))
