#include "access_time.h"

#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "backing_xattr.h"
#include "vssfs/cow_store/unique_fd.h"

namespace vssfs::fs {
namespace {

constexpr time_t kRelatimeMaxAge = 24 * 60 * 60;  // The kernel's relatime rule.

bool NotAfter(const struct timespec& a, const struct timespec& b) {
  return a.tv_sec < b.tv_sec || (a.tv_sec == b.tv_sec && a.tv_nsec <= b.tv_nsec);
}

}  // namespace

AtimePolicy AtimePolicyOf(int fd) {
  struct statvfs sv;
  if (fstatvfs(fd, &sv) != 0) return AtimePolicy::kRelative;
  if (sv.f_flag & ST_NOATIME) return AtimePolicy::kNever;
  if (sv.f_flag & ST_RELATIME) return AtimePolicy::kRelative;
  return AtimePolicy::kStrict;
}

bool AtimeUpdateDue(AtimePolicy policy, const struct stat& st, const struct timespec& now) {
  switch (policy) {
    case AtimePolicy::kNever:
      return false;
    case AtimePolicy::kStrict:
      return true;
    case AtimePolicy::kRelative:
      break;
  }
  // As relatime_need_update(): atime not after mtime or ctime, or a day old.
  return NotAfter(st.st_atim, st.st_mtim) || NotAfter(st.st_atim, st.st_ctim) ||
         now.tv_sec - st.st_atim.tv_sec >= kRelatimeMaxAge;
}

int TouchAtime(int fd, bool directory) {
  if (directory) {
    cow_store::UniqueFd dir(openat(fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!dir) return -errno;
    alignas(8) char buf[512];
    if (syscall(SYS_getdents64, dir.get(), buf, sizeof(buf)) < 0) return -errno;
    return 0;
  }
  cow_store::UniqueFd file(open(ProcPath(fd).path, O_RDONLY | O_NONBLOCK | O_CLOEXEC));
  if (!file) return -errno;
  char byte;
  if (pread(file.get(), &byte, 1, 0) < 0) return -errno;
  return 0;
}

}  // namespace vssfs::fs
