#include "helper_process.h"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>

#include "log.h"

namespace vssfs::fs {

using cow_store::Result;
using cow_store::Status;

Result<pid_t> ForkHelper(int in, int out, bool keep_stderr, const std::function<void()>& body) {
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) return Status::FromErrno(errno, "fork");
  if (pid > 0) return pid;
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != parent) _exit(0);  // The daemon died before the line above.
  if (dup2(in, 0) < 0) _exit(1);
  if (out >= 0 ? dup2(out, 1) < 0 : close(1) != 0 && errno != EBADF) _exit(1);
  // Its descriptor is closed below; syslog would otherwise write to (and
  // then close) whatever reuses the number.
  LogDropSyslogConnection();
  syscall(SYS_close_range, keep_stderr ? 3U : 2U, ~0U, 0U);
  body();
  _exit(0);
}

void ReapHelper(pid_t pid) {
  int status;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
}

}  // namespace vssfs::fs
