#include "vssfs/cow_store/store_dir.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>

namespace vssfs::cow_store {
namespace {

constexpr char kFormatFile[] = "FORMAT";
constexpr char kLockFile[] = "lock";
constexpr char kFormatMagic[] = "vssfs-store";

// Reads up to 4 KiB of a small file relative to `dir`.
Result<std::string> ReadSmallFile(int dir, const char* name) {
  UniqueFd fd(openat(dir, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (!fd) return Status::FromErrno(errno, std::string("open ") + name);
  char buf[4096];
  ssize_t n = pread(fd.get(), buf, sizeof buf, 0);
  if (n < 0) return Status::FromErrno(errno, std::string("read ") + name);
  return std::string(buf, static_cast<size_t>(n));
}

// Writes `content` to dir/name atomically (temp file, fsync, rename, fsync
// of the directory).
Status WriteFileAtomically(int dir, const char* name, const std::string& content) {
  std::string tmp = std::string(name) + ".tmp";
  UniqueFd fd(openat(dir, tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (!fd) return Status::FromErrno(errno, "create " + tmp);
  if (write(fd.get(), content.data(), content.size()) != static_cast<ssize_t>(content.size())) {
    return Status::FromErrno(errno ? errno : EIO, "write " + tmp);
  }
  if (fsync(fd.get()) != 0) return Status::FromErrno(errno, "fsync " + tmp);
  if (renameat(dir, tmp.c_str(), dir, name) != 0) {
    return Status::FromErrno(errno, "rename " + tmp);
  }
  if (fsync(dir) != 0) return Status::FromErrno(errno, "fsync store directory");
  return Status();
}

}  // namespace

Result<StoreDir> StoreDir::Open(const std::string& path) {
  StoreDir store;
  store.path_ = path;
  if (mkdir(path.c_str(), 0700) != 0 && errno != EEXIST) {
    return Status::FromErrno(errno, "create store directory " + path);
  }
  store.dir_fd_.reset(open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!store.dir_fd_) {
    return Status::FromErrno(errno, "open store directory " + path);
  }
  struct stat st;
  if (fstat(store.dir_fd_.get(), &st) != 0) {
    return Status::FromErrno(errno, "stat store directory " + path);
  }
  store.dev_ = st.st_dev;
  store.ino_ = st.st_ino;

  store.lock_fd_.reset(
      openat(store.dir_fd_.get(), kLockFile, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600));
  if (!store.lock_fd_) {
    return Status::FromErrno(errno, "open " + path + "/" + kLockFile);
  }
  if (flock(store.lock_fd_.get(), LOCK_EX | LOCK_NB) != 0) {
    if (errno != EWOULDBLOCK) {
      return Status::FromErrno(errno, "lock " + path + "/" + kLockFile);
    }
    char buf[32] = {};
    ssize_t n = pread(store.lock_fd_.get(), buf, sizeof buf - 1, 0);
    std::string holder = n > 0 ? std::string(buf, static_cast<size_t>(n)) : "?";
    while (!holder.empty() && (holder.back() == '\n' || holder.back() == ' ')) {
      holder.pop_back();
    }
    return Status::Error(EBUSY, "store " + path + " is in use by another vssfs process (pid " +
                                    holder + "); is this volume already mounted?");
  }
  std::string pid = std::to_string(getpid()) + "\n";
  if (ftruncate(store.lock_fd_.get(), 0) != 0 ||
      pwrite(store.lock_fd_.get(), pid.data(), pid.size(), 0) != static_cast<ssize_t>(pid.size())) {
    return Status::FromErrno(errno ? errno : EIO, "write " + path + "/" + kLockFile);
  }

  Result<std::string> format = ReadSmallFile(store.dir_fd_.get(), kFormatFile);
  if (!format.ok()) {
    if (format.status().error() != ENOENT) return format.status();
    std::string content =
        std::string(kFormatMagic) + " " + std::to_string(kStoreFormatVersion) + "\n";
    Status s = WriteFileAtomically(store.dir_fd_.get(), kFormatFile, content);
    if (!s.ok()) return s;
  } else {
    int version = 0;
    char magic[32] = {};
    if (std::sscanf(format.value().c_str(), "%31s %d", magic, &version) != 2 ||
        std::strcmp(magic, kFormatMagic) != 0) {
      return Status::Error(EPROTO, path + "/" + kFormatFile + " is not a vssfs store format file");
    }
    if (version == 1) {
      // Version 1 stores hold no snapshot data: upgrading is rewriting FORMAT.
      std::string content =
          std::string(kFormatMagic) + " " + std::to_string(kStoreFormatVersion) + "\n";
      Status s = WriteFileAtomically(store.dir_fd_.get(), kFormatFile, content);
      if (!s.ok()) return s;
    } else if (version != kStoreFormatVersion) {
      return Status::Error(EPROTO, "store " + path + " has format version " +
                                       std::to_string(version) + "; this vssfs reads version " +
                                       std::to_string(kStoreFormatVersion));
    }
  }
  return store;
}

}  // namespace vssfs::cow_store
