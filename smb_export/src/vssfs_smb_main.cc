// vssfs-smb: the shell_snap check-path, create and delete commands of a
// Samba share exporting a vssfs volume (see shell_snap.h, docs/SAMBA.md).
#include <unistd.h>

#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

#include "vssfs/smb_export/shell_snap.h"
#include "vssfs/smb_export/smb_conf.h"

int main(int argc, char** argv) {
  vssfs::smb_export::ShellSnapOptions o;
  if (const char* dir = std::getenv("VSSFS_STATE_DIR"); dir != nullptr && *dir != '\0') {
    o.state_dir = dir;
  }
  std::vector<std::string> args;
  std::string lock_dir;
  int interval_ms = 100;
  int64_t sequence_timeout_s = 180;  // Samba's default "fss:sequence timeout".
  vssfs::smb_export::SmbConfOptions conf;
  std::string conf_state;
  bool state_dir_given = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--port" && i + 1 < argc) {
      conf.port = std::atoi(argv[++i]);
      if (conf.port <= 0 || conf.port > 65535) {
        std::cerr << "vssfs-smb: --port must be 1..65535\n";
        return 2;
      }
    } else if (a == "--samba-state-dir" && i + 1 < argc) {
      conf_state = argv[++i];
    } else if (a == "--loopback") {
      conf.loopback_only = true;
    } else if (a == "--samba-lock-dir" && i + 1 < argc) {
      lock_dir = argv[++i];
    } else if (a == "--interval-ms" && i + 1 < argc) {
      interval_ms = std::atoi(argv[++i]);
      if (interval_ms < 10 || interval_ms > 60000) {
        std::cerr << "vssfs-smb: --interval-ms must be 10..60000\n";
        return 2;
      }
    } else if (a == "--sequence-timeout" && i + 1 < argc) {
      char* end = nullptr;
      sequence_timeout_s = std::strtoll(argv[++i], &end, 10);
      if (end == argv[i] || *end != '\0' || sequence_timeout_s < 0 || sequence_timeout_s > 86400) {
        std::cerr << "vssfs-smb: --sequence-timeout must be 0..86400 seconds\n";
        return 2;
      }
    } else if (a == "--vssctl" && i + 1 < argc) {
      o.vssctl = argv[++i];
    } else if (a == "--state-dir" && i + 1 < argc) {
      o.state_dir = argv[++i];
      state_dir_given = true;
    } else if (a == "--strict") {
      o.strict = true;
    } else if (a == "-h" || a == "--help") {
      std::cout
          << "Usage: vssfs-smb [--vssctl PATH] [--state-dir DIR] [--strict] COMMAND\n"
             "       vssctl smb [--state-dir DIR] [--strict] COMMAND   (the same)\n"
             "\n"
             "The vfs_shell_snap commands of a Samba share on a vssfs volume:\n"
             "  check-path SHARE_PATH        the share is on a vssfs volume (exit 0); it is\n"
             "                               remembered for the set being built\n"
             "  create SHARE_PATH            prints the path of the share's shadow copy; all\n"
             "                               shares announced on one volume share one snapshot\n"
             "  delete BASE_PATH SNAP_PATH   the exposure is gone; the last one of a snapshot\n"
             "                               freezes it and leaves it to retention\n"
             "  config [--port P] [--state-dir DIR] [--loopback] NAME=PATH...\n"
             "                               print an smb.conf exporting each PATH as [NAME]\n"
             "                               (Remote VSS) and [NAME-versions] (Previous\n"
             "                               Versions); with --state-dir (or --samba-state-dir)\n"
             "                               all Samba state and vssfs-smb's goes under DIR\n"
             "                               (beside a system Samba)\n"
             "  watch --samba-lock-dir DIR [--interval-ms N] [--sequence-timeout S]\n"
             "                               freeze the copies of every set Samba's FSRVP\n"
             "                               server records as Recovered, and retire those of\n"
             "                               sets Samba dropped unexposed after S seconds (its\n"
             "                               'fss:sequence timeout', default 180; runs until\n"
             "                               SIGTERM; DIR is smb.conf's lock directory)\n"
             "--strict refuses shares failing vssctl check. State: --state-dir (default\n"
             "$VSSFS_STATE_DIR or /var/lib/vssfs)/smb.state. Exit status 0 success, 1 failed,\n"
             "2 usage.\n";
      return 0;
    } else {
      args.push_back(a);
    }
  }
  if (!args.empty() && args[0] == "config") {
    if (args.size() < 2) {
      std::cerr << "vssfs-smb: usage: config [--port P] [--state-dir DIR] [--loopback] "
                   "NAME=PATH...\n";
      return 2;
    }
    // For config, --state-dir is where the generated Samba keeps its state.
    if (conf_state.empty() && state_dir_given) conf_state = o.state_dir;
    if (!conf_state.empty() && conf_state[0] != '/') {
      std::cerr << "vssfs-smb: config: the state directory must be an absolute path\n";
      return 2;
    }
    std::vector<std::pair<std::string, std::string>> shares;
    for (size_t i = 1; i < args.size(); ++i) {
      const size_t eq = args[i].find('=');
      if (eq == std::string::npos) {
        std::cerr << "vssfs-smb: config: '" << args[i] << "' is not NAME=PATH\n";
        return 2;
      }
      shares.emplace_back(args[i].substr(0, eq), args[i].substr(eq + 1));
    }
    char self[4096];
    const ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n > 0) conf.vssfs_smb.assign(self, static_cast<size_t>(n));
    conf.vssctl = o.vssctl;
    conf.state_dir = conf_state;
    std::vector<std::string> volumes;
    std::string error;
    if (!vssfs::smb_export::VssfsVolumes(o.vssctl, &volumes, &error)) {
      std::cerr << "vssfs-smb: " << error << "\n";
      return 1;
    }
    const std::string text = vssfs::smb_export::SmbConf(conf, shares, volumes, &error);
    if (text.empty()) {
      std::cerr << "vssfs-smb: config: " << error << "\n";
      return 2;
    }
    std::cout << text;
    return 0;
  }
  if (!args.empty() && args[0] == "watch") {
    if (args.size() != 1 || lock_dir.empty()) {
      std::cerr << "vssfs-smb: usage: watch --samba-lock-dir DIR [--interval-ms N] "
                   "[--sequence-timeout S]\n";
      return 2;
    }
    return vssfs::smb_export::WatchSamba(o, lock_dir, interval_ms, sequence_timeout_s, std::cerr);
  }
  return vssfs::smb_export::RunShellSnap(o, args, std::cout, std::cerr);
}
