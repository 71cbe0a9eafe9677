"""The deployment zip: pinned dependencies cross-installed for the runtime, handler and model.

Dependencies: lambda/requirements.txt installed for manylinux_2_28 x86_64 CPython 3.12 by pip's
cross-platform mode (cached under the build folder, keyed by the pins). The zip: dependencies +
handler.py at the root + model/{model.onnx,model.json} (model.json with the deploying
`git_commit` added, which every response names), byte-for-byte reproducible, refused if it
would unzip past Lambda's 250 MB (it goes up via S3, so the 50 MB direct-upload cap does not
apply).
"""
from __future__ import annotations

import base64
import hashlib
import shutil
import stat
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from coughlab.atomic import atomic_dir, atomic_file
from coughlab.aws.deploy import DeployError
from coughlab.aws.deploy.gate import FILE_FIELDS, model_file, read_model_meta, stamp_git_commit
from coughlab.digest import sha256_file
from coughlab.progress import progress_bar

HANDLER = Path("lambda/handler.py")
REQUIREMENTS = Path("lambda/requirements.txt")
BUILD_DIR = Path("build/deploy")
RUNTIME = "python3.12"
PYTHON_VERSION = "3.12"
# pip widens only the legacy manylinux2014/2010 tags to older ones, so list every tag a
# glibc-2.28 target can load (the python3.12 runtime, Amazon Linux 2023, has glibc 2.34).
WHEEL_PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(28, 16, -1)] + [
    "manylinux2014_x86_64"]
# Console scripts (their shebangs name this machine's python) and bytecode are useless there.
SKIPPED_DEPENDENCY_PARTS = {"bin", "__pycache__"}
MIB = 2**20
UNZIPPED_LIMIT = 250 * MIB  # Lambda's "250 MB" cap on the unzipped deployment package
ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed timestamps: same inputs, same zip, same CodeSha256


@dataclass(frozen=True)
class Package:
    path: Path
    sha256: str
    zipped_bytes: int
    unzipped_bytes: int

    @property
    def code_sha256(self) -> str:
        """The zip's digest as Lambda reports it (base64), to check AWS got these bytes."""
        return base64.b64encode(bytes.fromhex(self.sha256)).decode()


def pip_install_command(requirements: Path, target: Path) -> list[str]:
    """pip installing the Lambda's wheels for linux x86_64 CPython 3.12, whatever the host.

    --require-hashes: every wheel must match the sha256 pinned in the requirements file.
    """
    platforms = [arg for tag in WHEEL_PLATFORMS for arg in ("--platform", tag)]
    return [sys.executable, "-m", "pip", "install", "--quiet", "--no-compile",
            "--disable-pip-version-check", "--require-hashes", "--only-binary=:all:",
            "--implementation", "cp",
            "--python-version", PYTHON_VERSION, *platforms, "--target", str(target),
            "-r", str(requirements)]


def ensure_dependencies(requirements: Path, cache_root: Path) -> Path:
    """The installed wheels for `requirements`, built once per distinct pin set and reused."""
    key = hashlib.sha256("\n".join([requirements.read_text(), PYTHON_VERSION, *WHEEL_PLATFORMS])
                         .encode()).hexdigest()[:16]
    target = cache_root / f"deps-{key}"
    if target.is_dir():
        print(f"deploy: reusing cached dependencies {target}")
        return target
    print(f"deploy: installing {requirements} for {RUNTIME} manylinux x86_64 into {target}")
    with atomic_dir(target) as tmp:
        result = subprocess.run(pip_install_command(requirements, tmp))
        if result.returncode != 0:
            raise DeployError(f"pip could not install {requirements} for {RUNTIME} "
                              f"manylinux x86_64 (exit {result.returncode}); see pip's "
                              "output above")
    return target


def package_entries(deps_dir: Path, handler: Path, model_dir: Path, meta: dict) -> dict[str, Path]:
    """Archive name -> source file: the dependencies, then handler.py and model/ at the root."""
    entries = {p.relative_to(deps_dir).as_posix(): p for p in sorted(deps_dir.rglob("*"))
               if p.is_file() and not SKIPPED_DEPENDENCY_PARTS & set(p.relative_to(deps_dir).parts)}
    ours = {"handler.py": handler, "page.html": handler.parent / "page.html",
            "model/model.json": model_dir / "model.json"}
    for field in FILE_FIELDS:  # the model_card is served at GET ?model_card, linked from the page
        if field == "onnx_file" or meta.get(field) is not None:
            ours[f"model/{meta[field]}"] = model_file(model_dir, meta, field)
    clashes = [name for name in entries if name in ours or name.startswith("model/")]
    if clashes:
        raise DeployError(f"{deps_dir} holds files that would shadow the handler or model: "
                          f"{clashes}")
    return entries | ours


def build_zip(deps_dir: Path, handler: Path, model_dir: Path, out: Path,
              max_unzipped_bytes: int = UNZIPPED_LIMIT, git_commit: str | None = None) -> Package:
    """Write the deployment zip (atomically, reproducibly); refuse one Lambda would reject.

    With `git_commit` (the CLI always passes it, after the gate) the shipped model.json names it.
    """
    meta = read_model_meta(model_dir)
    entries = package_entries(deps_dir, handler, model_dir, meta)
    if git_commit is not None:
        entries["model/model.json"] = stamp_git_commit(
            model_dir / "model.json", git_commit, out.with_name(f"{out.stem}.model.json"))
    unzipped = sum(path.stat().st_size for path in entries.values())
    if unzipped > max_unzipped_bytes:
        raise DeployError(f"the package would unzip to {unzipped / MIB:.1f} MiB, over Lambda's "
                          f"{max_unzipped_bytes / MIB:.1f} MiB limit; use the container image "
                          "(docker/lambda.Dockerfile, --image-uri) instead")
    with (atomic_file(out) as fh, zipfile.ZipFile(fh, "w", zipfile.ZIP_DEFLATED) as zf,
          progress_bar(total=unzipped, desc="zip", unit="B", unit_scale=True, leave=False) as bar):
        for name, path in entries.items():
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            executable = path.stat().st_mode & stat.S_IXUSR
            info.external_attr = (stat.S_IFREG | (0o755 if executable else 0o644)) << 16
            with path.open("rb") as src, zf.open(info, "w") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            bar.update(path.stat().st_size)
    return Package(out, sha256_file(out), out.stat().st_size, unzipped)
