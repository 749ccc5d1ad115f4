#!/usr/bin/env python3
"""Smoke test of tools/bench and tools/bench --peers (not a timed test).

Runs the benchmark with tiny parameters for vssfs, libfuse's passthrough_ll
(built by the benchmark from Debian's examples) and fuse-overlayfs, and checks
what a user relies on: every job of every target gives a positive figure on
both sides, each target was really mounted as its own filesystem type, the
combined JSON says which goals were met, and nothing is left mounted or on
disk afterwards. The figures themselves are not judged.

Usage: bench_smoke_test.py REPO_ROOT VSSFS_BINARY
Exit 77 (skipped) when fuse-overlayfs or a C compiler is missing (tools/setup.sh
installs both).
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile

from smoke_support import check_left_nothing, fail, remove  # same directory

JOBS = ["seqwrite", "seqread", "randread4k", "randwrite4k", "create", "stat", "unlink"]
FSTYPES = {"vssfs": "fuse.vssfs", "passthrough_ll": "fuse.passthrough_ll",
           "fuse-overlayfs": "fuse.fuse-overlayfs"}


def main():
    repo, vssfs = sys.argv[1], sys.argv[2]
    for tool in ("fuse-overlayfs", "cc", "fio"):
        if shutil.which(tool) is None:
            print(f"SKIP: {tool} not installed (tools/setup.sh installs it)")
            return 77
    parent = tempfile.mkdtemp(prefix="vssfs-bench-smoke.", dir="/var/tmp")
    out = os.path.join(parent, "peers.json")
    try:
        cmd = [os.path.join(repo, "tools", "bench"), "--peers", "--vssfs", vssfs,
               "--json", out, "--dir", parent, "--jobs", ",".join(JOBS), "--size", "16M",
               "--runtime", "1", "--files", "200", "--fio-cpu", "0"]
        print("running:", " ".join(cmd), flush=True)
        # Its own session, so that a stuck run can be stopped as a whole; the
        # inner limit leaves time for that before ctest's TIMEOUT (600 s).
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        try:
            stdout, _ = proc.communicate(timeout=400)
        except subprocess.TimeoutExpired:
            # SIGTERM to tools/bench --peers, which hands it on to tools/bench:
            # that stops fio and unmounts
            proc.send_signal(signal.SIGTERM)
            try:
                proc.communicate(timeout=150)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
            fail("tools/bench --peers did not finish within 400 s")
        print(stdout[-6000:])
        if proc.returncode != 0:
            fail(f"tools/bench --peers exited with {proc.returncode}")
        with open(out, encoding="utf-8") as f:
            doc = json.load(f)
        for target, fstype in FSTYPES.items():
            runs = doc["runs"].get(target)
            if not runs:
                fail(f"no run for {target}")
            run = runs[0]
            mount = run["env"].get("fuse_mount", "")
            if not mount.startswith(fstype + " "):
                fail(f"{target}: mounted as {mount!r}, expected {fstype}")
            if run.get("target") != target:
                fail(f"{target}: the run's JSON names its target {run.get('target')!r}")
            for job in JOBS:
                res = next((r for r in run["results"] if r["job"] == job), None)
                if res is None:
                    fail(f"{target}: no result for {job}")
                for side in ("native", "vssfs"):
                    if not res[side]["iops"] > 0:
                        fail(f"{target} {job}: {side} side measured {res[side]['iops']}")
                if not run["ratios"][job] > 0:
                    fail(f"{target} {job}: ratio {run['ratios'][job]}")
        for job in JOBS:
            j = doc["jobs"].get(job)
            if j is None or set(j["ratios"]) != set(FSTYPES):
                fail(f"combined result for {job} lacks a target: {j}")
            if j["goal_met"] is None or j["ahead_of_peers"] is None:
                fail(f"combined result for {job} does not judge goal and peers: {j}")
        for target in FSTYPES:
            if not re.search(rf"^  {re.escape(target)}: requests through "
                             r"(/dev/fuse|FUSE over io_uring)$", stdout, re.M):
                fail(f"the report does not say how {target}'s requests went")
        if "ahead of peers" not in stdout:
            fail("the combined table is missing")
        if len(re.findall(r"^  fio cpu     pinned to CPU 0 ", stdout, re.M)) != len(FSTYPES):
            fail("a run does not say that fio was pinned to CPU 0 (--fio-cpu 0)")
        for target, runs in doc["runs"].items():
            if runs[0]["env"]["params"].get("fio_cpu") != "0":
                fail(f"{target}: the run's JSON does not record --fio-cpu 0")
        check_left_nothing(parent, allowed=("peers.json",))
    finally:
        remove(parent)
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
