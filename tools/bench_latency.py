#!/usr/bin/env python3
"""tools/bench --latency: what one metadata operation costs on a vssfs mount.

tools/bench times fio's create/stat/unlink jobs with the page cache dropped
before each run, so disk reads and the state of the backing filesystem's inode
allocator weigh in as much as vssfs does. This tool measures the per-operation
cost itself: warm caches, a loop of open(O_CREAT)+close, stat and unlink over
N new files in a fresh directory, native directory and vssfs mount alternating
in each round, mean microseconds per operation.

Each round is run twice on the vssfs side:
  free      the client and the daemon run wherever the scheduler puts them
            (without vssfs's CPU pickup, normally on different CPUs: every
            request and every reply then wakes a thread on another CPU)
  one-cpu   the client and all daemon threads are pinned to CPU 0, so requests
            and replies wake threads on the same CPU
The gap between the two is the cost of cross-CPU wake-ups, which on a virtual
machine without guest halt polling includes waking a halted vCPU; the report
prints the guest's halt-poll setting. vssfs's default -o cpu_pickup keeps one
poller per CPU and makes the free runs close to one CPU; pinning all of them
to CPU 0 then wakes both for each request there, so its one-cpu column is
slower than the free one. Add --vssfs-opt=-ono_cpu_pickup to see the
cross-CPU cost itself. It also prints the daemon's CPU time and
context switches per operation (free runs).

Must run as root. Everything created is removed at exit (unless --keep).
Point --dir at a freshly made filesystem to take the backing filesystem's own
history out of the native figures (ext4 skips recently deleted inodes when it
allocates, which makes creates slower right after many unlinks).
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

from bench_lib import start_vssfs, stop_vssfs, wakeup_settings  # same directory, on sys.path


def note(msg):
    print(msg, file=sys.stderr, flush=True)


def daemon_usage(pid):
    """(CPU seconds, context switches) summed over the daemon's threads."""
    cpu = 0.0
    switches = 0
    tick = os.sysconf("SC_CLK_TCK")
    for tid in os.listdir("/proc/%d/task" % pid):
        base = "/proc/%d/task/%s/" % (pid, tid)
        try:
            with open(base + "stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            cpu += (int(fields[11]) + int(fields[12])) / tick
            with open(base + "status") as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        switches += int(line.split()[1])
        except (OSError, IndexError, ValueError):
            continue  # a thread that ended meanwhile
    return cpu, switches


def pin_daemon(pid, cpus):
    """Pins every daemon thread to `cpus`; returns each thread's old affinity."""
    old = {}
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            old[int(tid)] = os.sched_getaffinity(int(tid))
            os.sched_setaffinity(int(tid), cpus)
        except OSError:
            pass  # a thread that ended meanwhile
    return old


def unpin_daemon(old):
    """Gives each thread back the affinity pin_daemon found (the daemon pins
    some threads itself, e.g. its io_uring queue threads)."""
    for tid, cpus in old.items():
        try:
            os.sched_setaffinity(tid, cpus)
        except OSError:
            pass


def run_ops(directory, files, cpu):
    """Runs the three loops in a child process (pinned to `cpu` unless None);
    returns mean microseconds per create, stat and unlink."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            if cpu is not None:
                os.sched_setaffinity(0, {cpu})
            os.mkdir(directory)
            names = [os.path.join(directory, "f%d" % i) for i in range(files)]
            t0 = time.perf_counter()
            for n in names:
                os.close(os.open(n, os.O_CREAT | os.O_WRONLY, 0o644))
            t1 = time.perf_counter()
            for n in names:
                os.stat(n)
            t2 = time.perf_counter()
            for n in names:
                os.unlink(n)
            t3 = time.perf_counter()
            os.rmdir(directory)
            out = json.dumps([(t1 - t0) / files * 1e6, (t2 - t1) / files * 1e6,
                              (t3 - t2) / files * 1e6])
            os.write(w, out.encode())
            os._exit(0)
        except BaseException as e:  # report and leave the child, whatever it was
            os.write(w, json.dumps({"error": str(e)}).encode())
            os._exit(1)
    os.close(w)
    data = b""
    while True:
        chunk = os.read(r, 65536)
        if not chunk:
            break
        data += chunk
    os.close(r)
    _, status = os.waitpid(pid, 0)
    result = json.loads(data.decode() or "{}")
    if status != 0 or isinstance(result, dict):
        raise RuntimeError("operation loop in %s failed: %s" % (directory, result))
    return result


def main(argv):
    ap = argparse.ArgumentParser(prog="tools/bench --latency", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--vssfs", default=os.path.join(here, "..", "build", "release", "fs", "vssfs"))
    ap.add_argument("--dir", default="/var/tmp", help="parent of the work directory")
    ap.add_argument("--files", type=int, default=5000, help="files per loop (default 5000)")
    ap.add_argument("--repeat", type=int, default=3, help="rounds, medians reported (default 3)")
    ap.add_argument("--vssfs-opt", action="append", default=[], help="extra vssfs argument")
    ap.add_argument("--json", action="store_true", help="JSON on stdout, report on stderr")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    a = ap.parse_args(argv)
    prog = "tools/bench --latency"
    if os.geteuid() != 0:
        sys.exit(prog + ": must run as root")
    if a.files < 1 or a.repeat < 1:
        sys.exit(prog + ": --files and --repeat must be at least 1")
    vssfs = os.path.realpath(a.vssfs)
    if not os.access(vssfs, os.X_OK):
        sys.exit(prog + ": vssfs binary not found: " + vssfs + " (build first, or --vssfs PATH)")
    if len(os.sched_getaffinity(0)) < 2:
        note("note: this process may use only one CPU; 'free' and 'one-cpu' will not differ")

    work = tempfile.mkdtemp(prefix="vssfs-latency-", dir=a.dir)
    native = os.path.join(work, "native")
    backing = os.path.join(work, "backing")
    mnt = os.path.join(work, "mnt")
    for d in (native, backing, mnt):
        os.mkdir(d)
    log = open(os.path.join(work, "vssfs.log"), "w")
    proc = None
    ops = ("create", "stat", "unlink")
    samples = {side: {op: [] for op in ops} for side in ("native", "free", "one-cpu")}
    usage = {"cpu_us": [], "switches": []}
    try:
        cmd = [vssfs, "--foreground", *a.vssfs_opt, backing, mnt]
        note("mounting: " + " ".join(cmd))
        proc = start_vssfs(cmd, mnt, log)
        for rnd in range(1, a.repeat + 1):
            for side in ("native", "free", "one-cpu"):
                top = native if side == "native" else mnt
                cpu = 0 if side == "one-cpu" else None
                if side == "one-cpu":
                    old_affinity = pin_daemon(proc.pid, {0})
                before = daemon_usage(proc.pid)
                res = run_ops(os.path.join(top, "r%d-%s" % (rnd, side)), a.files, cpu)
                after = daemon_usage(proc.pid)
                if side == "one-cpu":
                    unpin_daemon(old_affinity)
                if side == "free":
                    n = 3 * a.files
                    usage["cpu_us"].append((after[0] - before[0]) / n * 1e6)
                    usage["switches"].append((after[1] - before[1]) / n)
                for op, us in zip(ops, res):
                    samples[side][op].append(us)
                note("round %d %-8s create %7.1f us  stat %6.1f us  unlink %7.1f us" %
                     (rnd, side, *res))
    except (RuntimeError, OSError) as e:
        note(prog + ": error: " + str(e))
        return 1
    finally:
        stop_vssfs(proc, mnt)
        log.close()
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)

    med = {side: {op: statistics.median(v) for op, v in d.items()} for side, d in samples.items()}
    wakeups = wakeup_settings()
    halt_poll = wakeups["guest_halt_poll_ns"] or "n/a"
    idle = wakeups["cpuidle_driver"] or "n/a"
    note("")
    note("per-operation cost, mean microseconds (medians of %d rounds of %d files), warm caches" %
         (a.repeat, a.files))
    note("%-7s %9s %11s %7s %13s %7s" % ("op", "native", "vssfs free", "ratio",
                                            "vssfs 1 CPU", "ratio"))
    for op in ops:
        n, f, o = med["native"][op], med["free"][op], med["one-cpu"][op]
        note("%-7s %9.1f %11.1f %7.2f %13.1f %7.2f" % (op, n, f, n / f, o, n / o))
    note("ratio = native time / vssfs time (as tools/bench's vssfs/native throughput)")
    note("daemon per operation (free): %.1f us CPU, %.1f context switches" %
         (statistics.median(usage["cpu_us"]), statistics.median(usage["switches"])))
    note("cpuidle driver %s, guest_halt_poll_ns %s" % (idle, halt_poll))
    if a.json:
        json.dump({"files": a.files, "repeat": a.repeat, "median_us": med, "samples_us": samples,
                   "daemon_cpu_us_per_op": statistics.median(usage["cpu_us"]),
                   "daemon_switches_per_op": statistics.median(usage["switches"]),
                   "cpuidle_driver": idle, "guest_halt_poll_ns": halt_poll}, sys.stdout, indent=1)
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
