"""docker/lambda.Dockerfile as BuildKit lays the image out, served by a non-root user.

No image is built here (no Docker engine): the Dockerfile's instructions are replayed on a
folder that stands for the image's root file system, with the rules BuildKit documents:

- COPY keeps each file's mode from the build context unless --chmod gives one; the folders it
  creates on the way to the destination get 0755, or, with an octal --chmod, that mode too
  (BuildKit >= 0.21: tonistiigi/fsutil copy.MkdirAll with CopyInfo.Mode, moby/buildkit#5943);
  a symbolic --chmod leaves created folders at 0755 (CopyInfo.ModeStr, not Mode).
- WORKDIR creates its folder 0755; RUN runs with umask 022: its `mkdir [-p] [-m M]` and
  `install -d [-m M]` make folders so, `pip install --target DIR` makes DIR, and
  `python -m compileall DIR` writes its bytecode (this venv's CPython compiles). Other RUN
  commands are not replayed (the Python packages the handler needs are this venv's).

The build context is given private modes (files 0600, as export-lambda once wrote them), so the
image is only readable where the Dockerfile makes it so. The handler then answers the deploy
smoke test's requests as a uid that owns nothing, as Lambda runs container images.
"""
from __future__ import annotations

import io
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pytest

from coughlab.aws.deploy import release

from unprivileged import as_user, free_uid, require_root_and_setpriv

ROOT = Path(__file__).resolve().parents[1]
LAMBDA_DOCKERFILE = ROOT / "docker" / "lambda.Dockerfile"
CONTEXT_FILE_MODE = 0o600
DIRECTORY_MODE = 0o755  # BuildKit's default for folders it creates; also mkdir's under umask 022


@dataclass(frozen=True)
class BaseImage:
    """What a base image brings that the Dockerfile relies on (its documented ENV and folders)."""
    env: dict[str, str]
    workdir: str
    folders: tuple[str, ...]


# The AWS base images for Lambda: LAMBDA_TASK_ROOT=/var/task holds the function code, and is
# the working directory (AWS Lambda developer guide: "Using an AWS base image for Python").
BASE_IMAGES = {
    "public.ecr.aws/lambda/python": BaseImage(
        env={"LAMBDA_TASK_ROOT": "/var/task", "LAMBDA_RUNTIME_DIR": "/var/runtime"},
        workdir="/var/task", folders=("/var/task", "/var/runtime", "/tmp")),
}


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comment lines dropped."""
    result, pending = [], ""
    for line in dockerfile.read_text().splitlines():
        if line.lstrip().startswith("#") or (not pending and not line.strip()):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).strip().partition(" ")
        result.append((keyword.upper(), arguments.strip()))
        pending = ""
    return result


def expand(text: str, variables: dict[str, str]) -> str:
    """${NAME} and $NAME replaced by ARG/ENV values (unknown names stay as written)."""
    return re.sub(r"\$\{(\w+)\}|\$(\w+)",
                  lambda m: variables.get(m.group(1) or m.group(2), m.group(0)), text)


def flags_and_words(arguments: str) -> tuple[dict[str, str], list[str]]:
    """COPY's --flag=value options, and its sources and destination (plain or JSON form)."""
    words = arguments.split()
    flags = dict(w[2:].split("=", 1) for w in words if w.startswith("--"))
    rest = " ".join(w for w in words if not w.startswith("--"))
    return flags, (json.loads(rest) if rest.startswith("[") else rest.split())


def octal_chmod(value: str | None) -> int | None:
    """An octal --chmod as BuildKit reads it; None for none or a symbolic one."""
    if value is None or not re.fullmatch(r"[0-7]{1,4}", value):
        return None
    return int(value, 8)


