#!/usr/bin/env python3
"""tools/bench --peers: vssfs and two FUSE peers, each against native.

Runs tools/bench once for each target -- vssfs, libfuse's passthrough_ll
example and fuse-overlayfs (tools/bench --peer) -- with the same options, and
prints one table of the ratios target/native next to the goals and the
reference ratios of issue 2. Each target is compared with native in its own
run (the backing filesystem's state moves between runs, so ratios travel
better than raw figures). With --cycles N the list of targets runs N times,
reversed every other cycle so that no target always runs first, and each
ratio is the median over the cycles.

The peers run with their own defaults and libfuse 3.14's /dev/fuse loop
(passthrough_ll without the writeback cache, fuse-overlayfs with it); vssfs
with its defaults plus any --vssfs-opt. A second table gives each target's
own rate: native's figure moves between runs (ext4's allocator state), which
moves the metadata ratios more than the targets differ. Must run as
root. Every option not listed below is passed to each tools/bench run (see
tools/bench --help): --dir, --size, --runtime, --files, --jobs, --repeat.
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time

from bench_lib import format_table  # same directory, on sys.path when run

TARGETS = ("vssfs", "passthrough_ll", "fuse-overlayfs")

# Issue 2: goals for vssfs and the reference ratios measured by the issue's
# author for the two peers "on this machine kind with the same kind of jobs".
GOALS = {"seqwrite": 0.90, "seqread": 0.85, "randread4k": 0.90, "randwrite4k": 0.40,
         "randwrite64k": 0.50, "create": 0.60, "stat": 0.60, "unlink": 0.60}
REFERENCE = {
    "passthrough_ll": {"seqwrite": 0.76, "seqread": 0.51, "randread4k": 0.89,
                       "randwrite4k": 0.10, "randwrite64k": 0.26, "create": 0.52,
                       "stat": 0.30, "unlink": 0.28},
    "fuse-overlayfs": {"seqwrite": 0.85, "seqread": 0.80, "randread4k": 0.78,
                       "randwrite4k": 0.10, "randwrite64k": 0.19, "create": 0.22,
                       "stat": 0.26, "unlink": 0.08},
}


def note(msg):
    print(msg, file=sys.stderr, flush=True)


def run_bench(bench, target, passthrough, vssfs_opts, peer_bins):
    """One tools/bench run; returns its JSON document."""
    cmd = [bench, "--json", *passthrough]
    if target == "vssfs":
        cmd += [f"--vssfs-opt={o}" for o in vssfs_opts]
    else:
        cmd += ["--peer", target]
        if peer_bins.get(target):
            cmd += ["--peer-bin", peer_bins[target]]
    note(f"\n=== {target}: {' '.join(cmd)}")
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        out, _ = proc.communicate()
    except BaseException:
        # Ctrl-C or SIGTERM: tools/bench stops fio, unmounts and removes its
        # work directory on SIGTERM; give it the time its cleanup needs
        # (killing it outright would leave the mount and the daemon behind).
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"tools/bench for {target} failed with status {proc.returncode}")
    note(f"=== {target}: done in {time.monotonic() - started:.0f} s")
    return json.loads(out)


def report(runs, jobs, out_json):
    """runs: {target: [bench JSON, ...]} in cycle order."""
    runs = {t: docs for t, docs in runs.items() if docs}
    ratios = {}  # target -> job -> [ratio per cycle]
    low = {}  # target -> job -> lowest per-round ratio of any cycle
    high = {}  # target -> job -> highest
    for target, docs in runs.items():
        for doc in docs:
            for job, r in doc["ratios"].items():
                ratios.setdefault(target, {}).setdefault(job, []).append(r)
            for res in doc["results"]:
                lo = low.setdefault(target, {})
                hi = high.setdefault(target, {})
                lo[res["job"]] = min(lo.get(res["job"], res["ratio_min"]), res["ratio_min"])
                hi[res["job"]] = max(hi.get(res["job"], res["ratio_max"]), res["ratio_max"])
    cycles = max(len(d) for d in runs.values())
    env = next(iter(runs.values()))[0]["env"]
    lines = ["", "vssfs and FUSE peers, ratio target/native (each target against native in "
             "its own run" + (f"; medians of {cycles} cycles" if cycles > 1 else "") + ")",
             f"  kernel {env.get('kernel', '?')}, {env.get('cpus', '?')} CPUs, backing "
             f"{env.get('backing_fs', '?')} on {env.get('backing_source', '?')}, "
             f"fuse enable_uring {env.get('fuse_enable_uring') or '?'}"]
    for target, docs in runs.items():
        mount = docs[0]["env"].get("fuse_mount", "")
        transport = mount.rsplit("requests through ", 1)[-1] if "requests through" in mount else "?"
        lines.append(f"  {target}: requests through {transport}")
    head = ["job", *TARGETS, "goal", "ref pt_ll", "ref ovl", "vssfs: goal", "ahead of peers"]
    rows = []
    summary = {}
    for job in jobs:
        med = {t: statistics.median(ratios[t][job]) for t in TARGETS if job in ratios.get(t, {})}
        row = [job]
        for t in TARGETS:
            if t not in med:
                row.append("-")
            elif len(ratios[t][job]) > 1:
                row.append(f"{med[t]:.2f} ({min(ratios[t][job]):.2f}-{max(ratios[t][job]):.2f})")
            else:
                row.append(f"{med[t]:.2f}")
        goal = GOALS.get(job)
        row.append(f"{goal:.2f}" if goal else "-")
        for peer in TARGETS[1:]:  # the "ref pt_ll" and "ref ovl" columns
            ref = REFERENCE[peer].get(job)
            row.append("-" if ref is None else f"{ref:.2f}")
        v = med.get("vssfs")
        met = None if v is None or goal is None else v >= goal
        row.append("-" if met is None else ("met" if met else "MISSED"))
        peers = [t for t in TARGETS[1:] if t in med]
        ahead = None if v is None or not peers else all(v > med[t] for t in peers)
        # does vssfs's worst round (of any cycle) still beat every peer's
        # best one, or do the ranges overlap?
        clear = ahead and all(low["vssfs"][job] > high[t][job] for t in peers)
        if ahead is None:
            row.append("-")
        elif not ahead:
            row.append("NO")
        else:
            row.append("yes" if clear else "yes, ranges overlap")
        rows.append(row)
        summary[job] = {"ratios": {t: med[t] for t in med},
                        "per_cycle": {t: ratios[t][job] for t in med},
                        "goal": goal, "goal_met": met, "ahead_of_peers": ahead,
                        "ranges_overlap": bool(ahead) and not clear}
    lines += [""] + format_table(head, rows)
    # each target's own rate (median over cycles of the run's median), and native's
    rate_head = ["job", *[t for t in TARGETS if t in runs], "native (min-max)", "unit"]
    rate_rows = []
    for job in jobs:
        row = [job]
        natives = []
        unit = "IOPS"
        for t in TARGETS:
            if t not in runs:
                continue
            vals = []
            for doc in runs[t]:
                res = next((r for r in doc["results"] if r["job"] == job), None)
                if res is not None:
                    vals.append(res["vssfs"]["iops"])
                    natives.append(res["native"]["iops"])
                    unit = res.get("unit", unit)
            row.append(f"{statistics.median(vals):,.0f}" if vals else "-")
        row.append(f"{min(natives):,.0f}-{max(natives):,.0f}" if natives else "-")
        row.append(unit)
        rate_rows.append(row)
    lines += ["", "each target's own rate (median of its runs), and native's in those runs:"]
    lines += format_table(rate_head, rate_rows)
    lines.append("")
    lines.append("ref pt_ll / ref ovl: the issue's reference ratios for passthrough_ll and "
                 "fuse-overlayfs (not measured here)")
    lines.append("ahead of peers: 'ranges overlap' when vssfs's lowest round is not above "
                 "every peer's highest round")
    if cycles > 1:
        lines.append("cells with a range: median (min-max) of the cycles' medians")
    print("\n".join(lines))
    if out_json:
        with open(out_json, "w", encoding="utf-8") as f:
            json.dump({"tool": "vssfs tools/bench --peers", "format": 1, "jobs": summary,
                       "runs": runs}, f, indent=2)
            f.write("\n")


def main(argv):
    ap = argparse.ArgumentParser(
        prog="tools/bench --peers", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cycles", type=int, default=1,
                    help="run the list of targets N times, alternating its order (default 1)")
    ap.add_argument("--targets", default=",".join(TARGETS),
                    help="comma-separated subset of: " + ", ".join(TARGETS))
    ap.add_argument("--vssfs-opt", action="append", default=[],
                    help="extra argument for vssfs only (repeatable)")
    ap.add_argument("--vssfs", help="vssfs binary (tools/bench --vssfs)")
    ap.add_argument("--passthrough-ll-bin", help="passthrough_ll binary (default: built)")
    ap.add_argument("--fuse-overlayfs-bin", help="fuse-overlayfs binary (default: from PATH)")
    ap.add_argument("--json", metavar="FILE", help="also write the combined result as JSON")
    # "--vssfs-opt -oX" (tools/bench's form) would make argparse take -oX
    # for an option of its own
    argv = list(argv)
    for i in range(len(argv) - 1):
        if argv[i] == "--vssfs-opt":
            argv[i:i + 2] = [f"--vssfs-opt={argv[i + 1]}", ""]
    argv = [x for x in argv if x != ""]
    a, passthrough = ap.parse_known_args(argv)
    for bad in ("--json", "--peer", "--peer-bin", "--no-mount", "--keep"):
        if any(x == bad or x.startswith(bad + "=") for x in passthrough):
            ap.error(f"{bad} is not accepted with --peers")
    if a.cycles < 1:
        ap.error("--cycles must be at least 1")
    targets = [t for t in a.targets.split(",") if t]
    for t in targets:
        if t not in TARGETS:
            ap.error(f"unknown target {t!r} (known: {', '.join(TARGETS)})")
    repeat = 1
    for i, x in enumerate(passthrough):
        value = x.split("=", 1)[1] if x.startswith("--repeat=") else (
            passthrough[i + 1] if x == "--repeat" and i + 1 < len(passthrough) else None)
        if value is not None:
            repeat = int(value) if value.isdigit() else repeat
    if "fuse-overlayfs" in targets and repeat > 2:
        ap.error("fuse-overlayfs allows --repeat 1 or 2 (tools/bench --help, --peer); "
                 "use --cycles for more rounds")
    if a.vssfs:
        passthrough += ["--vssfs", a.vssfs]
    bench = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench")
    peer_bins = {"passthrough_ll": a.passthrough_ll_bin, "fuse-overlayfs": a.fuse_overlayfs_bin}
    runs = {t: [] for t in targets}

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    status = 0
    try:
        for cycle in range(a.cycles):
            order = targets if cycle % 2 == 0 else list(reversed(targets))
            note(f"\n##### cycle {cycle + 1}/{a.cycles}: {', '.join(order)}")
            for t in order:
                runs[t].append(run_bench(bench, t, passthrough, a.vssfs_opt, peer_bins))
    except (RuntimeError, json.JSONDecodeError) as e:
        note(f"bench --peers: error: {e}")
        status = 1
    except KeyboardInterrupt:
        note("bench --peers: interrupted")
        status = 130
    done = [docs[0] for docs in runs.values() if docs]
    if not done:
        return status or 1
    if status != 0:
        note("bench --peers: the table below has only the runs that finished")
    # tools/bench reports its jobs in their canonical order
    report(runs, list(done[0]["ratios"]), a.json)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
