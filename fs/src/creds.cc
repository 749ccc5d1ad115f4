#include "creds.h"

#include <linux/capability.h>
#include <linux/securebits.h>
#include <sched.h>
#include <sys/fsuid.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "log.h"

namespace vssfs::fs {
namespace {

bool g_switch_ids = false;
std::vector<gid_t>* g_daemon_groups = nullptr;  // Set once in InitCredentials().

// setgroups(2) for the calling thread only (glibc's wrapper changes every
// thread of the process).
int ThreadSetGroups(size_t n, const gid_t* groups) {
  return static_cast<int>(syscall(SYS_setgroups, n, groups));
}

// Adds or removes CAP_FSETID in the calling thread's effective set.
bool SetFsetidEffective(bool on) {
  __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct data[2];
  if (syscall(SYS_capget, &header, data) != 0) return false;
  if (on) {
    data[0].effective |= 1u << CAP_FSETID;
  } else {
    data[0].effective &= ~(1u << CAP_FSETID);
  }
  return syscall(SYS_capset, &header, data) == 0;
}

// umask lives in the fs_struct shared by all threads; each worker thread
// gets its own copy the first time it creates something. t_umask mirrors the
// thread's umask so that an unchanged one costs no system call.
thread_local bool t_unshared = false;
thread_local mode_t t_umask = 0;

bool EnsurePrivateFsStruct() {
  if (!t_unshared) {
    if (unshare(CLONE_FS) != 0) return false;
    t_umask = ::umask(0);
    ::umask(t_umask);
    t_unshared = true;
  }
  return true;
}

void SetThreadUmask(mode_t mask) {
  if (mask != t_umask) {
    ::umask(mask);
    t_umask = mask;
  }
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
  int n = getgroups(0, nullptr);
  g_daemon_groups = new std::vector<gid_t>(n > 0 ? static_cast<size_t>(n) : 0);
  if (n > 0 && getgroups(n, g_daemon_groups->data()) < 0) {
    return cow_store::Status::FromErrno(errno, "getgroups");
  }
  g_switch_ids = true;
  return cow_store::Status();
}

ScopedCaller::ScopedCaller(uid_t uid, gid_t gid, mode_t umask) {
  if (!EnsurePrivateFsStruct()) {
    ok_ = false;
    return;
  }
  old_umask_ = t_umask;
  SetThreadUmask(umask);
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
  if (umask_set_) SetThreadUmask(old_umask_);
}

ScopedUnprivilegedCaller::ScopedUnprivilegedCaller(uid_t uid, gid_t gid, const gid_t* groups,
                                                   int ngroups) {
  if (!g_switch_ids) return;
  active_ = true;
  if (ThreadSetGroups(ngroups > 0 ? static_cast<size_t>(ngroups) : 0, groups) != 0 ||
      !SetFsetidEffective(false)) {
    ok_ = false;
  }
  setfsgid(gid);
  setfsuid(uid);
  if (static_cast<uid_t>(setfsuid(static_cast<uid_t>(-1))) != uid ||
      static_cast<gid_t>(setfsgid(static_cast<gid_t>(-1))) != gid) {
    ok_ = false;
  }
}

ScopedUnprivilegedCaller::~ScopedUnprivilegedCaller() {
  if (!active_) return;
  setfsuid(0);
  setfsgid(0);
  SetFsetidEffective(true);
  ThreadSetGroups(g_daemon_groups->size(), g_daemon_groups->data());
}

bool HasCapability(int cap) {
  __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct data[2]{};
  if (syscall(SYS_capget, &header, data) != 0) return false;
  return (data[cap / 32].effective & (1U << (cap % 32))) != 0;
}

bool ProcessHasCapability(pid_t pid, int cap) {
  if (pid <= 0) return true;
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("CapEff:", 0) == 0) {
      unsigned long long caps = std::strtoull(line.c_str() + 7, nullptr, 16);
      return (caps >> cap) & 1;
    }
  }
  return false;  // Process gone: act as unprivileged (the safe side).
}

}  // namespace vssfs::fs
