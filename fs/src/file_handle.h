// Backing file handles (name_to_handle_at(2)) as opaque strings: how the
// store records a file, and how InodeTable reopens a file whose descriptor
// it closed. Opening by handle needs CAP_DAC_READ_SEARCH.
//
// Thread-safety: plain functions without shared state.
#ifndef VSSFS_FS_SRC_FILE_HANDLE_H_
#define VSSFS_FS_SRC_FILE_HANDLE_H_

#include <string>

#include "vssfs/cow_store/unique_fd.h"

namespace vssfs::fs {

// The handle of `name` relative to `dir_fd` (flags as name_to_handle_at's:
// AT_EMPTY_PATH names dir_fd itself). Returns 0 or a negative errno.
int HandleAt(int dir_fd, const char* name, int flags, std::string* out);
// Opens the object a handle names on the filesystem of `mount_fd` (not an
// O_PATH descriptor); invalid UniqueFd and errno set on failure (ESTALE once
// the object is gone, EPERM without CAP_DAC_READ_SEARCH).
cow_store::UniqueFd OpenByHandle(int mount_fd, const std::string& handle, int flags);

}  // namespace vssfs::fs

#endif  // VSSFS_FS_SRC_FILE_HANDLE_H_
