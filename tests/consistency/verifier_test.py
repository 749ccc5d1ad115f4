#!/usr/bin/env python3
"""Checks tools/vss-consistency's verifier on hand-made views (no mount).

One virtual disk and one writer with two writes: write 1 to blocks 0-3, then
write 2 to blocks 2-5. Each case writes the blocks a view would show into a
plain directory and runs the verifier's rules on it:

  * write 2 wholly or not at all in a snapshot: clean;
  * write 2 in part (blocks 2-3 new, 4-5 old) while it was still running
    when the request was issued: clean, and reported as included in part;
  * the same tear when write 2 had completed before the request, or in the
    live tree: a violation;
  * a block of write 2 showing something older than write 1 left there, or
    write 1 missing under write 2: a violation, in flight or not.

Usage: verifier_test.py TOOLS_DIR
"""

import os
import sys
import tempfile
import threading

sys.path.insert(0, sys.argv[1] if len(sys.argv) > 1 else
                os.path.join(os.path.dirname(os.path.realpath(__file__)), "..", "..", "tools"))
import vss_consistency as vc  # noqa: E402

SEED = 7
WID, FID, VM = 1, 1, "vm1"
UNITS = 8


class FakeWriter:
    def __init__(self, ops):
        self.wid, self.wname, self.ops = WID, "vm1/disk", ops


class FakeTester:
    def __init__(self, writer, fi):
        self.seed = SEED
        self.writers = {WID: writer}
        self.vm_writers = {VM: [writer]}
        self.writer_files = {WID: [fi]}
        self.files = {FID: fi}


def make_ops(e2):
    """Write 1 (clock 1-2) to blocks 0-3, write 2 (start 3, end e2) to 2-5."""
    op1 = vc.Op(1, 1, FID, 0, 4, b"")
    op1.e = 2
    op2 = vc.Op(2, 3, FID, 2, 4, b"")
    op2.e = e2
    return [op1, op2]


def run_case(name, shows, e2, t0, expect_clean, expect_partial=False):
    """shows: block -> the write seq it holds (0: zeros)."""
    ops = make_ops(e2)
    fi = vc.FileInfo(FID, VM, "disk.vhdx", vc.KIND_DISK, None, UNITS)
    for op in ops:
        for u in range(op.u0, op.u0 + op.n):
            fi.index.setdefault(u, []).append(op.seq)
    fi.lock = threading.Lock()
    w = FakeWriter(ops)
    t = FakeTester(w, fi)
    with tempfile.TemporaryDirectory(prefix="verifier-test-", dir="/var/tmp") as root:
        os.mkdir(os.path.join(root, VM))
        with open(os.path.join(root, VM, "disk.vhdx"), "wb") as f:
            for u in range(UNITS):
                q = shows.get(u, 0)
                if q == 0:
                    f.write(vc.ZERO_UNIT)
                else:
                    f.write(vc.unit_bytes(SEED, vc.KIND_DISK, FID, u, WID, q, ops[q - 1].s))
        view = vc.View(name, "snapshot" if t0 is not None else "live", {VM: os.path.join(root, VM)},
                       t0, None if t0 is None else t0 + 5)
        viol = vc.Verifier(t).verify(view)
    ok = (not viol) == expect_clean and (not expect_clean or bool(view.partial) == expect_partial)
    print("%s %s: %d violation(s), in part %s" % ("ok  " if ok else "FAIL", name, len(viol),
                                                  sorted(view.partial)))
    for v in viol:
        print("       " + v)
    return ok


def main():
    whole = {0: 1, 1: 1, 2: 2, 3: 2, 4: 2, 5: 2}
    before = {0: 1, 1: 1, 2: 1, 3: 1}
    torn = {0: 1, 1: 1, 2: 2, 3: 2, 4: 0, 5: 0}
    torn_old = {0: 1, 1: 1, 2: 2, 3: 2, 4: 1, 5: 0}  # write 1 never touched block 4
    lost_under = {0: 0, 1: 1, 2: 2, 3: 2, 4: 2, 5: 2}
    # Write 2 ran at clock 3-None (still running) or 3-4; the request at 4 (t0).
    cases = [
        ("write 2 whole, in flight", whole, None, 4, True),
        ("write 2 absent, in flight", before, None, 4, True),
        ("write 2 in part, in flight", torn, None, 4, True, True),
        ("write 2 in part, ended after the request", torn, 6, 4, True, True),
        ("write 2 in part, ended before the request", torn, 3, 4, False),
        ("write 2 in part, live tree", torn, 3, None, False),
        # Where write 2 is missing, its blocks must show what was there before
        # it: zeros for block 4, which write 1 never touched.
        ("write 2 in part, block 4 shows a write that never touched it", torn_old, None, 4, False),
        ("write 1 lost under write 2, in flight", lost_under, None, 4, False),
    ]
    ok = all(run_case(*c) for c in cases)
    print("verifier_test: %s" % ("passed" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
