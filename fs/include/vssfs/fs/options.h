// Command-line options of the vssfs daemon.
//
//   vssfs [options] BACKING_DIR MOUNTPOINT
//
// ParseOptions() understands vssfs's own options, the libfuse session, mount
// and connection options (-o allow_other, -o max_write=N, ...), and the
// options mount(8)/mount.fuse3 and systemd add to /etc/fstab entries
// (defaults, nofail, _netdev, x-systemd.*), which it drops. Anything else is
// rejected with a message naming the option.
//
// Thread-safety: plain data; ParseOptions() is reentrant.
#ifndef VSSFS_FS_OPTIONS_H_
#define VSSFS_FS_OPTIONS_H_

#include <string>
#include <vector>

#include "vssfs/cow_store/status.h"

namespace vssfs::fs {

// How the daemon keeps the descriptors of cached inodes within the budget
// (-o inode_release=auto|handles|prune; fs/src/inode_pruner.h).
enum class InodeRelease {
  kAuto,     // Close idle files' descriptors (reopened by handle), then prune.
  kHandles,  // Only close idle files' descriptors.
  kPrune,    // Only ask the kernel to forget inodes (Linux 6.18).
};

struct Options {
  std::string backing_dir;  // First positional argument, as given.
  std::string mountpoint;   // Second positional argument, as given.
  std::string store_dir;    // --store; empty means BACKING_DIR/.vssfs.
  std::string log_level = "info";
  // --control-group / -o control_group: a group (name or number) whose
  // members may use the control socket besides root; empty: root only.
  std::string control_group;

  bool foreground = false;     // -f, --foreground
  bool debug = false;          // -d, --debug: libfuse request trace
  bool single_thread = false;  // -s
  bool show_help = false;      // -h, --help
  bool show_version = false;   // -V, --version
  bool clone_fd = true;        // -o clone_fd / -o no_clone_fd
  // Negotiate FUSE_HANDLE_KILLPRIV_V2 (-o no_killpriv_v2 to turn off).
  bool killpriv_v2 = true;
  // Serve requests through FUSE over io_uring when the kernel offers it
  // (-o no_io_uring to turn off), with this many threads per CPU queue.
  bool io_uring = true;
  unsigned uring_threads = 2;
  // io_uring ring threads and /dev/fuse pollers (cpu_pickup) answer
  // metadata requests as SCHED_IDLE, so that the woken sender stays on its
  // CPU (-o no_sched_idle, or its older name no_uring_sched_idle, to turn
  // off).
  bool sched_idle = true;
  // /dev/fuse workers take each request on the CPU that sent it (one worker
  // per CPU waits in poll(2) pinned there; needs clone_fd; -o no_cpu_pickup
  // to turn off).
  bool cpu_pickup = true;

  // Kernel cache lifetimes in seconds (-o timeout=, -o negative_timeout=).
  // All changes to the live tree are expected to go through the mount.
  double timeout = 60.0;
  double negative_timeout = 60.0;
  // Upper bound of libfuse worker threads (-o threads=N).
  unsigned threads = 8;
  // Readahead window of the mount's backing device in KiB, 0 keeps the
  // kernel's default (-o read_ahead_kb=N).
  unsigned read_ahead_kb = 1024;
  // Percent of the system's dirty-page limit the mount may use with the
  // writeback cache; 0 keeps FUSE's strict 1% (-o max_dirty_ratio=N).
  unsigned max_dirty_ratio = 100;
  // Start writeback of files written as a stream while they are being
  // written, with the writeback cache (-o no_flush_behind to turn off).
  bool flush_behind = true;
  // Most descriptors the inodes the kernel caches may hold before vssfs
  // releases those used longest ago (-o max_inodes=N); 0: three quarters
  // of the descriptor limit.
  unsigned max_inodes = 0;
  InodeRelease inode_release = InodeRelease::kAuto;
  // Block size of a new store (-o block_size=N); existing stores keep theirs.
  unsigned block_size = 65536;

  // Options for libfuse (session, mount and connection options), in
  // "-o a,b=c" form, in the order given.
  std::vector<std::string> fuse_options;
};

// Parses argv. Errors are EINVAL with a one-line message such as
// "unknown option '-o frob'" or "missing MOUNTPOINT". With --help or
// --version the positional arguments are not required.
cow_store::Result<Options> ParseOptions(int argc, const char* const* argv);

// The --help text.
std::string UsageText(const std::string& program);

}  // namespace vssfs::fs

#endif  // VSSFS_FS_OPTIONS_H_
