"""vss-consistency: a snapshot consistency tester for vssfs (docs/CONSISTENCY.md).

VM-like workloads (sparse virtual disks written with random and sequential
4-64 KiB write-through I/O, config files rewritten atomically, a database-like
journal with a write-ahead log, checkpoints and data pages) run on vssfs
volumes while snapshots and shadow copy sets are taken through vssctl or
Samba's FSRVP server (rpcclient). Every 4 KiB unit written carries a
self-describing stamp, so each snapshot is verified without a reference copy:

  crash consistency    per writer a prefix of its writes, no torn or garbled
                       unit, one instant across all files and volumes of a set
                       (the writers' shared logical clock);
  application          on an auto-recovery clone the tool rolls each journal
  consistency          back to its last checkpoint, completes recovery and
                       checks the frozen image is exactly the checkpointed state;
  frozen stays frozen  snapshots are verified again later, after more load.

Exit status: 0 every check passed, 1 a violation, 2 usage or setup error.
"""

import argparse
import bisect
import errno
import hashlib
import itertools
import json
import mmap
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import zlib

UNIT = 4096
KIB = 1024
MIB = 1 << 20
GIB = 1 << 30
MAGIC = b"VSSCSTMP"
# magic, version, kind, file id, unit index, writer id, flags, write sequence,
# writer clock (start ticket), run seed.
HDR = struct.Struct("<8sHHIQIIQQQ")
KIND_DISK, KIND_WAL, KIND_PAGE, KIND_CONFIG = 1, 2, 3, 4
KIND_NAMES = {KIND_DISK: "disk", KIND_WAL: "wal", KIND_PAGE: "page", KIND_CONFIG: "config"}
# WAL record: type, LSN, page, old version, new version, old write seq,
# old write clock, old LSN.
WAL = struct.Struct("<IQQQQQQQ")
REC_UPDATE, REC_CHECKPOINT = 1, 2
# Data page: page, version, LSN.
PAGE = struct.Struct("<QQQ")
PAGE_UNITS = 2  # 8 KiB pages

EXIT_OK, EXIT_VIOLATION, EXIT_SETUP = 0, 1, 2


class SetupError(Exception):
    pass


class Interrupted(Exception):
    pass


