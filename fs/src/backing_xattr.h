// Extended attributes of a backing inode reached through an O_PATH
// descriptor.
//
// Regular files and directories go through /proc/self/fd/N: the *xattr calls
// follow that magic link to the inode itself (f*xattr refuse O_PATH
// descriptors, and so does Linux 6.13's getxattrat(AT_EMPTY_PATH)).
//
// A symlink's own attributes cannot be reached that way (the link would be
// followed), so the l*xattr calls take a path naming the symlink, which the
// caller finds (see LiveSymlinkPath in inode_table.h). The path is checked to name
// the same inode as the descriptor before and, for reads, after the call: a
// concurrent rename makes the call fail with ESTALE instead of touching
// another file.
//
// Thread-safety: all functions are reentrant.
#ifndef VSSFS_FS_SRC_BACKING_XATTR_H_
#define VSSFS_FS_SRC_BACKING_XATTR_H_

#include <sys/types.h>

#include <cstddef>
#include <cstdio>
#include <string>

namespace vssfs::fs {

// "/proc/self/fd/N" for `fd`: opening it reopens an O_PATH descriptor with
// real access modes, and path-based calls through it reach the inode itself.
struct ProcPath {
  explicit ProcPath(int fd) { std::snprintf(path, sizeof path, "/proc/self/fd/%d", fd); }
  char path[32];
};

// `symlink_path` is empty for anything but a symlink. Each returns the system
// call's result or a negative errno.
ssize_t BackingGetXattr(int path_fd, const std::string& symlink_path, const char* name, void* value,
                        size_t size);
ssize_t BackingListXattr(int path_fd, const std::string& symlink_path, char* list, size_t size);
int BackingSetXattr(int path_fd, const std::string& symlink_path, const char* name,
                    const void* value, size_t size, int flags);
int BackingRemoveXattr(int path_fd, const std::string& symlink_path, const char* name);

// 0 if `path` names the inode held by `path_fd` (without following a final
// symlink), else -ESTALE (or the error of fstat on the descriptor).
int SameInode(int path_fd, const std::string& path);

// The path `fd`'s own name has now (readlink of /proc/self/fd/N), checked to
// name the same inode. Returns 0, or -ESTALE when that name is gone (an
// unlinked name, or a descriptor obtained from a file handle).
int DescriptorPath(int fd, std::string* path);

}  // namespace vssfs::fs

#endif  // VSSFS_FS_SRC_BACKING_XATTR_H_
