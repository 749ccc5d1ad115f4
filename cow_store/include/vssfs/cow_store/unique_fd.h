// UniqueFd: sole owner of a POSIX file descriptor; closes it on destruction.
//
// Move-only. Thread-safety: like an int; concurrent use of one object from
// several threads needs outside synchronisation (the descriptor itself may be
// used by any thread).
#ifndef VSSFS_COW_STORE_UNIQUE_FD_H_
#define VSSFS_COW_STORE_UNIQUE_FD_H_

#include <unistd.h>

#include <utility>

namespace vssfs::cow_store {

class UniqueFd {
 public:
  UniqueFd() = default;
  // Takes ownership of `fd` (may be -1 for "none").
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  UniqueFd(UniqueFd&& other) noexcept : fd_(other.release()) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    reset(other.release());
    return *this;
  }
  ~UniqueFd() { reset(); }

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  explicit operator bool() const { return valid(); }

  // Gives up ownership without closing.
  int release() { return std::exchange(fd_, -1); }
  // Closes the current descriptor (if any) and owns `fd`.
  void reset(int fd = -1) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }
  // Closes now and returns close(2)'s result (0 if there was nothing to
  // close); for callers that must see close errors.
  int Close() {
    const int fd = release();
    return fd >= 0 ? ::close(fd) : 0;
  }

 private:
  int fd_ = -1;
};

}  // namespace vssfs::cow_store

#endif  // VSSFS_COW_STORE_UNIQUE_FD_H_
