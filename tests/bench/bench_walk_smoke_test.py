#!/usr/bin/env python3
"""Smoke test of tools/bench --walk (not a timed test).

Runs the walk benchmark with a tiny tree and budget and checks what a user
relies on: every mode ran, no call of the walk failed, the daemon's descriptors
were sampled, its JSON and report are complete, and nothing is left mounted or
on disk afterwards. The times themselves are not judged.

Usage: bench_walk_smoke_test.py REPO_ROOT VSSFS_BINARY
"""

import json
import os
import subprocess
import sys
import tempfile

from smoke_support import check_left_nothing, fail, remove  # same directory

MODES = ["unbounded", "handles", "prune", "auto"]


def main():
    repo, vssfs = sys.argv[1], sys.argv[2]
    parent = tempfile.mkdtemp(prefix="vssfs-walk-smoke.", dir="/var/tmp")
    try:
        cmd = [os.path.join(repo, "tools", "bench"), "--walk", "--vssfs", vssfs, "--dir", parent,
               "--files", "900", "--dirs", "3", "--budget", "60", "--repeat", "1", "--json"]
        print("running:", " ".join(cmd), flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, check=False)
        print(proc.stderr[-4000:])
        if proc.returncode != 0:
            fail(f"tools/bench --walk exited with {proc.returncode}")
        doc = json.loads(proc.stdout)
        if doc["files"] != 900 or doc["budget"] != 60:
            fail(f"the JSON describes another run: {doc['files']} files, budget {doc['budget']}")
        for side in ["native"] + MODES:
            rounds = doc["rounds"].get(side)
            if not rounds:
                fail(f"no round for {side}")
            r = rounds[0]
            if r["failed"] != 0 or not all(r[p] > 0 for p in ("pass1", "pass2", "pass3")):
                fail(f"{side}: {r}")
            if side != "native" and not r["peak_fds"] >= r["base_fds"] > 0:
                fail(f"{side}: descriptors not sampled: {r}")
        for side in ["native"] + MODES:
            if not any(line.startswith(side + " ") for line in proc.stderr.splitlines()):
                fail(f"the report has no line for {side}")
        check_left_nothing(parent)
    finally:
        remove(parent)
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
