#!/usr/bin/env python3
"""Helper for tools/bench: environment, mount table, fio JSON parsing, report.

Not meant to be run by hand; tools/bench calls it with one of these commands:

  size STR                       print STR (fio-style size, binary units) in bytes
  mount PATH                     print "FSTYPE<TAB>MAJ:MIN<TAB>SUPEROPTS" of the mount
                                 whose mount point is PATH; exit 1 if none
  disk PATH                      print MAJ:MIN of the block device holding PATH
  env --out FILE ...             print the environment block, save it as JSON
  check FILE JOB SIDE [--ios N]  validate one fio result, print a one-line summary
  report --env FILE --results DIR --jobs LIST --repeat N [--json FILE]
                                 print the comparison table and the ratio line
"""

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time

# job name -> (kind, fio direction that carries the result)
JOBS = {
    "seqwrite": ("data", "write"),
    "seqread": ("data", "read"),
    "randread4k": ("data", "read"),
    "randread64k": ("data", "read"),
    "randwrite4k": ("data", "write"),
    "randwrite64k": ("data", "write"),
    "create": ("meta", None),
    "stat": ("meta", None),
    "unlink": ("meta", None),
}
SIDES = ("native", "vssfs")


class BenchError(Exception):
    pass


# ------------------------------------------------------------ vssfs daemon

def start_vssfs(cmd, mnt, log, timeout=15):
    """Starts `cmd` (a vssfs command line in the foreground) with its output in
    the open file `log`; returns the process once `mnt` is mounted. Raises
    RuntimeError (with the process stopped) if it is not within `timeout` s."""
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + timeout
    while not os.path.ismount(mnt):
        if proc.poll() is not None or time.time() > deadline:
            stop_vssfs(proc, mnt)
            raise RuntimeError("vssfs did not mount: " + " ".join(cmd) + " (see " + log.name + ")")
        time.sleep(0.05)
    return proc


def stop_vssfs(proc, mnt):
    """Unmounts `mnt` if `proc` still runs and waits for it (killed after 30 s)."""
    if proc is None or proc.poll() is not None:
        return
    if os.path.ismount(mnt):
        subprocess.run(["umount", mnt], check=False)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --------------------------------------------------------------------------- size

def parse_size(text):
    """fio-style size: plain bytes or a K/M/G/T suffix (powers of 1024)."""
    m = re.fullmatch(r"\s*(\d+)\s*([kKmMgGtT]?)(?:i?[bB])?\s*", text)
    if not m:
        raise BenchError(f"invalid size {text!r} (use e.g. 512M, 1G, 1073741824)")
    mult = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    value = int(m.group(1)) * mult[m.group(2).lower()]
    if value <= 0:
        raise BenchError(f"size must be positive: {text!r}")
    return value


# -------------------------------------------------------------------- mountinfo

def _unescape(field):
    # mountinfo escapes space, tab, newline and backslash as \ooo
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def read_mountinfo():
    mounts = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
        for line in f:
            parts = line.split()
            try:
                sep = parts.index("-")
            except ValueError:
                continue
            mounts.append({
                "majmin": parts[2],
                "mountpoint": _unescape(parts[4]),
                "mount_opts": parts[5],
                "fstype": parts[sep + 1],
                "source": _unescape(parts[sep + 2]) if len(parts) > sep + 2 else "",
                "super_opts": parts[sep + 3] if len(parts) > sep + 3 else "",
            })
    return mounts


def mount_at(path):
    """The mount whose mount point is exactly PATH (topmost), or None.

    PATH must be canonical already: it is not resolved, because resolving
    would stat a possibly hung FUSE mount point."""
    path = os.path.normpath(os.path.abspath(path))
    found = None
    for m in read_mountinfo():
        if m["mountpoint"] == path:
            found = m
    return found


def mount_containing(path):
    """The mount that holds PATH (longest mount-point prefix, topmost)."""
    path = os.path.realpath(path)
    best = None
    for m in read_mountinfo():
        mp = m["mountpoint"]
        if path == mp or path.startswith(mp.rstrip("/") + "/") or mp == "/":
            if best is None or len(mp) >= len(best["mountpoint"]):
                best = m
    return best


def readahead_file(m):
    """sysfs read_ahead_kb of the block device of mount M (its whole disk's for
    a partition: read-ahead is set per request queue), or None."""
    if not m or m["majmin"].startswith("0:"):
        return None
    base = os.path.realpath(f"/sys/dev/block/{m['majmin']}")
    for q in (os.path.join(base, "queue"), os.path.join(os.path.dirname(base), "queue")):
        f = os.path.join(q, "read_ahead_kb")
        if os.path.isfile(f):
            return f
    return None


