"""dvc.yaml is derived from the code, not kept by hand: every stage depends on exactly the
project files its module imports, paths have one home, and the params lists match the code."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from coughlab import checkpoint, provenance
from coughlab.closure import SRC, module_closure
from coughlab.config import compose

ROOT = Path(__file__).resolve().parents[1]
DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())
STAGES = DVC["stages"]
PARAMS = compose(ROOT / "conf")


def stage_module(stage: dict) -> str:
    return next(word for word in stage["cmd"].split() if word.startswith("coughlab."))


def interpolated(text: str) -> str:
    """A dvc.yaml string with ${group.key} replaced by params.yaml's value, as DVC does."""
    import re

    def value(match):
        node = PARAMS
        for key in match.group(1).split("."):
            node = node[key]
        return str(node)
    return re.sub(r"\$\{([\w.]+)\}", value, text)


def deps(stage: dict) -> list[str]:
    return [interpolated(d) for d in stage["deps"]]


def project_code(paths: list[str]) -> set[str]:
    """The dep entries that are project code (src/coughlab), directories expanded to files."""
    files = set()
    for dep in paths:
        path = ROOT / dep
        if dep.startswith("src/coughlab"):
            found = sorted(path.rglob("*.py")) if path.is_dir() else [path]
            files.update(p.relative_to(ROOT).as_posix() for p in found)
    return files


@pytest.mark.parametrize("name", sorted(STAGES))
def test_a_stage_depends_on_exactly_the_code_it_imports(name):
    """Editing any file a stage executes re-runs it; editing a file it does not never does.
    (Today's bug: evaluate imported model.py, audio.py, config.py... undeclared, so a changed
    window_proba shipped a new graph under the old metrics.)"""
    imported = {f"src/{p.as_posix()}" for p in module_closure(stage_module(STAGES[name]))}
    declared = project_code(deps(STAGES[name]))
    assert imported - declared == set(), f"{name}: undeclared deps {sorted(imported - declared)}"
    # A source package declared whole (for its data files) may hold modules not imported.
    declared_files = {d for d in deps(STAGES[name]) if d.startswith("src/") and d.endswith(".py")}
    assert declared_files - imported == set(), f"{name}: deps it never imports"
    # Code a stage runs by path (the Lambda handler, loaded as the runtime would) counts too.
    for path in ("lambda/handler.py", "lambda/page.html"):
        if any(f'Path("{path}")' in (ROOT / f).read_text() for f in imported):
            assert path in deps(STAGES[name]), f"{name} runs {path} but does not declare it"


def test_every_stage_is_a_module_of_coughlab_stages():
    for name, stage in STAGES.items():
        module = stage_module(stage)
        assert module == "coughlab.stages." + name.replace("-", "_"), name


def test_conf_folders_are_not_file_deps():
    """params.yaml carries conf/'s values key by key; conf/ as a file dep would re-run a stage
    for a comment edit."""
    for name, stage in STAGES.items():
        assert not any(d.startswith("conf") for d in deps(stage)), name


def test_paths_have_one_home():
    """Every build/ and reports/ path in dvc.yaml is interpolated from params.yaml's paths."""
    text = (ROOT / "dvc.yaml").read_text()
    for line in text.splitlines():
        code = line.split("#")[0]
        assert "build/" not in code and "reports/" not in code, line
    assert provenance.RECORD.as_posix() == PARAMS["paths"]["record"]


def test_the_closure_follows_every_import_form(tmp_path):
    pkg = tmp_path / "coughlab"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("LABELS = ()\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from coughlab import LABELS, b\nimport coughlab.sub.c\n")
    (pkg / "b.py").write_text("def f():\n    from coughlab.d import x  # lazy: runs too\n")
    (pkg / "sub" / "c.py").write_text("")
    (pkg / "d.py").write_text("x = 1\n")
    (pkg / "unused.py").write_text("")
    got = [p.as_posix() for p in module_closure("coughlab.a", tmp_path)]
    assert got == ["coughlab/__init__.py", "coughlab/a.py", "coughlab/b.py", "coughlab/d.py",
                   "coughlab/sub/__init__.py", "coughlab/sub/c.py"]


def test_the_checkpoint_fingerprint_hashes_the_training_closure(monkeypatch):
    """What invalidates a checkpoint is derived, not listed: every file training executes."""
    hashed = []
    monkeypatch.setattr(checkpoint, "sha256_file", lambda path: hashed.append(path) or "00")
    checkpoint.code_digest()
    assert hashed == [SRC / p for p in module_closure("coughlab.training")]
    assert SRC / "coughlab" / "nets.py" in hashed and SRC / "coughlab" / "config.py" in hashed


def test_train_params_recorded_in_provenance_are_what_train_and_featurize_read():
    read = set(STAGES["train"]["params"]) | set(STAGES["featurize"]["params"])
    assert set(provenance.TRAIN_PARAMS) == read
    assert set(provenance.TRAIN_PARAMS) <= set(STAGES["export-lambda"]["params"])


def test_the_torch_free_copies_of_file_names_match_their_homes():
    """The SageMaker container reads a checkpoint's name without importing torch."""
    from coughlab.aws import container

    assert container.CHECKPOINT_FILE == checkpoint.CHECKPOINT_FILE


def test_the_bundle_and_handler_paths_outside_the_stages_match_their_homes():
    """serve and deploy take the bundle export-lambda writes and the handler it gates; the PR
    report reads evaluate's report and the card (defaults: params.yaml's paths, dvc.yaml's
    deps)."""
    from coughlab import model_card, report, serve
    from coughlab.aws.deploy import __main__ as deploy_cli
    from coughlab.aws.deploy import package
    from coughlab.stages import export_lambda

    paths = PARAMS["paths"]
    assert serve.MODEL_DIR.as_posix() == deploy_cli.MODEL_DIR.as_posix() == paths["bundle"]
    assert report.METRICS.as_posix() == paths["evaluation"]
    assert report.MODEL_CARD.parent.as_posix() == paths["bundle"]
    assert report.MODEL_CARD.name == model_card.MODEL_CARD
    handler = export_lambda.HANDLER.as_posix()
    assert handler in deps(STAGES["export-lambda"])
    assert serve.HANDLER.as_posix() == package.HANDLER.as_posix() == handler
