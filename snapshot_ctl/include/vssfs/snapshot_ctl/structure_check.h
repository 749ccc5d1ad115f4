// The directory structure rules a share must meet to be shadow-copied the
// way Remote VSS expects (the ONTAP rules, ../shared/BRIEF.md):
//
//   type   only directories and regular files (no symlinks, devices, fifos,
//          sockets);
//   link   no hard links (a file reached by two names);
//   mount  no mount points (junctions) below the share;
//   depth  nothing deeper than the configured shadow-copy directory depth
//          (default 5) below the share root;
//   root   the share root holds only VM directories and VM files.
//
// "All files of a VM in one share" cannot be seen from one share and is not
// checked.
//
// Thread-safety: stateless functions.
#ifndef VSSFS_SNAPSHOT_CTL_STRUCTURE_CHECK_H_
#define VSSFS_SNAPSHOT_CTL_STRUCTURE_CHECK_H_

#include <string>
#include <vector>

#include "vssfs/cow_store/status.h"

namespace vssfs::snapshot_ctl {

inline constexpr int kDefaultShadowCopyDepth = 5;

struct StructureProblem {
  std::string path;  // Relative to the share root.
  std::string rule;  // "type", "link", "mount", "depth", "root".
  std::string what;  // What is wrong.
  std::string hint;  // How to fix it.
};

// Walks `share` (without following symlinks) and reports every path that
// breaks a rule. Errors: errno of opening the share or reading a directory.
cow_store::Result<std::vector<StructureProblem>> CheckStructure(const std::string& share,
                                                                int depth);

// Whether `name` looks like a VM file (virtual disks, VM configuration and
// state, database files): allowed at a share root.
bool IsVmFileName(const std::string& name);

}  // namespace vssfs::snapshot_ctl

#endif  // VSSFS_SNAPSHOT_CTL_STRUCTURE_CHECK_H_
