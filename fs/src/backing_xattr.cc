#include "backing_xattr.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdio>

namespace vssfs::fs {
namespace {

// Runs `op(path)` on a symlink's path with identity checks around it.
template <typename F>
ssize_t OnSymlink(int path_fd, const std::string& path, bool check_after, F&& op) {
  if (int r = SameInode(path_fd, path); r != 0) return r;
  ssize_t r = op(path.c_str());
  if (r < 0) return -errno;
  if (check_after) {
    if (int c = SameInode(path_fd, path); c != 0) return c;
  }
  return r;
}

}  // namespace

int SameInode(int path_fd, const std::string& path) {
  struct stat want, got;
  if (fstatat(path_fd, "", &want, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) != 0) return -errno;
  if (lstat(path.c_str(), &got) != 0) return -ESTALE;
  return want.st_ino == got.st_ino && want.st_dev == got.st_dev ? 0 : -ESTALE;
}

int DescriptorPath(int fd, std::string* path) {
  char buf[PATH_MAX];
  const ssize_t n = readlink(ProcPath(fd).path, buf, sizeof buf);
  if (n > 0 && static_cast<size_t>(n) < sizeof buf && buf[0] == '/') {
    path->assign(buf, static_cast<size_t>(n));
    if (SameInode(fd, *path) == 0) return 0;
  }
  path->clear();
  return -ESTALE;
}

ssize_t BackingGetXattr(int path_fd, const std::string& symlink_path, const char* name, void* value,
                        size_t size) {
  if (!symlink_path.empty()) {
    return OnSymlink(path_fd, symlink_path, true,
                     [&](const char* p) { return lgetxattr(p, name, value, size); });
  }
  ssize_t r = getxattr(ProcPath(path_fd).path, name, value, size);
  return r < 0 ? -errno : r;
}

ssize_t BackingListXattr(int path_fd, const std::string& symlink_path, char* list, size_t size) {
  if (!symlink_path.empty()) {
    return OnSymlink(path_fd, symlink_path, true,
                     [&](const char* p) { return llistxattr(p, list, size); });
  }
  ssize_t r = listxattr(ProcPath(path_fd).path, list, size);
  return r < 0 ? -errno : r;
}

int BackingSetXattr(int path_fd, const std::string& symlink_path, const char* name,
                    const void* value, size_t size, int flags) {
  if (!symlink_path.empty()) {
    return static_cast<int>(OnSymlink(path_fd, symlink_path, false, [&](const char* p) {
      return static_cast<ssize_t>(lsetxattr(p, name, value, size, flags));
    }));
  }
  int r = setxattr(ProcPath(path_fd).path, name, value, size, flags);
  return r < 0 ? -errno : 0;
}

int BackingRemoveXattr(int path_fd, const std::string& symlink_path, const char* name) {
  if (!symlink_path.empty()) {
    return static_cast<int>(OnSymlink(path_fd, symlink_path, false, [&](const char* p) {
      return static_cast<ssize_t>(lremovexattr(p, name));
    }));
  }
  int r = removexattr(ProcPath(path_fd).path, name);
  return r < 0 ? -errno : 0;
}

}  // namespace vssfs::fs
