// The control channel between `vssctl` and a running vssfs daemon.
//
// Each mounted volume listens on a Unix stream socket,
// ControlSocketPath(mountpoint): $VSSFS_RUN_DIR (default /run/vssfs) in a
// directory of mode 0700, and only peers with uid 0 are served, so the
// channel is root-only by default. A request is the command's arguments
// (NUL-separated, ended by shutting down the write side); the reply is the
// exit status, the standard output text and the standard error text.
//
// Volume is what the daemon offers to commands (implemented by fs); the
// commands themselves (RunCommand) live here, so vssctl and the daemon share
// one definition of every command, its output and its exit status.
//
// Thread-safety: ControlServer serves one request at a time on its own
// thread; Volume methods are called from that thread only.
#ifndef VSSFS_SNAPSHOT_CTL_CONTROL_H_
#define VSSFS_SNAPSHOT_CTL_CONTROL_H_

#include <sys/socket.h>
#include <sys/types.h>

#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "vssfs/cow_store/status.h"
#include "vssfs/cow_store/store.h"
#include "vssfs/cow_store/unique_fd.h"

namespace vssfs::snapshot_ctl {

// vssctl exit statuses (documented in `vssctl --help` and the README).
inline constexpr int kExitOk = 0;
inline constexpr int kExitFailed = 1;      // The operation failed (message says why).
inline constexpr int kExitUsage = 2;       // Bad command, option or argument.
inline constexpr int kExitNotFound = 3;    // No such snapshot, or no daemon for the mount.
inline constexpr int kExitPermission = 4;  // Not allowed (the channel is root-only).
inline constexpr int kExitProblems = 5;    // fsck found problems.
inline constexpr int kExitExists = 6;      // The object already exists.

// A mounted volume, as commands see it.
class Volume {
 public:
  virtual ~Volume() = default;
  // See fs/src/passthrough.h for the guarantees (cut, syncfs, naming).
  // `files` non-empty: a target-file-list snapshot (fs/src/passthrough.h).
  virtual cow_store::Result<cow_store::SnapshotInfo> CreateSnapshot(
      const std::string& name, std::optional<cow_store::Guid> guid,
      const std::vector<std::string>& files) = 0;
  virtual cow_store::Result<cow_store::GcResult> DeleteSnapshot(const std::string& key) = 0;
  // Gives a snapshot a writable clone (auto-recovery): from now on
  // MOUNT/.snapshot/<name> takes writes, kept in the block store. Errors:
  // ENOENT, EEXIST (it has one, writable or frozen).
  virtual cow_store::Result<cow_store::SnapshotInfo> CloneSnapshot(const std::string& key) = 0;
  // Freezes a snapshot's clone for good (idempotent): every write path,
  // root's and already open descriptors' included, fails with EROFS once
  // this returns. Errors: ENOENT, EINVAL (no clone).
  virtual cow_store::Result<cow_store::SnapshotInfo> FreezeSnapshot(const std::string& key) = 0;
  // Deletes the snapshots the retention policy no longer keeps (names
  // returned), or with `dry_run` only lists them. Also run after each
  // snapshot is taken.
  virtual cow_store::Result<std::vector<std::string>> ApplyRetention(bool dry_run) = 0;
  // The write barrier of a set spanning volumes: flushes the volume, then
  // holds every mutating request (they wait; none fails) until the next
  // CreateSnapshot, ReleaseHold, or `timeout_ms` passing. Errors: EBUSY if
  // already held.
  virtual cow_store::Status HoldWrites(int timeout_ms) = 0;
  virtual bool HoldActive() const = 0;
  // Releases a hold (no snapshot); also called when it expires.
  virtual void ReleaseHold() = 0;
  // Releases a hold whose time is up; called by the control thread about
  // every 50 ms.
  virtual void ExpireHold() = 0;
  virtual cow_store::Store& store() = 0;
  virtual std::string MountPoint() const = 0;
};

struct CommandResult {
  int exit_code = kExitOk;
  std::string out;
  std::string err;
};

// Runs one command (args as after "vssctl [-m MOUNT]": e.g. {"snapshot",
// "create", "--json"}) against `volume`.
CommandResult RunCommand(Volume& volume, const std::vector<std::string>& args);

// Maps an errno from a failed operation to an exit status.
int ExitCodeFor(int error);

// Mount points of the vssfs volumes mounted now (from /proc/self/mounts).
std::vector<std::string> VssfsMounts();
// The vssfs mount holding absolute path `path` (the longest mount point that
// is `path` or a prefix of it), or "".
std::string VolumeContaining(const std::string& path);

// The group id of `name` (a group name or a number). Errors: ENOENT.
cow_store::Result<gid_t> GroupId(const std::string& name);

// The control socket of the volume mounted at `mountpoint` (absolute,
// canonical path).
std::string ControlSocketPath(const std::string& mountpoint);

class ControlServer {
 public:
  // Binds the socket (replacing a stale one) and starts serving `volume`
  // (borrowed; must outlive the server): root always, and the members of
  // `group` (primary or supplementary) when given — the socket is then
  // group-owned (0660) and its directory searchable (0711). Errors:
  // EADDRINUSE when another daemon answers on the path, errno from socket
  // calls. A thread of the server also fires the FSRVP message sequence
  // timer (aborting stalled sets) about once a second; what it did goes to
  // `log` (a line each; stderr when empty).
  static cow_store::Result<std::unique_ptr<ControlServer>> Start(
      const std::string& path, Volume* volume, std::optional<gid_t> group = std::nullopt,
      std::function<void(const std::string&)> log = {});
  // Stops serving (waits for a request in progress) and removes the socket.
  ~ControlServer();

 private:
  ControlServer() = default;
  void Serve();

  // Whether the peer may use the socket: root, or a member of group_.
  bool Allowed(const struct ucred& peer) const;

  std::string path_;
  Volume* volume_ = nullptr;
  std::optional<gid_t> group_;
  std::function<void(const std::string&)> log_;
  cow_store::UniqueFd listen_fd_;
  cow_store::UniqueFd stop_fd_;  // eventfd: written to stop.
  std::thread thread_;
  // Fires the FSRVP timer about once a second (SweepExpiredSets).
  std::thread sweeper_;
  std::mutex sweep_mutex_;
  std::condition_variable sweep_cv_;
  bool stopping_ = false;  // Guarded by sweep_mutex_.
};

// Client side: sends `args` to the daemon at `path`. Errors: ENOENT /
// ECONNREFUSED when no daemon listens, EACCES, EIO on a broken reply.
cow_store::Result<CommandResult> CallDaemon(const std::string& path,
                                            const std::vector<std::string>& args);

}  // namespace vssfs::snapshot_ctl

#endif  // VSSFS_SNAPSHOT_CTL_CONTROL_H_
