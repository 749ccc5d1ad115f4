// Extended attributes of a backing inode reached through an O_PATH
// descriptor.
//
// Regular files and directories go through /proc/self/fd/N: the *xattr calls
// follow that magic link to the inode itself (f*xattr refuse O_PATH
// descriptors, and so does Linux 6.13's getxattrat(AT_EMPTY_PATH)).
//
// A symlink's own attributes cannot be reached that way (the link would be
// followed). For symlinks the l*xattr calls use the symlink's current path
// (the target of /proc/self/fd/N), checked to still name the same inode
// before and, for reads, after the call; a concurrent rename makes the call
// fail with ESTALE instead of touching another file.
//
// Thread-safety: all functions are reentrant.
#ifndef VSSFS_FS_SRC_BACKING_XATTR_H_
#define VSSFS_FS_SRC_BACKING_XATTR_H_

#include <sys/types.h>

#include <cstddef>

namespace vssfs::fs {

// Each returns the system call's result or a negative errno.
ssize_t BackingGetXattr(int path_fd, bool is_symlink, const char* name, void* value,
                        size_t size);
ssize_t BackingListXattr(int path_fd, bool is_symlink, char* list, size_t size);
int BackingSetXattr(int path_fd, bool is_symlink, const char* name, const void* value,
                    size_t size, int flags);
int BackingRemoveXattr(int path_fd, bool is_symlink, const char* name);

}  // namespace vssfs::fs

#endif  // VSSFS_FS_SRC_BACKING_XATTR_H_
