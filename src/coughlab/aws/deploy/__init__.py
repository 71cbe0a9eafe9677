"""Ship build/lambda as a Lambda function; `python -m coughlab.aws.deploy --help` says how.

gate: the release gate (model, git, dvc.lock); package: the zip; release: Lambda versions, the
smoke test, the alias and rollback; access: the Function URL and the concurrency cap.
"""


class DeployError(Exception):
    """Deployment cannot go on; the message says why and what to do."""


class DeployRefused(DeployError):
    """The release gate rejected the model; nothing was built or sent to AWS."""
