#!/usr/bin/env python3
"""tools/bench --walk: a walk of a tree larger than the daemon's inode budget.

Every inode the kernel caches holds a descriptor in the vssfs daemon, and the
kernel forgets FUSE inodes only under memory pressure. Past the budget
(-o max_inodes) the daemon releases descriptors in one of two ways
(-o inode_release, docs/LIVE_PATH.md "Descriptor budget"):

  handles   idle files' descriptors are closed and reopened by file handle
            on their next use; the kernel keeps its inodes
  prune     the kernel is asked to forget the least recently used inodes
            (Linux 6.18); a later access looks the name up again
  auto      handles first, then prune for what is left (the default)

This tool builds a tree of --files empty files in --dirs directories and walks
it three times, as `ls -lR` and a backup would: pass 1 lists every directory
and stats every file, pass 2 stats every file again, pass 3 opens, reads and
closes every file. (The kernel answers pass 2 from its attribute cache where
it still holds the inode; opening a file always asks the daemon, which
reopens an evicted file by handle.) It runs the walk natively on
the backing tree and through a fresh vssfs mount per mode, with a budget of
--budget inodes, plus "unbounded" (the default budget, larger than the tree:
nothing is released), and prints the time of each pass, the ratio
native/vssfs time, the daemon's peak and settled descriptor counts (sampled
every 5 ms) and the number of failed calls (EMFILE would show there).

Must run as root. Everything created is removed at exit (unless --keep).
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time

from bench_lib import start_vssfs, stop_vssfs  # same directory, on sys.path when run

PROG = "tools/bench --walk"
MODES = ("unbounded", "handles", "prune", "auto")


def note(msg):
    print(msg, file=sys.stderr, flush=True)


def count_fds(pid):
    try:
        return len(os.listdir("/proc/%d/fd" % pid))
    except OSError:
        return 0


class FdSampler:
    """Samples a process's open descriptors every 5 ms; keeps the peak."""

    def __init__(self, pid):
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, count_fds(self.pid))
            self._stop.wait(0.005)

    def stop(self):
        self._stop.set()
        self._thread.join()
        return self.peak


