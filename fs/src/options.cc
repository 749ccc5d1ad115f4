#include "vssfs/fs/options.h"

#include <cstdlib>
#include <cstring>
#include <set>
#include <sstream>

namespace vssfs::fs {
namespace {

using cow_store::Result;
using cow_store::Status;

// Options handed to libfuse untouched: session and mount options.
const std::set<std::string>& FuseFlagOptions() {
  static const std::set<std::string> kSet = {
      "allow_other", "allow_root", "auto_unmount", "default_permissions", "blkdev", "ro", "rw",
      "suid", "nosuid", "dev", "nodev", "exec", "noexec", "async", "sync", "dirsync", "atime",
      "noatime", "diratime", "nodiratime", "relatime", "norelatime", "strictatime", "nostrictatime",
      "lazytime", "nolazytime",
      // Connection options (fuse_parse_conn_info_opts).
      "sync_read", "async_read", "atomic_o_trunc", "no_remote_lock", "no_remote_flock",
      "no_remote_posix_lock", "splice_write", "no_splice_write", "splice_move", "no_splice_move",
      "splice_read", "no_splice_read", "auto_inval_data", "no_auto_inval_data", "async_dio",
      "no_async_dio", "writeback_cache", "no_writeback_cache"};
  return kSet;
}

// Options with a value handed to libfuse.
const std::set<std::string>& FuseValueOptions() {
  static const std::set<std::string> kSet = {"fsname",
                                             "subtype",
                                             "max_read",
                                             "blksize",
                                             "context",
                                             "fscontext",
                                             "defcontext",
                                             "rootcontext",
                                             "user",
                                             "max_write",
                                             "max_readahead",
                                             "max_background",
                                             "congestion_threshold",
                                             "readdirplus",
                                             "time_gran",
                                             "max_idle_threads"};
  return kSet;
}

// Options mount(8), mount.fuse3 or systemd put in fstab entries that mean
// nothing to the daemon.
bool IsIgnoredMountOption(const std::string& name) {
  static const std::set<std::string> kSet = {"defaults", "auto",  "noauto", "nofail",
                                             "_netdev",  "user",  "users",  "nouser",
                                             "owner",    "group", "comment"};
  return kSet.count(name) > 0 || name.rfind("x-", 0) == 0;
}

bool ParseDouble(const std::string& text, double* out) {
  char* end = nullptr;
  double v = std::strtod(text.c_str(), &end);
  if (text.empty() || *end != '\0' || v < 0) return false;
  *out = v;
  return true;
}

bool ParseUnsigned(const std::string& text, unsigned* out) {
  char* end = nullptr;
  unsigned long v = std::strtoul(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || text[0] == '-' || v > 1u << 30) return false;
  *out = static_cast<unsigned>(v);
  return true;
}

Status Invalid(const std::string& message) { return Status::Error(EINVAL, message); }

// Applies one "-o" item (name or name=value).
Status ApplyMountOption(const std::string& item, Options* o) {
  size_t eq = item.find('=');
  std::string name = item.substr(0, eq);
  std::string value = eq == std::string::npos ? "" : item.substr(eq + 1);
  bool has_value = eq != std::string::npos;
  auto need_value = [&]() -> Status {
    if (!has_value || value.empty()) {
      return Invalid("option '-o " + name + "' needs a value (" + name + "=...)");
    }
    return Status();
  };
  if (name == "store") {
    if (Status s = need_value(); !s.ok()) return s;
    o->store_dir = value;
  } else if (name == "log_level") {
    if (Status s = need_value(); !s.ok()) return s;
    o->log_level = value;
  } else if (name == "control_group") {
    if (Status s = need_value(); !s.ok()) return s;
    o->control_group = value;
  } else if (name == "timeout" || name == "negative_timeout") {
    double v;
    if (!has_value || !ParseDouble(value, &v)) {
      return Invalid("option '-o " + name + "' needs a number of seconds >= 0");
    }
    (name == "timeout" ? o->timeout : o->negative_timeout) = v;
  } else if (name == "threads" || name == "read_ahead_kb" || name == "max_dirty_ratio") {
    unsigned v;
    if (!has_value || !ParseUnsigned(value, &v) || (name == "threads" && v == 0) ||
        (name == "max_dirty_ratio" && v > 100)) {
      return Invalid("option '-o " + name + "' needs a whole number" +
                     (name == "threads"           ? " > 0"
                      : name == "max_dirty_ratio" ? " 0-100"
                                                  : ""));
    }
    (name == "threads"         ? o->threads
     : name == "read_ahead_kb" ? o->read_ahead_kb
                               : o->max_dirty_ratio) = v;
  } else if (name == "max_inodes") {
    unsigned v;
    if (!has_value || !ParseUnsigned(value, &v) || (v != 0 && v < 16)) {
      return Invalid("option '-o max_inodes' needs a whole number >= 16 (or 0 for the default)");
    }
    o->max_inodes = v;
  } else if (name == "inode_release") {
    if (value == "auto" && has_value) {
      o->inode_release = InodeRelease::kAuto;
    } else if (value == "handles") {
      o->inode_release = InodeRelease::kHandles;
    } else if (value == "prune") {
      o->inode_release = InodeRelease::kPrune;
    } else {
      return Invalid("option '-o inode_release' needs auto, handles or prune");
    }
  } else if (name == "block_size") {
    unsigned v;
    if (!has_value || !ParseUnsigned(value, &v) || v < 4096 || v > (16u << 20) ||
        (v & (v - 1)) != 0) {
      return Invalid("option '-o block_size' needs a power of two from 4096 to 16777216");
    }
    o->block_size = v;
  } else if (name == "clone_fd" && !has_value) {
    o->clone_fd = true;
  } else if (name == "no_clone_fd" && !has_value) {
    o->clone_fd = false;
  } else if ((name == "killpriv_v2" || name == "no_killpriv_v2") && !has_value) {
    o->killpriv_v2 = name == "killpriv_v2";
  } else if ((name == "flush_behind" || name == "no_flush_behind") && !has_value) {
    o->flush_behind = name == "flush_behind";
  } else if ((name == "io_uring" || name == "no_io_uring") && !has_value) {
    o->io_uring = name == "io_uring";
  } else if ((name == "sched_idle" || name == "no_sched_idle" || name == "uring_sched_idle" ||
              name == "no_uring_sched_idle") &&
             !has_value) {
    o->sched_idle = name.rfind("no_", 0) != 0;
  } else if ((name == "cpu_pickup" || name == "no_cpu_pickup") && !has_value) {
    o->cpu_pickup = name == "cpu_pickup";
  } else if (name == "uring_threads") {
    unsigned v;
    if (!has_value || !ParseUnsigned(value, &v) || v == 0 || v > 64) {
      return Invalid("option '-o uring_threads' needs a whole number 1-64");
    }
    o->uring_threads = v;
  } else if (name == "debug" && !has_value) {
    o->debug = true;
  } else if (IsIgnoredMountOption(name)) {
    // Meaningful to mount(8) or systemd only.
  } else if (!has_value && FuseFlagOptions().count(name)) {
    o->fuse_options.push_back(item);
  } else if (has_value && FuseValueOptions().count(name)) {
    if (Status s = need_value(); !s.ok()) return s;
    o->fuse_options.push_back(item);
  } else {
    return Invalid("unknown option '-o " + item + "' (see vssfs --help)");
  }
  return Status();
}

// Splits "a,b=c" on commas; a backslash escapes the next character.
std::vector<std::string> SplitOptionList(const std::string& list) {
  std::vector<std::string> items;
  std::string cur;
  for (size_t i = 0; i < list.size(); ++i) {
    if (list[i] == '\\' && i + 1 < list.size()) {
      cur.push_back(list[++i]);
    } else if (list[i] == ',') {
      if (!cur.empty()) items.push_back(cur);
      cur.clear();
    } else {
      cur.push_back(list[i]);
    }
  }
  if (!cur.empty()) items.push_back(cur);
  return items;
}

// The field a long option with a value (--store, --log-level,
// --control-group) sets, or null.
std::string* LongOption(const std::string& arg, Options* o) {
  const std::pair<const char*, std::string*> kLong[] = {{"--store", &o->store_dir},
                                                        {"--log-level", &o->log_level},
                                                        {"--control-group", &o->control_group}};
  for (const auto& [name, field] : kLong) {
    const size_t n = std::strlen(name);
    if (arg.compare(0, n, name) == 0 && (arg.size() == n || arg[n] == '=')) return field;
  }
  return nullptr;
}

}  // namespace

Result<Options> ParseOptions(int argc, const char* const* argv) {
  Options o;
  std::vector<std::string> positional;
  bool only_positional = false;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto next_value = [&](const std::string& opt) -> Result<std::string> {
      if (i + 1 >= argc) return Invalid("option '" + opt + "' needs a value");
      return std::string(argv[++i]);
    };
    if (only_positional || arg.empty() || arg[0] != '-' || arg == "-") {
      positional.push_back(arg);
    } else if (arg == "--") {
      only_positional = true;
    } else if (arg == "-f" || arg == "--foreground") {
      o.foreground = true;
    } else if (arg == "-d" || arg == "--debug") {
      o.debug = true;
      o.foreground = true;
    } else if (arg == "-s" || arg == "--single-thread") {
      o.single_thread = true;
    } else if (arg == "-h" || arg == "--help") {
      o.show_help = true;
    } else if (arg == "-V" || arg == "--version") {
      o.show_version = true;
    } else if (arg == "-o" || arg.rfind("-o", 0) == 0) {
      std::string list;
      if (arg == "-o") {
        Result<std::string> v = next_value("-o");
        if (!v.ok()) return v.status();
        list = v.value();
      } else {
        list = arg.substr(2);
      }
      for (const std::string& item : SplitOptionList(list)) {
        if (Status s = ApplyMountOption(item, &o); !s.ok()) return s;
      }
    } else if (std::string* target = LongOption(arg, &o)) {
      // --name VALUE or --name=VALUE.
      const size_t eq = arg.find('=');
      if (eq == std::string::npos) {
        Result<std::string> v = next_value(arg);
        if (!v.ok()) return v.status();
        *target = v.value();
      } else {
        *target = arg.substr(eq + 1);
      }
      if (target->empty()) return Invalid("option '" + arg.substr(0, eq) + "' needs a value");
    } else {
      return Invalid("unknown option '" + arg + "' (see vssfs --help)");
    }
  }
  if (o.log_level != "error" && o.log_level != "warn" && o.log_level != "warning" &&
      o.log_level != "info" && o.log_level != "debug") {
    return Invalid("unknown log level '" + o.log_level + "' (use error, warn, info or debug)");
  }
  if (o.show_help || o.show_version) return o;
  if (positional.empty()) return Invalid("missing BACKING_DIR and MOUNTPOINT (see vssfs --help)");
  if (positional.size() == 1) return Invalid("missing MOUNTPOINT (see vssfs --help)");
  if (positional.size() > 2) {
    return Invalid("unexpected argument '" + positional[2] +
                   "': vssfs takes exactly BACKING_DIR and MOUNTPOINT");
  }
  o.backing_dir = positional[0];
  o.mountpoint = positional[1];
  return o;
}

