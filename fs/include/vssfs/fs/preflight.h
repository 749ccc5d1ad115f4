// Checks run before vssfs mounts, each turning a bad argument into one clear
// message instead of a half-made mount.
//
// Thread-safety: reentrant; they only read the filesystem.
#ifndef VSSFS_FS_PREFLIGHT_H_
#define VSSFS_FS_PREFLIGHT_H_

#include <string>
#include <vector>

#include "vssfs/cow_store/status.h"

namespace vssfs::fs {

struct ResolvedPaths {
  std::string backing_dir;  // Absolute, symlinks resolved.
  std::string mountpoint;   // Absolute, symlinks resolved.
  std::string store_dir;    // Absolute; BACKING_DIR/.vssfs by default.
};

// Validates the backing directory, the mount point and their relation:
//   ENOENT   backing directory or mount point does not exist;
//   ENOTDIR  one of them is not a directory;
//   EBUSY    the mount point is already a mount point (or a dead FUSE mount);
//   ENOTEMPTY the mount point is not empty;
//   EINVAL   one lies inside the other (or they are the same directory), or
//            the store lies inside the mount point;
//   EACCES   the caller may not use one of them.
// `store_dir` may be empty (default location).
cow_store::Result<ResolvedPaths> CheckPaths(const std::string& backing_dir,
                                            const std::string& mountpoint,
                                            const std::string& store_dir);

// Checks that /dev/fuse exists and can be opened for reading and writing.
cow_store::Status CheckFuseDevice(const std::string& device = "/dev/fuse");

// One line of /proc/self/mountinfo.
struct MountEntry {
  std::string mountpoint;  // Unescaped.
  std::string device;      // "major:minor", also the name of its BDI in sysfs.
  std::string fstype;      // e.g. "ext4", "fuse.vssfs".
};

// The calling process's mount table, in mountinfo order.
std::vector<MountEntry> ReadMountTable();

// True when `path` is listed as a mount point in /proc/self/mountinfo.
bool IsMountPoint(const std::string& path);

}  // namespace vssfs::fs

#endif  // VSSFS_FS_PREFLIGHT_H_
