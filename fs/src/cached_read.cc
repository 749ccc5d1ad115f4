#include "cached_read.h"

#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>

namespace vssfs::fs {

ssize_t CachedRead(int fd, char* buf, size_t len, off_t off, bool* blocked) {
  *blocked = false;
  size_t done = 0;
  bool ask = true;  // RWF_NOWAIT not answered yet
  bool short_answer = false;
  while (done < len) {
    ssize_t n;
    if (ask) {
      iovec v{buf + done, len - done};
      n = preadv2(fd, &v, 1, off + static_cast<off_t>(done), RWF_NOWAIT);
      if (n < 0 && errno == EINTR) continue;
      ask = false;
      if (n < 0 && errno == EAGAIN) {
        *blocked = true;
        continue;
      }
      if (n < 0 && errno == EOPNOTSUPP) continue;
      short_answer = n > 0;
    } else {
      // After an answer to RWF_NOWAIT short of `len`: the rest was not
      // cached, or the file ends there (then this read returns 0).
      n = pread(fd, buf + done, len - done, off + static_cast<off_t>(done));
      if (n > 0 && short_answer) *blocked = true;
    }
    if (n < 0) {
      if (errno == EINTR) continue;
      return done > 0 ? static_cast<ssize_t>(done) : -errno;
    }
    if (n == 0) break;  // End of file.
    done += static_cast<size_t>(n);
  }
  return static_cast<ssize_t>(done);
}

}  // namespace vssfs::fs
