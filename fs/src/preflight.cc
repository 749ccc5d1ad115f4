#include "vssfs/fs/preflight.h"

#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <sstream>

#include "vssfs/cow_store/store_dir.h"
#include "vssfs/cow_store/unique_fd.h"

namespace vssfs::fs {
namespace {

using cow_store::Result;
using cow_store::Status;

// Resolves `path` to an absolute path without symlinks; `role` names it in
// messages ("backing directory", "mount point").
Result<std::string> ResolveDir(const std::string& path, const std::string& role) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) {
    int err = errno;
    if (err == ENOTCONN) {
      return Status::Error(EBUSY, role + " " + path +
                                      " is a dead FUSE mount (transport endpoint is not "
                                      "connected); run 'umount -l " +
                                      path + "' first");
    }
    if (err == ENOENT) {
      return Status::Error(ENOENT, role + " " + path + " does not exist");
    }
    return Status::FromErrno(err, role + " " + path);
  }
  if (!S_ISDIR(st.st_mode)) {
    return Status::Error(ENOTDIR, role + " " + path + " is not a directory");
  }
  char buf[PATH_MAX];
  if (realpath(path.c_str(), buf) == nullptr) {
    return Status::FromErrno(errno, role + " " + path);
  }
  return std::string(buf);
}

// True when `inner` equals `outer` or lies below it (both absolute, resolved).
bool IsSameOrInside(const std::string& inner, const std::string& outer) {
  if (outer == "/") return true;
  return inner == outer || inner.rfind(outer + "/", 0) == 0;
}

std::string UnescapeMountinfo(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 3 < s.size()) {
      out.push_back(static_cast<char>(std::strtol(s.substr(i + 1, 3).c_str(), nullptr, 8)));
      i += 3;
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

}  // namespace

std::vector<MountEntry> ReadMountTable() {
  std::vector<MountEntry> table;
  std::ifstream in("/proc/self/mountinfo");
  std::string line;
  while (std::getline(in, line)) {
    // id parent major:minor root mountpoint options [optional...] - fstype ...
    std::istringstream fields(line);
    std::string id, parent, root, tok;
    MountEntry e;
    fields >> id >> parent >> e.device >> root >> e.mountpoint;
    while (fields >> tok && tok != "-") {
    }
    fields >> e.fstype;
    e.mountpoint = UnescapeMountinfo(e.mountpoint);
    table.push_back(std::move(e));
  }
  return table;
}

bool IsMountPoint(const std::string& path) {
  for (const MountEntry& e : ReadMountTable()) {
    if (e.mountpoint == path) return true;
  }
  return false;
}

Result<ResolvedPaths> CheckPaths(const std::string& backing_dir, const std::string& mountpoint,
                                 const std::string& store_dir) {
  ResolvedPaths r;
  Result<std::string> backing = ResolveDir(backing_dir, "backing directory");
  if (!backing.ok()) return backing.status();
  r.backing_dir = backing.value();
  Result<std::string> mnt = ResolveDir(mountpoint, "mount point");
  if (!mnt.ok()) return mnt.status();
  r.mountpoint = mnt.value();

  if (IsSameOrInside(r.mountpoint, r.backing_dir)) {
    return Status::Error(EINVAL, "mount point " + r.mountpoint +
                                     (r.mountpoint == r.backing_dir
                                          ? " is the backing directory itself"
                                          : " lies inside the backing directory " + r.backing_dir) +
                                     "; choose a mount point outside it");
  }
  if (IsSameOrInside(r.backing_dir, r.mountpoint)) {
    return Status::Error(EINVAL, "backing directory " + r.backing_dir +
                                     " lies inside the mount point " + r.mountpoint +
                                     "; choose a mount point outside it");
  }
  if (IsMountPoint(r.mountpoint)) {
    return Status::Error(
        EBUSY, "mount point " + r.mountpoint + " is already a mount point; unmount it first");
  }
  if (access(r.mountpoint.c_str(), R_OK | X_OK) != 0 ||
      access(r.backing_dir.c_str(), R_OK | X_OK) != 0) {
    return Status::Error(EACCES, "no permission to use " +
                                     std::string(access(r.backing_dir.c_str(), R_OK | X_OK) != 0
                                                     ? "backing directory " + r.backing_dir
                                                     : "mount point " + r.mountpoint));
  }
  {
    std::unique_ptr<DIR, int (*)(DIR*)> dir(opendir(r.mountpoint.c_str()), closedir);
    if (!dir) return Status::FromErrno(errno, "mount point " + r.mountpoint);
    while (dirent* e = readdir(dir.get())) {
      std::string name = e->d_name;
      if (name != "." && name != "..") {
        return Status::Error(ENOTEMPTY, "mount point " + r.mountpoint +
                                            " is not empty (it holds '" + name +
                                            "'); vssfs mounts only on an empty directory");
      }
    }
  }
  if (store_dir.empty()) {
    r.store_dir = r.backing_dir + "/" + cow_store::kDefaultStoreName;
  } else {
    char buf[PATH_MAX];
    if (realpath(store_dir.c_str(), buf) != nullptr) {
      r.store_dir = buf;
    } else if (errno == ENOENT && store_dir[0] == '/') {
      r.store_dir = store_dir;  // Created on open.
    } else {
      return Status::FromErrno(errno, "store directory " + store_dir);
    }
    if (IsSameOrInside(r.store_dir, r.mountpoint)) {
      return Status::Error(EINVAL, "store directory " + r.store_dir +
                                       " lies inside the mount point " + r.mountpoint);
    }
    if (IsSameOrInside(r.store_dir, r.backing_dir) &&
        r.store_dir != r.backing_dir + "/" + cow_store::kDefaultStoreName) {
      return Status::Error(EINVAL, "store directory " + r.store_dir +
                                       " lies inside the backing directory; inside it "
                                       "the store must be BACKING_DIR/" +
                                       cow_store::kDefaultStoreName);
    }
  }
  return r;
}

Status CheckFuseDevice(const std::string& device) {
  cow_store::UniqueFd fd(open(device.c_str(), O_RDWR | O_CLOEXEC));
  if (!fd) {
    int err = errno;
    if (err == ENOENT) {
      return Status::Error(ENODEV, device +
                                       " does not exist: load the fuse kernel module "
                                       "('modprobe fuse') or, in a container, pass "
                                       "the device in");
    }
    return Status::FromErrno(err, "cannot open " + device +
                                      " (needed to mount; are you root or in the "
                                      "fuse group?)");
  }
  return Status();
}

}  // namespace vssfs::fs
