"""Stage train: fit the classifier on build/features and write build/model/model.pt.

train.backend=local trains in this process (GPU if present; on the CPU the weights are
bit-identical on every x86-64 machine, see coughlab.determinism). Checkpoints go to
build/checkpoints/ after every epoch (a DVC `persist` output), so a killed run resumes where
it stopped when re-run with the same params and features; per-epoch curves go to reports/train/.

train.backend=sagemaker runs the same training as a SageMaker managed-spot job
(coughlab.aws.sagemaker; needs COUGHLAB_SM_ROLE, COUGHLAB_SM_BUCKET, COUGHLAB_SM_IMAGE) and
writes the same build/model/ and reports/train/; its checkpoints stay in S3.
"""
from __future__ import annotations

from coughlab.determinism import pin_cpu_kernels

pin_cpu_kernels()  # before torch loads: its kernel choice is made at import

from coughlab.stages.cli import path_option, stage_parser  # noqa: E402
from coughlab.training import TrainingError, train_model  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser, params = stage_parser("train", "train", __doc__)
    path_option(parser, "--features", params.paths.features, "featurize's {train,valid}.npz")
    path_option(parser, "--model-dir", params.paths.model, "folder to write model.pt to")
    path_option(parser, "--checkpoint-dir", params.paths.checkpoints,
                "epoch checkpoints, resumed when they match")
    path_option(parser, "--live-dir", params.paths.train_reports, "dvclive's training curves")
    args = parser.parse_args(argv)
    if params.train.backend == "local":
        try:
            path = train_model(params, args.features, args.model_dir, args.checkpoint_dir,
                               args.live_dir)
        except TrainingError as exc:
            raise SystemExit(f"train: {exc}") from None
    elif params.train.backend == "sagemaker":
        from botocore.exceptions import BotoCoreError, ClientError

        from coughlab.aws.errors import explain
        from coughlab.aws.sagemaker import SageMakerError, train_on_sagemaker

        try:
            path = train_on_sagemaker(params, args.features, args.model_dir, args.live_dir)
        except SageMakerError as exc:
            raise SystemExit(f"train: {exc}") from None
        except (ClientError, BotoCoreError) as exc:  # one line, never a botocore traceback
            raise SystemExit(f"train: {explain(exc)}") from None
        # A DVC output of the stage; the job's own checkpoints are in S3.
        args.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    else:
        raise SystemExit(f"train.backend={params.train.backend!r} is unknown; "
                         "use local or sagemaker")
    print(f"train: wrote {path}")


if __name__ == "__main__":
    main()
