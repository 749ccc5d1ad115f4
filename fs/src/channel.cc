#include "channel.h"

#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <linux/fuse.h>
#include <sys/uio.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <memory>

namespace vssfs::fs {
namespace {

std::atomic<bool> g_want_killpriv_v2{false};
std::atomic<bool> g_kernel_offers_killpriv_v2{false};
std::atomic<uint64_t> g_init_unique{0};
std::atomic<bool> g_init_pending{true};
std::atomic<bool> g_killpriv_v2{false};
thread_local bool t_kill_suidgid = false;

// A WRITE request's payload follows the in-header and fuse_write_in. The
// hook reads everything after those 80 bytes into a page-aligned buffer of
// its own, so a WRITE's payload lands on a page boundary (direct I/O can
// then take it as it is); for every other request it moves the bytes back
// behind the header in libfuse's buffer.
constexpr size_t kWriteHeader = sizeof(fuse_in_header) + sizeof(fuse_write_in);

struct FreeDeleter {
  void operator()(char* p) const { std::free(p); }
};
thread_local std::unique_ptr<char, FreeDeleter> t_scratch;
thread_local size_t t_scratch_size = 0;
thread_local const char* t_payload = nullptr;

ssize_t ReadHook(int fd, void* buf, size_t len, void*) {
  t_kill_suidgid = false;
  t_payload = nullptr;
  ssize_t n;
  if (len <= kWriteHeader) {
    n = ::read(fd, buf, len);
  } else {
    if (t_scratch_size < len - kWriteHeader) {
      void* p = nullptr;
      if (posix_memalign(&p, 4096, len - kWriteHeader) != 0) {
        errno = ENOMEM;
        return -1;
      }
      t_scratch.reset(static_cast<char*>(p));
      t_scratch_size = len - kWriteHeader;
    }
    iovec iov[2] = {{buf, kWriteHeader}, {t_scratch.get(), len - kWriteHeader}};
    n = ::readv(fd, iov, 2);
  }
  if (n < static_cast<ssize_t>(sizeof(fuse_in_header))) return n;
  fuse_in_header in;
  std::memcpy(&in, buf, sizeof in);
  if (static_cast<size_t>(n) > kWriteHeader) {
    if (in.opcode == FUSE_WRITE) {
      t_payload = t_scratch.get();
    } else {
      std::memcpy(static_cast<char*>(buf) + kWriteHeader, t_scratch.get(),
                  static_cast<size_t>(n) - kWriteHeader);
    }
  }
  const char* arg = static_cast<const char*>(buf) + sizeof in;
  const size_t arglen = static_cast<size_t>(n) - sizeof in;
  switch (in.opcode) {
    case FUSE_WRITE:
      if (arglen >= sizeof(fuse_write_in)) {
        fuse_write_in w;
        std::memcpy(&w, arg, sizeof w);
        t_kill_suidgid = (w.write_flags & FUSE_WRITE_KILL_SUIDGID) != 0;
      }
      break;
    case FUSE_OPEN:
      if (arglen >= sizeof(fuse_open_in)) {
        fuse_open_in o;
        std::memcpy(&o, arg, sizeof o);
        t_kill_suidgid = (o.open_flags & FUSE_OPEN_KILL_SUIDGID) != 0;
      }
      break;
    case FUSE_INIT:
      if (arglen >= 16) {
        uint32_t flags;
        std::memcpy(&flags, arg + offsetof(fuse_init_in, flags), sizeof flags);
        g_kernel_offers_killpriv_v2 = (flags & FUSE_HANDLE_KILLPRIV_V2) != 0;
        g_init_unique = in.unique;
      }
      break;
    default:
      break;
  }
  return n;
}

ssize_t WritevHook(int fd, iovec* iov, int count, void*) {
  if (g_init_pending.load(std::memory_order_relaxed) && count >= 2 &&
      iov[0].iov_len >= sizeof(fuse_out_header)) {
    fuse_out_header out;
    std::memcpy(&out, iov[0].iov_base, sizeof out);
    if (out.unique == g_init_unique.load() && out.unique != 0) {
      g_init_pending = false;
      if (out.error == 0 && g_want_killpriv_v2 && g_kernel_offers_killpriv_v2 &&
          iov[1].iov_len >= offsetof(fuse_init_out, flags) + sizeof(uint32_t)) {
        char* arg = static_cast<char*>(iov[1].iov_base);
        uint32_t flags;
        std::memcpy(&flags, arg + offsetof(fuse_init_out, flags), sizeof flags);
        flags |= FUSE_HANDLE_KILLPRIV_V2;
        std::memcpy(arg + offsetof(fuse_init_out, flags), &flags, sizeof flags);
        g_killpriv_v2 = true;
      }
    }
  }
  return ::writev(fd, iov, count);
}

// Splice hooks are plain splice(2); vssfs turns splice reception off (see
// channel.h), so only replies may use them.
ssize_t SpliceHook(int fdin, off_t* offin, int fdout, off_t* offout, size_t len, unsigned int flags,
                   void*) {
  return ::splice(fdin, offin, fdout, offout, len, flags);
}

}  // namespace

int InstallChannel(fuse_session* se, bool killpriv_v2) {
  g_want_killpriv_v2 = killpriv_v2;
  static const fuse_custom_io kIo = {WritevHook, ReadHook, SpliceHook, SpliceHook};
  return fuse_session_custom_io(se, &kIo, fuse_session_fd(se));
}

bool KillprivV2Negotiated() { return g_killpriv_v2; }

bool RequestKillsSuidgid() { return t_kill_suidgid; }

const char* WritePayload() { return t_payload; }

}  // namespace vssfs::fs
