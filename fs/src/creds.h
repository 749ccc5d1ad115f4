// Acting as the caller when creating files.
//
// The kernel checks every request's permissions as the calling user
// (default_permissions with POSIX ACLs). What it cannot do for us is give a
// new file its owner: for that, a worker thread switches its fsuid/fsgid and
// umask to the caller's around mknod/mkdir/symlink/create, so the backing
// filesystem assigns owner, group (setgid directories included), default
// ACLs and the umask exactly as it would natively. Capabilities are kept
// (SECBIT_NO_SETUID_FIXUP), so the backing filesystem does not check
// permissions a second time with the daemon's supplementary groups.
//
// Thread-safety: InitCredentials() once in the main thread before worker
// threads start; ScopedCaller changes only the calling thread's credentials.
#ifndef VSSFS_FS_SRC_CREDS_H_
#define VSSFS_FS_SRC_CREDS_H_

#include <sys/types.h>

#include "vssfs/cow_store/status.h"

namespace vssfs::fs {

// Prepares credential switching. When the daemon runs as root it sets
// SECBIT_NO_SETUID_FIXUP so setfsuid() keeps capabilities; when it does not,
// switching is disabled (every file belongs to the daemon's user, as with
// any unprivileged FUSE mount).
cow_store::Status InitCredentials();

// For the lifetime of the object the calling thread creates files as
// uid/gid with the given umask; restores the thread's state on destruction.
class ScopedCaller {
 public:
  ScopedCaller(uid_t uid, gid_t gid, mode_t umask);
  ~ScopedCaller();
  ScopedCaller(const ScopedCaller&) = delete;
  ScopedCaller& operator=(const ScopedCaller&) = delete;

  // False if the switch failed (the operation must then fail with EPERM
  // rather than create a file with the wrong owner).
  bool ok() const { return ok_; }

 private:
  bool switched_ids_ = false;
  bool umask_set_ = false;
  bool ok_ = true;
  mode_t old_umask_ = 0;
};

// For the lifetime of the object the calling thread acts as an unprivileged
// caller for a data operation (write, truncate, fallocate, copy, open with
// O_TRUNC): the caller's fsuid, fsgid and supplementary groups, and
// CAP_FSETID dropped. The backing filesystem then clears set-user-ID,
// set-group-ID and file capabilities exactly as it would for that caller.
// Used only when the kernel says the caller lacks CAP_FSETID and the file may
// lose privileges; a daemon not running as root does nothing here.
class ScopedUnprivilegedCaller {
 public:
  ScopedUnprivilegedCaller(uid_t uid, gid_t gid, const gid_t* groups, int ngroups);
  ~ScopedUnprivilegedCaller();
  ScopedUnprivilegedCaller(const ScopedUnprivilegedCaller&) = delete;
  ScopedUnprivilegedCaller& operator=(const ScopedUnprivilegedCaller&) = delete;

  bool ok() const { return ok_; }

 private:
  bool active_ = false;
  bool ok_ = true;
};

// Whether process `pid` has capability `cap` (CAP_FSETID, CAP_SYS_ADMIN, ...)
// in its effective set, per /proc/PID/status; pid 0 (kernel-internal
// requests) counts as privileged, a vanished process as unprivileged.
bool ProcessHasCapability(pid_t pid, int cap);

// Whether the calling thread has capability `cap` in its effective set.
bool HasCapability(int cap);

}  // namespace vssfs::fs

#endif  // VSSFS_FS_SRC_CREDS_H_