def cmd_readahead(a):
    """Prints "FILE KB" (the current value); with --set also writes KB, and
    prints the value it replaced."""
    f = readahead_file(mount_containing(a.path))
    if f is None:
        raise BenchError(f"no block device with a read_ahead_kb under {a.path} "
                         "(tmpfs, or a filesystem without one)")
    old = _read_sys(f)
    if old is None:
        raise BenchError(f"cannot read {f}")
    if a.set is not None:
        try:
            with open(f, "w", encoding="utf-8") as out:
                out.write(f"{a.set}\n")
        except OSError as e:
            raise BenchError(f"cannot set {f} to {a.set}: {e}") from e
    print(f"{f} {old}")


# -------------------------------------------------------------------------- env

def _run(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20,
                              check=False).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def _read_sys(path):
    """First line of a sysfs/procfs file, or None."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.readline().strip()
    except OSError:
        return None


def wakeup_settings():
    """What decides the cost of FUSE round trips on this machine (each wakes
    the daemon and the caller, often on other CPUs): the cpuidle driver, how
    long an idle vCPU polls before halting (README), and whether the kernel
    offers FUSE over io_uring. Values are None where the file is missing.
    Also used by bench_latency.py."""
    return {
        "cpuidle_driver": _read_sys("/sys/devices/system/cpu/cpuidle/current_driver"),
        "guest_halt_poll_ns": _read_sys("/sys/module/haltpoll/parameters/guest_halt_poll_ns"),
        "fuse_enable_uring": _read_sys("/sys/module/fuse/parameters/enable_uring"),
    }


def _cpu_model():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total():
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _cpu_busy(seconds=1.0):
    """Share of CPU time (all CPUs) that was busy / stolen over SECONDS."""
    def sample():
        with open("/proc/stat", encoding="utf-8") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        idle = v[3] + (v[4] if len(v) > 4 else 0)
        steal = v[7] if len(v) > 7 else 0
        return sum(v[:8]), idle, steal

    try:
        t0, i0, s0 = sample()
        time.sleep(seconds)
        t1, i1, s1 = sample()
    except (OSError, ValueError, IndexError):
        return None, None
    total = max(t1 - t0, 1)
    return 100.0 * (total - (i1 - i0)) / total, 100.0 * (s1 - s0) / total


def cmd_env(a):
    work = os.path.realpath(a.work)
    m = mount_containing(work) or {}
    fuse_pkg = _run(["dpkg-query", "-W", "-f=${Version}", "libfuse3-3"])
    try:
        with open("/proc/loadavg", encoding="utf-8") as f:
            load = [float(x) for x in f.read().split()[:3]]
    except (OSError, ValueError):
        load = []
    env = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": platform.node(),
        "kernel": platform.release(),
        "kernel_version": platform.version(),
        "cpus": len(os.sched_getaffinity(0)),
        "cpu_model": _cpu_model(),
        "mem_total_bytes": _mem_total(),
        "loadavg": load,
        "cpu_busy_pct_before": None,
        "cpu_steal_pct_before": None,
        "workdir": work,
        "backing_fs": m.get("fstype", "unknown"),
        "backing_source": m.get("source", ""),
        "backing_mount": m.get("mountpoint", ""),
        "backing_mount_opts": m.get("mount_opts", ""),
        "backing_read_ahead_kb": _read_sys(readahead_file(m) or "/nonexistent"),
        "fio_version": _run(["fio", "--version"]),
        **wakeup_settings(),
        "libfuse3": fuse_pkg or "unknown",
        "mode": a.mode,
        "vssfs_binary": a.binary if a.mode == "vssfs" else None,
        "peer": a.peer if a.mode == "peer" else None,
        "peer_binary": a.binary if a.mode == "peer" else None,
        "vssfs_options": list(a.opt or []),
        "vssfs_command": a.command,
        "params": {
            "size_bytes": a.size,
            "runtime_s": a.runtime,
            "files": a.files,
            "jobs": a.jobs.split(","),
            "repeat": a.repeat,
            "ioengine": "psync (buffered, direct=0, numjobs=1, fallocate=none)",
            "metadata_method": "fio ioengine=filecreate/filestat/filedelete",
            "fio_cpu": a.fio_cpu if a.fio_cpu != "" else None,
        },
    }
    busy, steal = _cpu_busy()
    env["cpu_busy_pct_before"] = busy
    env["cpu_steal_pct_before"] = steal
    if a.mode in ("vssfs", "peer"):
        try:
            st = os.stat(a.binary)
            env["binary_mtime"] = datetime.datetime.fromtimestamp(
                st.st_mtime).astimezone().isoformat(timespec="seconds")
            env["binary_size"] = st.st_size
        except OSError:
            pass
    with open(a.out, "w", encoding="utf-8") as f:
        json.dump(env, f, indent=2)

    p = env["params"]
    lines = [
        "vssfs benchmark",
        f"  date        {env['date']}",
        f"  host        {env['host']}",
        f"  kernel      {env['kernel']} {env['kernel_version']}",
        f"  cpus        {env['cpus']} x {env['cpu_model']}, "
        f"{env['mem_total_bytes'] / 2**30:.1f} GiB RAM",
        f"  load        loadavg {' '.join(f'{x:.2f}' for x in load) or '?'}; "
        + (f"CPU {busy:.0f}% busy ({steal:.0f}% steal) in the second before start"
           if busy is not None else "CPU use unknown")
        + ("\n              WARNING: something else is using the CPU; results will be noisy"
           if busy is not None and busy > 20 else ""),
        f"  workdir     {work}",
        f"  backing fs  {env['backing_fs']} on {env['backing_source']} "
        f"(mounted at {env['backing_mount']}, {env['backing_mount_opts']})"
        + (f"; device read-ahead {env['backing_read_ahead_kb']} KiB"
           if env["backing_read_ahead_kb"] is not None else ""),
        f"  fio         {env['fio_version']}",
        f"  libfuse3    {env['libfuse3']}",
        f"  cpuidle     {env['cpuidle_driver'] or 'none'}"
        + (f", guest_halt_poll_ns {env['guest_halt_poll_ns']}"
           if env["guest_halt_poll_ns"] is not None else "")
        + (" (idle vCPUs halt at once: FUSE round trips pay for waking them)"
           if env["guest_halt_poll_ns"] == "0" else "")
        + f"; fuse enable_uring {env['fuse_enable_uring'] or '?'}",
    ]
    if a.mode in ("vssfs", "peer"):
        built = (f"{a.binary} (built {env.get('binary_mtime', '?')},"
                 f" {env.get('binary_size', '?')} bytes)")
        if a.mode == "vssfs":
            lines.append(f"  vssfs       {built}")
        else:
            lines.append(f"  peer        {a.peer}: {built}, in vssfs's place")
        default_opts = "(none)" if a.mode == "vssfs" else "(its defaults)"
        lines.append(f"  options     {' '.join(a.opt) if a.opt else default_opts}")
        lines.append(f"  command     {a.command}")
    else:
        lines.append("  MODE        calibration (--no-mount): the 'vssfs' side is a second")
        lines.append("              plain directory on the same filesystem; ratios should be ~1.0")
    lines.append(f"  parameters  size {p['size_bytes'] / 2**20:.0f} MiB, runtime {p['runtime_s']} s,"
                 f" files {p['files']}, repeat {p['repeat']}")
    lines.append(f"  jobs        {' '.join(p['jobs'])}")
    lines.append("  method      fio ioengine=psync, buffered (direct=0), 1 job, fallocate=none;"
                 " page cache dropped")
    lines.append("              before every run; writes end with fsync (end_fsync=1, counted);")
    lines.append("              metadata via fio filecreate/filestat/filedelete on empty files")
    if p["fio_cpu"] is not None:
        lines.append(f"  fio cpu     pinned to CPU {p['fio_cpu']} (--fio-cpu), on both sides")
    print("\n".join(lines))


# ------------------------------------------------------------------- fio results

def load_fio(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError as e:
        raise BenchError(f"cannot read fio output {path}: {e}") from e
    start = text.find("{")
    if start < 0:
        raise BenchError(f"fio wrote no JSON to {path}")
    try:
        return json.loads(text[start:])
    except json.JSONDecodeError as e:
        raise BenchError(f"fio output {path} is not valid JSON: {e}") from e


def disk_traffic(path):
    """(read_bytes, write_bytes) on the backing device during a run, or None."""
    try:
        with open(path + ".disk", encoding="utf-8") as f:
            r, w = (int(x) for x in f.read().split())
        return r, w
    except (OSError, ValueError):
        return None


def metrics(path, job):
    """Extract the numbers of one run: mbps (or None), iops, runtime_ms, ios,
    disk_read_bytes / disk_write_bytes (None if unknown)."""
    m = _metrics(path, job)
    dt = disk_traffic(path)
    m["disk_read_bytes"], m["disk_write_bytes"] = dt if dt else (None, None)
    return m


def _metrics(path, job):
    kind, ddir = JOBS[job]
    d = load_fio(path)
    jobs = d.get("jobs") or []
    if len(jobs) != 1:
        raise BenchError(f"{path}: expected 1 fio job, found {len(jobs)}")
    j = jobs[0]
    if j.get("error", 0):
        raise BenchError(f"{job}: fio reported error {j['error']} "
                         f"({os.strerror(j['error'])})")
    if kind == "data":
        r = j[ddir]
        ios = r["total_ios"]
        runtime = r["runtime"]
        if ios <= 0 or runtime <= 0:
            raise BenchError(f"{job}: fio did no {ddir} I/O")
        return {
            "mbps": r["bw_bytes"] / 1e6,
            "iops": r["iops"],
            "runtime_ms": runtime,
            "ios": ios,
            "bytes": r["io_bytes"],
            "lat_mean_us": r.get("clat_ns", {}).get("mean", 0.0) / 1e3,
        }
    # metadata engines report their operations in one direction (read in fio 3.33)
    ios = sum(j[x]["total_ios"] for x in ("read", "write", "trim") if x in j)
    runtime = max(j[x]["runtime"] for x in ("read", "write", "trim") if x in j)
    if ios <= 0 or runtime <= 0:
        raise BenchError(f"{job}: fio did no operations")
    lat = [j[x]["clat_ns"]["mean"] for x in ("read", "write")
           if x in j and j[x]["total_ios"] > 0]
    return {
        "mbps": None,
        "iops": ios * 1000.0 / runtime,
        "runtime_ms": runtime,
        "ios": ios,
        "lat_mean_us": (lat[0] / 1e3) if lat else 0.0,
    }


def format_table(head, rows, rule=True):
    """Lines of a text table: first column left-aligned, the others right-
    aligned, two spaces apart; `rule` adds a line of dashes under the head."""
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]

    def line(cells):
        return "  ".join(str(c).ljust(widths[0]) if i == 0 else str(c).rjust(widths[i])
                         for i, c in enumerate(cells))

    return ([line(head)] + (["  ".join("-" * w for w in widths)] if rule else [])
            + [line(r) for r in rows])


def fmt_num(x, digits=1):
    if x is None:
        return "-"
    if x >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def cmd_check(a):
    m = metrics(a.file, a.job)
    if a.ios is not None and m["ios"] != a.ios:
        raise BenchError(f"{a.job} on {a.side}: fio did {m['ios']} operations, "
                         f"expected {a.ios}")
    disk = ""
    if m["disk_read_bytes"] is not None:
        disk = (f", disk {m['disk_read_bytes'] / 1e6:,.0f} MB read"
                f" {m['disk_write_bytes'] / 1e6:,.0f} MB written")
    if m["mbps"] is None:
        print(f"{m['iops']:,.0f} ops/s ({m['ios']} ops in {m['runtime_ms']} ms{disk})")
    else:
        print(f"{m['mbps']:.1f} MB/s, {m['iops']:,.0f} IOPS "
              f"({m['runtime_ms']} ms, mean lat {m['lat_mean_us']:.0f} us{disk})")


# ----------------------------------------------------------------------- report

def cmd_report(a):
    with open(a.env, encoding="utf-8") as f:
        env = json.load(f)
    if a.mount_info:
        env["fuse_mount"] = a.mount_info
    jobs = a.jobs.split(",")
    results = []
    for job in jobs:
        kind, _ = JOBS[job]
        rounds = []
        for r in range(1, a.repeat + 1):
            entry = {}
            for side in SIDES:
                path = os.path.join(a.results, f"{r}", f"{job}.{side}.json")
                entry[side] = metrics(path, job)
            entry["ratio"] = entry["vssfs"]["iops"] / entry["native"]["iops"]
            rounds.append(entry)
        res = {"job": job, "kind": kind,
               "unit": "ops/s" if kind == "meta" else "IOPS"}
        for side in SIDES:
            iops = statistics.median(x[side]["iops"] for x in rounds)
            mbps = (None if kind == "meta"
                    else statistics.median(x[side]["mbps"] for x in rounds))
            res[side] = {"mbps": mbps, "iops": iops}
        res["ratio"] = res["vssfs"]["iops"] / res["native"]["iops"]
        ratios = [x["ratio"] for x in rounds]
        res["ratio_min"] = min(ratios)
        res["ratio_max"] = max(ratios)
        res["rounds"] = rounds
        results.append(res)

    label = env.get("peer") or "vssfs"
    other = label if env["mode"] in ("vssfs", "peer") else "vssfs*"
    head = ["job", "native MB/s", f"{other} MB/s", "native IOPS", f"{other} IOPS",
            f"{other}/native"]
    if a.repeat > 1:
        head.append("ratio range")
    rows = []
    for res in results:
        row = [res["job"], fmt_num(res["native"]["mbps"]), fmt_num(res["vssfs"]["mbps"]),
               fmt_num(res["native"]["iops"], 0), fmt_num(res["vssfs"]["iops"], 0),
               f"{res['ratio']:.2f}"]
        if a.repeat > 1:
            row.append(f"{res['ratio_min']:.2f}-{res['ratio_max']:.2f}")
        rows.append(row)
    out = [""]
    if env["mode"] == "calibration":
        out.append("CALIBRATION RUN (--no-mount): 'vssfs*' is a plain directory, not a mount")
    if a.mount_info:
        out.append(f"fuse mount: {a.mount_info}")
    out += format_table(head, rows)
    out.append("MB = 10^6 bytes; IOPS column is ops/s for create/stat/unlink; ratio is "
               f"IOPS({other})/IOPS(native)")
    if a.repeat > 1:
        out.append(f"values are medians of {a.repeat} rounds; ratio range is per-round min-max")
    if all(x[side]["disk_read_bytes"] is not None
           for res in results for x in res["rounds"] for side in SIDES):
        out.append("")
        out.append(f"backing device traffic per run, MB read / MB written "
                   f"({env.get('backing_source', '?')}"
                   f"{', median of rounds' if a.repeat > 1 else ''}):")
        cells = []
        for res in results:
            row = [res["job"]]
            for side in SIDES:
                rd = statistics.median(x[side]["disk_read_bytes"] for x in res["rounds"])
                wr = statistics.median(x[side]["disk_write_bytes"] for x in res["rounds"])
                res[side]["disk_read_bytes"] = rd
                res[side]["disk_write_bytes"] = wr
                row.append(f"{rd / 1e6:,.0f} / {wr / 1e6:,.0f}")
            cells.append(row)
        out += format_table(["job", "native", other], cells, rule=False)
    out.append("")
    out.append(f"ratios {other}/native: " +
               " ".join(f"{res['job']}={res['ratio']:.2f}" for res in results))
    print("\n".join(out))

    if a.json:
        doc = {
            "tool": "vssfs tools/bench",
            "format": 1,
            "mode": env["mode"],
            "target": label if env["mode"] != "calibration" else None,
            "env": env,
            "results": results,
            "ratios": {res["job"]: round(res["ratio"], 4) for res in results},
        }
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")


# ------------------------------------------------------------------------- main

def main(argv):
    ap = argparse.ArgumentParser(prog="bench_lib.py")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("size")
    p.add_argument("text")

    p = sub.add_parser("mount")
    p.add_argument("path")

    p = sub.add_parser("disk")
    p.add_argument("path")

    p = sub.add_parser("readahead")
    p.add_argument("path")
    p.add_argument("--set", type=int)

    p = sub.add_parser("env")
    p.add_argument("--out", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--mode", required=True, choices=["vssfs", "peer", "calibration"])
    p.add_argument("--peer", default="")
    p.add_argument("--binary", default="", help="the mounted daemon: vssfs or the peer")
    p.add_argument("--opt", action="append")
    p.add_argument("--command", default="")
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--runtime", type=int, required=True)
    p.add_argument("--files", type=int, required=True)
    p.add_argument("--jobs", required=True)
    p.add_argument("--repeat", type=int, required=True)
    p.add_argument("--fio-cpu", default="")

    p = sub.add_parser("check")
    p.add_argument("file")
    p.add_argument("job", choices=sorted(JOBS))
    p.add_argument("side")
    p.add_argument("--ios", type=int)

    p = sub.add_parser("report")
    p.add_argument("--env", required=True)
    p.add_argument("--results", required=True)
    p.add_argument("--jobs", required=True)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--mount-info", default="")
    p.add_argument("--json")

    a = ap.parse_args(argv)
    try:
        if a.cmd == "size":
            print(parse_size(a.text))
        elif a.cmd == "mount":
            m = mount_at(a.path)
            if m is None:
                return 1
            print(f"{m['fstype']}\t{m['majmin']}\t{m['super_opts']}")
        elif a.cmd == "disk":
            m = mount_containing(a.path)
            if not m or m["majmin"].startswith("0:"):
                return 1
            print(m["majmin"])
        elif a.cmd == "readahead":
            cmd_readahead(a)
        elif a.cmd == "env":
            cmd_env(a)
        elif a.cmd == "check":
            cmd_check(a)
        elif a.cmd == "report":
            cmd_report(a)
    except BenchError as e:
        print(f"bench: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
