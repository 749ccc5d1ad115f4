// Helpers for unit tests of the inode table and its users: stat records of
// made-up inodes, descriptors to stand for their O_PATH ones, and real
// files where those will not do.
//
// Thread-safety: the functions are pure; call them from any thread. A
// RealFiles is used by one thread.
#ifndef VSSFS_TESTS_FS_FAKE_INODES_H_
#define VSSFS_TESTS_FS_FAKE_INODES_H_

#include <fcntl.h>
#include <sys/stat.h>

#include <string>

#include "test_support.h"
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

// Real files in a private directory, for what needs a backing filesystem
// (file handles, link counts): their O_PATH descriptors and stat records.
class RealFiles {
 public:
  RealFiles() : mount_fd_(open(dir_.path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC)) {}
  // A descriptor on the directory's filesystem to open handles on.
  int mount_fd() const { return mount_fd_.get(); }
  // The directory, as the root of a table.
  cow_store::UniqueFd RootFd(struct stat* st) const {
    cow_store::UniqueFd fd(open(dir_.path().c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
    fstat(fd.get(), st);
    return fd;
  }
  // Creates file `name` (empty) if missing; its O_PATH descriptor and stat.
  cow_store::UniqueFd Make(const std::string& name, struct stat* st) const {
    cow_store::UniqueFd made(open(Path(name).c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0644));
    return Open(name, st);
  }
  cow_store::UniqueFd Open(const std::string& name, struct stat* st) const {
    cow_store::UniqueFd fd(open(Path(name).c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC));
    if (fstat(fd.get(), st) != 0) *st = {};
    return fd;
  }
  std::string Path(const std::string& name) const { return dir_.Sub(name); }

 private:
  TempDir dir_;
  cow_store::UniqueFd mount_fd_;
};

}  // namespace vssfs::testing

#endif  // VSSFS_TESTS_FS_FAKE_INODES_H_