def unit_bytes(seed, kind, fid, unit, writer, seq, clock, extra=b""):
    """The exact 4 KiB a write puts at `unit` (a pure function of its stamp)."""
    hdr = HDR.pack(MAGIC, 1, kind, fid, unit, writer, 0, seq, clock, seed) + extra
    fill = hashlib.blake2b(hdr, digest_size=64).digest()
    n = UNIT - 4 - len(hdr)
    body = hdr + (fill * (n // 64 + 1))[:n]
    return body + struct.pack("<I", zlib.crc32(body))


ZERO_UNIT = bytes(UNIT)


def parse_unit(data):
    """(status, fields): status 'zero', 'ok' (fields dict) or 'garbled' (reason)."""
    if data == ZERO_UNIT or (len(data) < UNIT and not data.strip(b"\0")):
        return "zero", None
    if len(data) != UNIT:
        return "garbled", "short unit (%d bytes)" % len(data)
    if data[:8] != MAGIC:
        return "garbled", "no stamp (first bytes %s)" % data[:16].hex()
    crc = struct.unpack_from("<I", data, UNIT - 4)[0]
    if zlib.crc32(data[:UNIT - 4]) != crc:
        m = HDR.unpack_from(data)
        return "garbled", "checksum mismatch (torn or damaged; header says writer %d seq %d)" % (
            m[5], m[7])
    _, _, kind, fid, unit, writer, _, seq, clock, seed = HDR.unpack_from(data)
    return "ok", dict(kind=kind, fid=fid, unit=unit, writer=writer, seq=seq, clock=clock, seed=seed)


def config_bytes(seed, fid, writer, seq, clock, vm):
    lines = ['<?xml version="1.0" encoding="utf-8"?>',
             "<!-- vss-consistency fid=%d writer=%d seq=%d clock=%d seed=%d -->" % (
                 fid, writer, seq, clock, seed),
             '<VirtualMachine name="%s" generation="%d">' % (vm, seq)]
    rnd = random.Random(seed * 7919 + fid * 104729 + seq)
    for i in range(rnd.randint(4, 40)):
        lines.append('  <setting key="k%d">%016x</setting>' % (i, rnd.getrandbits(64)))
    lines.append("</VirtualMachine>")
    body = ("\n".join(lines) + "\n").encode()
    return body + ("<!-- crc32=%08x -->\n" % zlib.crc32(body)).encode()


CONFIG_RE = re.compile(rb"fid=(\d+) writer=(\d+) seq=(\d+) clock=(\d+) seed=(\d+)")


def describe_config(data):
    if data is None:
        return "file missing"
    m = CONFIG_RE.search(data)
    if not m:
        return "no stamp (%d bytes)" % len(data)
    return "writer %s seq %s clock %s" % (m.group(2).decode(), m.group(3).decode(),
                                          m.group(4).decode())


# ---------------------------------------------------------------------------
# The shared logical clock and the writers' histories.

class Clock:
    def __init__(self):
        self._c = itertools.count(1)

    def tick(self):
        return next(self._c)  # atomic under the GIL


class Op:
    """One write (one pwrite, or one config rename): tickets s (before) and e
    (after it returned; None while in flight or if it failed)."""
    __slots__ = ("seq", "s", "e", "fid", "u0", "n", "extra", "uncertain")

    def __init__(self, seq, s, fid, u0, n, extra):
        self.seq, self.s, self.e, self.fid, self.u0, self.n, self.extra = seq, s, None, fid, u0, n, extra
        self.uncertain = False


class FileInfo:
    def __init__(self, fid, vm, rel, kind, writer, units):
        self.fid, self.vm, self.rel, self.kind, self.writer = fid, vm, rel, kind, writer
        self.units = units  # size in units (sparse)
        self.index = {}     # unit -> ascending list of write seqs
        self.lock = threading.Lock()


class Writer(threading.Thread):
    """One writer: one write at a time, every write recorded with its tickets."""

    def __init__(self, tester, wid, vm, name):
        super().__init__(daemon=True, name=name)
        self.t, self.wid, self.vm, self.wname = tester, wid, vm, name
        self.ops = []  # ops[seq-1]
        self.rng = random.Random(tester.seed * 1000003 + wid)
        self.bytes = 0
        self.errors = 0
        self.enospc = 0
        self.fds = {}
        self.setup_done = False

    # -- plumbing
    def path(self, rel):
        return os.path.join(self.t.vm_live_path(self.vm), rel)

    def fd(self, fi):
        fd = self.fds.get(fi.fid)
        if fd is None:
            fd = os.open(self.path(fi.rel), os.O_RDWR | os.O_DSYNC)
            self.fds[fi.fid] = fd
        return fd

    def close_fds(self):
        for fd in self.fds.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds = {}

    def new_op(self, fi, u0, n, extra):
        op = Op(len(self.ops) + 1, self.t.clock.tick(), fi.fid, u0, n, extra)
        with fi.lock:
            for u in range(u0, u0 + n):
                fi.index.setdefault(u, []).append(op.seq)
        self.ops.append(op)
        return op

    def write_units(self, fi, u0, n, extra=b""):
        """One pwrite of n stamped units at unit u0 (write-through)."""
        while True:
            self.t.gate(self)
            op = self.new_op(fi, u0, n, extra)
            data = b"".join(unit_bytes(self.t.seed, fi.kind, fi.fid, u, self.wid, op.seq, op.s, extra)
                            for u in range(u0, u0 + n))
            try:
                if self.t.slow_writes:
                    time.sleep(self.t.slow_writes)
                done = os.pwrite(self.fd(fi), data, u0 * UNIT)
                if done != len(data):
                    raise OSError(errno.EIO, "short write %d of %d" % (done, len(data)))
                return self.completed(op, len(data))
            except OSError as ex:
                self.failed(op, ex)

    def completed(self, op, nbytes):
        """The write returned: its end ticket, and the byte counts."""
        op.e = self.t.clock.tick()
        self.bytes += nbytes
        self.t.count_write(nbytes)
        return op

    def failed(self, op, ex):
        # The write may have reached the file in part (a killed daemon, a full
        # store under the writeback cache): its units may show it or not. It
        # is redone as a new write before anything else.
        op.uncertain = True
        self.errors += 1
        if ex.errno == errno.ENOSPC:
            self.enospc += 1
        self.t.note_error(self, ex)
        self.close_fds()
        if self.t.stopping.is_set():
            raise Interrupted()
        time.sleep(0.2)

    # -- the thread
    def run(self):
        try:
            self.setup()
            self.setup_done = True
            while not self.t.stopping.is_set():
                self.step()
                if self.t.write_delay:
                    time.sleep(self.rng.random() * self.t.write_delay)
        except Interrupted:
            pass
        except Exception as ex:  # noqa: BLE001 - reported, the run fails
            self.t.crash(self, ex)
        finally:
            self.close_fds()
            self.t.ready(self)


class DiskWriter(Writer):
    """A VM's virtual disk: sparse, random and sequential 4-64 KiB writes."""

    def __init__(self, tester, wid, vm):
        super().__init__(tester, wid, vm, "%s/disk" % vm)
        t = tester
        self.fi = t.add_file(vm, "disk.vhdx", KIND_DISK, self, t.disk_size // UNIT)
        self.hot = max(16, min(self.fi.units, t.hot_size // UNIT))
        self.hot0 = self.rng.randrange(0, self.fi.units - self.hot + 1)
        self.seq_at = None
        self.seq_left = 0

    def setup(self):
        with open(self.path(self.fi.rel), "wb") as f:
            f.truncate(self.fi.units * UNIT)

    def step(self):
        r = self.rng
        n = r.randint(1, 16)
        if self.seq_left > 0 and self.seq_at + n <= self.fi.units:
            u0 = self.seq_at
            self.seq_left -= 1
        elif r.random() < 0.2:
            # A sequential stream somewhere in the hot region.
            u0 = self.hot0 + r.randrange(0, max(1, self.hot - 16))
            self.seq_left = r.randint(4, 64)
        elif r.random() < 0.03:
            u0 = r.randrange(0, max(1, self.fi.units - 16))  # anywhere on the (sparse) disk
        else:
            u0 = self.hot0 + r.randrange(0, max(1, self.hot - 16))
        n = min(n, self.fi.units - u0)
        self.write_units(self.fi, u0, n)
        self.seq_at = u0 + n


class ConfigWriter(Writer):
    """A VM's config file, rewritten atomically: temp file, fsync, rename."""

    def __init__(self, tester, wid, vm):
        super().__init__(tester, wid, vm, "%s/config" % vm)
        self.fi = tester.add_file(vm, "config.xml", KIND_CONFIG, self, 1)

    def setup(self):
        self.rewrite()

    def step(self):
        time.sleep(self.rng.random() * 0.05)
        self.rewrite()

    def rewrite(self):
        fi = self.fi
        while True:
            self.t.gate(self)
            op = self.new_op(fi, 0, 1, b"")
            data = config_bytes(self.t.seed, fi.fid, self.wid, op.seq, op.s, self.vm)
            tmp = self.path("config.xml.tmp")
            if self.t.smb and self.vm == self.t.smb_client_vm and self.setup_done:
                # Through an SMB client: put the temp file, rename it over.
                local = os.path.join(self.t.work, "smbput-%d" % self.wid)
                with open(local, "wb") as f:
                    f.write(data)
                rc, out = self.t.smb.client(self.vm, "put %s config.xml.tmp; rename config.xml.tmp "
                                                     "config.xml -f" % local)
                if rc == 0 and "NT_STATUS" not in out:
                    self.t.smb_writes += 1
                    return self.completed(op, len(data))
                self.failed(op, OSError(errno.EIO, "smbclient: " + out.strip()[-200:]))
                continue
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                try:
                    os.write(fd, data)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.rename(tmp, self.path(fi.rel))
                return self.completed(op, len(data))
            except OSError as ex:
                self.failed(op, ex)


class DbWriter(Writer):
    """A database: a circular write-ahead log of checksummed, sequence-numbered
    (LSN) records with before-images, 8 KiB data pages, checkpoints. WAL rule:
    the record is durable before its page is written."""

    def __init__(self, tester, wid, vm):
        super().__init__(tester, wid, vm, "%s/db" % vm)
        t = tester
        self.slots = t.wal_slots
        self.pages = t.db_pages
        self.wal = t.add_file(vm, "db.ldf", KIND_WAL, self, self.slots)
        self.mdf = t.add_file(vm, "db.mdf", KIND_PAGE, self, self.pages * PAGE_UNITS)
        self.lsn = 0
        self.page_state = [(0, 0, 0, 0)] * self.pages  # version, seq, clock, lsn
        self.since_ckpt = 0
        self.ckpt_every = self.rng.randint(8, min(40, self.slots // 2))

    def setup(self):
        for fi in (self.wal, self.mdf):
            with open(self.path(fi.rel), "wb") as f:
                f.truncate(fi.units * UNIT)
        self.checkpoint()

    def record(self, rtype, page=0, old=(0, 0, 0, 0), new_ver=0):
        self.lsn += 1
        extra = WAL.pack(rtype, self.lsn, page, old[0], new_ver, old[1], old[2], old[3])
        return self.write_units(self.wal, self.lsn % self.slots, 1, extra)

    def checkpoint(self):
        # Pages are written through: every page as of this LSN is on disk.
        self.record(REC_CHECKPOINT)
        self.since_ckpt = 0

    def step(self):
        if self.since_ckpt >= self.ckpt_every:
            self.checkpoint()
            self.ckpt_every = self.rng.randint(8, min(40, self.slots // 2))
            return
        p = self.rng.randrange(self.pages)
        old = self.page_state[p]
        self.record(REC_UPDATE, p, old, old[0] + 1)
        lsn = self.lsn
        extra = PAGE.pack(p, old[0] + 1, lsn)
        op = self.write_units(self.mdf, p * PAGE_UNITS, PAGE_UNITS, extra)
        self.page_state[p] = (old[0] + 1, op.seq, op.s, lsn)
        self.since_ckpt += 1


# ---------------------------------------------------------------------------
# Volumes, processes, tools.

def run(cmd, env=None, timeout=120, check=False):
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                       timeout=timeout, stdin=subprocess.DEVNULL)
    out = p.stdout.decode(errors="replace")
    if check and p.returncode != 0:
        raise SetupError("%s failed (exit %d): %s" % (" ".join(cmd), p.returncode, out.strip()))
    return p.returncode, out


def first_json(out):
    """The JSON document in a command's output (warnings may come with it)."""
    for line in out.splitlines():
        if line.startswith("{") or line.startswith("["):
            return json.loads(line)
    raise SetupError("no JSON in: " + out.strip())


_DIRECT_BUF = threading.local()


def open_direct(path):
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECT)
    except OSError as ex:
        if ex.errno != errno.EINVAL:
            raise
    # No O_DIRECT here: drop the file's cached pages instead.
    fd = os.open(path, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    return fd


def pread_direct(fd, length, offset):
    """pread into a page-aligned buffer (as O_DIRECT needs)."""
    buf = getattr(_DIRECT_BUF, "buf", None)
    if buf is None or len(buf) < length:
        buf = mmap.mmap(-1, max(length, 256 * UNIT))
        _DIRECT_BUF.buf = buf
    got = 0
    mv = memoryview(buf)
    while got < length:
        n = os.preadv(fd, [mv[got:length]], offset + got)
        if n <= 0:
            break
        got += n
    data = bytes(mv[:got])
    mv.release()
    return data


def is_mounted(path):
    path = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            mp = parts[4].replace("\\040", " ")
            if mp == path:
                return True
    return False


class Volume:
    def __init__(self, tester, idx):
        self.t, self.idx = tester, idx
        self.dir = os.path.join(tester.work, "vol%d" % idx)
        self.backing = os.path.join(self.dir, "backing")
        self.mnt = os.path.join(self.dir, "mnt")
        self.store = None
        self.storefs = None
        self.proc = None
        self.vms = []
        self.log_path = os.path.join(self.dir, "vssfs.log")
        self.mounts = 0
        for d in (self.dir, self.backing, self.mnt):
            os.makedirs(d, exist_ok=True)

    def store_dir(self):
        return self.store or os.path.join(self.backing, ".vssfs")

    def small_store(self, size):
        """The store on a small tmpfs of its own (for the full-store fault)."""
        self.storefs = os.path.join(self.dir, "storefs")
        os.makedirs(self.storefs, exist_ok=True)
        run(["mount", "-t", "tmpfs", "-o", "size=%d" % size, "vssc-store", self.storefs], check=True)
        self.store = os.path.join(self.storefs, "store")

    def mount(self):
        args = [self.t.bin("vssfs"), "--foreground", "-o", "allow_other"]
        if self.store:
            args.append("--store=" + self.store)
        args += [self.backing, self.mnt]
        env = dict(os.environ)
        if self.idx == 0 and self.t.fault_env:
            env.update(self.t.fault_env)
        log = open(self.log_path, "a")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env,
                                     stdin=subprocess.DEVNULL)
        log.close()
        self.t.children.append(self.proc)
        deadline = time.time() + 20
        while not is_mounted(self.mnt):
            if self.proc.poll() is not None or time.time() > deadline:
                raise SetupError("vssfs did not mount %s; see %s" % (self.mnt, self.log_path))
            time.sleep(0.02)
        # The control socket answers.
        while run([self.t.bin("vssctl"), "-m", self.mnt, "snapshot", "list"])[0] != 0:
            if time.time() > deadline:
                raise SetupError("vssctl cannot reach the daemon of %s" % self.mnt)
            time.sleep(0.05)
        self.mounts += 1

    def kill9(self):
        """SIGKILL the daemon (only the PID we started), detach the dead mount."""
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        run(["umount", "-l", self.mnt])

    def unmount(self):
        if self.proc is None:
            return
        if is_mounted(self.mnt):
            rc, _ = run(["umount", self.mnt])
            if rc != 0:
                run(["umount", "-l", self.mnt])
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


# ---------------------------------------------------------------------------
# Snapshot views and the verifier.

class View:
    """Something verified: a snapshot (or a set's snapshots), or the live tree.
    roots: vm -> directory of the VM in the view."""

    def __init__(self, label, kind, roots, t0=None, t1=None):
        self.label, self.kind, self.roots = label, kind, roots
        self.t0, self.t1 = t0, t1
        self.cut = None        # writer id -> K (the included prefix)
        self.ckpt = None       # writer id -> (checkpoint seq, lsn) for recovered views
        self.recovered = False
        self.verdicts = []     # (when, result)
        self.snapshots = []    # (volume, snapshot name) to delete later
        self.deleted = False
        self.units = 0
        self.partial = set()   # (writer id, seq): a write in flight, included in part


class Verifier:
    def __init__(self, tester):
        self.t = tester

    def writers_of(self, view):
        ws = []
        for vm in view.roots:
            ws.extend(self.t.vm_writers[vm])
        return ws

    def expected_seq(self, w, fi, unit, k):
        """Acceptable seqs for one unit given the writer's prefix k (the
        latest write <= k; a write that failed may or may not show)."""
        seqs = fi.index.get(unit, [])
        i = bisect.bisect_right(seqs, k)
        acc = []
        while i > 0:
            q = seqs[i - 1]
            acc.append(q)
            if not w.ops[q - 1].uncertain:
                return acc
            i -= 1
        acc.append(0)
        return acc

    def read_file(self, path, units):
        """{unit: bytes} for the given sorted units (zeros past EOF). Read with
        O_DIRECT: a re-check must see what the daemon serves now, not pages
        the kernel cached at an earlier check."""
        out = {}
        try:
            fd = open_direct(path)
        except FileNotFoundError:
            return None
        try:
            i = 0
            while i < len(units):
                j = i
                while j + 1 < len(units) and units[j + 1] == units[j] + 1 and j - i < 255:
                    j += 1
                data = pread_direct(fd, (j - i + 1) * UNIT, units[i] * UNIT)
                for k in range(i, j + 1):
                    off = (k - i) * UNIT
                    chunk = data[off:off + UNIT]
                    out[units[k]] = chunk + bytes(UNIT - len(chunk)) if len(chunk) < UNIT else chunk
                i = j + 1
        finally:
            os.close(fd)
        return out

    def describe(self, w, fi, unit, q):
        if q == 0:
            return "zeros (never written)"
        op = w.ops[q - 1]
        return "writer %d (%s) seq %d clock %d" % (w.wid, w.wname, q, op.s)

    @staticmethod
    def in_flight(view, op):
        """Whether write op had not completed when the view's request was
        issued (a snapshot; never for the live tree)."""
        return view.t0 is not None and (op.e is None or op.e > view.t0)

    def timing(self, view, w, q):
        """When write q ran against the view's request (for a report)."""
        if q == 0 or view.t0 is None:
            return ""
        op = w.ops[q - 1]
        return "; that write ran at clock %d-%s, the request %d-%s" % (
            op.s, "?" if op.e is None else op.e, view.t0, "?" if view.t1 is None else view.t1)

    def found_desc(self, st, f):
        if st == "zero":
            return "zeros"
        if st == "garbled":
            return "garbled: " + f
        return "writer %d seq %d clock %d" % (f["writer"], f["seq"], f["clock"])

    def verify(self, view, recheck=False, limit=20):
        """Returns a list of violation strings (empty: clean)."""
        t = self.t
        viol = []
        writers = self.writers_of(view)
        found = {}   # fid -> {unit: (status, fields)}
        maxseq = {w.wid: 0 for w in writers}
        units_read = 0
        limits = {w.wid: len(w.ops) for w in writers}  # ops known now
        for w in writers:
            for fi in t.writer_files[w.wid]:
                path = os.path.join(view.roots[fi.vm], fi.rel)
                if fi.kind == KIND_CONFIG:
                    try:
                        fd = open_direct(path)
                        try:
                            data = pread_direct(fd, 1 << 20, 0)
                        finally:
                            os.close(fd)
                    except FileNotFoundError:
                        data = None
                    m = CONFIG_RE.search(data) if data else None
                    seq = int(m.group(3)) if m and int(m.group(2)) == w.wid else 0
                    found[fi.fid] = {0: data}
                    if seq > limits[w.wid]:
                        viol.append("%s: %s/%s shows writer %d seq %d, never written" % (
                            view.label, fi.vm, fi.rel, w.wid, seq))
                        seq = 0
                    maxseq[w.wid] = max(maxseq[w.wid], seq)
                    units_read += 1
                    continue
                with fi.lock:
                    written = sorted(fi.index)
                extra = []
                rnd = random.Random(t.seed + fi.fid + len(written))
                ws = set(written)
                for _ in range(8):  # never-written units must read as zeros
                    u = rnd.randrange(fi.units)
                    if u not in ws:
                        extra.append(u)
                units = sorted(set(written) | set(extra))
                data = self.read_file(path, units)
                if data is None:
                    viol.append("%s: %s/%s is missing" % (view.label, fi.vm, fi.rel))
                    found[fi.fid] = {}
                    continue
                res = {}
                for u, b in data.items():
                    st, f = parse_unit(b)
                    if st == "ok":
                        if (f["fid"] != fi.fid or f["unit"] != u or f["writer"] != w.wid or
                                f["seed"] != t.seed or f["seq"] < 1 or f["seq"] > len(w.ops)):
                            st, f = "garbled", "misplaced stamp (file %d block %d writer %d seq %d)" % (
                                f["fid"], f["unit"], f["writer"], f["seq"])
                        elif f["seq"] > limits[w.wid]:
                            f["late"] = True  # written after this check began: never expected
                        else:
                            op = w.ops[f["seq"] - 1]
                            if b != unit_bytes(t.seed, fi.kind, fi.fid, u, w.wid, op.seq, op.s,
                                               op.extra):
                                st, f = "garbled", "stamp of writer %d seq %d but other bytes" % (
                                    w.wid, f["seq"])
                            else:
                                maxseq[w.wid] = max(maxseq[w.wid], f["seq"])
                    res[u] = (st, f)
                units_read += len(data)
                found[fi.fid] = res
        view.units = units_read
        cut = dict(view.cut) if view.cut is not None else maxseq
        if view.cut is not None:
            for wid in cut:
                if view.ckpt and wid in view.ckpt:
                    continue  # its journal was rolled back in the clone
                if maxseq.get(wid) != cut[wid]:
                    w = t.writers[wid]
                    viol.append("%s: frozen snapshot changed: writer %d (%s) showed up to seq %d, "
                                "now %d" % (view.label, wid, w.wname, cut[wid], maxseq.get(wid)))
        # Per-unit expectations: the latest write <= K of each unit.
        for w in writers:
            k = cut[w.wid]
            for fi in t.writer_files[w.wid]:
                res = found.get(fi.fid, {})
                if fi.kind == KIND_CONFIG:
                    data = res.get(0)
                    acc = self.expected_seq(w, fi, 0, k)
                    ok = False
                    for q in acc:
                        if q == 0:
                            ok = ok or data is None
                            continue
                        op = w.ops[q - 1]
                        if data == config_bytes(t.seed, fi.fid, w.wid, q, op.s, fi.vm):
                            ok = True
                    if not ok:
                        viol.append("%s: %s/%s block 0: expected %s, found %s" % (
                            view.label, fi.vm, fi.rel, self.describe(w, fi, 0, acc[0]),
                            describe_config(data)))
                    continue
                ck = None
                if view.recovered and fi.kind in (KIND_PAGE, KIND_WAL):
                    ck = view.ckpt.get(w.wid)
                # Write K still running while the request ran may be in the
                # view in part, in whole units (README, "The instant"): the
                # page cache can send its pages in two pieces, the cut between.
                part = None
                if k > 0 and self.in_flight(view, w.ops[k - 1]) and w.ops[k - 1].fid == fi.fid:
                    part = w.ops[k - 1]
                for u in sorted(res):
                    st, f = res[u]
                    if ck is not None and fi.kind == KIND_PAGE:
                        acc = self.expected_seq(w, fi, u, ck[0])  # the checkpointed state
                    else:
                        acc = self.expected_seq(w, fi, u, k)
                        if part is not None and part.u0 <= u < part.u0 + part.n and acc[0] == k:
                            acc = acc + self.expected_seq(w, fi, u, k - 1)
                    if ck is not None and fi.kind == KIND_WAL:
                        # Records after the checkpoint were rolled back (zeroed).
                        acc = [q if q == 0 or WAL.unpack(w.ops[q - 1].extra)[1] <= ck[1] else 0
                               for q in acc]
                    fseq = f["seq"] if st == "ok" else (0 if st == "zero" else -1)
                    if part is not None and fseq != k and k in acc and fseq in acc:
                        view.partial.add((w.wid, k))
                    if fseq not in acc:
                        viol.append("%s: %s/%s block %d: expected %s, found %s%s%s" % (
                            view.label, fi.vm, fi.rel, u, self.describe(w, fi, u, acc[0]),
                            self.found_desc(st, f),
                            " (a write after the snapshot's cut, seq %d)" % k if fseq > k else "",
                            self.timing(view, w, acc[0])))
                        if len(viol) >= limit:
                            return viol
        # One instant: S = the latest start ticket among included writes;
        # every write that completed before S must be included.
        s_max, s_who = 0, None
        for w in writers:
            k = cut[w.wid]
            if k > 0 and w.ops[k - 1].s > s_max:
                s_max, s_who = w.ops[k - 1].s, (w, w.ops[k - 1])
        for w in writers:
            k = cut[w.wid]
            if k < limits[w.wid]:
                nxt = w.ops[k]  # seq k+1
                if nxt.e is not None and nxt.e <= s_max and not nxt.uncertain:
                    fi = t.files[nxt.fid]
                    ow, oop = s_who
                    ofi = t.files[oop.fid]
                    got = found.get(fi.fid, {}).get(nxt.u0)
                    gdesc = (describe_config(got) if fi.kind == KIND_CONFIG else
                             self.found_desc(*got) if got else "?")
                    viol.append(
                        "%s: not one instant: %s/%s block %d: expected writer %d (%s) seq %d clock %d "
                        "(completed at clock %d), found %s; yet %s/%s block %d shows writer %d seq %d "
                        "started at clock %d" % (
                            view.label, fi.vm, fi.rel, nxt.u0, w.wid, w.wname, nxt.seq, nxt.s, nxt.e,
                            gdesc, ofi.vm, ofi.rel, oop.u0, ow.wid, oop.seq, oop.s))
                if view.t0 is not None and nxt.e is not None and nxt.e < view.t0 and not nxt.uncertain:
                    fi = t.files[nxt.fid]
                    viol.append("%s: %s/%s block %d: expected writer %d seq %d (completed at clock %d, "
                                "before the snapshot request at %d), missing" % (
                                    view.label, fi.vm, fi.rel, nxt.u0, w.wid, nxt.seq, nxt.e, view.t0))
            if k > 0 and view.t1 is not None and w.ops[k - 1].s > view.t1:
                op = w.ops[k - 1]
                fi = t.files[op.fid]
                viol.append("%s: %s/%s block %d: writer %d seq %d started at clock %d, after the "
                            "snapshot request returned (%d), yet it is included" % (
                                view.label, fi.vm, fi.rel, op.u0, w.wid, op.seq, op.s, view.t1))
        if view.cut is None:
            view.cut = dict(cut)
        return viol[:limit]


# ---------------------------------------------------------------------------
# The tester.

class Tester:
    def __init__(self, a):
        self.a = a
        self.seed = a.seed
        self.clock = Clock()
        self.stopping = threading.Event()
        self.paused = threading.Event()  # set: writers of paused volumes wait
        self.pause_vols = set()
        self.waiting = set()
        self.cond = threading.Condition()
        self.children = []
        self.volumes = []
        self.files = {}
        self.writers = {}
        self.writer_files = {}
        self.vm_writers = {}
        self.vm_volume = {}
        self.views = []
        self.live_checks = []
        self.violations = []
        self.errors_seen = []
        self.bytes_written = 0
        self.writes = 0
        self.sets = 0
        self.fsrvp_sets = 0
        self.snapshots = 0
        self.recovered = 0
        self.enospc_refusals = 0
        self.smb_writes = 0
        self.smb_client_vm = "vm1"
        self.fscks = []
        self.events = []
        self.write_delay = a.write_delay
        self.slow_writes = 0
        self.wal_slots = 256
        self.db_pages = a.db_pages
        self.disk_size = a.disk_size
        self.hot_size = a.hot_size
        self.fault_env = {}
        if a.inject == "skip-preserve":
            self.fault_env = {"VSSFS_FAULT_SKIP_PRESERVE": str(a.inject_n)}
        self.work = None
        self.smb = None
        self.lock = threading.Lock()
        self.fatal = None
        self.started = time.time()
        self.rng = random.Random(self.seed)

    # -- binaries
    def bin(self, name):
        return self.binaries[name]

    def find_binaries(self):
        here = os.path.dirname(os.path.abspath(__file__))
        sub = {"vssfs": "fs", "vssctl": "snapshot_ctl", "vssfs-smb": "smb_export"}
        self.binaries = {}
        for name, d in sub.items():
            cands = []
            if self.a.bin_dir:
                cands += [os.path.join(self.a.bin_dir, name), os.path.join(self.a.bin_dir, d, name)]
            else:
                cands += [os.path.join(here, "..", "build", "release", d, name)]
            found = next((c for c in cands if os.access(c, os.X_OK)), None) or shutil.which(name)
            if not found and (name != "vssfs-smb" or self.a.samba):
                raise SetupError("cannot find %s (give --bin-dir)" % name)
            self.binaries[name] = os.path.abspath(found) if found else None

    def vssctl(self, *args, timeout=120):
        return run([self.bin("vssctl")] + list(args), timeout=timeout)

    # -- layout
    def add_file(self, vm, rel, kind, writer, units):
        fid = len(self.files) + 1
        fi = FileInfo(fid, vm, rel, kind, writer.wid, units)
        self.files[fid] = fi
        self.writer_files.setdefault(writer.wid, []).append(fi)
        return fi

    def vm_live_path(self, vm):
        return os.path.join(self.volumes[self.vm_volume[vm]].mnt, vm)

    def count_write(self, n):
        with self.lock:
            self.bytes_written += n
            self.writes += 1

    def note_error(self, w, ex):
        with self.lock:
            if len(self.errors_seen) < 50:
                self.errors_seen.append("%s: %s" % (w.wname, ex))

    def crash(self, w, ex):
        self.fatal = "writer %s crashed: %s\n%s" % (w.wname, ex, traceback.format_exc())
        self.stopping.set()

    def ready(self, w):
        with self.cond:
            self.cond.notify_all()

    def gate(self, w):
        """Writers of a paused volume wait here (between writes)."""
        if not self.pause_vols:
            return
        with self.cond:
            while self.vm_volume[w.vm] in self.pause_vols and not self.stopping.is_set():
                self.waiting.add(w.wid)
                self.cond.notify_all()
                self.cond.wait(0.1)
            self.waiting.discard(w.wid)
        if self.stopping.is_set():
            raise Interrupted()

    def pause(self, vol, wait=True):
        with self.cond:
            self.pause_vols.add(vol)
            if not wait:
                return
            wids = {w.wid for w in self.writers.values() if self.vm_volume[w.vm] == vol and w.is_alive()}
            deadline = time.time() + 60
            while not wids <= self.waiting and time.time() < deadline:
                self.cond.wait(0.1)
                wids = {w.wid for w in self.writers.values()
                        if self.vm_volume[w.vm] == vol and w.is_alive()}

    def resume(self, vol):
        with self.cond:
            self.pause_vols.discard(vol)
            self.cond.notify_all()

    def setup(self):
        a = self.a
        if os.geteuid() != 0:
            raise SetupError("must run as root (it mounts FUSE filesystems)")
        self.find_binaries()
        base = a.work_dir or os.environ.get("TMPDIR") or "/var/tmp"
        self.work = tempfile.mkdtemp(prefix="vss-consistency-", dir=base)
        os.chmod(self.work, 0o755)
        self.run_dir = os.path.join(self.work, "run")
        self.state_dir = os.path.join(self.work, "state")
        os.makedirs(self.state_dir, mode=0o700)
        os.environ["VSSFS_RUN_DIR"] = self.run_dir
        os.environ["VSSFS_STATE_DIR"] = self.state_dir
        nvol = a.volumes
        for i in range(nvol):
            v = Volume(self, i)
            if a.enospc and i == nvol - 1:
                v.small_store(a.store_size)
            self.volumes.append(v)
            v.mount()
        wid = itertools.count(1)
        for i in range(a.vms):
            vm = "vm%d" % (i + 1)
            vol = i % nvol
            self.vm_volume[vm] = vol
            self.volumes[vol].vms.append(vm)
            os.mkdir(os.path.join(self.volumes[vol].mnt, vm))
            ws = [DiskWriter(self, next(wid), vm), ConfigWriter(self, next(wid), vm),
                  DbWriter(self, next(wid), vm)]
            self.vm_writers[vm] = ws
            for w in ws:
                self.writers[w.wid] = w
        if a.samba:
            self.smb = Samba(self)
            self.smb.start()
        for w in self.writers.values():
            w.start()
        # Until every writer has done its setup (files, first checkpoint).
        while not all(w.setup_done for w in self.writers.values()):
            if self.fatal:
                raise SetupError(self.fatal)
            time.sleep(0.05)

    # -- progress
    def progress(self, force=False):
        now = time.time()
        if not force and now - getattr(self, "_last_progress", 0) < (1 if self.tty else 10):
            return
        self._last_progress = now
        line = ("[%5.0fs] sets %d (fsrvp %d) snapshots %d verified %d recovered %d | writes %d "
                "%.1f MiB | violations %d" % (
                    now - self.started, self.sets, self.fsrvp_sets, self.snapshots,
                    sum(len(v.verdicts) for v in self.views), self.recovered, self.writes,
                    self.bytes_written / MIB, len(self.violations)))
        if self.tty:
            sys.stderr.write("\r" + line + "\033[K")
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def say(self, msg):
        if self.tty:
            sys.stderr.write("\r\033[K")
        sys.stderr.write(msg + "\n")
        sys.stderr.flush()
        self.events.append("%6.1fs %s" % (time.time() - self.started, msg))

    # -- checks
    def check(self, view, when, recheck=False):
        if view.kind == "live":
            self.live_checks.append(view)
        viol = Verifier(self).verify(view, recheck=recheck)
        view.verdicts.append((when, "ok" if not viol else "VIOLATION"))
        for v in viol:
            self.say("VIOLATION " + v)
        self.violations.extend(viol)
        if viol and not self.a.keep_going:
            self.stopping.set()
        return not viol

    def check_readonly(self, view):
        """A read-only snapshot refuses writes with EROFS (root included)."""
        vm = sorted(view.roots)[0]
        p = os.path.join(view.roots[vm], "disk.vhdx")
        try:
            os.close(os.open(p, os.O_WRONLY))
            err = None
        except OSError as ex:
            err = ex.errno
        if err != errno.EROFS:
            msg = "%s: %s/disk.vhdx opened for writing in a read-only snapshot (%s)" % (
                view.label, vm, os.strerror(err) if err else "allowed")
            self.say("VIOLATION " + msg)
            self.violations.append(msg)

    def live_view(self, label):
        roots = {vm: self.vm_live_path(vm) for vm in self.vm_writers}
        return View(label, "live", roots)

    # -- drivers
    def plain_snapshot(self, vol):
        v = self.volumes[vol]
        name = "vssc-%d-%d" % (self.seed % 100000, len(self.views) + 1)
        t0 = self.clock.tick()
        rc, out = self.vssctl("-m", v.mnt, "snapshot", "create", "--name", name)
        t1 = self.clock.tick()
        if rc != 0:
            self.refused(out, [vol], "vssctl snapshot create")
            return
        self.snapshots += 1
        roots = {vm: os.path.join(v.mnt, ".snapshot", name, vm) for vm in v.vms}
        view = View("snapshot %s (volume %d)" % (name, vol), "snapshot", roots, t0, t1)
        view.snapshots = [(vol, name)]
        self.views.append(view)
        self.check(view, "taken")
        self.check_readonly(view)

    def vssctl_set(self, vms, auto_recovery):
        vols = sorted({self.vm_volume[vm] for vm in vms})
        shares = [self.vm_live_path(vm) for vm in vms]
        args = ["--json", "set", "create-expose", "--context", "backup"]
        inject_split = self.a.inject == "split-instant" and len(vols) > 1
        t0 = self.clock.tick()
        sets = []
        if inject_split:
            # Fault injection: the set's volumes taken at two instants, with
            # writes in between, then verified as one set. (The first part is
            # deleted at once: one set in creation at a time.)
            auto_recovery = False
            for i, vol in enumerate(vols):
                part = [s for s, vm in zip(shares, vms) if self.vm_volume[vm] == vol]
                rc, out = self.vssctl(*(args + part))
                if rc != 0:
                    raise SetupError("vssctl set create-expose failed: " + out.strip())
                sets.append(first_json(out))
                self.vssctl("set", "recovery-complete", sets[-1]["id"])
                self.vssctl("set", "delete", sets[-1]["id"])
                time.sleep(0.3)
        else:
            if auto_recovery:
                args.append("--auto-recovery")
            rc, out = self.vssctl(*(args + shares))
            if rc != 0:
                self.refused(out, vols, "vssctl set create-expose")
                return
            sets = [first_json(out)]
        t1 = self.clock.tick()
        self.sets += 1
        # The view: every VM of each volume (a set's snapshot is the whole
        # volume), under the snapshot (clone) of its volume.
        snap = {}
        for s in sets:
            for c in s["shadow_copies"]:
                vol = next(i for i, v in enumerate(self.volumes) if v.mnt == c["volume"])
                snap[vol] = c["snapshot"]
        roots = {}
        for vol, name in snap.items():
            for vm in self.volumes[vol].vms:
                roots[vm] = os.path.join(self.volumes[vol].mnt, ".snapshot", name, vm)
        label = "set %s%s (%s)" % (sets[0]["id"][:8], " auto-recovery" if auto_recovery else "",
                                   ", ".join("vol%d:%s" % kv for kv in sorted(snap.items())))
        view = View(label, "set", roots, t0, t1)
        view.snapshots = sorted(snap.items())
        self.views.append(view)
        ok = self.check(view, "taken")
        if not auto_recovery:
            self.check_readonly(view)
        if auto_recovery and ok:
            self.recover(view, vms)
        # RecoveryComplete (also without auto-recovery: it releases the context).
        for s in sets:
            if inject_split:
                continue
            rc, out = self.vssctl("set", "recovery-complete", s["id"])
            if rc != 0:
                raise SetupError("vssctl set recovery-complete failed: " + out.strip())
        if auto_recovery and ok:
            self.after_freeze(view, vms)
        for s in sets:
            if not inject_split:
                rc, out = self.vssctl("set", "delete", s["id"])
                if rc != 0:
                    raise SetupError("vssctl set delete failed: " + out.strip())

    # -- the VSS writer's part: auto-recovery in the clone
    def recover(self, view, vms):
        """Rolls every set share's journal back to its last checkpoint, in the
        writable clone, reading only the image (as the application would)."""
        view.ckpt = {}
        view.pre_fds = []
        for vm in vms:
            root = view.roots[vm]
            db = next(w for w in self.vm_writers[vm] if isinstance(w, DbWriter))
            wal_path = os.path.join(root, db.wal.rel)
            mdf_path = os.path.join(root, db.mdf.rel)
            with open(wal_path, "rb") as f:
                wal = f.read()
            recs = []
            for slot in range(len(wal) // UNIT):
                b = wal[slot * UNIT:(slot + 1) * UNIT]
                st, f = parse_unit(b)
                if st != "ok":
                    continue
                recs.append(WAL.unpack_from(b, HDR.size))
            ckpts = [r for r in recs if r[0] == REC_CHECKPOINT]
            if not ckpts:
                raise SetupError("%s: no checkpoint in the journal of %s" % (view.label, vm))
            c = max(r[1] for r in ckpts)
            undo = sorted((r for r in recs if r[0] == REC_UPDATE and r[1] > c), key=lambda r: -r[1])
            fd = os.open(mdf_path, os.O_RDWR)
            wfd = os.open(wal_path, os.O_RDWR)
            try:
                for rtype, lsn, page, old_ver, new_ver, old_seq, old_clock, old_lsn in undo:
                    if old_ver == 0:
                        img = bytes(PAGE_UNITS * UNIT)
                    else:
                        extra = PAGE.pack(page, old_ver, old_lsn)
                        img = b"".join(unit_bytes(self.seed, KIND_PAGE, db.mdf.fid, u, db.wid,
                                                  old_seq, old_clock, extra)
                                       for u in range(page * PAGE_UNITS, (page + 1) * PAGE_UNITS))
                    os.pwrite(fd, img, page * PAGE_UNITS * UNIT)
                # The rolled-back records are gone from the log.
                for r in recs:
                    if r[1] > c:
                        os.pwrite(wfd, ZERO_UNIT, (r[1] % db.slots) * UNIT)
                os.fsync(fd)
                os.fsync(wfd)
            finally:
                os.close(fd)
                os.close(wfd)
            # Which write was that checkpoint (the writer's history says)?
            cseq = next(op.seq for op in db.ops
                        if op.fid == db.wal.fid and op.extra and WAL.unpack(op.extra)[0] == REC_CHECKPOINT
                        and WAL.unpack(op.extra)[1] == c)
            view.ckpt[db.wid] = (cseq, c)
            # A descriptor opened before the freeze must fail after it.
            view.pre_fds.append(os.open(mdf_path, os.O_RDWR))
        # VMs outside the set (the same snapshot): nothing rolled back.
        for vm in view.roots:
            if vm not in vms:
                db = next(w for w in self.vm_writers[vm] if isinstance(w, DbWriter))
                view.ckpt[db.wid] = None
        view.ckpt = {k: v for k, v in view.ckpt.items() if v is not None}
        view.recovered = True

    def after_freeze(self, view, vms):
        self.recovered += 1
        # EROFS: a new open for writing, and a descriptor opened before.
        for vm in vms:
            p = os.path.join(view.roots[vm], "disk.vhdx")
            deadline = time.time() + 5
            while True:
                try:
                    fd = os.open(p, os.O_WRONLY)
                    os.close(fd)
                    err = None
                except OSError as ex:
                    err = ex.errno
                if err == errno.EROFS or time.time() > deadline:
                    break
                time.sleep(0.05)  # Samba's watcher freezes asynchronously
            if err != errno.EROFS:
                msg = "%s: %s/disk.vhdx opened for writing after recovery complete (%s)" % (
                    view.label, vm, os.strerror(err) if err else "allowed")
                self.say("VIOLATION " + msg)
                self.violations.append(msg)
        for fd in getattr(view, "pre_fds", []):
            try:
                os.pwrite(fd, b"x", 0)
                err = None
            except OSError as ex:
                err = ex.errno
            os.close(fd)
            if err != errno.EROFS:
                msg = "%s: a descriptor opened before recovery complete still writes (%s)" % (
                    view.label, os.strerror(err) if err else "allowed")
                self.say("VIOLATION " + msg)
                self.violations.append(msg)
        view.pre_fds = []
        view.label += " [recovered]"
        self.check(view, "recovered")

    def refused(self, out, vols, what):
        """A snapshot operation failed. With a full store that is the clean
        refusal expected (ENOSPC): free space by deleting the oldest snapshot
        of those volumes (verified once more first) and go on. Otherwise the
        run stops."""
        if "No space left on device" not in out:
            raise SetupError("%s failed: %s" % (what, out.strip()))
        self.enospc_refusals += 1
        self.say("%s refused with the store full: %s" % (what, out.strip().splitlines()[-1][:200]))
        for view in self.views:
            if not view.deleted and any(v in vols for v, _ in view.snapshots):
                self.check(view, "before delete (store full)", recheck=True)
                self.delete_view(view)
                break

    def delete_view(self, view):
        for vol, name in view.snapshots:
            rc, out = self.vssctl("-m", self.volumes[vol].mnt, "snapshot", "delete", name)
            if rc != 0:
                self.say("note: could not delete %s: %s" % (name, out.strip()))
        view.deleted = True

    def recheck_some(self, n=1):
        alive = [v for v in self.views if not v.deleted]
        for v in self.rng.sample(alive, min(n, len(alive))):
            self.check(v, "recheck", recheck=True)

    def retire(self):
        alive = [v for v in self.views if not v.deleted]
        while len(alive) > self.a.keep:
            v = alive.pop(self.rng.randrange(0, len(alive) - 1))
            self.check(v, "before delete", recheck=True)
            self.delete_view(v)

    # -- faults
    def fault_kill(self):
        vol = 0
        v = self.volumes[vol]
        self.say("fault: kill -9 vssfs pid %d (volume 0) under load, during a snapshot create" %
                 v.proc.pid)
        name = "vssc-%d-kill" % (self.seed % 100000)
        t0 = self.clock.tick()
        p = subprocess.Popen([self.bin("vssctl"), "-m", v.mnt, "snapshot", "create", "--name", name],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        time.sleep(self.rng.random() ** 2 * 0.06)  # before, during or after the cut
        v.kill9()
        out = p.communicate()[0].decode(errors="replace")
        self.pause(vol)  # its writers wait (after their failed write)
        # Offline first: the space of an interrupted preservation may show as
        # orphan pack space (reclaimed at mount); nothing else may be wrong.
        rc, fsck = self.vssctl("fsck", "--store", v.store_dir(), timeout=600)
        self.fscks.append(("offline after kill -9, volume 0", rc))
        problems = [l for l in fsck.splitlines() if l.strip().startswith("problem:")]
        self.say("fsck --store after kill -9: exit %d%s" % (rc, "".join("; " + p.strip() for p in problems)))
        if rc != 0 and (not problems or any("orphan" not in p for p in problems)):
            self.violations.append("fsck after kill -9 found problems: " + fsck.strip()[-500:])
        v.mount()
        rc, fsck = self.vssctl("-m", v.mnt, "fsck", timeout=600)
        self.fscks.append(("online after the remount, volume 0", rc))
        self.say("fsck after the remount: exit %d" % rc)
        if rc != 0:
            self.violations.append("fsck after kill -9 and remount: " + fsck.strip()[-500:])
        # The snapshot being created: complete and correct, or absent.
        rc2, listing = self.vssctl("-m", v.mnt, "--json", "snapshot", "list")
        names = [s["name"] for s in first_json(listing)] if rc2 == 0 else []
        self.say("snapshot create during the kill: exit %d (%s); after remount it is %s" % (
            p.returncode, out.strip().splitlines()[-1] if out.strip() else "", "present" if name in names else "absent"))
        if name in names:
            roots = {vm: os.path.join(v.mnt, ".snapshot", name, vm) for vm in v.vms}
            view = View("snapshot %s (volume 0, created across kill -9)" % name, "snapshot", roots, t0, None)
            view.snapshots = [(vol, name)]
            self.views.append(view)
            self.snapshots += 1
            self.check(view, "after remount")
        # Every snapshot of the volume again, and the live tree.
        for view in self.views:
            if not view.deleted and any(sv == vol for sv, _ in view.snapshots):
                self.check(view, "after kill -9", recheck=True)
        live = View("live tree after kill -9 (volume 0)", "live",
                    {vm: self.vm_live_path(vm) for vm in v.vms})
        self.check(live, "after kill -9")
        self.resume(vol)

    def fault_enospc(self):
        vol = len(self.volumes) - 1
        v = self.volumes[vol]
        if not v.storefs:
            return
        filler = os.path.join(v.storefs, "filler")
        self.say("fault: filling the store filesystem of volume %d (%s)" % (vol, v.storefs))
        # A fresh snapshot so that writes need preservation.
        self.plain_snapshot(vol)
        try:
            with open(filler, "wb") as f:
                while True:
                    f.write(bytes(MIB))
                    f.flush()
        except OSError:
            pass
        before = sum(w.enospc for w in self.writers.values())
        time.sleep(4)
        hit = sum(w.enospc for w in self.writers.values()) - before
        rc, out = self.vssctl("-m", v.mnt, "snapshot", "create", "--name",
                              "vssc-%d-full" % (self.seed % 100000))
        self.say("store full: %d writes failed with ENOSPC; snapshot create exit %d%s" % (
            hit, rc, (": " + out.strip().splitlines()[-1]) if out.strip() else ""))
        if rc == 0:
            self.vssctl("-m", v.mnt, "snapshot", "delete", "vssc-%d-full" % (self.seed % 100000))
        self.pause(vol)
        live = View("live tree with the store full (volume %d)" % vol, "live",
                    {vm: self.vm_live_path(vm) for vm in v.vms})
        self.check(live, "store full")
        for view in self.views:
            if not view.deleted and any(sv == vol for sv, _ in view.snapshots):
                self.check(view, "store full", recheck=True)
        os.unlink(filler)
        with open(v.log_path) as f:
            logged = "No space left on device" in f.read()
        self.say("store space freed; the daemon logged ENOSPC: %s" % ("yes" if logged else "no"))
        self.resume(vol)

    # -- main loop
    def run(self):
        a = self.a
        self.tty = sys.stderr.isatty()
        self.setup()
        self.say("vss-consistency: seed %d, work dir %s, %d volume(s), %d VMs, %d writers%s" % (
            self.seed, self.work, len(self.volumes), a.vms, len(self.writers),
            ", over Samba FSRVP" if a.samba else ""))
        end = time.time() + a.duration
        kill_at = time.time() + a.duration * 0.4 if a.kill else None
        enospc_at = time.time() + a.duration * 0.6 if a.enospc else None
        n = 0
        while not self.stopping.is_set():
            now = time.time()
            if now >= end and (a.sets is None or self.sets + self.fsrvp_sets >= a.sets):
                break
            if a.max_sets and self.sets + self.fsrvp_sets >= a.max_sets and now >= end:
                break
            if kill_at and now >= kill_at:
                kill_at = None
                self.fault_kill()
                continue
            if enospc_at and now >= enospc_at:
                enospc_at = None
                self.fault_enospc()
                continue
            time.sleep(self.rng.random() * a.interval)
            n += 1
            r = self.rng.random()
            vms = sorted(self.vm_writers)
            if a.samba:
                if r < 0.8 or a.inject:
                    sub = vms if self.rng.random() < 0.5 else sorted(
                        self.rng.sample(vms, self.rng.randint(1, len(vms))))
                    self.smb.fsrvp_set(sub)
                else:
                    self.plain_snapshot(self.rng.randrange(len(self.volumes)))
            else:
                if r < 0.45 or a.inject == "split-instant":
                    self.vssctl_set(vms, auto_recovery=self.rng.random() < 0.5)
                elif r < 0.75:
                    sub = sorted(self.rng.sample(vms, self.rng.randint(1, len(vms))))
                    self.vssctl_set(sub, auto_recovery=self.rng.random() < 0.5)
                else:
                    self.plain_snapshot(self.rng.randrange(len(self.volumes)))
            if n % 4 == 0:
                self.recheck_some()
            self.retire()
            self.progress()
            if self.fatal:
                break
        self.finish()

    def finish(self):
        self.progress(force=True)
        self.stopping.set()
        for w in self.writers.values():
            w.join(30)
        if self.fatal:
            return
        if not self.violations or self.a.keep_going:
            # The live tree holds every completed write.
            self.check(self.live_view("live tree at the end"), "end")
            # Frozen stays frozen: every kept snapshot again, after all the load.
            for v in self.views:
                if not v.deleted:
                    self.check(v, "end", recheck=True)
            self.fsck_all("online")
            # Delete half of the rest (GC), fsck again.
            alive = [v for v in self.views if not v.deleted]
            for v in alive[::2]:
                self.delete_view(v)
            for v in self.views:
                if not v.deleted:
                    self.check(v, "after deletes", recheck=True)
            self.fsck_all("online after deletes")

    def fsck_all(self, when):
        """vssctl fsck of every volume (online); a problem is a violation."""
        for vol, v in enumerate(self.volumes):
            rc, out = self.vssctl("-m", v.mnt, "fsck", timeout=900)
            self.fscks.append(("%s, volume %d" % (when, vol), rc))
            if rc != 0:
                self.violations.append("fsck of volume %d: %s" % (vol, out.strip()[-500:]))

    def teardown(self):
        if self.smb:
            self.smb.stop()
        for v in self.volumes:
            try:
                v.unmount()
            except Exception:  # noqa: BLE001
                pass
        for v in self.volumes:
            if v.storefs and is_mounted(v.storefs):
                run(["umount", "-l", v.storefs])
        for p in self.children:
            if p.poll() is None:
                p.kill()
                p.wait()
        if self.work and not self.a.keep_work:
            if not any(is_mounted(os.path.join(v.dir, "mnt")) for v in self.volumes):
                shutil.rmtree(self.work, ignore_errors=True)

    def report(self):
        a = self.a
        lines = []
        dur = time.time() - self.started
        verdict = "FAIL" if (self.violations or self.fatal) else "PASS"
        lines.append("vss-consistency report")
        lines.append("  verdict:        %s (%d violation(s))" % (verdict, len(self.violations)))
        lines.append("  seed:           %d   (reproduce: %s)" % (self.seed, self.repro()))
        lines.append("  duration:       %.0f s" % dur)
        lines.append("  volumes, VMs:   %d, %d (%d writers: disk, config, db per VM)" % (
            len(self.volumes), a.vms, len(self.writers)))
        lines.append("  sets taken:     %d vssctl sets, %d Samba FSRVP sets (%d with auto-recovery "
                     "verified after recovery), %d plain snapshots" % (
                         self.sets, self.fsrvp_sets, self.recovered, self.snapshots))
        lines.append("  writes:         %d (%.1f MiB), write errors %d (ENOSPC %d, all redone), "
                     "snapshot operations refused for a full store %d" % (
                         self.writes, self.bytes_written / MIB,
                         sum(w.errors for w in self.writers.values()),
                         sum(w.enospc for w in self.writers.values()), self.enospc_refusals))
        if self.smb:
            lines.append("  SMB client:     %s/config.xml rewritten %d times through smbclient "
                         "(put + rename -f)" % (self.smb_client_vm, self.smb_writes))
        lines.append("  verifications:  %d of snapshots, %d of the live tree" % (
            sum(len(v.verdicts) for v in self.views), len(self.live_checks)))
        lines.append("  in part:        %d write(s) in flight during a request included in part "
                     "(allowed, whole units)" % sum(len(v.partial) for v in self.views))
        lines.append("  fsck:           %s" % (", ".join("%s: exit %d" % f for f in self.fscks) or "-"))
        if a.inject:
            lines.append("  fault injected: %s" % a.inject)
        lines.append("  per snapshot (verdicts in order: taken, recovered, rechecks...):")
        for v in self.views:
            cut = " ".join("w%d:%d" % kv for kv in sorted((v.cut or {}).items()))
            part = " ".join("w%d:%d" % kv for kv in sorted(v.partial))
            lines.append("    %-70s %s%s | cut %s%s" % (
                v.label, " ".join("%s=%s" % x for x in v.verdicts),
                " (deleted)" if v.deleted else "", cut if len(cut) < 200 else cut[:200] + "...",
                " | in flight, included in part: " + part if part else ""))
        for v in self.live_checks:
            lines.append("    %-70s %s" % (v.label, " ".join("%s=%s" % x for x in v.verdicts)))
        if self.events:
            lines.append("  events:")
            lines += ["    " + e for e in self.events[-40:] if not e.split(None, 1)[1].startswith("VIOLATION")]
        if self.violations:
            lines.append("  violations:")
            lines += ["    " + v for v in self.violations[:50]]
        if self.fatal:
            lines.append("  fatal: " + self.fatal)
        return "\n".join(lines) + "\n"

    def repro(self):
        """The command line that replays this run's writers and drivers."""
        argv, skip = [], False
        for x in self.a.argv:
            if skip:
                skip = False
                continue
            if x == "--seed":
                skip = True
                continue
            if x.startswith("--seed=") or x == "--report" or x.startswith("--report="):
                skip = x == "--report"
                continue
            argv.append(x)
        return " ".join(["tools/vss-consistency", "--seed", str(self.seed)] + argv)


# ---------------------------------------------------------------------------
# Samba: smbd + samba-dcerpcd on 127.0.0.1, FSRVP through rpcclient.

def free_port():
    for _ in range(50):
        port = random.randint(20000, 50000)
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            s.close()
    raise SetupError("no free port")


class Samba:
    def __init__(self, tester):
        self.t = tester
        self.dir = os.path.join(tester.work, "smb")
        self.procs = []
        self.port = free_port()

    def conf(self):
        return os.path.join(self.dir, "smb.conf")

    def start(self):
        t = self.t
        for d in ("lock", "state", "cache", "private", "pid", "ncalrpc"):
            os.makedirs(os.path.join(self.dir, d))
        smbstate = os.path.join(t.work, "smb-vssfs-state")
        cmd = "%s --vssctl %s --state-dir %s" % (t.bin("vssfs-smb"), t.bin("vssctl"), smbstate)
        c = ["[global]", "  netbios name = VSSCONS", "  workgroup = WG", "  smb ports = %d" % self.port,
             "  interfaces = 127.0.0.1", "  bind interfaces only = yes",
             "  server role = standalone server", "  registry shares = yes", "  include = registry",
             "  rpc start on demand helpers = false"]
        for d in ("lock", "state", "cache", "pid"):
            c.append("  %s directory = %s/%s" % (d, self.dir, d))
        c += ["  ncalrpc dir = %s/ncalrpc" % self.dir, "  private dir = %s/private" % self.dir,
              "  passdb backend = tdbsam:%s/private/passdb.tdb" % self.dir,
              "  log file = %s/log.%%m" % self.dir]
        for vm in sorted(t.vm_writers):
            c += ["[%s]" % vm, "  path = %s" % t.vm_live_path(vm), "  read only = no",
                  "  vfs objects = shell_snap",
                  "  shell_snap:check path command = %s check-path" % cmd,
                  "  shell_snap:create command = %s create" % cmd,
                  "  shell_snap:delete command = %s delete" % cmd]
        with open(self.conf(), "w") as f:
            f.write("\n".join(c) + "\n")
        p = subprocess.run(["smbpasswd", "-c", self.conf(), "-s", "-a", "root"],
                           input=b"secret\nsecret\n", stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if p.returncode != 0:
            raise SetupError("smbpasswd: " + p.stdout.decode(errors="replace"))
        self.procs.append(self.group(["/usr/libexec/samba/samba-dcerpcd", "--libexec-rpcds",
                                      "--foreground", "--no-process-group", "-s", self.conf()]))
        self.procs.append(self.group(["smbd", "--foreground", "--no-process-group", "-s", self.conf()]))
        self.procs.append(self.group([t.bin("vssfs-smb"), "--vssctl", t.bin("vssctl"), "--state-dir",
                                      smbstate, "watch", "--samba-lock-dir",
                                      os.path.join(self.dir, "lock"), "--interval-ms", "50"]))
        deadline = time.time() + 30
        while True:
            rc, out = self.rpc("fss_get_sup_version")
            if rc == 0 and "supports FSRVP versions" in out:
                break
            if time.time() > deadline:
                raise SetupError("Samba's FSRVP server did not answer: %s (see %s/log.*)" % (
                    out.strip(), self.dir))
            time.sleep(0.2)

    def group(self, argv):
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
        self.t.children.append(p)
        return p

    def stop(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for p in reversed(self.procs):
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(p.pid, signal.SIGKILL)  # workers that outlived the server
            except ProcessLookupError:
                pass
            p.wait()
        self.procs = []

    def client(self, share, command):
        return run(["timeout", "60", "smbclient", "-s", self.conf(), "-p", str(self.port), "-U",
                    "root%secret", "//127.0.0.1/" + share, "-c", command], timeout=70)

    def rpc(self, command):
        return run(["timeout", "120", "rpcclient", "-s", self.conf(), "-p", str(self.port), "-U",
                    "root%secret", "127.0.0.1", "-c", command], timeout=130)

    def fsrvp_set(self, vms):
        """fss_create_expose over the shares `vms`, on one volume or several:
        one instant (vssfs-smb takes every volume of the set at once)."""
        t = self.t
        vols = sorted({t.vm_volume[vm] for vm in vms})
        before = {vol: self.snapshot_names(t.volumes[vol]) for vol in vols}
        t0 = t.clock.tick()
        rc, out = self.rpc("fss_create_expose backup rw " + " ".join(vms))
        t1 = t.clock.tick()
        if rc != 0 or "shadow-copy set created" not in out:
            raise SetupError("rpcclient fss_create_expose failed (exit %d): %s" % (rc, out.strip()))
        setid = None
        copies = []
        for line in out.splitlines():
            if "shadow-copy set created" in line:
                setid = line.split(":")[0].strip()
            if "shadow-copy added to set" in line and "(" in line:
                copies.append(line[line.index("(") + 1:line.index(")")])
        snap = {}
        for vol in vols:
            new = [n for n in self.snapshot_names(t.volumes[vol]) if n not in before[vol]]
            if len(new) != 1:
                raise SetupError("FSRVP set %s: expected one new snapshot on volume %d, got %s" % (
                    setid, vol, new))
            snap[vol] = new[0]
        t.fsrvp_sets += 1
        # Every VM of each volume of the set (a snapshot is the whole volume).
        roots = {}
        for vol, name in snap.items():
            v = t.volumes[vol]
            for vm in v.vms:
                roots[vm] = os.path.join(v.mnt, ".snapshot", name, vm)
        view = View("fsrvp set %s (%s: %s)" % (
            setid[:8], ", ".join("vol%d:%s" % kv for kv in sorted(snap.items())), " ".join(vms)),
            "fsrvp", roots, t0, t1)
        view.snapshots = sorted(snap.items())
        t.views.append(view)
        ok = t.check(view, "taken")
        if ok:
            t.recover(view, vms)  # the requestor's writers recover in the exposed clones
        rc, out = self.rpc("fss_recovery_complete " + setid)
        if rc != 0:
            raise SetupError("rpcclient fss_recovery_complete failed: " + out.strip())
        if ok:
            t.after_freeze(view, vms)  # vssfs-smb watch froze it
        for vm, copy in zip(vms, copies):
            rc, out = self.rpc("fss_delete %s %s %s" % (vm, setid, copy))
            if rc != 0:
                raise SetupError("rpcclient fss_delete failed: " + out.strip())

    def snapshot_names(self, v):
        rc, out = self.t.vssctl("-m", v.mnt, "--json", "snapshot", "list")
        if rc != 0:
            raise SetupError("vssctl snapshot list: " + out.strip())
        return [s["name"] for s in first_json(out)]


def parse_size(text):
    m = re.fullmatch(r"(\d+)([kKmMgGtT]?)(i?[bB])?", text.strip())
    if not m:
        raise argparse.ArgumentTypeError("bad size: " + text)
    mult = {"": 1, "k": KIB, "m": MIB, "g": GIB, "t": GIB * 1024}[m.group(2).lower()]
    return int(m.group(1)) * mult


def main(argv):
    p = argparse.ArgumentParser(
        prog="vss-consistency",
        description="Snapshot consistency tester for vssfs: VM-like workloads, crash and "
                    "application consistency, locally and over Samba FSRVP (docs/CONSISTENCY.md).")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: random; printed)")
    p.add_argument("--duration", type=float, default=60, help="seconds of load (default 60)")
    p.add_argument("--sets", type=int, default=None, help="go on past --duration until this many sets")
    p.add_argument("--max-sets", type=int, default=None, help="stop after this many sets (once past --duration)")
    p.add_argument("--interval", type=float, default=1.0,
                   help="mean seconds between snapshot operations x2 (default 1.0)")
    p.add_argument("--volumes", type=int, default=2, help="vssfs volumes (default 2)")
    p.add_argument("--vms", type=int, default=4, help="VM directories (shares), spread over the volumes")
    p.add_argument("--disk-size", type=parse_size, default=4 * GIB,
                   help="virtual disk size per VM, sparse (default 4G; tens of GiB are fine)")
    p.add_argument("--hot-size", type=parse_size, default=16 * MIB,
                   help="region of the disk most writes go to (default 16M)")
    p.add_argument("--db-pages", type=int, default=256, help="8 KiB data pages per database")
    p.add_argument("--write-delay", type=float, default=0.0,
                   help="random pause up to this many seconds after each write")
    p.add_argument("--keep", type=int, default=12, help="snapshots kept for re-verification (default 12)")
    p.add_argument("--samba", action="store_true",
                   help="export the VMs with smbd and take sets through Samba's FSRVP server")
    p.add_argument("--kill", action="store_true", help="kill -9 a daemon mid-run, fsck, remount, re-verify")
    p.add_argument("--enospc", action="store_true",
                   help="put one volume's store on a small tmpfs and fill it mid-run")
    p.add_argument("--store-size", type=parse_size, default=512 * MIB,
                   help="size of that tmpfs (default 512M)")
    p.add_argument("--inject", choices=["split-instant", "skip-preserve"], default=None,
                   help="inject a known fault: the run must fail (docs/CONSISTENCY.md)")
    p.add_argument("--inject-n", type=int, default=40,
                   help="skip-preserve: the Nth preserved block of volume 0 is not preserved")
    p.add_argument("--keep-going", action="store_true", help="do not stop at the first violation")
    p.add_argument("--bin-dir", default=None,
                   help="directory with vssfs, vssctl, vssfs-smb (or a build tree); default the "
                        "build/release tree next to this tool, else PATH")
    p.add_argument("--work-dir", default=None, help="where the temporary work directory goes")
    p.add_argument("--keep-work", action="store_true", help="leave the work directory")
    p.add_argument("--report", default=None, help="also write the final report to this file")
    try:
        a = p.parse_args(argv)
    except SystemExit as ex:
        return EXIT_SETUP if ex.code else EXIT_OK
    a.argv = list(argv)
    if a.seed is None:
        a.seed = random.SystemRandom().randrange(1, 1 << 31)
    if a.vms < 1 or a.volumes < 1 or a.duration < 0 or a.keep < 1 or a.interval < 0:
        p.print_usage(sys.stderr)
        return EXIT_SETUP
    if a.inject == "split-instant" and (a.samba or a.volumes < 2):
        sys.stderr.write("vss-consistency: --inject split-instant needs two volumes (local mode)\n")
        return EXIT_SETUP
    if a.disk_size < 64 * KIB or a.hot_size < 64 * KIB:
        sys.stderr.write("vss-consistency: --disk-size and --hot-size must be >= 64K\n")
        return EXIT_SETUP
    a.hot_size = min(a.hot_size, a.disk_size)
    t = Tester(a)

    def on_signal(signum, frame):
        raise KeyboardInterrupt()
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    code = EXIT_OK
    try:
        t.run()
    except SetupError as ex:
        t.stopping.set()
        t.fatal = str(ex)
        code = EXIT_SETUP
    except KeyboardInterrupt:
        t.stopping.set()
        t.fatal = "interrupted"
        code = EXIT_SETUP
    except Exception as ex:  # noqa: BLE001
        t.stopping.set()
        t.fatal = "%s\n%s" % (ex, traceback.format_exc())
        code = EXIT_SETUP
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        t.stopping.set()
        for w in t.writers.values():
            if w.is_alive():
                w.join(10)
        t.teardown()
    rep = t.report()
    if t.tty if hasattr(t, "tty") else False:
        sys.stderr.write("\r\033[K")
    sys.stdout.write(rep)
    sys.stdout.flush()
    if a.report:
        with open(a.report, "w") as f:
            f.write(rep)
    if t.violations:
        return EXIT_VIOLATION
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
