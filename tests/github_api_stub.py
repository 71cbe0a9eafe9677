"""GitHub's REST endpoints for issue comments, in memory on 127.0.0.1.

As GitHub documents them ("REST API endpoints for issue comments"): list a pull request's
comments page by page (per_page, page, and a Link header naming the next page), create one,
update one by id; a wrong token gets 401 with GitHub's JSON error. `fail` makes the next call
of a method answer an error, as a token without the right permission gets.
"""
from __future__ import annotations

import json
import re
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class GitHubStub(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, repo: str, token: str, author: str = "github-actions[bot]"):
        super().__init__(("127.0.0.1", 0), GitHubHandler)
        self.repo, self.token, self.author = repo, token, author
        self.comments: dict[int, list[dict]] = {}
        self.calls: list[tuple[str, str]] = []
        self.fail: dict[str, tuple[int, str]] = {}
        self.next_id = 1000
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return "http://%s:%d" % self.server_address

    def add(self, number: int, body: str, login: str | None = None) -> dict:
        self.next_id += 1
        comment = {"id": self.next_id, "body": body, "user": {"login": login or self.author},
                   "html_url": f"https://github.com/{self.repo}/pull/{number}"
                               f"#issuecomment-{self.next_id}"}
        self.comments.setdefault(number, []).append(comment)
        return comment

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class GitHubHandler(BaseHTTPRequestHandler):
    server: GitHubStub

    def log_message(self, format, *args):  # noqa: A002 - BaseHTTPRequestHandler's signature
        pass

    def reply(self, status: int, payload, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def route(self, method: str):
        url = urllib.parse.urlsplit(self.path)
        self.server.calls.append((method, self.path))
        if self.headers.get("Authorization") != f"Bearer {self.server.token}":
            return self.reply(401, {"message": "Bad credentials"})
        if method in self.server.fail:
            status, message = self.server.fail.pop(method)
            return self.reply(status, {"message": message})
        repo = re.escape(self.server.repo)
        listing = re.fullmatch(rf"/repos/{repo}/issues/(\d+)/comments", url.path)
        single = re.fullmatch(rf"/repos/{repo}/issues/comments/(\d+)", url.path)
        if listing and method == "GET":
            return self.list_comments(int(listing.group(1)), urllib.parse.parse_qs(url.query))
        if listing and method == "POST":
            return self.reply(201, self.server.add(int(listing.group(1)), self.body()["body"]))
        if single and method == "PATCH":
            for comments in self.server.comments.values():
                for comment in comments:
                    if comment["id"] == int(single.group(1)):
                        comment["body"] = self.body()["body"]
                        return self.reply(200, comment)
        return self.reply(404, {"message": "Not Found"})

    def body(self) -> dict:
        return json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))

    def list_comments(self, number: int, query: dict[str, list[str]]) -> None:
        per_page = min(int(query.get("per_page", ["30"])[0]), 100)
        page = int(query.get("page", ["1"])[0])
        comments = self.server.comments.get(number, [])
        headers = {}
        if page * per_page < len(comments):
            following = (f"{self.server.url}/repos/{self.server.repo}/issues/{number}/comments"
                         f"?per_page={per_page}&page={page + 1}")
            headers["Link"] = f'<{following}>; rel="next"'
        self.reply(200, comments[(page - 1) * per_page:page * per_page], headers)

    def do_GET(self):  # noqa: N802 - http.server's names
        self.route("GET")

    def do_POST(self):  # noqa: N802
        self.route("POST")

    def do_PATCH(self):  # noqa: N802
        self.route("PATCH")
