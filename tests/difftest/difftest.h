// vssfs-difftest: a differential tester for POSIX file-system semantics.
//
// It runs one seeded, random sequence of file-system operations against two
// directory trees, op by op: DIR_A, a plain directory on a local file system
// (the reference), and DIR_B, the file system under test (a vssfs mount of
// another plain directory on the same backing file system). Each operation is
// done on A, then the same on B, and the return values, errno, bytes read
// back and attributes must be the same. Every few hundred operations, and at
// the end, both trees are compared in full: listings, attributes, contents,
// symlink targets, xattrs, hard-link structure, and on B the stability of
// inode numbers. The first difference is reported with the seed that
// reproduces it.
//
// Each run works in a fresh workspace `dt-<seed>` inside DIR_A and DIR_B; each
// worker thread has its own subtree there, so results do not depend on thread
// scheduling. With a uid/gid the operations run unprivileged (in a child
// process that drops root), so permission semantics are compared too; the
// tree comparisons keep running with the invoking credentials.
//
// Thread-safety: RunDifftest() forks and starts threads itself; call it from a
// single-threaded process.
#ifndef VSSFS_TESTS_DIFFTEST_DIFFTEST_H_
#define VSSFS_TESTS_DIFFTEST_DIFFTEST_H_

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

namespace vssfs::difftest {

// Exit statuses of vssfs-difftest.
inline constexpr int kExitPass = 0;
inline constexpr int kExitMismatch = 1;
inline constexpr int kExitUsage = 2;

struct Options {
  uint64_t seed = 0;
  bool seed_given = false;  // else the seed is taken from the clock
  uint64_t ops = 10000;     // total operations, over all threads
  int threads = 2;
  uint64_t check_every = 200;  // full tree comparison every this many ops
  bool drop_privileges = false;
  uid_t uid = 0;
  gid_t gid = 0;
  std::vector<gid_t> groups;             // supplementary groups after dropping
  bool verbose = false;                  // print every operation
  bool keep = false;                     // keep the workspaces after a passing run
  int stall_timeout_s = 300;             // give up when a round makes no progress
  std::vector<std::string> exclude_ops;  // operation kinds left out
  std::string dir_a;                     // reference
  std::string dir_b;                     // under test

  // Snapshot model (--vssctl): at tree checks, take snapshots of the vssfs
  // volume mounted at `mount` (which holds DIR_B) and copy DIR_A's workspace
  // as each snapshot's model; delete some; compare every live snapshot with
  // its model at every check.
  std::string vssctl;
  std::string mount;
  std::string models;              // model copies; default DIR_A/dt-<seed>-models
  unsigned snapshot_percent = 40;  // chance per check of taking a snapshot
  bool keep_snapshots = false;     // leave snapshots and models for --verify-snapshots
  bool verify_only = false;        // --verify-snapshots: compare existing ones, run nothing
  // --reuse NAME: run in the existing, identical workspaces DIR_A/NAME and
  // DIR_B/NAME (e.g. a snapshot's model and its writable clone) instead of
  // new ones; no fixture is made and nothing is removed afterwards.
  std::string reuse;
};

enum class ParseResult { kOk, kHelp, kError };

// Parses the command line (without argv[0]). On kError, *error says why.
ParseResult ParseArgs(const std::vector<std::string>& args, Options* options, std::string* error);

// The usage text.
std::string Usage();

// --verify-snapshots: compares every snapshot model in options.models with
// MOUNT/.snapshot/<name>. Returns kExitPass or kExitMismatch.
int VerifySnapshots(const Options& options);

// Runs the differential test and prints its report on stdout. Returns
// kExitPass, kExitMismatch (a difference was found) or kExitUsage (bad
// arguments or set-up failure).
int RunDifftest(const Options& options);

}  // namespace vssfs::difftest

#endif  // VSSFS_TESTS_DIFFTEST_DIFFTEST_H_
