// vssfs: mounts a share's backing directory as a vssfs volume.
//
//   vssfs [options] BACKING_DIR MOUNTPOINT      (see vssfs --help)
//
// Exit status: 0 after a clean unmount, 1 on a usage or start-up error
// (one message on stderr), 2 if the session ended with an error.
#include <sys/resource.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "channel.h"
#include "creds.h"
#include "log.h"
#include "passthrough.h"
#include "vssfs/cow_store/store_dir.h"
#include "vssfs/fs/options.h"
#include "vssfs/fs/preflight.h"

namespace vssfs::fs {
namespace {

int Fail(const std::string& message) {
  std::fprintf(stderr, "vssfs: %s\n", message.c_str());
  return 1;
}

// Escapes ',' and '\' for a libfuse -o value.
std::string EscapeOptionValue(const std::string& value) {
  std::string out;
  for (char c : value) {
    if (c == ',' || c == '\\') out.push_back('\\');
    out.push_back(c);
  }
  return out;
}

// Every looked-up inode holds a descriptor: raise the limit as far as the
// system lets this process (fs.nr_open with CAP_SYS_RESOURCE, else the hard
// limit). The inode budget (inode_pruner.h) is set from the result.
void RaiseFileLimit() {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return;
  unsigned long long nr_open = 0;
  if (std::FILE* f = std::fopen("/proc/sys/fs/nr_open", "re")) {
    if (std::fscanf(f, "%llu", &nr_open) != 1) nr_open = 0;
    std::fclose(f);
  }
  if (nr_open > rl.rlim_max) {
    struct rlimit raised = {static_cast<rlim_t>(nr_open), static_cast<rlim_t>(nr_open)};
    if (setrlimit(RLIMIT_NOFILE, &raised) == 0) return;
  }
  if (rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
}

// Owns libfuse's argument vector.
struct FuseArgs {
  fuse_args args = FUSE_ARGS_INIT(0, nullptr);
  ~FuseArgs() { fuse_opt_free_args(&args); }
  void Add(const std::string& a) { fuse_opt_add_arg(&args, a.c_str()); }
};

int Main(int argc, char** argv) {
  cow_store::Result<Options> parsed = ParseOptions(argc, argv);
  if (!parsed.ok()) return Fail(parsed.status().message());
  const Options& opts = parsed.value();
  if (opts.show_help) {
    std::fputs(UsageText("vssfs").c_str(), stdout);
    return 0;
  }
  if (opts.show_version) {
    std::printf("vssfs %s (libfuse %s)\n", VSSFS_VERSION, fuse_pkgversion());
    return 0;
  }
  LogLevel level = LogLevel::kInfo;
  ParseLogLevel(opts.log_level, &level);
  if (opts.debug) level = LogLevel::kDebug;
  SetLogLevel(level);

  if (cow_store::Status s = CheckFuseDevice(); !s.ok()) return Fail(s.message());
  std::optional<gid_t> control_group;
  if (!opts.control_group.empty()) {
    cow_store::Result<gid_t> gid = snapshot_ctl::GroupId(opts.control_group);
    if (!gid.ok()) return Fail(gid.status().message());
    control_group = gid.value();
  }
  cow_store::Result<ResolvedPaths> paths =
      CheckPaths(opts.backing_dir, opts.mountpoint, opts.store_dir);
  if (!paths.ok()) return Fail(paths.status().message());
  if (cow_store::Status s = InitCredentials(); !s.ok()) return Fail(s.message());
  RaiseFileLimit();

  cow_store::Result<cow_store::StoreDir> store = cow_store::StoreDir::Open(paths.value().store_dir);
  if (!store.ok()) return Fail(store.status().message());
  cow_store::StoreOptions store_options;
  store_options.block_size = opts.block_size;
  {
    // Opened here to report problems on the terminal; LMDB must not cross
    // fork(), so it is opened again after going into the background.
    cow_store::Result<std::unique_ptr<cow_store::Store>> probe =
        cow_store::Store::Open(store.value().fd(), store.value().path(), store_options);
    if (!probe.ok()) return Fail(probe.status().message());
  }

  FuseArgs args;
  args.Add(argv[0]);
  if (opts.debug) args.Add("-d");
  args.Add("-o");
  args.Add("default_permissions,subtype=vssfs,fsname=" +
           EscapeOptionValue(paths.value().backing_dir));
  for (const std::string& o : opts.fuse_options) {
    args.Add("-o");
    args.Add(EscapeOptionValue(o));
  }
  // Connection options (max_write=, splice_*, writeback_cache, ...) are
  // taken out here and applied in INIT.
  std::unique_ptr<fuse_conn_info_opts, void (*)(void*)> conn_opts(
      fuse_parse_conn_info_opts(&args.args), std::free);
  if (!conn_opts) return Fail("invalid connection options");

  FilesystemConfig config;
  config.backing_dir = paths.value().backing_dir;
  config.mountpoint = paths.value().mountpoint;
  config.timeout = opts.timeout;
  config.negative_timeout = opts.negative_timeout;
  config.read_ahead_kb = opts.read_ahead_kb;
  config.max_dirty_ratio = opts.max_dirty_ratio;
  config.flush_behind = opts.flush_behind;
  config.max_inodes = opts.max_inodes;
  config.inode_release = opts.inode_release;
  config.store_in_backing =
      paths.value().store_dir == paths.value().backing_dir + "/" + cow_store::kDefaultStoreName;
  config.conn_opts = conn_opts.get();
  cow_store::Result<std::unique_ptr<Filesystem>> fs = Filesystem::Create(config);
  if (!fs.ok()) return Fail(fs.status().message());

  const fuse_lowlevel_ops& ops = Filesystem::Operations();
  std::unique_ptr<fuse_session, void (*)(fuse_session*)> se(
      fuse_session_new(&args.args, &ops, sizeof ops, fs.value().get()), fuse_session_destroy);
  if (!se) return Fail("cannot create the FUSE session (see the message above)");
  if (fuse_set_signal_handlers(se.get()) != 0) return Fail("cannot install signal handlers");
  if (fuse_session_mount(se.get(), config.mountpoint.c_str()) != 0) {
    fuse_remove_signal_handlers(se.get());
    return Fail("cannot mount on " + config.mountpoint + " (see the message above)");
  }
  if (int r = InstallChannel(se.get(), opts.killpriv_v2, opts.io_uring && !opts.single_thread,
                             opts.uring_threads, opts.sched_idle,
                             opts.cpu_pickup && opts.clone_fd && !opts.single_thread);
      r != 0) {
    fuse_session_unmount(se.get());
    fuse_remove_signal_handlers(se.get());
    return Fail("cannot install the FUSE channel hooks");
  }
  if (!opts.foreground) {
    if (fuse_daemonize(0) != 0) {
      fuse_session_unmount(se.get());
      fuse_remove_signal_handlers(se.get());
      return Fail("cannot go into the background");
    }
    LogToSyslog();
  }
  cow_store::Result<std::unique_ptr<cow_store::Store>> block_store =
      cow_store::Store::Open(store.value().fd(), store.value().path(), store_options);
  if (cow_store::Status s = block_store.ok() ? fs.value()->AttachStore(block_store.value().get())
                                             : block_store.status();
      !s.ok()) {
    LOG_ERROR("cannot open the block store: %s", s.message().c_str());
    fuse_session_unmount(se.get());
    fuse_remove_signal_handlers(se.get());
    return 1;
  }
  std::unique_ptr<snapshot_ctl::ControlServer> control;
  {
    cow_store::Result<std::unique_ptr<snapshot_ctl::ControlServer>> server =
        snapshot_ctl::ControlServer::Start(
            snapshot_ctl::ControlSocketPath(config.mountpoint), fs.value().get(), control_group,
            [](const std::string& m) {
              LOG_WARN("%.*s", static_cast<int>(m.find_last_not_of('\n') + 1), m.c_str());
            });
    if (!server.ok()) {
      LOG_ERROR("cannot start the control socket: %s", server.status().message().c_str());
      fuse_session_unmount(se.get());
      fuse_remove_signal_handlers(se.get());
      return 1;
    }
    control = std::move(server.value());
  }
  LOG_INFO("serving %s at %s (store %s)", config.backing_dir.c_str(), config.mountpoint.c_str(),
           store.value().path().c_str());

  fs.value()->SetSession(se.get(), !opts.single_thread);
  int r;
  if (opts.single_thread) {
    r = fuse_session_loop(se.get());
  } else {
    std::unique_ptr<fuse_loop_config, void (*)(fuse_loop_config*)> loop(fuse_loop_cfg_create(),
                                                                        fuse_loop_cfg_destroy);
    fuse_loop_cfg_set_clone_fd(loop.get(), opts.clone_fd ? 1 : 0);
    fuse_loop_cfg_set_max_threads(loop.get(), opts.threads);
    fuse_loop_cfg_set_idle_threads(loop.get(), opts.threads);
    r = fuse_session_loop_mt(se.get(), loop.get());
  }
  StopCpuPickup();           // The workers are gone.
  control.reset();           // No snapshot operation runs past this point.
  fs.value()->StopPruner();  // It writes to /dev/fuse, which unmounting closes.
  fuse_session_unmount(se.get());
  StopUring();
  fuse_remove_signal_handlers(se.get());
  LOG_INFO("unmounted %s", config.mountpoint.c_str());
  // libfuse reports the terminating signal as a positive number: a clean
  // stop. Negative values are errors of the session.
  if (r < 0) {
    LOG_ERROR("session ended with error: %s", strerror(-r));
    return 2;
  }
  return 0;
}

}  // namespace
}  // namespace vssfs::fs

int main(int argc, char** argv) { return vssfs::fs::Main(argc, argv); }
