// vssctl: the command-line client of vssfs daemons (see `vssctl --help`).
#include <limits.h>
#include <stdlib.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "commands.h"
#include "restore.h"
#include "sets.h"
#include "vssfs/cow_store/store.h"
#include "vssfs/cow_store/store_dir.h"
#include "vssfs/snapshot_ctl/control.h"
#include "vssfs/snapshot_ctl/structure_check.h"

namespace vssfs::snapshot_ctl {
namespace {

int Usage(const std::string& message) {
  std::cerr << "vssctl: " << message << " (see vssctl --help)\n";
  return kExitUsage;
}

int OfflineFsck(const std::string& dir, bool repair, bool json) {
  cow_store::Result<cow_store::StoreDir> sd = cow_store::StoreDir::Open(dir);
  if (!sd.ok()) {
    std::cerr << "vssctl: " << sd.status().message() << "\n";
    return sd.status().error() == EBUSY ? kExitFailed : ExitCodeFor(sd.status().error());
  }
  cow_store::Result<std::unique_ptr<cow_store::Store>> store =
      cow_store::Store::Open(sd.value().fd(), sd.value().path(), {});
  if (!store.ok()) {
    std::cerr << "vssctl: " << store.status().message() << "\n";
    return kExitFailed;
  }
  cow_store::Result<cow_store::FsckReport> report = store.value()->Fsck(
      repair, [](const std::string& line) { std::cerr << "fsck: " << line << "\n"; });
  if (!report.ok()) {
    std::cerr << "vssctl: " << report.status().message() << "\n";
    return kExitFailed;
  }
  std::cout << FsckText(report.value(), json);
  const bool fixed = repair && report.value().repairs.size() >= report.value().problems.size();
  return report.value().clean() || fixed ? kExitOk : kExitProblems;
}

// vssctl restore SNAPSHOT PATH... [--to DIR]
// vssctl rollback SNAPSHOT PATH... [--no-safety-snapshot]
int RestoreCommand(const std::string& mount_opt, const std::vector<std::string>& args, bool json) {
  const bool rollback = args[0] == "rollback";
  std::string to;
  bool safety = rollback;
  std::vector<std::string> paths;
  for (size_t i = 2; i < args.size(); ++i) {
    if (!rollback && args[i] == "--to" && i + 1 < args.size()) {
      to = args[++i];
    } else if (rollback && args[i] == "--no-safety-snapshot") {
      safety = false;
    } else if (!args[i].empty() && args[i][0] == '-') {
      return Usage(args[0] + ": unknown option '" + args[i] + "'");
    } else {
      paths.push_back(args[i]);
    }
  }
  if (args.size() < 2 || paths.empty()) {
    return Usage(rollback ? "usage: rollback SNAPSHOT PATH... [--no-safety-snapshot]"
                          : "usage: restore SNAPSHOT PATH... [--to DIR]");
  }
  std::string json_items;
  for (const std::string& path : paths) {
    // The live path may be gone: resolve its directory.
    const size_t slash = path.rfind('/');
    const std::string dir =
        slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
    const std::string base = slash == std::string::npos ? path : path.substr(slash + 1);
    char real_dir[PATH_MAX];
    if (realpath(dir.c_str(), real_dir) == nullptr) {
      std::cerr << "vssctl: " << dir << ": " << std::strerror(errno) << "\n";
      return kExitNotFound;
    }
    std::string live = std::string(real_dir) + (base.empty() || base == "." ? "" : "/" + base);
    std::string mount = mount_opt;
    if (mount.empty()) {
      mount = VolumeContaining(live);
    } else {
      char rm[PATH_MAX];
      if (realpath(mount.c_str(), rm) != nullptr) mount = rm;
    }
    if (mount.empty() || (live != mount && live.rfind(mount + "/", 0) != 0)) {
      std::cerr << "vssctl: " << live << " is not on a vssfs volume\n";
      return kExitNotFound;
    }
    const std::string rel = live == mount ? "" : live.substr(mount.size() + 1);
    cow_store::Result<CommandResult> shown =
        CallDaemon(ControlSocketPath(mount), {"snapshot", "show", args[1], "--json"});
    if (!shown.ok()) {
      std::cerr << "vssctl: no vssfs daemon serves " << mount << "\n";
      return kExitNotFound;
    }
    if (shown.value().exit_code != 0) {
      std::cerr << shown.value().err;
      return shown.value().exit_code;
    }
    const std::string& sj = shown.value().out;
    const size_t at = sj.find("\"name\":\"");
    const std::string name = sj.substr(at + 8, sj.find('"', at + 8) - at - 8);
    const std::string root = mount + "/.snapshot/" + name;
    std::string target = live;
    if (!to.empty()) {
      char rt[PATH_MAX];
      if (realpath(to.c_str(), rt) == nullptr) {
        std::cerr << "vssctl: " << to << ": " << std::strerror(errno) << "\n";
        return kExitNotFound;
      }
      target = std::string(rt) + "/" + (rel.empty() ? name : rel.substr(rel.rfind('/') + 1));
    }
    std::string safety_name;
    if (safety) {
      // The state being rolled back stays reachable (and the rollback
      // undoable): one O(1) snapshot first.
      cow_store::Result<CommandResult> made =
          CallDaemon(ControlSocketPath(mount), {"snapshot", "create", "--json"});
      if (!made.ok() || made.value().exit_code != 0) {
        std::cerr << "vssctl: rollback: cannot take the safety snapshot: "
                  << (made.ok() ? made.value().err : made.status().message() + "\n");
        return kExitFailed;
      }
      const std::string& mj = made.value().out;
      const size_t n = mj.find("\"name\":\"");
      safety_name = mj.substr(n + 8, mj.find('"', n + 8) - n - 8);
    }
    cow_store::Result<RestoreStats> st =
        rollback ? Rollback(root, rel, target, mount) : Restore(root, rel, target);
    if (!st.ok()) {
      std::cerr << "vssctl: " << args[0] << " " << live << " from " << name << ": "
                << st.status().message() << "\n";
      return ExitCodeFor(st.status().error()) == kExitOk ? kExitFailed
                                                         : ExitCodeFor(st.status().error());
    }
    if (json) {
      if (!json_items.empty()) json_items += ',';
      json_items += "{\"snapshot\":" + JsonString(name) +
                    ",\"from\":" + JsonString(root + (rel.empty() ? "" : "/" + rel)) +
                    ",\"to\":" + JsonString(target) +
                    ",\"files\":" + std::to_string(st.value().files) +
                    ",\"directories\":" + std::to_string(st.value().directories) +
                    ",\"bytes\":" + std::to_string(st.value().bytes) +
                    (rollback ? ",\"removed\":" + std::to_string(st.value().removed) +
                                    ",\"safety_snapshot\":" + JsonString(safety_name)
                              : std::string()) +
                    "}";
    } else if (rollback) {
      std::cout << "rolled " << target << " back to snapshot " << name << ": " << st.value().files
                << " files and " << st.value().directories << " directories checked, "
                << HumanBytes(st.value().bytes) << " written, " << st.value().removed
                << " entries removed"
                << (safety_name.empty() ? "" : "; the state before is snapshot " + safety_name)
                << "\n";
    } else {
      std::cout << "restored " << target << " from snapshot " << name << ": " << st.value().files
                << " files, " << st.value().directories << " directories, "
                << HumanBytes(st.value().bytes) << "\n";
    }
  }
  if (json) std::cout << "[" << json_items << "]\n";
  return kExitOk;
}

// vssctl smb ...: the Samba integration, vssfs-smb (smb_export calls this
// CLI, so it is a separate binary, run with this vssctl). It is looked for
// in $VSSFS_SMB, beside this binary, in the build tree, then on the PATH.
int SmbCommand(const std::vector<std::string>& args) {
  std::string self;
  char buf[PATH_MAX];
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n > 0) self.assign(buf, static_cast<size_t>(n));
  std::vector<std::string> candidates;
  if (const char* env = std::getenv("VSSFS_SMB"); env != nullptr && *env != '\0') {
    candidates.push_back(env);
  }
  if (!self.empty()) {
    const std::string dir = self.substr(0, self.rfind('/'));
    candidates.push_back(dir + "/vssfs-smb");
    candidates.push_back(dir + "/../smb_export/vssfs-smb");
  }
  std::string smb = "vssfs-smb";  // The PATH's.
  for (const std::string& c : candidates) {
    if (access(c.c_str(), X_OK) == 0) {
      smb = c;
      break;
    }
  }
  std::vector<std::string> argv_s = {smb};
  if (!self.empty()) argv_s.insert(argv_s.end(), {"--vssctl", self});
  argv_s.insert(argv_s.end(), args.begin() + 1, args.end());
  std::vector<char*> argv;
  for (std::string& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);
  execvp(argv[0], argv.data());
  std::cerr << "vssctl: cannot run " << smb
            << " (the Samba integration, vssfs-smb): " << std::strerror(errno) << "\n";
  return kExitFailed;
}

int Main(int argc, char** argv) {
  std::string mount;
  bool json = false;
  std::vector<std::string> args;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (args.empty() && (a == "-m" || a == "--mount")) {
      if (i + 1 >= argc) return Usage(a + " needs a mount point");
      mount = argv[++i];
    } else if (args.empty() && a.rfind("--mount=", 0) == 0) {
      mount = a.substr(8);
    } else if (a == "--json") {
      json = true;
    } else if (args.empty() && (a == "-V" || a == "--version")) {
      std::cout << "vssctl " << VSSFS_VERSION << "\n";
      return kExitOk;
    } else {
      args.push_back(a);
    }
  }
  if (!args.empty() && args[0] == "smb") return SmbCommand(args);
  if (args.empty() || WantsHelp(args)) {
    std::vector<std::string> words;
    for (const std::string& a : args) {
      if (!a.empty() && a[0] != '-') words.push_back(a);
    }
    std::cout << HelpFor(words);
    return args.empty() && !WantsHelp(args) ? kExitUsage : kExitOk;
  }
  if (args[0] == "check") {
    int depth = kDefaultShadowCopyDepth;
    std::vector<std::string> paths;
    for (size_t i = 1; i < args.size(); ++i) {
      if (args[i] == "--depth" && i + 1 < args.size()) {
        depth = std::atoi(args[++i].c_str());
        if (depth < 1 || depth > 64) return Usage("check: --depth must be 1..64");
      } else if (!args[i].empty() && args[i][0] == '-') {
        return Usage("check: unknown option '" + args[i] + "'");
      } else {
        paths.push_back(args[i]);
      }
    }
    if (paths.empty()) return Usage("check: PATH missing");
    int rc = kExitOk;
    std::string json_items;
    for (const std::string& p : paths) {
      cow_store::Result<std::vector<StructureProblem>> r = CheckStructure(p, depth);
      if (!r.ok()) {
        std::cerr << "vssctl: " << r.status().message() << "\n";
        return ExitCodeFor(r.status().error()) == kExitOk ? kExitFailed
                                                          : ExitCodeFor(r.status().error());
      }
      if (!r.value().empty()) rc = kExitProblems;
      for (const StructureProblem& pr : r.value()) {
        if (json) {
          if (!json_items.empty()) json_items += ',';
          json_items += "{\"share\":" + JsonString(p) + ",\"path\":" + JsonString(pr.path) +
                        ",\"rule\":" + JsonString(pr.rule) + ",\"problem\":" + JsonString(pr.what) +
                        ",\"hint\":" + JsonString(pr.hint) + "}";
        } else {
          std::cout << p << "/" << pr.path << ": " << pr.rule << ": " << pr.what << " (" << pr.hint
                    << ")\n";
        }
      }
      if (!json && r.value().empty()) {
        std::cout << p << ": passes the structure check (depth " << depth << ")\n";
      }
    }
    if (json) std::cout << "[" << json_items << "]\n";
    return rc;
  }
  if (args[0] == "restore" || args[0] == "rollback") {
    return RestoreCommand(mount, args, json);
  }
  if (args[0] == "set") {
    CommandResult r = RunSetCommand(args, json);
    std::cout << r.out;
    std::cerr << r.err;
    return r.exit_code;
  }
  if (args[0] == "mounts") {
    std::vector<std::string> mounts = VssfsMounts();
    if (json) {
      std::cout << "[";
      for (size_t i = 0; i < mounts.size(); ++i)
        std::cout << (i ? "," : "") << JsonString(mounts[i]);
      std::cout << "]\n";
    } else {
      for (const std::string& m : mounts) std::cout << m << "\n";
    }
    return kExitOk;
  }
  if (args[0] == "fsck") {
    bool repair = false;
    std::string store;
    for (size_t i = 1; i < args.size(); ++i) {
      if (args[i] == "--repair") {
        repair = true;
      } else if (args[i] == "--store" && i + 1 < args.size()) {
        store = args[++i];
      } else {
        return Usage("fsck: unexpected argument '" + args[i] + "'");
      }
    }
    if (!store.empty()) return OfflineFsck(store, repair, json);
  }
  if (mount.empty()) {
    std::vector<std::string> mounts = VssfsMounts();
    if (mounts.empty()) {
      std::cerr << "vssctl: no vssfs volume is mounted\n";
      return kExitNotFound;
    }
    if (mounts.size() > 1) {
      std::cerr << "vssctl: several vssfs volumes are mounted; choose one with -m:\n";
      for (const std::string& m : mounts) std::cerr << "  " << m << "\n";
      return kExitUsage;
    }
    mount = mounts[0];
  }
  char resolved[PATH_MAX];
  if (realpath(mount.c_str(), resolved) == nullptr) {
    std::cerr << "vssctl: " << mount << ": " << std::strerror(errno) << "\n";
    return kExitNotFound;
  }
  if (json) args.push_back("--json");
  if (args.size() >= 2 && args[0] == "snapshot" && args[1] == "create") {
    // --files LIST is read here (the caller's files and directory) and
    // sent as one --file per path.
    for (size_t i = 2; i < args.size(); ++i) {
      if (args[i] != "--files") continue;
      if (i + 1 >= args.size()) return Usage("--files needs a LIST file");
      cow_store::Result<std::vector<std::string>> files = ReadFileList(args[i + 1], "");
      if (!files.ok()) {
        std::cerr << "vssctl: " << files.status().message() << "\n";
        return files.status().error() == EINVAL ? kExitUsage : kExitNotFound;
      }
      args.erase(args.begin() + static_cast<long>(i), args.begin() + static_cast<long>(i) + 2);
      for (const std::string& f : files.value()) {
        args.insert(args.begin() + static_cast<long>(i), {"--file", f});
        i += 2;
      }
      --i;
    }
  }
  cow_store::Result<CommandResult> result = CallDaemon(ControlSocketPath(resolved), args);
  if (!result.ok()) {
    const int err = result.status().error();
    if (err == ENOENT || err == ECONNREFUSED) {
      std::cerr << "vssctl: no vssfs daemon serves " << resolved << "\n";
      return kExitNotFound;
    }
    if (err == EACCES) {
      std::cerr
          << "vssctl: permission denied: the control socket serves root (and the group given\n"
             "        to vssfs --control-group, if any) only\n";
      return kExitPermission;
    }
    std::cerr << "vssctl: " << result.status().message() << "\n";
    return kExitFailed;
  }
  std::cout << result.value().out;
  std::cerr << result.value().err;
  return result.value().exit_code;
}

}  // namespace
}  // namespace vssfs::snapshot_ctl

int main(int argc, char** argv) { return vssfs::snapshot_ctl::Main(argc, argv); }
