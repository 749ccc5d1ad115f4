// Runs vssctl against a test mount (fs_tests defines VSSFS_VSSCTL_BINARY).
#ifndef VSSFS_TESTS_FS_VSSCTL_H_
#define VSSFS_TESTS_FS_VSSCTL_H_

#include <string>
#include <vector>

#include "test_support.h"

namespace vssfs::testing {

// `vssctl -m MNT ARGS...`: its output (stdout and stderr); *rc its exit status.
inline std::string Vssctl(const std::string& mnt, std::vector<std::string> args, int* rc) {
  args.insert(args.begin(), {VSSFS_VSSCTL_BINARY, "-m", mnt});
  std::string out;
  *rc = RunCommand(args, &out);
  return out;
}

}  // namespace vssfs::testing

#endif  // VSSFS_TESTS_FS_VSSCTL_H_
