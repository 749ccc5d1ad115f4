// vssctl set ...: shadow copy sets (MS-FSRVP) over vssfs volumes; runs in
// the vssctl process and talks to the volumes' daemons (see sets.cc).
#ifndef VSSFS_SNAPSHOT_CTL_SRC_SETS_H_
#define VSSFS_SNAPSHOT_CTL_SRC_SETS_H_

#include <string>
#include <vector>

#include "vssfs/snapshot_ctl/control.h"

namespace vssfs::snapshot_ctl {

// args: {"set", SUBCOMMAND, ...}.
CommandResult RunSetCommand(const std::vector<std::string>& args, bool json);
std::string SetHelp();

}  // namespace vssfs::snapshot_ctl

#endif  // VSSFS_SNAPSHOT_CTL_SRC_SETS_H_