@dataclass
class ImageTree:
    """An image's root file system laid out in `root`, instruction by instruction."""
    root: Path
    context: Callable[[str], Path]  # build-context path -> the file on this machine
    variables: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"
    cmd: list[str] = field(default_factory=list)

    def host(self, path: str) -> Path:
        return self.root / PurePosixPath(path).relative_to("/")

    def absolute(self, path: str) -> str:
        return str(PurePosixPath(self.workdir, path))

    def make_folders(self, path: str, mode: int, last_mode: int | None = None) -> None:
        """Create the missing folders of `path`, each with `mode` (the last with last_mode)."""
        parts = PurePosixPath(path).parts
        for depth in range(2, len(parts) + 1):
            folder = self.host(str(PurePosixPath(*parts[:depth])))
            if not folder.exists():
                folder.mkdir()
                folder.chmod(last_mode if depth == len(parts) and last_mode is not None
                             else mode)

    def from_(self, arguments: str) -> None:
        image = expand(arguments.split()[0], self.variables)
        name = re.sub(r"(@sha256:[0-9a-f]+|:[\w.-]+)$", "", image)
        if name not in BASE_IMAGES:
            pytest.fail(f"FROM {image}: say in BASE_IMAGES what this base image holds")
        base = BASE_IMAGES[name]
        self.root.mkdir(exist_ok=True)
        self.root.chmod(DIRECTORY_MODE)
        for folder in base.folders:
            self.make_folders(folder, DIRECTORY_MODE)
        self.host("/tmp").chmod(0o1777)
        self.variables |= base.env
        self.workdir = base.workdir

    def copy(self, arguments: str) -> None:
        flags, words = flags_and_words(expand(arguments, self.variables))
        unknown = set(flags) - {"chmod"}
        if unknown:
            pytest.fail(f"COPY --{' --'.join(sorted(unknown))}: not modelled here")
        chmod = flags.get("chmod")
        file_mode = octal_chmod(chmod)
        if chmod is not None and file_mode is None:
            pytest.fail(f"COPY --chmod={chmod}: only octal modes are modelled here")
        folder_mode = DIRECTORY_MODE if file_mode is None else file_mode
        *sources, dest = words
        into_folder = dest.endswith("/") or len(sources) > 1
        dest = self.absolute(dest)
        into_folder = into_folder or self.host(dest).is_dir()
        for source in sources:
            target = str(PurePosixPath(dest, PurePosixPath(source).name)) if into_folder else dest
            self.make_folders(str(PurePosixPath(target).parent), folder_mode)
            shutil.copyfile(self.context(source), self.host(target))
            self.host(target).chmod(CONTEXT_FILE_MODE if file_mode is None else file_mode)

    def run(self, arguments: str) -> None:
        """Replay the folders a RUN command makes (see the module docstring)."""
        for command in re.split(r"&&|;", expand(arguments, self.variables)):
            words = shlex.split(command)
            if not words:
                continue
            if words[:3] == ["python", "-m", "compileall"]:
                self.compile_all(self.absolute(words[-1]))
                continue
            mode = int(words[words.index("-m") + 1], 8) if "-m" in words else None
            paths = [w for i, w in enumerate(words[1:], 1)
                     if not w.startswith("-") and words[i - 1] != "-m"]
            if words[0] == "mkdir":
                for path in paths:
                    if "-p" not in words and not self.host(self.absolute(path)).parent.is_dir():
                        pytest.fail(f"RUN mkdir {path}: its parent does not exist")
                    self.make_folders(self.absolute(path), DIRECTORY_MODE, mode)
            elif words[0] == "install" and "-d" in words:
                for path in paths:
                    self.make_folders(self.absolute(path), DIRECTORY_MODE, mode)
            elif "--target" in words:
                self.make_folders(self.absolute(words[words.index("--target") + 1]),
                                  DIRECTORY_MODE)

    def compile_all(self, folder: str) -> None:
        """`python -m compileall FOLDER` under RUN's umask (this venv's CPython standing for
        the image's): the __pycache__ folders and .pyc files it makes."""
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(self.host(folder))],
                       check=True, preexec_fn=lambda: os.umask(0o022))

    def apply(self, keyword: str, arguments: str) -> None:
        if keyword == "ARG":
            name, _, default = arguments.partition("=")
            self.variables.setdefault(name, expand(default, self.variables))
        elif keyword == "ENV":
            for name, value in re.findall(r"(\w+)=(\S+)", arguments):
                self.variables[name] = expand(value, self.variables)
        elif keyword == "FROM":
            self.from_(arguments)
        elif keyword == "WORKDIR":
            self.workdir = self.absolute(expand(arguments, self.variables))
            self.make_folders(self.workdir, DIRECTORY_MODE)
        elif keyword == "COPY":
            self.copy(arguments)
        elif keyword == "RUN":
            self.run(arguments)
        elif keyword == "CMD":
            self.cmd = json.loads(arguments)
        else:
            pytest.fail(f"{keyword}: not modelled here")


def lay_out(dockerfile: Path, root: Path, context) -> ImageTree:
    tree = ImageTree(root, context)
    for keyword, arguments in instructions(dockerfile):
        tree.apply(keyword, arguments)
    return tree


def unreadable_paths(tree: ImageTree, folder: str) -> list[str]:
    """Paths under `folder` that a user owning nothing could not reach and read."""
    blocked = []
    for path in [tree.host(folder), *sorted(tree.host(folder).rglob("*"))]:
        mode = path.stat().st_mode
        need = stat.S_IROTH | stat.S_IXOTH if path.is_dir() else stat.S_IROTH
        if mode & need != need:
            blocked.append(f"/{path.relative_to(tree.root)} {stat.filemode(mode)}")
    return blocked


