"""The local Function URL the browser tests use is the one `make serve` runs: coughlab.serve."""
from coughlab.serve import FunctionUrl, Request, function_url_event, http_response  # noqa: F401
