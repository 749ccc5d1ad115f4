// StoreDir: the directory in which a vssfs volume keeps its snapshot store.
//
// By default it is BACKING/.vssfs (hidden from the mount); `--store DIR` puts
// it elsewhere. Opening a StoreDir creates it if absent, checks the on-disk
// format version (docs/FORMAT.md) and takes an exclusive lock so that one
// store is served by at most one vssfs process: a second mount of the same
// backing directory fails with EBUSY naming the holder's PID. The lock is
// held until the StoreDir is destroyed (or the process exits, also by
// crash: flock(2) locks die with their holder).
//
// Thread-safety: immutable after Open(); all accessors may be called from any
// thread.
#ifndef VSSFS_COW_STORE_STORE_DIR_H_
#define VSSFS_COW_STORE_STORE_DIR_H_

#include <sys/types.h>

#include <string>

#include "vssfs/cow_store/status.h"
#include "vssfs/cow_store/unique_fd.h"

namespace vssfs::cow_store {

// Name of the default store directory inside the backing directory.
inline constexpr char kDefaultStoreName[] = ".vssfs";
// Version of the store layout this build reads and writes.
inline constexpr int kStoreFormatVersion = 2;

class StoreDir {
 public:
  // Opens the store at `path`, creating it (mode 0700) and its FORMAT file if
  // absent, and locks it. Errors:
  //   ENOENT/ENOTDIR/EACCES...  the path cannot be created or opened;
  //   EPROTO  the FORMAT file names a version this build cannot read;
  //   EBUSY   another process holds the store (message names its PID).
  static Result<StoreDir> Open(const std::string& path);

  StoreDir(StoreDir&&) = default;
  StoreDir& operator=(StoreDir&&) = default;

  const std::string& path() const { return path_; }
  // The store directory, opened O_RDONLY|O_DIRECTORY.
  int fd() const { return dir_fd_.get(); }
  dev_t dev() const { return dev_; }
  ino_t ino() const { return ino_; }

 private:
  StoreDir() = default;

  std::string path_;
  UniqueFd dir_fd_;
  UniqueFd lock_fd_;
  dev_t dev_ = 0;
  ino_t ino_ = 0;
};

}  // namespace vssfs::cow_store

#endif  // VSSFS_COW_STORE_STORE_DIR_H_
