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

// Fires the FSRVP message sequence timer without a vssctl call: when the
// state file exists and the timer has expired, aborts the sets it covers and
// deletes their snapshots (through the daemons' sockets). Returns a line per
// aborted set ("" if none). Called by every daemon about once a second from
// a thread of its own (never the control thread, which must stay free to
// serve the deletions).
std::string SweepExpiredSets();

}  // namespace vssfs::snapshot_ctl

#endif  // VSSFS_SNAPSHOT_CTL_SRC_SETS_H_
