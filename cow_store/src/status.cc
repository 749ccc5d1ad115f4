#include "vssfs/cow_store/status.h"

#include <cstring>

namespace vssfs::cow_store {

Status Status::FromErrno(int error, const std::string& what) {
  return Status(error, what + ": " + std::strerror(error));
}

}  // namespace vssfs::cow_store
