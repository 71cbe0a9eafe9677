"""The deploy against hostile or broken input: model.json's fields, the files it names, models
from elsewhere, and alias histories that name what was never released.

Each refusal is one `deploy refused:`/`rollback failed:` message (a line per problem), never a
traceback, and nothing is built, packed or moved.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
from test_deploy import (  # noqa: F401
    HANDLER,
    clean_repo,
    commit_all,
    committed_repo,
    stubbed_lambda,
    write_deps,
    write_model,
)

from coughlab.aws.deploy import DeployError, gate, package, release
from coughlab.aws.deploy import __main__ as cli

pytestmark = pytest.mark.usefixtures("deploy_compiles_no_bytecode")  # fake dependencies


def refusal(argv: list[str]) -> str:
    """The one message the CLI exits with."""
    with pytest.raises(SystemExit) as stop:
        cli.main(argv)
    return str(stop.value)


def check_only(repo: Path, model_dir: Path) -> list[str]:
    return ["--check-only", "--repo", str(repo), "--model-dir", str(model_dir)]


def with_field(model_dir: Path, field: str, value) -> Path:
    """model.json with `field` ("parity.clips": nested) set to `value`."""
    meta = json.loads((model_dir / "model.json").read_text())
    parent, _, key = field.rpartition(".")
    (meta[parent] if parent else meta)[key] = value
    (model_dir / "model.json").write_text(json.dumps(meta))
    return model_dir


# --- model.json: one line per wrongly typed field -------------------------------------------

@pytest.mark.parametrize("field,value,line", [
    ("onnx_file", 5, "onnx_file must be a string, not 5"),
    ("version", ["ab"], 'version must be a string, not ["ab"]'),
    ("model_card", {"path": "card.md"}, "model_card must be a string"),
    ("parity", "passed", 'parity must be an object, not "passed"'),
    ("test_metrics", [0.9], "test_metrics must be an object, not [0.9]"),
    ("parity.passed", "true", 'parity.passed must be a boolean, not "true"'),
    ("parity.passed", 1, "parity.passed must be a boolean, not 1"),
    ("parity.tolerance", "1e-4", 'parity.tolerance must be a number, not "1e-4"'),
    ("parity.tolerance", True, "parity.tolerance must be a number, not true"),
    ("parity.clips", 2.5, "parity.clips must be an integer, not 2.5"),
    ("parity.clips", "2", 'parity.clips must be an integer, not "2"'),
    ("test_metrics.roc_auc", "0.9", 'test_metrics.roc_auc must be a number, not "0.9"'),
    ("test_metrics.roc_auc", float("nan"), "test_metrics.roc_auc must be a number, not NaN"),
    ("test_metrics.roc_auc", [0.9], "test_metrics.roc_auc must be a number, not [0.9]"),
])
def test_a_wrongly_typed_field_is_one_line_not_a_traceback(tmp_path, field, value, line):
    model_dir = with_field(write_model(tmp_path / "lambda"), field, value)
    message = refusal(check_only(tmp_path, model_dir))
    assert message.startswith("deploy refused:") and f"\n  {line}" in message, message


def test_each_wrongly_typed_field_gets_its_own_line(tmp_path):
    model_dir = with_field(with_field(write_model(tmp_path / "lambda"), "version", 7),
                           "parity.clips", "two")
    lines = refusal(check_only(tmp_path, model_dir)).splitlines()
    assert lines[1:] == ["  version must be a string, not 7",
                         '  parity.clips must be an integer, not "two"']


def test_a_model_json_that_is_not_an_object_is_one_line(tmp_path):
    model_dir = write_model(tmp_path / "lambda")
    (model_dir / "model.json").write_text("[1, 2]")
    message = refusal(check_only(tmp_path, model_dir))
    assert message.endswith("model.json holds [1, 2], not an object"), message


# --- the files model.json names stay inside the model folder -------------------------------

OUTSIDE = ["../../etc/hostname", "/etc/hostname", "sub/card.md", "..", "", "..\\card.md",
           "card.md\x00.txt", "card\n.md"]


@pytest.mark.parametrize("field", ["model_card", "onnx_file"])
@pytest.mark.parametrize("name", OUTSIDE)
def test_a_file_name_reaching_outside_the_model_folder_is_refused(tmp_path, field, name):
    model_dir = with_field(write_model(tmp_path / "lambda"), field, name)
    message = refusal(check_only(tmp_path, model_dir))
    assert message.startswith("deploy refused:") and "is not a file name in" in message, message


@pytest.mark.parametrize("name", OUTSIDE)
def test_the_zip_never_packs_a_file_outside_the_model_folder(tmp_path, name):
    (tmp_path / "secret.txt").write_text("not for the zip\n")
    model_dir = with_field(write_model(tmp_path / "lambda"), "model_card", name)
    with pytest.raises(DeployError, match="is not a file name in"):
        package.build_zip(write_deps(tmp_path / "deps"), HANDLER, model_dir, tmp_path / "f.zip",
                          python=None)
    assert not (tmp_path / "f.zip").exists()


def test_a_model_card_linking_outside_the_folder_is_refused(tmp_path):
    (tmp_path / "secret.txt").write_text("not for the zip\n")
    model_dir = with_field(write_model(tmp_path / "lambda"), "model_card", "model_card.md")
    (model_dir / "model_card.md").symlink_to(tmp_path / "secret.txt")
    with pytest.raises(DeployError, match="is a link, not a file of"):
        package.build_zip(write_deps(tmp_path / "deps"), HANDLER, model_dir, tmp_path / "f.zip",
                          python=None)
    assert not (tmp_path / "f.zip").exists()


# --- only the model the pipeline built (dvc.lock's build/lambda) ----------------------------

def test_a_model_from_another_folder_is_refused_and_nothing_is_built(clean_repo, tmp_path):
    elsewhere = write_model(tmp_path / "elsewhere", onnx=b"a graph the pipeline never built")
    message = refusal([*check_only(clean_repo, elsewhere)[1:], "--zip-only", "--deps-dir",
                       str(write_deps(tmp_path / "deps")), "--build-dir", str(tmp_path / "b")])
    assert message.startswith(f"deploy refused: {elsewhere} (md5 ")
    assert "is not the build/lambda that" in message and "dvc.lock records" in message
    assert not (tmp_path / "b").exists()


def test_an_extra_file_in_the_model_folder_is_refused(clean_repo, tmp_path):
    model_dir = write_model(tmp_path / "lambda")  # the pipeline's model, byte for byte...
    (model_dir / "notes.txt").write_text("...plus a file it did not write\n")
    assert "is not the build/lambda that" in refusal(check_only(clean_repo, model_dir))


def test_a_copy_of_the_pipelines_model_passes(clean_repo, tmp_path, capsys):
    cli.main(check_only(clean_repo, write_model(tmp_path / "lambda")))
    assert "passes the gate" in capsys.readouterr().out


def test_a_dvc_lock_without_the_export_stage_is_refused(tmp_path):
    repo = committed_repo(tmp_path / "repo")  # clean, but no pipeline ever built a model
    message = refusal(check_only(repo, write_model(tmp_path / "lambda")))
    assert message == (f"deploy refused: {repo / 'dvc.lock'} records no build/lambda from the "
                       "export-lambda stage: run `dvc repro export-lambda` and commit dvc.lock")


def test_the_gate_reads_the_md5_dvc_records(tmp_path):
    """dvc itself records build/lambda (`dvc commit`); the gate computes the same md5."""
    repo = committed_repo(tmp_path / "repo")
    model_dir = write_model(repo / "build" / "lambda")
    (model_dir / "model_card.md").write_text("# Model card\n")
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run([*dvc, "stage", "add", "-q", "-n", "export-lambda", "-o", "build/lambda",
                    "python -c pass"], cwd=repo, check=True)
    subprocess.run([*dvc, "commit", "-q", "-f", "export-lambda"], cwd=repo, check=True)
    commit_all(repo)
    assert gate.recorded_model_md5(repo) == gate.dir_md5(model_dir)
    gate.require_pipeline_model(repo, model_dir)


# --- rollback: only published versions the deploy released ----------------------------------

COMMIT = "c" * 40


def alias(stubber, version: str, history: str) -> None:
    stubber.add_response("get_alias", {"Name": "live", "FunctionVersion": version,
                                       "Description": history},
                         {"FunctionName": "coughlab", "Name": "live"})


def rollback(client, monkeypatch) -> tuple[str, str]:
    monkeypatch.setattr(boto3, "client", lambda *a, **k: client)
    return release.rollback(release.FunctionSettings("coughlab", None, 1024, 30, "live"))


@pytest.mark.parametrize("history", [
    "coughlab history: 3 $LATEST", "coughlab history: 3 live", "coughlab history: 3 0",
    "coughlab history: 3 -1", "coughlab history: 3 2.0", "coughlab history: 3 ３",
    "coughlab history: 3 2; rm -rf",
])
def test_rollback_refuses_a_history_naming_anything_but_published_versions(
        stubbed_lambda, monkeypatch, history):
    client, stubber, _ = stubbed_lambda
    alias(stubber, "3", history)  # no update_alias scripted: calling it fails the test
    with pytest.raises(DeployError, match="which is not a published version number"):
        rollback(client, monkeypatch)
    stubber.assert_no_pending_responses()


@pytest.mark.parametrize("history", ["coughlab history: 3 3", "coughlab history: 3",
                                     "coughlab history: 3 3 3"])
def test_a_history_with_nothing_else_to_go_back_to_is_no_rollback(stubbed_lambda, monkeypatch,
                                                                  history):
    client, stubber, _ = stubbed_lambda
    alias(stubber, "3", history)
    with pytest.raises(DeployError, match="records no earlier version"):
        rollback(client, monkeypatch)


def test_rollback_skips_repeats_of_the_version_served(stubbed_lambda, monkeypatch):
    client, stubber, _ = stubbed_lambda
    alias(stubber, "7", "coughlab history: 7 7 5 3")
    stubber.add_response("get_function_configuration", {"Version": "5", "Description":
                         f"model abcdef123456, git {COMMIT}, zip 0123"},
                         {"FunctionName": "coughlab", "Qualifier": "5"})
    stubber.add_response("update_alias", {}, {"FunctionName": "coughlab", "Name": "live",
                                              "FunctionVersion": "5",
                                              "Description": "coughlab history: 5 3"})
    assert rollback(client, monkeypatch) == ("7", "5")
    stubber.assert_no_pending_responses()


@pytest.mark.parametrize("described,problem", [
    ({"Description": "published by hand"}, "was not published by the deploy"),
    ({"Description": ""}, "was not published by the deploy"),
    (None, "no longer exists"),
])
def test_rollback_only_to_a_version_the_deploy_released(stubbed_lambda, monkeypatch, described,
                                                        problem):
    client, stubber, _ = stubbed_lambda
    alias(stubber, "4", "coughlab history: 4 2")
    if described is None:
        stubber.add_client_error("get_function_configuration", "ResourceNotFoundException",
                                 http_status_code=404)
    else:
        stubber.add_response("get_function_configuration", {"Version": "2", **described})
    with pytest.raises(DeployError, match=problem):
        rollback(client, monkeypatch)
    stubber.assert_no_pending_responses()


def test_rollback_of_a_missing_function_says_the_function_does_not_exist(stubbed_lambda,
                                                                          monkeypatch):
    client, stubber, _ = stubbed_lambda
    missing = "Function not found: arn:aws:lambda:us-east-1:123456789012:function:coughlab"
    stubber.add_client_error("get_alias", "ResourceNotFoundException", missing, 404)
    stubber.add_client_error("get_function", "ResourceNotFoundException", missing, 404)
    with pytest.raises(DeployError, match="^Lambda function 'coughlab' does not exist"):
        rollback(client, monkeypatch)


def test_rollback_of_a_function_without_the_alias_says_so(stubbed_lambda, monkeypatch):
    client, stubber, _ = stubbed_lambda
    stubber.add_client_error("get_alias", "ResourceNotFoundException", "Alias not found", 404)
    stubber.add_response("get_function", {"Configuration": {"FunctionName": "coughlab"}})
    with pytest.raises(DeployError, match="has no alias 'live'"):
        rollback(client, monkeypatch)


def test_a_deploy_carries_no_unpublished_version_into_the_history(stubbed_lambda):
    """An alias moved by hand to $LATEST, with junk in its history: the next deploy keeps
    only the published versions."""
    client, stubber, _ = stubbed_lambda
    stubber.add_response("update_alias", {}, {"FunctionName": "coughlab", "Name": "live",
                                              "FunctionVersion": "7",
                                              "Description": "coughlab history: 7 4"})
    release.point_alias(client, "coughlab", "live", "7", {
        "FunctionVersion": "$LATEST", "Description": "coughlab history: $LATEST 4 x"})
    stubber.assert_no_pending_responses()


def test_the_rollback_cli_says_what_failed_in_one_line(tmp_path, monkeypatch):
    """No function there at all (moto-free: the stub answers), through `--rollback`."""
    import botocore.stub

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    client = boto3.client("lambda", region_name="us-east-1")
    with botocore.stub.Stubber(client) as stubber:
        stubber.add_client_error("get_alias", "ResourceNotFoundException", "Function not found",
                                 404)
        stubber.add_client_error("get_function", "ResourceNotFoundException",
                                 "Function not found", 404)
        monkeypatch.setattr(boto3, "client", lambda *a, **k: client)
        message = refusal(["--rollback", "--function", "coughlab", "--region", "eu-west-1"])
    assert message == ("rollback failed: Lambda function 'coughlab' does not exist in eu-west-1: "
                       "nothing to roll back")
    assert os.linesep not in message