def repository_context(model_dir: Path):
    """The build context: this checkout, with build/lambda/ from `model_dir`."""
    def context(source: str) -> Path:
        if source.startswith("build/lambda/"):
            return model_dir / PurePosixPath(source).name
        return ROOT / source
    return context


@pytest.fixture
def image_root():
    """An empty folder standing for an image's root file system, one a non-root user can reach
    (tmp_path's parents are private to root)."""
    root = Path(tempfile.mkdtemp(prefix="image-root-"))
    try:
        yield root
    finally:
        shutil.rmtree(root)


@pytest.mark.parametrize("chmod,folder_mode", [("", 0o755), ("--chmod=0644 ", 0o644),
                                               ("--chmod=0600 ", 0o600)])
def test_copy_gives_the_folders_it_creates_its_chmod(tmp_path, chmod, folder_mode):
    """The model follows BuildKit >= 0.21: created parents get the octal --chmod too."""
    (tmp_path / "Dockerfile").write_text("FROM public.ecr.aws/lambda/python:3.12\n"
                                         f"COPY {chmod}a.txt ${{LAMBDA_TASK_ROOT}}/new/deeper/\n")
    (tmp_path / "a.txt").write_text("a")
    tree = lay_out(tmp_path / "Dockerfile", tmp_path / "root", lambda source: tmp_path / source)
    for folder in ("/var/task/new", "/var/task/new/deeper"):
        assert tree.host(folder).stat().st_mode & 0o7777 == folder_mode, folder
    assert tree.host("/var/task").stat().st_mode & 0o7777 == 0o755  # existed: left alone


def test_every_file_of_the_task_root_is_readable_by_a_user_who_owns_none(exported_model,
                                                                        image_root):
    tree = lay_out(LAMBDA_DOCKERFILE, image_root, repository_context(exported_model["lambda_dir"]))
    task_root = tree.variables["LAMBDA_TASK_ROOT"]
    assert tree.host(task_root).joinpath("model", "model.onnx").is_file()
    assert unreadable_paths(tree, task_root) == []


RUN_HANDLER = """
import importlib, json, sys
module, function = sys.argv[1].rsplit(".", 1)
handler = getattr(importlib.import_module(module), function)
print(json.dumps([handler(event, None) for event in json.load(sys.stdin)]))
"""


class RecordedLambda:
    """A Lambda client whose invocations get the answers the handler gave to the same events."""

    def __init__(self, events: list[dict], answers: list[dict]):
        self.pending = list(zip(events, answers))

    def invoke(self, FunctionName, Qualifier, Payload):  # noqa: N803 - boto3's names
        event, answer = self.pending.pop(0)
        assert json.loads(Payload) == event
        return {"StatusCode": 200, "Payload": io.BytesIO(json.dumps(answer).encode())}


def test_the_image_passes_the_deploy_smoke_test_as_a_non_root_user(exported_model, image_root):
    """Lambda runs a container image as a user that owns none of its files: the page GET and
    the scored POST must both answer, and deploy's smoke test must pass those answers."""
    require_root_and_setpriv()
    uid = free_uid()
    probe = subprocess.run([*as_user(uid), sys.executable, "-c", "import numpy, onnxruntime"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"uid {uid} cannot run {sys.executable}: {probe.stderr.strip()[-200:]}")
    tree = lay_out(LAMBDA_DOCKERFILE, image_root, repository_context(exported_model["lambda_dir"]))
    task_root = tree.host(tree.variables["LAMBDA_TASK_ROOT"])
    events = release.smoke_events()
    result = subprocess.run(
        [*as_user(uid), sys.executable, "-c", RUN_HANDLER, *tree.cmd], cwd=task_root,
        input=json.dumps(events), capture_output=True, text=True,
        env={"PATH": os.environ["PATH"], "PYTHONPATH": str(task_root),
             "LAMBDA_TASK_ROOT": str(task_root), "PYTHONDONTWRITEBYTECODE": "1"})
    assert result.returncode == 0, result.stderr
    page, scored = json.loads(result.stdout.splitlines()[-1])
    assert page["statusCode"] == 200
    assert scored["statusCode"] == 200, f"{scored['body']}\n{result.stderr[-2000:]}"
    version = json.loads((exported_model["lambda_dir"] / "model.json").read_text())["version"]
    assert f"from model {version}" in release.smoke_test(RecordedLambda(events, [page, scored]),
                                                        "coughlab", "1", version)
