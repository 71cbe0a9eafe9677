"""The PR workflow (.github/workflows/pr.yml) as GitHub would run it: actions pinned by commit SHA,
the AWS role reachable only from a reviewed environment, `dvc pull` of named outputs only, the
report comment posted by .github/scripts/pr_comment.py (run against a stub of GitHub's REST API
on 127.0.0.1), and nothing that actionlint or zizmor find."""
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from github_api_stub import GitHubStub

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
    """Every output DVC knows (dvc.yaml's, interpolated from params.yaml, and data.dvc's)."""
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        return {out.def_path for out in repo.index.outs}


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


# --- the PR comment: .github/scripts/pr_comment.py against GitHub's REST API on loopback ---

SCRIPT = ROOT / ".github" / "scripts" / "pr_comment.py"
REPO, TOKEN, PR = "owner/coughlab", "ghs_test-token", 7
IMAGES_URL = "https://github.com/owner/coughlab/actions/runs/1/artifacts/2"
REPORT = """## Confound check

| metric | main | workspace |
|---|---|---|
| roc_auc | 0.80 | 0.82 |

**roc** (main and workspace)

![roc](pr-plots/roc-0.png)
"""
# What the comment step's ${{ }} expressions stand for in this test's run.
EXPRESSIONS = {"${{ github.token }}": TOKEN, "${{ github.event.pull_request.number }}": str(PR),
               "${{ needs.report.outputs.images-url }}": IMAGES_URL}


@pytest.fixture
def github():
    stub = GitHubStub(REPO, TOKEN)
    yield stub
    stub.close()


def comment_step() -> dict:
    (step,) = [s for s in workflow()["jobs"]["comment"]["steps"]
               if "pr_comment.py" in s.get("run", "")]
    return step


def run_comment_step(github: GitHubStub, job_dir: Path, report: str) -> subprocess.CompletedProcess:
    """The comment job's step as the runner runs it: bash, its env, in the job's checkout."""
    step = comment_step()
    assert "${{" not in step["run"], "expressions go through env:, never into the script"
    (job_dir / "report").mkdir(parents=True, exist_ok=True)
    (job_dir / "report" / "pr-report.md").write_text(report)
    script = job_dir / SCRIPT.relative_to(ROOT)
    script.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(SCRIPT, script)
    env = {name: EXPRESSIONS[value] for name, value in step["env"].items()}
    return subprocess.run(["bash", "-e", "-c", step["run"]], cwd=job_dir, capture_output=True,
                          text=True, env={**env, "PATH": os.environ["PATH"],
                                          "GITHUB_REPOSITORY": REPO, "GITHUB_API_URL": github.url})


def post_report(github: GitHubStub, report_file: Path, *extra: str, token: str = TOKEN):
    return subprocess.run([sys.executable, SCRIPT, report_file, "--repo", REPO, "--pr", str(PR),
                           *extra], capture_output=True, text=True,
                          env={"PATH": os.environ["PATH"], "GITHUB_API_URL": github.url,
                               "GITHUB_TOKEN": token})


def test_the_comment_job_runs_the_repositorys_script_on_the_report_artifact():
    jobs = workflow()["jobs"]
    steps = [step for job in jobs.values() for step in job["steps"]]
    assert not [s for s in steps if re.search(r"\b(npx|npm)\b", s.get("run", ""))]
    (upload,) = [s for s in jobs["report"]["steps"] if "upload-artifact" in s.get("uses", "")]
    assert {"build/pr-report.md", "build/pr-plots"} <= set(upload["with"]["path"].split())
    assert jobs["report"]["outputs"]["images-url"] == \
        f"${{{{ steps.{upload['id']}.outputs.artifact-url }}}}"
    (download,) = [s for s in jobs["comment"]["steps"] if "download-artifact" in s.get("uses", "")]
    assert download["with"] == {"name": upload["with"]["name"], "path": "report"}
    (checkout,) = [s for s in jobs["comment"]["steps"] if "checkout" in s.get("uses", "")]
    assert checkout["with"]["persist-credentials"] is False
    assert SCRIPT.relative_to(ROOT).parent.as_posix() in checkout["with"]["sparse-checkout"].split()
    assert jobs["comment"]["permissions"] == {"contents": "read", "pull-requests": "write"}
    # Forks: no comment, but the report in the job summary.
    assert "GITHUB_STEP_SUMMARY" in " ".join(s.get("run", "") for s in jobs["report"]["steps"])


