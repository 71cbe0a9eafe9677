"""The deployment zip: pinned dependencies cross-installed for the runtime, handler and model.

Dependencies: lambda/requirements.txt installed for manylinux_2_28 x86_64 CPython 3.12 by pip's
cross-platform mode (cached under the build folder, keyed by the pins). The zip: dependencies +
handler.py at the root + model/{model.onnx,model.json} (model.json with the deploying
`git_commit` added, which every response names), byte-for-byte reproducible, refused if it
would unzip past Lambda's 250 MB (it goes up via S3, so the 50 MB direct-upload cap does not
apply).

Bytecode: Lambda's task root is read-only, so a module shipped without its .pyc is compiled
again at every cold start (numpy, soundfile and onnxruntime: about 0.2 s more on CPython 3.12,
docs/benchmarks.md). The zip therefore carries the CPython 3.12 bytecode of the handler and of
every module it imports from the dependencies (found by importing them, not listed by hand),
compiled by a CPython 3.12 here as unchecked-hash .pyc files: valid whatever the files' dates
after unzipping, and the same bytes on every build. Not all of it: the whole tree's bytecode
(19 MB) would not fit under the 250 MB limit.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
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
# Console scripts (their shebangs name this machine's python) and this machine's bytecode are
# useless there (the runtime's is compiled for it: compile_bytecode).
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


def find_python(version: str = PYTHON_VERSION) -> Path | None:
    """A CPython `version` that runs here (its interpreter itself, not a pyenv shim, which
    needs this shell's environment): on PATH, else the newest one pyenv installed."""
    versions = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    installed = sorted(versions.glob(f"{version}.*/bin/python{version}"),
                       key=lambda p: [int(n) for n in p.parts[-3].split(".") if n.isdigit()])
    on_path = shutil.which(f"python{version}")
    for candidate in [*([Path(on_path)] if on_path else []), *reversed(installed)]:
        found = subprocess.run(  # a pyenv shim may refuse
            [candidate, "-c", "import sys; print(*sys.version_info[:2], sys.executable)"],
            capture_output=True, text=True)
        major, minor, executable = (found.stdout.split() + ["", "", ""])[:3]
        if found.returncode == 0 and [major, minor] == version.split(".") and executable:
            return Path(executable)
    return None


def runtime_python() -> Path:
    """The CPython of the Lambda runtime's version, which compiles the package's bytecode."""
    python = find_python(PYTHON_VERSION)
    if python is None:
        raise DeployError(f"no CPython {PYTHON_VERSION} here ({RUNTIME}'s): the zip ships "
                          "bytecode compiled by it (without, every cold start compiles numpy "
                          f"again). Install one, e.g. `pyenv install {PYTHON_VERSION}`")
    return python


# Run by the runtime's CPython, isolated (-I -S -B: nothing of this machine's site-packages,
# no bytecode written into the dependency cache): import the handler and every top-level
# package it imports anywhere (the lazy ones too) that the dependencies hold; print the
# dependency sources then loaded.
IMPORT_PROBE = """
import ast, importlib, importlib.util, json, sys
from pathlib import Path
handler, deps = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
sys.path[:0] = [str(handler.parent), str(deps)]
tree = ast.parse(handler.read_text())
names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module
          and not n.level}
importlib.import_module(handler.stem)
for name in sorted({name.split(".")[0] for name in names}):
    spec = importlib.util.find_spec(name)
    if spec and spec.origin and deps in Path(spec.origin).resolve().parents:
        importlib.import_module(name)
files = {Path(m.__file__).resolve() for m in list(sys.modules.values())
         if getattr(m, "__file__", None) and m.__file__.endswith(".py")}
print(json.dumps(sorted(str(f.relative_to(deps)) for f in files if deps in f.parents)))
"""
# Run by the runtime's CPython in a fresh process (no module of the sources imported, so the
# bytes depend on the sources alone): compile (source, archive name) pairs to .pyc files.
COMPILE = """
import importlib.util, json, py_compile, sys
from pathlib import Path
out = Path(sys.argv[1])
for source, name in json.load(sys.stdin):
    cfile = out / importlib.util.cache_from_source(name)
    py_compile.compile(source, cfile=str(cfile), dfile=name, doraise=True,
                       invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
    print(cfile.relative_to(out).as_posix())
"""


def compile_bytecode(python: Path, deps_dir: Path, handler: Path, out: Path) -> dict[str, Path]:
    """Archive name -> .pyc in `out`: the runtime's bytecode of handler.py and of what it
    imports from `deps_dir`. Refuses dependencies the handler cannot import with."""
    probe = subprocess.run([python, "-I", "-S", "-B", "-c", IMPORT_PROBE, handler, deps_dir],
                           capture_output=True, text=True, env={"MODEL_DIR": str(out)})
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        raise DeployError(f"{handler.name} does not import under {RUNTIME} with the "
                          f"dependencies in {deps_dir}: {last}")
    sources = [(str(deps_dir / name), Path(name).as_posix()) for name in json.loads(probe.stdout)]
    sources.append((str(handler), "handler.py"))
    compiled = subprocess.run([python, "-I", "-S", "-B", "-c", COMPILE, out],
                              input=json.dumps(sources), capture_output=True, text=True)
    if compiled.returncode != 0:
        raise DeployError(f"{RUNTIME} could not compile the package's modules: "
                          f"{compiled.stderr.strip()[-500:]}")
    return {name: out / name for name in compiled.stdout.split()}


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


def build_zip(deps_dir: Path, handler: Path, model_dir: Path, out: Path, *,
              python: Path | None, max_unzipped_bytes: int = UNZIPPED_LIMIT,
              git_commit: str | None = None) -> Package:
    """Write the deployment zip (atomically, reproducibly); refuse one Lambda would reject.

    `python`: the runtime's CPython (runtime_python()), which compiles the bytecode the zip
    carries; None ships none (for fake dependencies in tests, and the benchmark's comparison).
    With `git_commit` (the CLI always passes it, after the gate) the shipped model.json names it.
    """
    meta = read_model_meta(model_dir)
    entries = package_entries(deps_dir, handler, model_dir, meta)
    with tempfile.TemporaryDirectory() as bytecode:
        if python is not None:
            entries |= compile_bytecode(python, deps_dir, handler, Path(bytecode))
        if git_commit is not None:
            entries["model/model.json"] = stamp_git_commit(
                model_dir / "model.json", git_commit, out.with_name(f"{out.stem}.model.json"))
        return write_zip(entries, out, max_unzipped_bytes)


def write_zip(entries: dict[str, Path], out: Path, max_unzipped_bytes: int) -> Package:
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
