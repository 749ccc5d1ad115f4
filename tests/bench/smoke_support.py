"""Shared by the benchmark smoke tests: failing with a message, the mounts
left under a directory, and checking that a run left nothing behind."""

import os
import shutil
import subprocess
import sys


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def mounts_under(path):
    """Mount points below `path`, from /proc/self/mountinfo."""
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(path + "/")]


def check_left_nothing(parent, allowed=()):
    """Fails if anything is mounted below `parent`, or it holds files other
    than `allowed`."""
    left = mounts_under(parent)
    if left:
        fail(f"left mounted: {left}")
    rest = [n for n in os.listdir(parent) if n not in allowed]
    if rest:
        fail(f"left behind in {parent}: {rest}")


def remove(parent):
    """Unmounts (lazily) whatever is mounted below `parent`, then deletes it."""
    for m in mounts_under(parent):
        subprocess.run(["umount", "-l", m], check=False)
    shutil.rmtree(parent, ignore_errors=True)
