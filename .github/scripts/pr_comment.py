#!/usr/bin/env python3
"""Post the PR report as one pull-request comment, updated in place on every later run.

Used by .github/workflows/pr.yml's `comment` job; standard library only, so it runs on the
runner's python3 with nothing installed. GitHub's REST API (GITHUB_API_URL, default
https://api.github.com) with GITHUB_TOKEN: the comment this script posted before is the one by
--author whose body starts with the marker; it is updated, else a new one is created. A
comment cannot carry uploaded images, so each plot image line of the report becomes a link to
--images-url (the artifact that holds pr-plots/).

    GITHUB_TOKEN=... pr_comment.py report/pr-report.md --repo OWNER/REPO --pr 12 \\
        --images-url https://github.com/OWNER/REPO/actions/runs/1/artifacts/2
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

MARKER = "<!-- coughlab-pr-report -->"
DEFAULT_AUTHOR = "github-actions[bot]"  # who GITHUB_TOKEN's comments are by
COMMENT_LIMIT = 65536  # characters GitHub accepts in a comment body
PAGE_SIZE = 100
IMAGE_LINE = re.compile(r"^!\[(?P<alt>[^\]]*)\]\((?P<path>pr-plots/[^)]+)\)$", re.M)


class CommentError(Exception):
    """The comment could not be posted; the message says why."""


def comment_body(report: str, images_url: str | None) -> str:
    """The marker, then the report with its plot images as links; cut to GitHub's limit."""
    def link(match: re.Match) -> str:
        name = match["path"].removeprefix("pr-plots/")
        if images_url:
            return f"[{match['alt']}: {name}]({images_url}) (in the `pr-report` artifact)"
        return f"{match['alt']}: {name} (in the `pr-report` artifact)"

    body = f"{MARKER}\n{IMAGE_LINE.sub(link, report)}"
    if len(body) <= COMMENT_LIMIT:
        return body
    note = "\n\n_Cut to fit a comment: the whole report is in the `pr-report` artifact._"
    return body[:COMMENT_LIMIT - len(note)] + note


class GitHub:
    """The few REST calls this needs, authenticated, answers parsed, errors as CommentError."""

    def __init__(self, api_url: str, token: str):
        self.api_url, self.token = api_url.rstrip("/"), token

    def request(self, method: str, url: str, payload: dict | None = None):
        """(parsed JSON, the URL of the next page or None)."""
        if urllib.parse.urlsplit(url)[:2] != urllib.parse.urlsplit(self.api_url)[:2]:
            raise CommentError(f"refusing to send the token to {url}: not {self.api_url}")
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(url, data=data, method=method, headers={
            "Authorization": f"Bearer {self.token}", "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": "2022-11-28", "User-Agent": "coughlab-pr-comment",
            **({"Content-Type": "application/json"} if data is not None else {})})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                answer = json.load(response)
                links = response.headers.get("Link") or ""
        except urllib.error.HTTPError as err:
            raise CommentError(f"{method} {url}: HTTP {err.code}: {github_message(err)}") from None
        except (urllib.error.URLError, OSError) as err:
            raise CommentError(f"{method} {url}: {getattr(err, 'reason', err)}") from None
        except json.JSONDecodeError:
            raise CommentError(f"{method} {url}: the answer is not JSON") from None
        following = re.search(r'<([^>]+)>;\s*rel="next"', links)
        return answer, following.group(1) if following else None

    def comments(self, repo: str, number: int):
        url = f"{self.api_url}/repos/{repo}/issues/{number}/comments?per_page={PAGE_SIZE}"
        while url:
            page, url = self.request("GET", url)
            yield from page


def github_message(err: urllib.error.HTTPError) -> str:
    try:
        return json.loads(err.read()).get("message") or err.reason
    except (ValueError, AttributeError, OSError):
        return str(err.reason)


def post(github: GitHub, repo: str, number: int, body: str, author: str) -> tuple[str, str]:
    """("created" or "updated", the comment's html_url)."""
    for comment in github.comments(repo, number):
        if (comment.get("user") or {}).get("login") == author and \
                (comment.get("body") or "").startswith(MARKER):
            url = f"{github.api_url}/repos/{repo}/issues/comments/{comment['id']}"
            updated, _ = github.request("PATCH", url, {"body": body})
            return "updated", updated.get("html_url", url)
    url = f"{github.api_url}/repos/{repo}/issues/{number}/comments"
    created, _ = github.request("POST", url, {"body": body})
    return "created", created.get("html_url", url)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="the markdown report (make report's output)")
    parser.add_argument("--repo", required=True, help="OWNER/REPO")
    parser.add_argument("--pr", type=int, required=True, help="pull request number")
    parser.add_argument("--images-url", help="where the plot images are (the artifact's URL)")
    parser.add_argument("--author", default=DEFAULT_AUTHOR,
                        help="login of the earlier comment to update (default %(default)s)")
    args = parser.parse_args(argv)
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", args.repo):
        parser.error(f"--repo {args.repo!r}: expected OWNER/REPO")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    token = os.environ.get("GITHUB_TOKEN")
    if not token:
        sys.exit("pr_comment: GITHUB_TOKEN is not set")
    try:
        report = args.report.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        sys.exit(f"pr_comment: cannot read {args.report}: {err}")
    github = GitHub(os.environ.get("GITHUB_API_URL") or "https://api.github.com", token)
    try:
        action, url = post(github, args.repo, args.pr, comment_body(report, args.images_url),
                           args.author)
    except CommentError as err:
        sys.exit(f"pr_comment: {err}")
    print(f"pr_comment: {action} {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