std::string UsageText(const std::string& program) {
  std::ostringstream s;
  s << "usage: " << program << " [options] BACKING_DIR MOUNTPOINT\n"
    << "\n"
    << "Mounts BACKING_DIR at MOUNTPOINT as a vssfs volume: an exact passthrough\n"
    << "of the backing directory plus a read-only MOUNTPOINT/.snapshot tree.\n"
    << "\n"
    << "General options:\n"
    << "  -h, --help              print this help and exit\n"
    << "  -V, --version           print the version and exit\n"
    << "  -f, --foreground        stay in the foreground (log to stderr)\n"
    << "  -d, --debug             foreground, and trace every FUSE request\n"
    << "  -s, --single-thread     serve requests on one thread\n"
    << "  --store=DIR             snapshot store directory (default BACKING_DIR/.vssfs)\n"
    << "  --log-level=LEVEL       error, warn, info (default) or debug\n"
    << "  --control-group=GROUP   members of GROUP may use vssctl on this volume too\n"
    << "                          (default: the control socket serves root only)\n"
    << "\n"
    << "Mount options (-o opt[,opt...]):\n"
    << "  allow_other             let other users (e.g. smbd serving users) use the mount\n"
    << "  store=DIR, log_level=LEVEL, control_group=GROUP\n"
    << "                          as --store, --log-level, --control-group (for fstab)\n"
    << "  timeout=SECS            entry and attribute cache lifetime (default 60)\n"
    << "  negative_timeout=SECS   cache lifetime of 'no such file' answers (default 60)\n"
    << "  threads=N               at most N worker threads (default 8)\n"
    << "  [no_]clone_fd           one /dev/fuse descriptor per thread (default on)\n"
    << "  [no_]cpu_pickup         an idle worker per CPU takes the /dev/fuse requests\n"
    << "                          sent from that CPU, except while most requests are\n"
    << "                          reads from the disk (default on; needs clone_fd)\n"
    << "  [no_]writeback_cache    kernel write-back caching (default on)\n"
    << "  [no_]killpriv_v2        vssfs clears set-id bits and capabilities on write,\n"
    << "                          sparing the kernel a lookup per write (default on)\n"
    << "  [no_]io_uring           serve requests through FUSE over io_uring, one queue per\n"
    << "                          CPU, when the kernel offers it (Linux 6.14+ with\n"
    << "                          /sys/module/fuse/parameters/enable_uring = Y; default on)\n"
    << "  uring_threads=N         threads (ring entries) per CPU queue at start, 1-64\n"
    << "                          (default 2; more are added while all are busy)\n"
    << "  [no_]sched_idle         io_uring threads and cpu_pickup's workers answer\n"
    << "                          metadata requests as SCHED_IDLE, so that the woken task\n"
    << "                          stays on its CPU (default on; needs CAP_SYS_NICE;\n"
    << "                          older name [no_]uring_sched_idle)\n"
    << "  read_ahead_kb=N         readahead window of the mount (default 1024, 0 = kernel's)\n"
    << "  max_dirty_ratio=N       percent of the dirty-page limit the mount may use with\n"
    << "                          the writeback cache (default 100; 0 = FUSE's strict 1%)\n"
    << "  [no_]flush_behind       with the writeback cache, start writing files that are\n"
    << "                          written sequentially back while they are written\n"
    << "                          (default on; needs root and Linux 6.5+)\n"
    << "  max_inodes=N            most descriptors the inodes the kernel caches may hold\n"
    << "                          before vssfs releases those used longest ago (default\n"
    << "                          0: 3/4 of the descriptor limit)\n"
    << "  inode_release=MODE      how: auto (default) closes idle files' descriptors and\n"
    << "                          reopens them by handle (needs CAP_DAC_READ_SEARCH),\n"
    << "                          then asks the kernel to forget inodes (Linux 6.18);\n"
    << "                          handles or prune does only the one\n"
    << "  block_size=N            snapshot block size in bytes for a new store (default\n"
    << "                          65536; an existing store keeps its own)\n"
    << "  max_write=N, max_background=N, congestion_threshold=N, [no_]splice_read,\n"
    << "  [no_]splice_write, [no_]splice_move, [no_]async_dio, readdirplus=yes|no|auto\n"
    << "                          libfuse connection tuning (READ replies are never\n"
    << "                          spliced: vssfs reads into its own buffer)\n"
    << "  ro, nosuid, nodev, noexec, noatime, fsname=NAME, ...\n"
    << "                          usual mount options, passed to the kernel\n"
    << "  defaults, nofail, _netdev, x-systemd.*  accepted from /etc/fstab, ignored\n"
    << "\n"
    << "Permissions are always checked by the kernel as the calling user\n"
    << "(default_permissions with POSIX ACLs); new files belong to their creator.\n"
    << "Unmount with 'umount MOUNTPOINT' (or 'fusermount3 -u MOUNTPOINT'), or stop\n"
    << "the daemon with SIGTERM/SIGINT.\n";
  return s.str();
}

}  // namespace vssfs::fs