def read_whole(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        while os.read(fd, 65536):
            pass
    finally:
        os.close(fd)


PASSES = ("pass1", "pass2", "pass3")


def walk(top, dirs, files_per_dir):
    """Pass 1: list and stat everything; pass 2: stat every file again;
    pass 3: open, read and close every file. Returns ([seconds of each pass],
    failed calls, first error)."""
    failed = 0
    first = None
    times = []
    for n in range(len(PASSES)):
        start = time.perf_counter()
        for d in range(dirs):
            path = os.path.join(top, "d%d" % d)
            try:
                if n == 0:
                    names = [e.name for e in os.scandir(path)]
                else:
                    names = ["f%d" % i for i in range(files_per_dir)]
            except OSError as e:
                failed += 1
                first = first or e.strerror
                continue
            for name in names:
                try:
                    if n < 2:
                        os.lstat(os.path.join(path, name))
                    else:
                        read_whole(os.path.join(path, name))
                except OSError as e:
                    failed += 1
                    first = first or e.strerror
        times.append(time.perf_counter() - start)
    return times, failed, first


def seconds(times):
    return "  ".join("%6.3f s" % t for t in times)


def main(argv):
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--vssfs", default=os.path.join(here, "..", "build", "release", "fs", "vssfs"))
    ap.add_argument("--dir", default="/var/tmp", help="parent of the work directory")
    ap.add_argument("--files", type=int, default=10000, help="files in the tree (default 10000)")
    ap.add_argument("--dirs", type=int, default=20, help="directories they are spread over")
    ap.add_argument("--budget", type=int, default=1000, help="-o max_inodes (default 1000)")
    ap.add_argument("--modes", default=",".join(MODES),
                    help="comma-separated subset of: " + ", ".join(MODES))
    ap.add_argument("--repeat", type=int, default=2, help="rounds, medians reported (default 2)")
    ap.add_argument("--vssfs-opt", action="append", default=[], help="extra vssfs argument")
    ap.add_argument("--json", action="store_true", help="JSON on stdout, report on stderr")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit(PROG + ": must run as root")
    modes = [m for m in a.modes.split(",") if m]
    if not modes or any(m not in MODES for m in modes):
        sys.exit(PROG + ": --modes takes a comma-separated subset of " + ", ".join(MODES))
    if a.files < a.dirs or a.dirs < 1 or a.repeat < 1 or a.budget < 16:
        sys.exit(PROG + ": need --files >= --dirs >= 1, --repeat >= 1, --budget >= 16")
    vssfs = os.path.realpath(a.vssfs)
    if not os.access(vssfs, os.X_OK):
        sys.exit(PROG + ": vssfs binary not found: " + vssfs + " (build first, or --vssfs PATH)")
    per_dir = a.files // a.dirs

    work = tempfile.mkdtemp(prefix="vssfs-walk-", dir=a.dir)
    backing = os.path.join(work, "backing")
    mnt = os.path.join(work, "mnt")
    tree = os.path.join(backing, "t")
    os.mkdir(backing)
    os.mkdir(mnt)
    os.mkdir(tree)
    log = open(os.path.join(work, "vssfs.log"), "w")
    results = {m: [] for m in ["native"] + modes}
    try:
        note("%s: making %d files in %d directories under %s" %
             (PROG, per_dir * a.dirs, a.dirs, tree))
        for d in range(a.dirs):
            path = os.path.join(tree, "d%d" % d)
            os.mkdir(path)
            for i in range(per_dir):
                os.close(os.open(os.path.join(path, "f%d" % i), os.O_CREAT | os.O_WRONLY, 0o644))
        walk(tree, a.dirs, per_dir)  # Warms the backing filesystem's caches.
        for rnd in range(1, a.repeat + 1):
            for side in ["native"] + modes:
                if side == "native":
                    times, failed, first = walk(tree, a.dirs, per_dir)
                    results[side].append({**dict(zip(PASSES, times)), "failed": failed,
                                          "first_error": first})
                    note("round %d %-9s passes %s  failed %d" %
                         (rnd, side, seconds(times), failed))
                    continue
                opts = list(a.vssfs_opt)
                if side != "unbounded":
                    opts += ["-o", "max_inodes=%d" % a.budget, "-o", "inode_release=" + side]
                log.write("== round %d %s\n" % (rnd, side))
                log.flush()
                proc = start_vssfs([vssfs, "--foreground", *opts, backing, mnt], mnt, log)
                try:
                    base = count_fds(proc.pid)
                    sampler = FdSampler(proc.pid)
                    times, failed, first = walk(os.path.join(mnt, "t"), a.dirs, per_dir)
                    peak = sampler.stop()
                    time.sleep(0.3)  # Lets the pruner finish its round.
                    settled = count_fds(proc.pid)
                finally:
                    stop_vssfs(proc, mnt)
                results[side].append({**dict(zip(PASSES, times)), "failed": failed,
                                      "first_error": first, "base_fds": base,
                                      "peak_fds": peak, "settled_fds": settled})
                note("round %d %-9s passes %s  failed %d  descriptors: %d at mount, peak %d, "
                     "settled %d" % (rnd, side, seconds(times), failed, base, peak, settled))
    except (RuntimeError, OSError) as e:
        note(PROG + ": error: " + str(e))
        return 1
    finally:
        log.close()
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)

    def med(side, key):
        return statistics.median(r[key] for r in results[side])

    note("")
    note("walk of %d files in %d directories, budget %d inodes (max_inodes), medians of %d "
         "rounds" % (per_dir * a.dirs, a.dirs, a.budget, a.repeat))
    note("%-9s %8s %6s %8s %6s %8s %6s %7s %8s %7s" % (
        "mode", "pass 1", "ratio", "pass 2", "ratio", "pass 3", "ratio", "failed", "peak fd",
        "settled"))
    native = [med("native", p) for p in PASSES]
    note("%-9s %7.3fs %6s %7.3fs %6s %7.3fs %6s %7d" % (
        "native", native[0], "", native[1], "", native[2], "",
        max(r["failed"] for r in results["native"])))
    for m in modes:
        cells = ""
        for p, n in zip(PASSES, native):
            t = med(m, p)
            cells += " %7.3fs %6.2f" % (t, n / t)
        note("%-9s%s %7d %8d %7d" % (m, cells, max(r["failed"] for r in results[m]),
                                     max(r["peak_fds"] for r in results[m]),
                                     max(r["settled_fds"] for r in results[m])))
    note("pass 1: list and stat, pass 2: stat again, pass 3: open, read, close")
    note("ratio = native time / vssfs time; descriptors are the daemon's, all kinds "
         "(%d at mount)" % min(r["base_fds"] for m in modes for r in results[m]))
    if a.json:
        json.dump({"files": per_dir * a.dirs, "dirs": a.dirs, "budget": a.budget,
                   "repeat": a.repeat, "rounds": results}, sys.stdout, indent=1)
        print()
    return 0 if all(r["failed"] == 0 for rs in results.values() for r in rs) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
