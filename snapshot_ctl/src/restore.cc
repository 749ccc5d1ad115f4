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

#include <algorithm>
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

// The xattr names of `path` (not following a symlink).
Result<std::vector<std::string>> XattrNames(const std::string& path) {
  std::vector<char> names(65536);
  ssize_t n = llistxattr(path.c_str(), names.data(), names.size());
  if (n < 0) {
    if (errno == ENOTSUP) return std::vector<std::string>();
    return Status::FromErrno(errno, "list xattrs of " + path);
  }
  std::vector<std::string> out;
  for (ssize_t pos = 0; pos < n;) {
    out.emplace_back(names.data() + pos);
    pos += static_cast<ssize_t>(out.back().size()) + 1;
  }
  return out;
}

// Copies every xattr of `from` to `to`; with `exact`, also removes those
// `to` has and `from` has not.
Status CopyXattrs(const std::string& from, const std::string& to, bool exact = false) {
  Result<std::vector<std::string>> names = XattrNames(from);
  if (!names.ok()) return names.status();
  if (exact) {
    Result<std::vector<std::string>> old = XattrNames(to);
    if (!old.ok()) return old.status();
    for (const std::string& name : old.value()) {
      if (std::find(names.value().begin(), names.value().end(), name) != names.value().end()) {
        continue;
      }
      if (lremovexattr(to.c_str(), name.c_str()) != 0 && errno != ENODATA) {
        return Status::FromErrno(errno, "remove xattr " + name + " of " + to);
      }
    }
  }
  std::vector<char> value(65536);
  for (const std::string& name : names.value()) {
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

// The entries of directory `path` but "." and "..".
Result<std::vector<std::string>> Names(const std::string& path) {
  std::unique_ptr<DIR, int (*)(DIR*)> d(opendir(path.c_str()), closedir);
  if (!d) return Status::FromErrno(errno, "open " + path);
  std::vector<std::string> names;
  while (dirent* e = readdir(d.get())) {
    const std::string n = e->d_name;
    if (n != "." && n != "..") names.push_back(n);
  }
  return names;
}

// Removes `path` and everything below it.
Status RemoveTree(const std::string& path) {
  struct stat st;
  if (lstat(path.c_str(), &st) != 0) return Status::FromErrno(errno, path);
  if (S_ISDIR(st.st_mode)) {
    Result<std::vector<std::string>> names = Names(path);
    if (!names.ok()) return names.status();
    for (const std::string& n : names.value()) {
      if (Status s = RemoveTree(path + "/" + n); !s.ok()) return s;
    }
    if (rmdir(path.c_str()) != 0) return Status::FromErrno(errno, "rmdir " + path);
    return Status();
  }
  if (unlink(path.c_str()) != 0) return Status::FromErrno(errno, "unlink " + path);
  return Status();
}

// Makes regular file `to` hold `from`'s bytes, writing only the chunks that
// differ (all-zero chunks become holes), so that a rollback of a large file
// costs what changed since the snapshot. Returns the bytes written.
Result<uint64_t> SyncData(const std::string& from, const std::string& to, off_t size) {
  UniqueFd in(open(from.c_str(), O_RDONLY | O_CLOEXEC));
  if (!in) return Status::FromErrno(errno, "open " + from);
  UniqueFd out(open(to.c_str(), O_RDWR | O_CLOEXEC));
  if (!out) return Status::FromErrno(errno, "open " + to);
  std::vector<char> want(kChunk), have(kChunk);
  static const std::vector<char> kZero(kChunk, 0);
  uint64_t written = 0;
  for (off_t off = 0; off < size;) {
    const size_t len = static_cast<size_t>(std::min<off_t>(size - off, kChunk));
    if (pread(in.get(), want.data(), len, off) != static_cast<ssize_t>(len)) {
      return Status::FromErrno(errno ? errno : EIO, "read " + from);
    }
    ssize_t got = pread(out.get(), have.data(), len, off);
    if (got < 0) return Status::FromErrno(errno, "read " + to);
    if (got != static_cast<ssize_t>(len) || std::memcmp(want.data(), have.data(), len) != 0) {
      const bool zero = std::memcmp(want.data(), kZero.data(), len) == 0;
      if (zero && fallocate(out.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off,
                            static_cast<off_t>(len)) == 0) {
        // A hole reads as the zeros wanted.
      } else if (pwrite(out.get(), want.data(), len, off) != static_cast<ssize_t>(len)) {
        return Status::FromErrno(errno ? errno : EIO, "write " + to);
      }
      written += len;
    }
    off += static_cast<off_t>(len);
  }
  if (ftruncate(out.get(), size) != 0) return Status::FromErrno(errno, "truncate " + to);
  if (fsync(out.get()) != 0) return Status::FromErrno(errno, "fsync " + to);
  return written;
}

class Copier {
 public:
  // `exact`: rollback (see restore.h); `volume_root`: whose ".snapshot" entry
  // is never touched.
  Copier(RestoreStats* stats, bool exact = false, std::string volume_root = "")
      : stats_(stats), exact_(exact), volume_root_(std::move(volume_root)) {}

  // Copies `from` (in a snapshot) to `to`. Existing files are replaced
  // atomically (a temporary name, then rename); existing directories are
  // merged into.
  Status Copy(const std::string& from, const std::string& to) {
    struct stat st;
    if (lstat(from.c_str(), &st) != 0) return Status::FromErrno(errno, from);
    const std::string dir = to.substr(0, to.rfind('/'));
    const std::string tmp =
        dir + "/.vssctl-restore-" + std::to_string(getpid()) + "-" + std::to_string(++counter_);
    struct stat existing;
    const bool exists = lstat(to.c_str(), &existing) == 0;
    if (exact_ && exists && S_ISDIR(existing.st_mode) != S_ISDIR(st.st_mode)) {
      // A rollback replaces an object of another kind.
      if (Status s = RemoveTree(to); !s.ok()) return s;
      ++stats_->removed;
    }
    if (S_ISDIR(st.st_mode)) {
      if (lstat(to.c_str(), &existing) != 0) {
        if (mkdir(to.c_str(), 0700) != 0) return Status::FromErrno(errno, "mkdir " + to);
      } else if (!S_ISDIR(existing.st_mode)) {
        return Status::Error(ENOTDIR, to + " exists and is not a directory");
      }
      Result<std::vector<std::string>> listed = Names(from);
      if (!listed.ok()) return listed.status();
      const std::vector<std::string>& names = listed.value();
      if (exact_) {
        // What appeared since the snapshot goes.
        Result<std::vector<std::string>> live = Names(to);
        if (!live.ok()) return live.status();
        std::vector<std::string> extra;
        for (const std::string& n : live.value()) {
          if (to == volume_root_ && n == ".snapshot") continue;
          if (std::find(names.begin(), names.end(), n) == names.end()) extra.push_back(n);
        }
        for (const std::string& n : extra) {
          if (Status s = RemoveTree(to + "/" + n); !s.ok()) return s;
          ++stats_->removed;
        }
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
      if (exact_ && S_ISREG(st.st_mode) && st.st_nlink == 1 && exists &&
          S_ISREG(existing.st_mode) && existing.st_nlink == 1) {
        // Rollback in place: only the chunks that changed are written.
        Result<uint64_t> written = SyncData(from, to, st.st_size);
        if (!written.ok()) return written.status();
        stats_->bytes += written.value();
        if (Status s = CopyXattrs(from, to, true); !s.ok()) return s;
        if (Status s = CopyAttributes(to, st); !s.ok()) return s;
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
    if (Status s = CopyXattrs(from, to, exact_); !s.ok()) return s;
    return CopyAttributes(to, st);
  }

 private:
  RestoreStats* stats_;
  bool exact_ = false;
  std::string volume_root_;
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

Result<RestoreStats> Rollback(const std::string& snapshot_root, const std::string& rel,
                              const std::string& target, const std::string& volume_root) {
  RestoreStats stats;
  Copier c(&stats, /*exact=*/true, volume_root);
  if (Status s = c.Copy(snapshot_root + (rel.empty() ? "" : "/" + rel), target); !s.ok()) return s;
  return stats;
}

}  // namespace vssfs::snapshot_ctl
