#include "backing_xattr.h"

#include <sys/xattr.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

namespace vssfs::fs {
namespace {

// "/proc/self/fd/N" for `fd`.
struct ProcPath {
  explicit ProcPath(int fd) { std::snprintf(path, sizeof path, "/proc/self/fd/%d", fd); }
  char path[32];
};

int SymlinkWriteError(const char* name) {
  return std::strncmp(name, "user.", 5) == 0 ? -EPERM : -ENOTSUP;
}

}  // namespace

ssize_t BackingGetXattr(int path_fd, bool is_symlink, const char* name, void* value, size_t size) {
  if (is_symlink) return -ENODATA;
  ssize_t r = getxattr(ProcPath(path_fd).path, name, value, size);
  return r < 0 ? -errno : r;
}

ssize_t BackingListXattr(int path_fd, bool is_symlink, char* list, size_t size) {
  if (is_symlink) return 0;
  ssize_t r = listxattr(ProcPath(path_fd).path, list, size);
  return r < 0 ? -errno : r;
}

int BackingSetXattr(int path_fd, bool is_symlink, const char* name, const void* value, size_t size,
                    int flags) {
  if (is_symlink) return SymlinkWriteError(name);
  int r = setxattr(ProcPath(path_fd).path, name, value, size, flags);
  return r < 0 ? -errno : 0;
}

int BackingRemoveXattr(int path_fd, bool is_symlink, const char* name) {
  if (is_symlink) return SymlinkWriteError(name);
  int r = removexattr(ProcPath(path_fd).path, name);
  return r < 0 ? -errno : 0;
}

}  // namespace vssfs::fs
