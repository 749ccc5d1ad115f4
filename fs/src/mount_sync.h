// MountSyncer: syncfs(2) of the daemon's own mount, done by a helper process.
//
// With the writeback cache, a snapshot cut must follow a syncfs of the mount.
// A daemon thread must not make that call itself: blocked in writeback of
// its own mount, it keeps a killed daemon from exiting, and the FUSE
// connection then stays up until someone aborts it. The helper is forked at
// start-up, closes every descriptor but its pipe, and runs one syncfs per
// request; it dies with the daemon (pipe EOF, PR_SET_PDEATHSIG). Forking once
// also keeps each sync cheap: a fork per sync would copy the daemon's
// descriptor table, which holds one descriptor per inode the kernel knows.
//
// Thread-safety: Sync() may be called from any thread; calls are serialised.
#ifndef VSSFS_FS_SRC_MOUNT_SYNC_H_
#define VSSFS_FS_SRC_MOUNT_SYNC_H_

#include <sys/types.h>

#include <memory>
#include <mutex>
#include <string>

#include "vssfs/cow_store/status.h"
#include "vssfs/cow_store/unique_fd.h"

namespace vssfs::fs {

class MountSyncer {
 public:
  // Starts the helper for `mountpoint`. Call while the process has one
  // thread (the helper is a plain fork).
  static cow_store::Result<std::unique_ptr<MountSyncer>> Start(const std::string& mountpoint);
  // Closes the pipe (the helper exits) and reaps the helper.
  ~MountSyncer();

  // syncfs(2) of the mount. Errors: errno of open/syncfs in the helper, EIO
  // when the helper is gone.
  cow_store::Status Sync();

 private:
  MountSyncer() = default;

  std::mutex mutex_;
  std::string mountpoint_;
  cow_store::UniqueFd to_helper_;
  cow_store::UniqueFd from_helper_;
  pid_t pid_ = -1;
};

}  // namespace vssfs::fs

#endif  // VSSFS_FS_SRC_MOUNT_SYNC_H_
