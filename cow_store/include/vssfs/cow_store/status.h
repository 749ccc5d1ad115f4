// Status and Result<T>: the error currency of every vssfs module API.
//
// A Status is either OK or carries an errno value and a human-readable
// message that names what failed ("open /srv/share/.vssfs/lock: Permission
// denied"). No exception crosses a module boundary; functions that can fail
// return Status or Result<T>, both [[nodiscard]].
//
// Thread-safety: values; a const Status may be read from any thread.
#ifndef VSSFS_COW_STORE_STATUS_H_
#define VSSFS_COW_STORE_STATUS_H_

#include <string>
#include <utility>
#include <variant>

namespace vssfs::cow_store {

class [[nodiscard]] Status {
 public:
  Status() = default;  // OK.

  // An error with errno value `error` (must be > 0) and a message.
  static Status Error(int error, std::string message) { return Status(error, std::move(message)); }
  // An error built from errno as left by a failed system call: the message
  // is "<what>: <strerror(errno)>".
  static Status FromErrno(int error, const std::string& what);

  bool ok() const { return error_ == 0; }
  int error() const { return error_; }
  const std::string& message() const { return message_; }
  // "OK" or the message.
  std::string ToString() const { return ok() ? "OK" : message_; }

 private:
  Status(int error, std::string message) : error_(error), message_(std::move(message)) {}

  int error_ = 0;
  std::string message_;
};

// Either a value of type T or a non-OK Status.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}         // NOLINT: implicit by design.
  Result(Status status) : v_(std::move(status)) {}  // NOLINT

  bool ok() const { return std::holds_alternative<T>(v_); }
  // Precondition for value(): ok().
  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  // OK when ok(), else the error.
  Status status() const { return ok() ? Status() : std::get<Status>(v_); }

 private:
  std::variant<T, Status> v_;
};

}  // namespace vssfs::cow_store

#endif  // VSSFS_COW_STORE_STATUS_H_
