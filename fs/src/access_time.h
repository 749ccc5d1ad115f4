// Access times of live files and directories.
//
// vssfs's own reads of backing objects never move their access times: every
// descriptor it reads through is opened O_NOATIME. Otherwise a read the
// kernel queued before a utimensat (an asynchronous read-ahead) could reach
// the daemon after it and replace the time just set, and a read of a live
// object would move the access time that a snapshot shows for it while the
// object is unpreserved. Instead, opening a file for reading, or a
// directory, updates the access time as a read would natively, by the
// backing filesystem's rule (relatime, strictatime or noatime), after the
// object's attributes were preserved for the latest snapshot
// (docs/LIVE_PATH.md, "Access times").
//
// Thread-safety: the functions are stateless and may be called from any
// thread.
#ifndef VSSFS_FS_SRC_ACCESS_TIME_H_
#define VSSFS_FS_SRC_ACCESS_TIME_H_

#include <fcntl.h>
#include <sys/stat.h>

#include <cerrno>
#include <ctime>

namespace vssfs::fs {

// How the backing filesystem's mount updates access times on reads.
enum class AtimePolicy {
  kNever,     // noatime
  kRelative,  // relatime: when older than mtime or ctime, or a day old
  kStrict,    // strictatime: on every read
};

// The policy of the mount holding `fd` (fstatvfs); kRelative if unknown.
AtimePolicy AtimePolicyOf(int fd);

// Whether a read at `now` would update an object with attributes `st`
// natively under `policy`.
bool AtimeUpdateDue(AtimePolicy policy, const struct stat& st, const struct timespec& now);

// Updates the access time of the object `fd` (any descriptor, O_PATH
// included) as a read would: by reading one byte of a regular file or one
// batch of a directory's entries through a fresh descriptor, so that the
// backing filesystem applies its own rule and leaves ctime alone. Returns 0
// or a negative errno (the object's time is then unchanged).
int TouchAtime(int fd, bool directory);

// Calls open_fn(flags | O_NOATIME); if that fails with EPERM (O_NOATIME
// needs the owner or CAP_FOWNER, which a daemon not running as root may
// lack), calls open_fn(flags) again. Returns open_fn's result: a
// descriptor, or -1 with errno set.
template <typename OpenFn>
int OpenNoAtime(int flags, OpenFn&& open_fn) {
  int fd = open_fn(flags | O_NOATIME);
  if (fd < 0 && errno == EPERM && (flags & O_NOATIME) == 0) fd = open_fn(flags);
  return fd;
}

}  // namespace vssfs::fs

#endif  // VSSFS_FS_SRC_ACCESS_TIME_H_
