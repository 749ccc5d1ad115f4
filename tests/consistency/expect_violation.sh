#!/bin/sh
# Runs tools/vss-consistency with an injected fault and passes only if the
# tester fails the way it claims it would: exit status 1 (a violation) and a
# report naming a file, a block, the expected and the found stamp.
# Usage: expect_violation.sh TOOL ARGS...
out=$(mktemp) || exit 2
"$@" >"$out" 2>&1
rc=$?
cat "$out"
if [ "$rc" -ne 1 ]; then
  echo "expect_violation: the tester exited $rc, not 1 (a violation): the fault was not seen" >&2
  rm -f "$out"
  exit 1
fi
if ! grep -Eq 'VIOLATION .*/(disk\.vhdx|db\.mdf|db\.ldf|config\.xml) block [0-9]+: expected .*found ' "$out"; then
  echo "expect_violation: no violation names a file, block, expected and found stamp" >&2
  rm -f "$out"
  exit 1
fi
rm -f "$out"
echo "expect_violation: the injected fault was caught"
