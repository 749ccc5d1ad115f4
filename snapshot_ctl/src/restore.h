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
  uint64_t bytes = 0;    // Bytes written.
  uint64_t removed = 0;  // Rollback: entries removed (with what was below them).
};

// Copies `snapshot_root`/`rel` to `target` (whose parent must exist).
cow_store::Result<RestoreStats> Restore(const std::string& snapshot_root, const std::string& rel,
                                        const std::string& target);

// Rollback: makes the live `target` exactly `snapshot_root`/`rel` again.
// As Restore, and also: entries the snapshot does not have are removed,
// objects of another kind replaced, xattrs the snapshot lacks removed, and a
// regular file that exists on both sides (one link each) is rewritten in
// place, only its chunks that differ (so rolling back a large VM disk costs
// what changed since). Through the mount, like every change: other
// snapshots, older and newer, keep what they show. `volume_root`: the mount
// point, whose ".snapshot" is left alone. A failure leaves the tree partly
// rolled back (run it again to finish).
cow_store::Result<RestoreStats> Rollback(const std::string& snapshot_root, const std::string& rel,
                                         const std::string& target, const std::string& volume_root);

}  // namespace vssfs::snapshot_ctl

#endif  // VSSFS_SNAPSHOT_CTL_SRC_RESTORE_H_
