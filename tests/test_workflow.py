"""The PR workflow (.github/workflows/pr.yml) as GitHub would run it: actions pinned by commit SHA,
the AWS role reachable only from a reviewed environment, and `dvc pull` of named outputs only."""
import json
import re
import shlex
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github" / "workflows" / "pr.yml"
IAM = ROOT / "docs" / "iam.md"
# Outputs that hold the recordings themselves (licensed audio): never pulled into CI, whose
# artifacts anyone who can read the run may download.
RECORDINGS = {"data", "build/fetched", "build/combined"}
AUDIO = {".wav", ".mp3", ".flac", ".ogg", ".webm", ".m4a", ".mp4"}


def workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def steps():
    """(job name, job, step) for every step of every job."""
    for name, job in workflow()["jobs"].items():
        for step in job["steps"]:
            yield name, job, step


def test_every_action_is_pinned_by_commit_sha_with_its_release_in_a_comment():
    lines = re.findall(r"^\s*(?:-\s+)?uses:\s*(\S+)(.*)$", WORKFLOW.read_text(), re.M)
    assert sorted(action for action, _ in lines) == sorted(
        step["uses"] for _, _, step in steps() if "uses" in step)  # the regex saw them all
    for action, comment in lines:
        ref = action.partition("@")[2]
        assert re.fullmatch(r"[0-9a-f]{40}", ref), f"{action}: pin by full commit SHA, not a tag"
        assert re.fullmatch(r"\s*#\s*v\d+(\.\d+)*", comment), f"{action}: name its tag in a comment"


def ci_trust_policy() -> dict:
    """The trust policy (the document with a Principal) under docs/iam.md's **CI** heading."""
    chunk = IAM.read_text().split("\n**CI**", 1)[1].split("\n**", 1)[0]
    documents = [json.loads(block) for block in re.findall(r"```json\n(.*?)```", chunk, re.S)]
    (trust,) = [d for d in documents if any("Principal" in s for s in d["Statement"])]
    return trust


def test_the_oidc_role_trusts_only_the_environment_its_job_runs_in():
    oidc_jobs = [(name, job) for name, job in workflow()["jobs"].items()
                 if job.get("permissions", {}).get("id-token") == "write"]
    ((name, job),) = oidc_jobs
    environment = job.get("environment")
    assert environment, f"job {name} assumes the AWS role outside a GitHub environment"
    environment = environment if isinstance(environment, str) else environment["name"]
    (statement,) = ci_trust_policy()["Statement"]
    assert statement["Action"] == "sts:AssumeRoleWithWebIdentity"
    assert set(statement["Condition"]) == {"StringEquals"}  # no StringLike wildcards
    assert statement["Condition"]["StringEquals"] == {
        "token.actions.githubusercontent.com:aud": "sts.amazonaws.com",
        "token.actions.githubusercontent.com:sub": f"repo:OWNER/REPO:environment:{environment}"}


def declared_outputs() -> set[str]:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    outs = {next(iter(out)) if isinstance(out, dict) else out
            for stage in stages.values() for out in stage.get("outs", [])}
    return outs | {"data"}  # data.dvc


def dvc_pull_targets() -> list[list[str]]:
    """The targets of every `dvc pull` in the workflow, its env variables substituted."""
    pulls = []
    for _, job, step in steps():
        env = {**workflow().get("env", {}), **job.get("env", {}), **step.get("env", {})}
        for line in step.get("run", "").splitlines():
            if re.search(r"\bdvc\s+pull\b", line):
                line = re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), m.group(0)), line)
                words = shlex.split(line)
                after = words[words.index("pull") + 1:]
                pulls.append([w for w in after if not w.startswith("-")])
    return pulls


def test_dvc_pull_names_the_outputs_the_report_needs_and_no_recordings():
    pulls = dvc_pull_targets()
    assert pulls, "the dvc-cache job pulls nothing"
    outputs = declared_outputs()
    for targets in pulls:
        assert targets, "a bare `dvc pull` pulls every output, recordings included"
        for target in targets:
            owner = [out for out in outputs if target == out or target.startswith(out + "/")]
            assert owner, f"dvc pull {target}: not an output dvc.yaml declares"
            assert target not in RECORDINGS and Path(target).suffix not in AUDIO, target
        assert "build/lambda" in targets  # the model card the report includes


def test_the_comment_is_posted_by_cml_with_the_plot_images():
    jobs = workflow()["jobs"]
    runs = " ".join(step.get("run", "") for step in jobs["comment"]["steps"])
    assert re.search(r"@dvcorg/cml@\d+\.\d+\.\d+ comment update report/pr-report\.md", runs)
    (upload,) = [s for s in jobs["report"]["steps"] if "upload-artifact" in s.get("uses", "")]
    assert {"build/pr-report.md", "build/pr-plots"} <= set(upload["with"]["path"].split())
    (download,) = [s for s in jobs["comment"]["steps"] if "download-artifact" in s.get("uses", "")]
    assert download["with"] == {"name": upload["with"]["name"], "path": "report"}
    # Forks: no comment, but the report in the job summary.
    assert "GITHUB_STEP_SUMMARY" in " ".join(s.get("run", "") for s in jobs["report"]["steps"])
