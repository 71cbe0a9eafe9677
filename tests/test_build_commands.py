"""The image builds the docs and Dockerfiles tell you to run, read from where they are written.

A push must give ECR an image SageMaker and Lambda take: one linux/amd64 manifest, no
attestation index (--provenance=false; the default --sbom is off), and Docker media types
(`--output type=image,push=true,oci-mediatypes=false`): with Docker Desktop or the containerd
image store, `--push` writes an OCI manifest, which SageMaker has refused ("Unsupported
manifest media type application/vnd.oci.image.manifest.v1+json", aws/amazon-sagemaker-feedback#180).
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "docs" / "sagemaker.md", ROOT / "docs" / "deploying.md"]
DOCKERFILES = sorted((ROOT / "docker").glob("*.Dockerfile"))
# `docker buildx build` options that take a value (the rest are flags such as --push, --load).
VALUE_OPTIONS = {"-f", "--file", "-t", "--tag", "--platform", "-o", "--output", "--build-arg",
                 "--provenance", "--sbom", "--attest", "--target"}


def joined_lines(text: str) -> list[str]:
    """Shell lines with backslash continuations joined."""
    return [line.strip() for line in text.replace("\\\n", " ").splitlines() if line.strip()]


def documented_commands(path: Path) -> list[str]:
    """Commands in a doc's fenced code blocks, or in a Dockerfile's comments."""
    text = path.read_text()
    if path.suffix == ".Dockerfile":
        comments = [line.lstrip("#").strip() for line in text.splitlines() if line.startswith("#")]
        return joined_lines("\n".join(comments))
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", text, re.S)
    return [line for block in blocks for line in joined_lines(block)]


def buildx_builds(path: Path) -> list[dict[str, list[str]]]:
    """Each `docker buildx build` in `path` as {option: [values]} (flags map to [])."""
    builds = []
    for command in documented_commands(path):
        if not command.startswith("docker buildx build "):
            continue
        words = shlex.split(command, comments=True)
        options, rest = {}, iter(words[3:])
        for word in rest:
            name, has_value, value = word.partition("=")
            if not name.startswith("-"):
                continue
            if not has_value and name in VALUE_OPTIONS:
                value = next(rest)
            options.setdefault(name, []).extend([value] if has_value or name in VALUE_OPTIONS
                                                else [])
        builds.append(options)
    return builds


def output_settings(options: dict[str, list[str]]) -> list[dict[str, str]]:
    return [dict(part.partition("=")[::2] for part in value.split(","))
            for value in options.get("--output", []) + options.get("-o", [])]


def pushes(options: dict[str, list[str]]) -> bool:
    return "--push" in options or any(
        out.get("type") == "registry" or out.get("push") == "true"
        for out in output_settings(options))


def all_builds() -> list[tuple[str, dict[str, list[str]]]]:
    return [(path.relative_to(ROOT).as_posix(), build)
            for path in DOCS + DOCKERFILES for build in buildx_builds(path)]


def test_the_training_image_push_is_documented_where_sagemaker_md_says():
    pushed = [build["-f"] for where, build in all_builds()
              if where == "docs/sagemaker.md" and pushes(build)]
    assert ["docker/train.Dockerfile"] in pushed


@pytest.mark.parametrize("where,build", [b for b in all_builds() if pushes(b[1])],
                         ids=lambda value: value if isinstance(value, str) else "")
def test_every_documented_push_asks_for_docker_media_types_and_no_attestations(where, build):
    assert "--push" not in build, f"{where}: --push keeps the builder's media types (OCI with " \
        "the containerd image store); use --output type=image,push=true,oci-mediatypes=false"
    (output,) = output_settings(build)
    assert output == {"type": "image", "push": "true", "oci-mediatypes": "false"}, where
    assert build.get("--provenance") == ["false"], where
    assert "--sbom" not in build and "--attest" not in build, where
    assert build.get("--platform") == ["linux/amd64"], where


@pytest.mark.parametrize("where,build", all_builds(),
                         ids=lambda value: value if isinstance(value, str) else "")
def test_every_documented_build_is_one_amd64_image_without_attestations(where, build):
    assert build.get("--platform") == ["linux/amd64"], where
    assert build.get("--provenance") == ["false"], where
