"""Shared by the benchmark smoke tests: failing with a message, and the mounts
left under a directory."""

import sys


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def mounts_under(path):
    """Mount points below `path`, from /proc/self/mountinfo."""
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(path + "/")]
