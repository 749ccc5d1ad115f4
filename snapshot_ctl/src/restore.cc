// vssctl restore: copies files and directories out of a snapshot, with
// their attributes and xattrs (see restore.h).
#include "restore.h"

#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <map>
#include <memory>
#include <vector>

#include "commands.h"
#include "vssfs/cow_store/unique_fd.h"
#include "vssfs/snapshot_ctl/control.h"

namespace vssfs::snapshot_ctl {

using cow_store::Result;
using cow_store::Status;
using cow_store::UniqueFd;

namespace {

constexpr size_t kChunk = 1 << 20;

Status CopyXattrs(const std::string& from, const std::string& to) {
  std::vector<char> names(65536);
  ssize_t n = llistxattr(from.c_str(), names.data(), names.size());
  if (n < 0)
    return errno == ENOTSUP ? Status() : Status::FromErrno(errno, "list xattrs of " + from);
  std::vector<char> value(65536);
  for (ssize_t pos = 0; pos < n;) {
    const std::string name(names.data() + pos);
    pos += static_cast<ssize_t>(name.size()) + 1;
    ssize_t len = lgetxattr(from.c_str(), name.c_str(), value.data(), value.size());
    if (len < 0) return Status::FromErrno(errno, "read xattr " + name + " of " + from);
    if (lsetxattr(to.c_str(), name.c_str(), value.data(), static_cast<size_t>(len), 0) != 0) {
      return Status::FromErrno(errno, "set xattr " + name + " on " + to);
    }
  }
  return Status();
}

// Owner, mode (after the owner: chown clears set-id bits) and times.
Status CopyAttributes(const std::string& to, const struct stat& st) {
  if (lchown(to.c_str(), st.st_uid, st.st_gid) != 0) return Status::FromErrno(errno, "chown " + to);
  if (!S_ISLNK(st.st_mode) && chmod(to.c_str(), st.st_mode & 07777) != 0) {
    return Status::FromErrno(errno, "chmod " + to);
  }
  const timespec times[2] = {st.st_atim, st.st_mtim};
  if (utimensat(AT_FDCWD, to.c_str(), times, AT_SYMLINK_NOFOLLOW) != 0) {
    return Status::FromErrno(errno, "set times of " + to);
  }
  return Status();
}

Status CopyData(const std::string& from, const std::string& to, off_t size) {
  UniqueFd in(open(from.c_str(), O_RDONLY | O_CLOEXEC));
  if (!in) return Status::FromErrno(errno, "open " + from);
  UniqueFd out(open(to.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (!out) return Status::FromErrno(errno, "create " + to);
  std::vector<char> buf(kChunk);
  static const std::vector<char> kZero(kChunk, 0);
  for (off_t off = 0; off < size;) {
    ssize_t n = pread(in.get(), buf.data(), buf.size(), off);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::FromErrno(errno, "read " + from);
    }
    if (n == 0) break;
    // All-zero chunks stay holes.
    if (std::memcmp(buf.data(), kZero.data(), static_cast<size_t>(n)) != 0) {
      for (ssize_t done = 0; done < n;) {
        ssize_t w = pwrite(out.get(), buf.data() + done, static_cast<size_t>(n - done), off + done);
        if (w < 0) {
          if (errno == EINTR) continue;
          return Status::FromErrno(errno, "write " + to);
        }
        done += w;
      }
    }
    off += n;
  }
  if (ftruncate(out.get(), size) != 0) return Status::FromErrno(errno, "truncate " + to);
  if (fsync(out.get()) != 0) return Status::FromErrno(errno, "fsync " + to);
  return Status();
}

class Copier {
 public:
  explicit Copier(RestoreStats* stats) : stats_(stats) {}

  // Copies `from` (in a snapshot) to `to`. Existing files are replaced
  // atomically (a temporary name, then rename); existing directories are
  // merged into.
  Status Copy(const std::string& from, const std::string& to) {
    struct stat st;
    if (lstat(from.c_str(), &st) != 0) return Status::FromErrno(errno, from);
    const std::string dir = to.substr(0, to.rfind('/'));
    const std::string tmp =
        dir + "/.vssctl-restore-" + std::to_string(getpid()) + "-" + std::to_string(++counter_);
    if (S_ISDIR(st.st_mode)) {
      struct stat existing;
      if (lstat(to.c_str(), &existing) != 0) {
        if (mkdir(to.c_str(), 0700) != 0) return Status::FromErrno(errno, "mkdir " + to);
      } else if (!S_ISDIR(existing.st_mode)) {
        return Status::Error(ENOTDIR, to + " exists and is not a directory");
      }
      std::unique_ptr<DIR, int (*)(DIR*)> d(opendir(from.c_str()), closedir);
      if (!d) return Status::FromErrno(errno, "open " + from);
      std::vector<std::string> names;
      while (dirent* e = readdir(d.get())) {
        const std::string n = e->d_name;
        if (n != "." && n != "..") names.push_back(n);
      }
      for (const std::string& n : names) {
        if (Status s = Copy(from + "/" + n, to + "/" + n); !s.ok()) return s;
      }
      ++stats_->directories;
    } else {
      // Hard links inside what is restored stay hard links.
      auto linked = links_.find({st.st_dev, st.st_ino});
      if (st.st_nlink > 1 && linked != links_.end()) {
        if (link(linked->second.c_str(), tmp.c_str()) != 0) {
          return Status::FromErrno(errno, "link " + to);
        }
        if (rename(tmp.c_str(), to.c_str()) != 0) return Status::FromErrno(errno, "rename " + to);
        ++stats_->files;
        return Status();
      }
      if (S_ISREG(st.st_mode)) {
        if (Status s = CopyData(from, tmp, st.st_size); !s.ok()) {
          unlink(tmp.c_str());
          return s;
        }
        stats_->bytes += static_cast<uint64_t>(st.st_size);
      } else if (S_ISLNK(st.st_mode)) {
        std::vector<char> target(PATH_MAX + 1);
        ssize_t n = readlink(from.c_str(), target.data(), target.size() - 1);
        if (n < 0) return Status::FromErrno(errno, "readlink " + from);
        target[static_cast<size_t>(n)] = '\0';
        if (symlink(target.data(), tmp.c_str()) != 0)
          return Status::FromErrno(errno, "symlink " + to);
      } else if (mknod(tmp.c_str(), st.st_mode, st.st_rdev) != 0) {
        return Status::FromErrno(errno, "mknod " + to);
      }
      if (Status s = CopyXattrs(from, tmp); !s.ok()) return s;
      if (Status s = CopyAttributes(tmp, st); !s.ok()) return s;
      if (rename(tmp.c_str(), to.c_str()) != 0) {
        const int err = errno;
        unlink(tmp.c_str());
        return Status::FromErrno(err, "rename into " + to);
      }
      if (st.st_nlink > 1) links_[{st.st_dev, st.st_ino}] = to;
      ++stats_->files;
      return Status();
    }
    if (Status s = CopyXattrs(from, to); !s.ok()) return s;
    return CopyAttributes(to, st);
  }

 private:
  RestoreStats* stats_;
  int counter_ = 0;
  std::map<std::pair<dev_t, ino_t>, std::string> links_;
};

}  // namespace

Result<RestoreStats> Restore(const std::string& snapshot_root, const std::string& rel,
                             const std::string& target) {
  RestoreStats stats;
  Copier c(&stats);
  if (Status s = c.Copy(snapshot_root + (rel.empty() ? "" : "/" + rel), target); !s.ok()) return s;
  return stats;
}

}  // namespace vssfs::snapshot_ctl
