#!/usr/bin/env python3
"""tools/bench --snapshots: what snapshots cost on a vssfs mount.

Mounts vssfs on a fresh work directory and measures, against the same mount
without snapshots in the same run:

  create-100M / create-10G   snapshot create latency (median) of a volume with
                             100 MiB and of one with 10 GiB and 10000 more
                             files, mounted side by side, creates alternating
  preserved-write            64 KiB random writes to blocks already preserved
                             since the last snapshot, vs no snapshot
  first-rand64k              first overwrite after a snapshot, 64 KiB random
  first-seq1M                first overwrite after a snapshot, 1 MiB sequential
  snap-read                  sequential read of .snapshot/<name>/file after half
                             of the file was overwritten, vs the live file
  space-10pct                store growth for overwriting 10% of a 1 GiB file
  space-zero                 store growth for overwriting a 1 GiB file of zeros
  space-dedup                store growth for overwriting two identical 64 MiB files
  files-unlisted             first 1 MiB sequential overwrite of a file that the
                             only snapshot's target file list leaves out, vs no
                             snapshot (and the store growth: none expected)
  files-vs-whole             the same overwrite after a target-file-list snapshot
                             vs after a whole-volume snapshot (the saving)

Throughput jobs use fio (psync, buffered, end_fsync=1); each is run --repeat
times alternating with its baseline and the medians are compared. Must run as
root. Everything created is removed at exit (unless --keep).
"""

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

MIB = 1 << 20
GIB = 1 << 30


def note(msg):
    print(msg, file=sys.stderr, flush=True)


