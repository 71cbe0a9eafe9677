"""Run a command as a user with no rights at all, as Lambda runs functions (a non-root user
that owns none of the function's files): a fresh uid with no passwd entry and no groups."""
from __future__ import annotations

import grp
import os
import pwd
import shutil

import pytest

FIRST_UID = 40000  # above the ranges distributions give to system and login users


def free_uid() -> int:
    """A uid and gid that no user or group on this machine has."""
    for uid in range(FIRST_UID, FIRST_UID + 10000):
        try:
            pwd.getpwuid(uid)
            continue
        except KeyError:
            pass
        try:
            grp.getgrgid(uid)
        except KeyError:
            return uid
    raise RuntimeError(f"no free uid from {FIRST_UID}")


def require_root_and_setpriv() -> None:
    """Skip unless this process can switch users (root, setpriv from util-linux)."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv (util-linux) to run as an unprivileged user")


def as_user(uid: int) -> list[str]:
    """The command prefix that runs what follows as `uid`, with no supplementary groups."""
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
