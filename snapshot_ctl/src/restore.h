// Restoring files and directories from a snapshot (vssctl restore).
//
// Copies go through the live mount, so copy-on-write keeps every other
// snapshot intact. A file is written under a temporary name and renamed
// over its target (never half-restored); a directory is merged into an
// existing one (files the snapshot does not have are left alone; rollback
// is the tool that reverts a tree). Owners, modes, times, xattrs (ACLs,
// user.DOSATTRIB, security.NTACL), symlinks, special files, holes (all-zero
// MiB chunks) and hard links within the restored tree are kept.
//
// Thread-safety: stateless functions.
#ifndef VSSFS_SNAPSHOT_CTL_SRC_RESTORE_H_
#define VSSFS_SNAPSHOT_CTL_SRC_RESTORE_H_

#include <cstdint>
#include <string>

#include "vssfs/cow_store/status.h"

namespace vssfs::snapshot_ctl {

struct RestoreStats {
  uint64_t files = 0;
  uint64_t directories = 0;
  uint64_t bytes = 0;
};

// Copies `snapshot_root`/`rel` to `target` (whose parent must exist).
cow_store::Result<RestoreStats> Restore(const std::string& snapshot_root, const std::string& rel,
                                        const std::string& target);

}  // namespace vssfs::snapshot_ctl

#endif  // VSSFS_SNAPSHOT_CTL_SRC_RESTORE_H_