def fnv1a(text):
    h = 1469598103934665603
    for b in text.encode():
        h ^= b
        h = (h * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return h


class Volume:
    def __init__(self, vssfs, work, opts, suffix=""):
        self.work = work
        self.backing = os.path.join(work, "backing" + suffix)
        self.mnt = os.path.join(work, "mnt" + suffix)
        self.run_dir = os.path.join(work, "run")
        for d in (self.backing, self.mnt):
            os.mkdir(d)
        env = dict(os.environ, VSSFS_RUN_DIR=self.run_dir)
        self.log = open(os.path.join(work, "vssfs%s.log" % suffix), "w")
        self.proc = subprocess.Popen([vssfs, "--foreground", *opts, self.backing, self.mnt],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.sock = os.path.join(self.run_dir, "ctl-%016x.sock" % fnv1a(self.mnt))
        deadline = time.time() + 15
        while not (os.path.ismount(self.mnt) and os.path.exists(self.sock)):
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                raise RuntimeError("vssfs did not mount (or has no control socket); see " +
                                   self.log.name)
            time.sleep(0.05)

    def call(self, *args):
        """One vssctl command over the control socket; returns (code, out, err)."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(self.sock)
        s.sendall("\0".join(args).encode())
        s.shutdown(socket.SHUT_WR)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        s.close()
        code, out_len = struct.unpack("<II", data[:8])
        return code, data[8:8 + out_len].decode(), data[8 + out_len:].decode()

    def snapshot(self, name):
        code, out, err = self.call("snapshot", "create", "--name", name)
        if code != 0:
            raise RuntimeError("snapshot create failed: " + err)

    def delete(self, name):
        code, out, err = self.call("snapshot", "delete", name)
        if code != 0:
            raise RuntimeError("snapshot delete failed: " + err)

    def df(self):
        code, out, err = self.call("df", "--json")
        if code != 0:
            raise RuntimeError("df failed: " + err)
        return json.loads(out)

    def stop(self):
        if self.proc.poll() is None:
            subprocess.run(["umount", self.mnt], check=False)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def fio(path, rw, bs, size, runtime=None, extra=()):
    """Runs one fio job on `path`; returns bytes/s of the main direction."""
    cmd = ["fio", "--name=job", "--filename=" + path, "--rw=" + rw, "--bs=" + bs,
           "--size=" + str(size), "--ioengine=psync", "--fallocate=none", "--invalidate=0",
           "--output-format=json"]
    if rw in ("write", "randwrite"):
        cmd += ["--end_fsync=1", "--overwrite=1"]
    if runtime:
        cmd += ["--time_based", "--runtime=%d" % runtime]
    cmd += list(extra)
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    job = json.loads(out[out.index("{"):])["jobs"][0]
    side = job["write"] if "write" in rw else job["read"]
    return float(side["bw_bytes"])


def write_file(path, size, pattern="random"):
    """Writes `size` bytes (random or zero) and fsyncs."""
    zero = bytes(MIB)
    with open(path, "wb") as f:
        for _ in range(size // MIB):
            f.write(os.urandom(MIB) if pattern == "random" else zero)
        f.flush()
        os.fsync(f.fileno())


def median_ms(samples):
    return statistics.median(samples) * 1000.0


def main(argv):
    ap = argparse.ArgumentParser(prog="tools/bench --snapshots",
                                 description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vssfs", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                     "..", "build", "release", "fs", "vssfs"))
    ap.add_argument("--dir", default="/var/tmp", help="parent of the work directory")
    ap.add_argument("--size", type=int, default=1024, help="test file size in MiB (default 1024)")
    ap.add_argument("--big", type=int, default=10240,
                    help="data for the second create measurement, MiB (default 10240)")
    ap.add_argument("--creates", type=int, default=25, help="snapshots per create measurement")
    ap.add_argument("--repeat", type=int, default=3, help="rounds per throughput job (median)")
    ap.add_argument("--runtime", type=int, default=10, help="seconds per time-based job")
    ap.add_argument("--vssfs-opt", action="append", default=[], help="extra vssfs argument")
    ap.add_argument("--json", action="store_true", help="JSON on stdout, report on stderr")
    ap.add_argument("--files-only", action="store_true",
                    help="run only the target-file-list jobs (files-unlisted, files-vs-whole)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("tools/bench --snapshots: must run as root")
    if shutil.which("fio") is None:
        sys.exit("tools/bench --snapshots: fio not found (tools/setup.sh installs it)")
    vssfs = os.path.realpath(a.vssfs)
    if not os.access(vssfs, os.X_OK):
        sys.exit("tools/bench --snapshots: vssfs binary not found: " + vssfs)

    work = tempfile.mkdtemp(prefix="vssfs-snapbench-", dir=a.dir)
    vol = None
    results = {}
    rows = []

    def row(name, value, unit, goal, ok, detail):
        rows.append((name, value, unit, goal, ok, detail))
        results[name] = {"value": value, "unit": unit, "goal": goal, "ok": ok, "detail": detail}
        note("  %-16s %10.3f %-6s goal %-10s %s  %s" % (name, value, unit, goal,
                                                       "ok" if ok else "MISSED", detail))

    try:
        vol = Volume(vssfs, work, a.vssfs_opt + ["-o", "allow_other"])
        m = vol.mnt
        size = a.size * MIB
        snap_id = [0]

        def snap():
            snap_id[0] += 1
            name = "b%d" % snap_id[0]
            vol.snapshot(name)
            return name

        def delete_all():
            code, out, err = vol.call("snapshot", "list", "--json")
            for s in json.loads(out):
                vol.delete(s["name"])

        # -- target file lists: writes to files no snapshot lists ------------
        f = os.path.join(m, "vm.vhdx")
        listed = os.path.join(m, "sql.mdf")
        note("target file list jobs on a %d MiB file, %d rounds" % (a.size, a.repeat))
        fio(f, "write", "1M", size)
        write_file(listed, 16 * MIB)
        tl = {"base": [], "partial": [], "whole": [], "grow": []}
        for r in range(a.repeat):
            tl["base"].append(fio(f, "write", "1M", size))
            snap_id[0] += 1
            code, out, err = vol.call("snapshot", "create", "--name", "t%d" % snap_id[0],
                                      "--file", listed)
            if code != 0:
                raise RuntimeError("snapshot create --file failed: " + err)
            s0 = vol.df()["preserved_bytes"]
            tl["partial"].append(fio(f, "write", "1M", size))
            tl["grow"].append(vol.df()["preserved_bytes"] - s0)
            delete_all()
            snap()
            tl["whole"].append(fio(f, "write", "1M", size))
            delete_all()
            note("  round %d: unlisted %.0f MB/s, no snapshot %.0f MB/s, whole-volume "
                 "snapshot %.0f MB/s" % (r + 1, tl["partial"][-1] / 1e6, tl["base"][-1] / 1e6,
                                         tl["whole"][-1] / 1e6))
        pm, bm, wm = (statistics.median(tl[k]) for k in ("partial", "base", "whole"))
        grow = max(tl["grow"]) / MIB
        row("files-unlisted", pm / bm, "x", ">= 0.90", pm / bm >= 0.90 and grow == 0,
            "%.0f vs %.0f MB/s, store +%.1f MiB" % (pm / 1e6, bm / 1e6, grow))
        row("files-vs-whole", pm / wm, "x", ">= 1.5", pm / wm >= 1.5,
            "%.0f vs %.0f MB/s after a whole-volume snapshot" % (pm / 1e6, wm / 1e6))
        os.unlink(f)
        os.unlink(listed)
        if a.files_only:
            return report(rows, results, a)

        # -- create latency: a volume with 100 MiB and one with 10 GiB and
        # 10000 more files, mounted side by side; creates alternate between
        # them so that both see the same machine noise.
        other = Volume(vssfs, work, a.vssfs_opt + ["-o", "allow_other"], suffix="-big")
        try:
            note("snapshot create latency: writing 100 MiB to one volume, %d MiB and "
                 "10000 files to another" % a.big)
            for vdir in (m, other.mnt):
                os.mkdir(os.path.join(vdir, "data"))
                for i in range(100):
                    write_file(os.path.join(vdir, "data", "f%03d" % i), MIB)
            for i in range(a.big // 1024):
                fio(os.path.join(other.mnt, "data", "big%02d" % i), "write", "1M", GIB)
            rest = a.big % 1024
            if rest:
                fio(os.path.join(other.mnt, "data", "bigrest"), "write", "1M", rest * MIB)
            os.mkdir(os.path.join(other.mnt, "many"))
            for i in range(10000):
                with open(os.path.join(other.mnt, "many", "s%05d" % i), "w") as f:
                    f.write("x")
            os.sync()
            small, big = [], []
            for i in range(a.creates):
                order = [(vol, small), (other, big)]
                if i % 2:
                    order.reverse()
                for v, times in order:
                    t0 = time.perf_counter()
                    v.snapshot("c-%d" % i)
                    times.append(time.perf_counter() - t0)
                    time.sleep(0.05)
        finally:
            other.stop()
        for i in range(a.creates):
            vol.delete("c-%d" % i)
        ms, mb = median_ms(small), median_ms(big)
        ratio = mb / ms
        row("create-100M", ms, "ms", "< 50", ms < 50, "median of %d" % len(small))
        row("create-10G", mb, "ms", "< 50", mb < 50, "median of %d, +10000 files" % len(big))
        row("create-ratio", ratio, "x", "<= 1.2", ratio <= 1.2, "10 GiB / 100 MiB")
        shutil.rmtree(os.path.join(m, "data"))

        # -- throughput: baselines and first/preserved overwrites -------------
        f = os.path.join(m, "vm.vhdx")
        note("throughput jobs on a %d MiB file, %d rounds" % (a.size, a.repeat))
        fio(f, "write", "1M", size)
        base = {"seq": [], "rand": [], "pres": []}
        snapd = {"seq": [], "rand": [], "pres": []}
        for r in range(a.repeat):
            base["seq"].append(fio(f, "write", "1M", size))
            base["rand"].append(fio(f, "randwrite", "64k", size))
            base["pres"].append(fio(f, "randwrite", "64k", size, a.runtime))
            snap()
            snapd["seq"].append(fio(f, "write", "1M", size))
            snap()
            snapd["rand"].append(fio(f, "randwrite", "64k", size))
            # Every block is now preserved for the latest snapshot.
            snapd["pres"].append(fio(f, "randwrite", "64k", size, a.runtime))
            delete_all()
            note("  round %d: seq %.0f/%.0f rand64k %.0f/%.0f preserved %.0f/%.0f MB/s" % (
                r + 1, snapd["seq"][-1] / 1e6, base["seq"][-1] / 1e6, snapd["rand"][-1] / 1e6,
                base["rand"][-1] / 1e6, snapd["pres"][-1] / 1e6, base["pres"][-1] / 1e6))

        def ratio_row(name, key, goal):
            s, b = statistics.median(snapd[key]), statistics.median(base[key])
            row(name, s / b, "x", ">= %.2f" % goal, s / b >= goal,
                "%.0f vs %.0f MB/s" % (s / 1e6, b / 1e6))

        ratio_row("preserved-write", "pres", 0.95)
        ratio_row("first-rand64k", "rand", 0.40)
        ratio_row("first-seq1M", "seq", 0.50)

        # -- reading a snapshot of a half-overwritten file --------------------
        live_bw, snap_bw = [], []
        for r in range(a.repeat):
            name = snap()
            fio(f, "randwrite", "64k", size, extra=["--io_size=%d" % (size // 2)])
            drop_caches()
            live_bw.append(fio(f, "read", "1M", size))
            drop_caches()
            snap_bw.append(fio(os.path.join(m, ".snapshot", name, "vm.vhdx"), "read", "1M", size))
            delete_all()
        s, l = statistics.median(snap_bw), statistics.median(live_bw)
        row("snap-read", s / l, "x", ">= 0.70", s / l >= 0.70,
            "%.0f vs %.0f MB/s (half the blocks preserved)" % (s / 1e6, l / 1e6))
        os.unlink(f)

        # -- space ------------------------------------------------------------
        def store_bytes():
            d = vol.df()
            return d["pack_disk_bytes"], d["catalog_bytes"], d["stored_bytes"]

        g = os.path.join(m, "ten.vhdx")
        write_file(g, size)
        p0, c0, _ = store_bytes()
        snap()
        fio(g, "randwrite", "64k", size, extra=["--io_size=%d" % (size // 10)])
        p1, c1, _ = store_bytes()
        grow, meta = (p1 - p0) / MIB, (c1 - c0) / MIB
        limit = size / 10 / MIB * 1.1
        row("space-10pct", grow, "MiB", "<= %.0f" % limit,
            grow <= limit and meta <= size / MIB * 0.01,
            "data +%.1f MiB, catalogue +%.2f MiB (10%% = %.1f MiB)" % (grow, meta,
                                                                      size / 10 / MIB))
        delete_all()
        os.unlink(g)

        z = os.path.join(m, "zero.vhdx")
        write_file(z, size, "zero")
        p0, c0, _ = store_bytes()
        snap()
        fio(z, "write", "1M", size)
        p1, c1, _ = store_bytes()
        grow = (p1 - p0) / MIB
        row("space-zero", grow, "MiB", "~0", grow < 1, "catalogue +%.2f MiB" % ((c1 - c0) / MIB))
        delete_all()
        os.unlink(z)

        d1, d2 = os.path.join(m, "twin1"), os.path.join(m, "twin2")
        write_file(d1, 64 * MIB)
        shutil.copyfile(d1, d2)
        os.sync()
        p0, c0, s0 = store_bytes()
        snap()
        fio(d1, "write", "1M", 64 * MIB)
        fio(d2, "write", "1M", 64 * MIB)
        p1, c1, s1 = store_bytes()
        grow = (p1 - p0) / MIB
        row("space-dedup", grow, "MiB", "<= 66", grow <= 66,
            "two identical 64 MiB files overwritten; stored +%.1f MiB" % ((s1 - s0) / MIB))
        delete_all()
    finally:
        if vol is not None:
            vol.stop()
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            note("work directory kept: " + work)

    return report(rows, results, a)


def report(rows, results, a):
    out = sys.stdout if not a.json else sys.stderr
    print("\nvssfs snapshot benchmark (%s)" % time.strftime("%Y-%m-%d %H:%M:%S"), file=out)
    print("%-16s %10s %-6s %-10s %-7s %s" % ("job", "value", "unit", "goal", "result", "detail"),
          file=out)
    for name, value, unit, goal, ok, detail in rows:
        print("%-16s %10.3f %-6s %-10s %-7s %s" % (name, value, unit, goal,
                                                   "ok" if ok else "MISSED", detail), file=out)
    if a.json:
        json.dump(results, sys.stdout, indent=2)
        print()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(130)
    except (RuntimeError, subprocess.CalledProcessError) as e:
        sys.exit("tools/bench --snapshots: error: %s" % e)