def test_the_comment_step_creates_one_comment_then_updates_it(github, tmp_path):
    first = run_comment_step(github, tmp_path, REPORT)
    assert first.returncode == 0, first.stderr
    (comment,) = github.comments[PR]
    assert first.stdout.strip() == f"pr_comment: created {comment['html_url']}"
    assert comment["body"].startswith("<!-- coughlab-pr-report -->\n## Confound check")
    assert f"[roc: roc-0.png]({IMAGES_URL})" in comment["body"]
    assert "](pr-plots/" not in comment["body"]  # a comment cannot show the runner's files
    second = run_comment_step(github, tmp_path, REPORT.replace("0.82", "0.85"))
    assert second.returncode == 0, second.stderr
    assert [c["id"] for c in github.comments[PR]] == [comment["id"]]
    assert "0.85" in comment["body"] and "0.82" not in comment["body"]
    assert second.stdout.strip() == f"pr_comment: updated {comment['html_url']}"


def test_the_earlier_comment_is_found_past_the_first_page_and_only_if_ours(github, tmp_path):
    report_file = tmp_path / "pr-report.md"
    report_file.write_text(REPORT)
    planted = github.add(PR, "<!-- coughlab-pr-report -->\nnot ours", login="someone")
    for n in range(150):
        github.add(PR, f"discussion {n}", login="reviewer")
    ours = github.add(PR, "<!-- coughlab-pr-report -->\nold report")
    result = post_report(github, report_file)
    assert result.returncode == 0, result.stderr
    assert "## Confound check" in ours["body"]
    assert planted["body"].endswith("not ours") and len(github.comments[PR]) == 152
    assert [path for method, path in github.calls if method == "GET"] == [
        f"/repos/{REPO}/issues/{PR}/comments?per_page=100",
        f"/repos/{REPO}/issues/{PR}/comments?per_page=100&page=2"]


def test_a_report_longer_than_a_comment_is_cut_with_a_note(github, tmp_path):
    report_file = tmp_path / "pr-report.md"
    report_file.write_text(REPORT + "x" * 70000)
    assert post_report(github, report_file).returncode == 0
    (comment,) = github.comments[PR]
    assert len(comment["body"]) <= 65536
    assert comment["body"].endswith("the whole report is in the `pr-report` artifact._")


@pytest.mark.parametrize("refusal,token,message", [
    ({"POST": (403, "Resource not accessible by integration")}, TOKEN,
     "HTTP 403: Resource not accessible by integration"),
    ({}, "wrong-token", "HTTP 401: Bad credentials"),
])
def test_a_refused_call_is_one_line_naming_githubs_reason(github, tmp_path, refusal, token,
                                                         message):
    report_file = tmp_path / "pr-report.md"
    report_file.write_text(REPORT)
    github.fail.update(refusal)
    result = post_report(github, report_file, token=token)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and github.comments.get(PR, []) == []


def test_without_a_token_or_a_report_it_says_so_in_one_line(github, tmp_path):
    result = post_report(github, tmp_path / "pr-report.md", token="")
    assert (result.returncode, result.stderr) == (1, "pr_comment: GITHUB_TOKEN is not set\n")
    missing = post_report(github, tmp_path / "missing.md")
    assert missing.returncode == 1 and missing.stderr.startswith("pr_comment: cannot read")
    assert github.calls == []


# --- the workflow as actionlint and zizmor read it ----------------------------------------

def dev_tool(name: str) -> Path:
    """A linter from the dev extra, next to this interpreter."""
    tool = Path(sys.executable).parent / name
    if not tool.exists():
        pytest.fail(f"{name} is not installed: pip install -e '.[dev]'")
    return tool


def test_actionlint_with_shellcheck_finds_nothing():
    workflows = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
    result = subprocess.run([dev_tool("actionlint"), "-shellcheck", dev_tool("shellcheck"),
                             "-format", "{{json .}}", *workflows], capture_output=True,
                            text=True, cwd=ROOT)
    findings = json.loads(result.stdout or "null")
    assert findings == [], "\n".join(f"{f['filepath']}:{f['line']}: {f['message']} [{f['kind']}]"
                                     for f in findings or []) or result.stderr


def test_zizmor_pedantic_finds_nothing():
    """Offline audits only (the online ones ask GitHub's API about each pinned action)."""
    result = subprocess.run([dev_tool("zizmor"), "--offline", "--persona=pedantic",
                             "--format=json", ROOT / ".github" / "workflows"],
                            capture_output=True, text=True, cwd=ROOT)
    findings = json.loads(result.stdout or "null")
    assert findings == [], "\n".join(
        f"pr.yml:{f['locations'][0]['concrete']['location']['start_point']['row'] + 1}: "
        f"{f['ident']}: {f['desc']}" for f in findings or []) or result.stderr
