// vssfs-smb: the shell_snap check-path, create and delete commands of a
// Samba share exporting a vssfs volume (see shell_snap.h, docs/SAMBA.md).
#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

#include "vssfs/smb_export/shell_snap.h"

int main(int argc, char** argv) {
  vssfs::smb_export::ShellSnapOptions o;
  if (const char* dir = std::getenv("VSSFS_STATE_DIR"); dir != nullptr && *dir != '\0') {
    o.state_dir = dir;
  }
  std::vector<std::string> args;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--vssctl" && i + 1 < argc) {
      o.vssctl = argv[++i];
    } else if (a == "--state-dir" && i + 1 < argc) {
      o.state_dir = argv[++i];
    } else if (a == "--strict") {
      o.strict = true;
    } else if (a == "-h" || a == "--help") {
      std::cout
          << "Usage: vssfs-smb [--vssctl PATH] [--state-dir DIR] [--strict] COMMAND\n"
             "\n"
             "The vfs_shell_snap commands of a Samba share on a vssfs volume:\n"
             "  check-path SHARE_PATH        the share is on a vssfs volume (exit 0); it is\n"
             "                               remembered for the set being built\n"
             "  create SHARE_PATH            prints the path of the share's shadow copy; all\n"
             "                               shares announced on one volume share one snapshot\n"
             "  delete BASE_PATH SNAP_PATH   the exposure is gone; the last one of a snapshot\n"
             "                               freezes it and leaves it to retention\n"
             "--strict refuses shares failing vssctl check. State: --state-dir (default\n"
             "$VSSFS_STATE_DIR or /var/lib/vssfs)/smb.state. Exit status 0 success, 1 failed,\n"
             "2 usage.\n";
      return 0;
    } else {
      args.push_back(a);
    }
  }
  return vssfs::smb_export::RunShellSnap(o, args, std::cout, std::cerr);
}
