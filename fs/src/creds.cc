#include "creds.h"

#include <linux/securebits.h>
#include <sched.h>
#include <sys/fsuid.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

#include "log.h"

namespace vssfs::fs {
namespace {

bool g_switch_ids = false;

// umask lives in the fs_struct shared by all threads; each worker thread
// gets its own copy the first time it creates something.
bool EnsurePrivateFsStruct() {
  thread_local bool unshared = false;
  if (!unshared) {
    if (unshare(CLONE_FS) != 0) return false;
    unshared = true;
  }
  return true;
}

}  // namespace

cow_store::Status InitCredentials() {
  if (geteuid() != 0) {
    g_switch_ids = false;
    return cow_store::Status();
  }
  int bits = prctl(PR_GET_SECUREBITS);
  if (bits < 0 || prctl(PR_SET_SECUREBITS, bits | SECBIT_NO_SETUID_FIXUP) != 0) {
    return cow_store::Status::FromErrno(errno, "prctl(PR_SET_SECUREBITS)");
  }
  g_switch_ids = true;
  return cow_store::Status();
}

ScopedCaller::ScopedCaller(uid_t uid, gid_t gid, mode_t umask) {
  if (!EnsurePrivateFsStruct()) {
    ok_ = false;
    return;
  }
  old_umask_ = ::umask(umask);
  umask_set_ = true;
  if (g_switch_ids && (uid != 0 || gid != 0)) {
    // setfsuid/setfsgid act on the calling thread only and return the
    // previous value; verify by reading back.
    setfsgid(gid);
    setfsuid(uid);
    if (static_cast<uid_t>(setfsuid(static_cast<uid_t>(-1))) != uid ||
        static_cast<gid_t>(setfsgid(static_cast<gid_t>(-1))) != gid) {
      ok_ = false;
    }
    switched_ids_ = true;
  }
}

ScopedCaller::~ScopedCaller() {
  if (switched_ids_) {
    setfsuid(0);
    setfsgid(0);
  }
  if (umask_set_) ::umask(old_umask_);
}

}  // namespace vssfs::fs
