// Extended attributes of a backing inode reached through an O_PATH
// descriptor, via /proc/self/fd/N (the *xattr calls follow that magic link
// to the inode itself; f*xattr refuse O_PATH descriptors, and so does
// Linux 6.13's getxattrat(AT_EMPTY_PATH)).
//
// A symlink's own attributes cannot be reached that way without a race (the
// link would be followed). For symlinks vssfs answers as Linux does for the
// user namespace, which is the only one file servers use on them: reads find
// nothing (ENODATA, empty list), writes of user.* fail with EPERM, writes of
// other namespaces with ENOTSUP.
//
// Thread-safety: all functions are reentrant.
#ifndef VSSFS_FS_SRC_BACKING_XATTR_H_
#define VSSFS_FS_SRC_BACKING_XATTR_H_

#include <sys/types.h>

#include <cstddef>

namespace vssfs::fs {

// Each returns the system call's result or a negative errno.
ssize_t BackingGetXattr(int path_fd, bool is_symlink, const char* name, void* value, size_t size);
ssize_t BackingListXattr(int path_fd, bool is_symlink, char* list, size_t size);
int BackingSetXattr(int path_fd, bool is_symlink, const char* name, const void* value, size_t size,
                    int flags);
int BackingRemoveXattr(int path_fd, bool is_symlink, const char* name);

}  // namespace vssfs::fs

#endif  // VSSFS_FS_SRC_BACKING_XATTR_H_
