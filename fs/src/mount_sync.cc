#include "mount_sync.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <memory>

#include "helper_process.h"

namespace vssfs::fs {

using cow_store::Result;
using cow_store::Status;
using cow_store::UniqueFd;

namespace {

// The helper: descriptors 0 (requests) and 1 (replies) only. One byte in,
// one errno byte out (0 on success), until end of file.
void HelperMain(const char* mountpoint) {
  while (true) {
    char req;
    ssize_t n = read(0, &req, 1);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    int err = 0;
    const int fd = open(mountpoint, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
      err = errno;
    } else {
      if (syncfs(fd) != 0) err = errno;
      close(fd);
    }
    const unsigned char reply =
        static_cast<unsigned char>(err > 0 && err < 256 ? err : (err ? EIO : 0));
    if (write(1, &reply, 1) != 1) return;
  }
}

}  // namespace

Result<std::unique_ptr<MountSyncer>> MountSyncer::Start(const std::string& mountpoint) {
  int req[2], rep[2];
  if (pipe2(req, O_CLOEXEC) != 0) return Status::FromErrno(errno, "pipe");
  UniqueFd req_r(req[0]), req_w(req[1]);
  if (pipe2(rep, O_CLOEXEC) != 0) return Status::FromErrno(errno, "pipe");
  UniqueFd rep_r(rep[0]), rep_w(rep[1]);
  std::unique_ptr<MountSyncer> s(new MountSyncer());
  s->mountpoint_ = mountpoint;
  const char* path = s->mountpoint_.c_str();
  Result<pid_t> pid =
      ForkHelper(req_r.get(), rep_w.get(), /*keep_stderr=*/false, [path] { HelperMain(path); });
  if (!pid.ok()) return Status::FromErrno(pid.status().error(), "fork the syncfs helper");
  s->pid_ = pid.value();
  s->to_helper_ = std::move(req_w);
  s->from_helper_ = std::move(rep_r);
  return s;
}

MountSyncer::~MountSyncer() {
  to_helper_.reset();
  from_helper_.reset();
  if (pid_ > 0) ReapHelper(pid_);
}

Status MountSyncer::Sync() {
  std::lock_guard lock(mutex_);
  const char req = 's';
  if (write(to_helper_.get(), &req, 1) != 1) {
    return Status::FromErrno(errno ? errno : EIO, "syncfs helper of " + mountpoint_);
  }
  unsigned char reply = 0;
  ssize_t n;
  while ((n = read(from_helper_.get(), &reply, 1)) < 0 && errno == EINTR) {
  }
  if (n != 1) return Status::Error(EIO, "the syncfs helper of " + mountpoint_ + " is gone");
  if (reply == ENOSPC || reply == EDQUOT) {
    // Writeback failed: a write could not preserve its old blocks (the
    // store's filesystem is full) or the backing filesystem is full.
    return Status::FromErrno(reply,
                             "cannot flush the writes before the snapshot (the store or "
                             "the backing filesystem is full; delete snapshots to make "
                             "room): syncfs " +
                                 mountpoint_);
  }
  if (reply != 0) return Status::FromErrno(reply, "syncfs " + mountpoint_);
  return Status();
}

}  // namespace vssfs::fs
