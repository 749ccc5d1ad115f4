// Helpers for unit tests of the inode table and its users: stat records of
// made-up inodes, and descriptors to stand for their O_PATH ones.
//
// Thread-safety: the functions are pure; call them from any thread.
#ifndef VSSFS_TESTS_FS_FAKE_INODES_H_
#define VSSFS_TESTS_FS_FAKE_INODES_H_

#include <fcntl.h>
#include <sys/stat.h>

#include "vssfs/cow_store/unique_fd.h"

namespace vssfs::testing {

// A stat record of inode number `ino` of type `type` (mode 0644).
inline struct stat StatWithIno(ino_t ino, mode_t type = S_IFREG) {
  struct stat st {};
  st.st_ino = ino;
  st.st_mode = type | 0644;
  return st;
}

// Some descriptor (of "/", O_PATH) for the table to own.
inline cow_store::UniqueFd SomeFd() { return cow_store::UniqueFd(open("/", O_PATH | O_CLOEXEC)); }

}  // namespace vssfs::testing

#endif  // VSSFS_TESTS_FS_FAKE_INODES_H_
