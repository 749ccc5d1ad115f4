#include "file_handle.h"

#include <fcntl.h>

#include <cerrno>
#include <cstring>

namespace vssfs::fs {

using cow_store::UniqueFd;

int HandleAt(int dir_fd, const char* name, int flags, std::string* out) {
  struct {
    file_handle fh;
    unsigned char bytes[MAX_HANDLE_SZ];
  } buf;
  buf.fh.handle_bytes = MAX_HANDLE_SZ;
  int mount_id = 0;
  if (name_to_handle_at(dir_fd, name, &buf.fh, &mount_id, flags) != 0) return -errno;
  out->assign(reinterpret_cast<const char*>(&buf.fh.handle_type), sizeof buf.fh.handle_type);
  out->append(reinterpret_cast<const char*>(buf.fh.f_handle), buf.fh.handle_bytes);
  return 0;
}

UniqueFd OpenByHandle(int mount_fd, const std::string& handle, int flags) {
  if (handle.size() < sizeof(int) || handle.size() - sizeof(int) > MAX_HANDLE_SZ) {
    errno = ESTALE;
    return UniqueFd();
  }
  struct {
    file_handle fh;
    unsigned char bytes[MAX_HANDLE_SZ];
  } buf;
  std::memcpy(&buf.fh.handle_type, handle.data(), sizeof(int));
  buf.fh.handle_bytes = static_cast<unsigned>(handle.size() - sizeof(int));
  std::memcpy(buf.fh.f_handle, handle.data() + sizeof(int), buf.fh.handle_bytes);
  return UniqueFd(open_by_handle_at(mount_fd, &buf.fh, flags | O_CLOEXEC));
}

}  // namespace vssfs::fs
