#include "commands.h"

#include <unistd.h>

#include <cerrno>
#include <cinttypes>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <fstream>

#include "sets.h"
#include "vssfs/snapshot_ctl/control.h"

namespace vssfs::snapshot_ctl {

using cow_store::Result;
using cow_store::SnapshotInfo;
using cow_store::Status;

namespace {

constexpr char kTopHelp[] =
    "Usage: vssctl [-m MOUNT] [--json] COMMAND ...\n"
    "\n"
    "Controls running vssfs daemons over their local control socket (root only).\n"
    "\n"
    "Commands:\n"
    "  snapshot create [--name NAME] [--guid GUID]   take a snapshot of the volume\n"
    "  snapshot list                                 list snapshots\n"
    "  snapshot show SNAPSHOT                        show one snapshot\n"
    "  snapshot delete SNAPSHOT...                   delete snapshots, free their blocks\n"
    "  snapshot hold SNAPSHOT [--reason TEXT]        keep a snapshot from deletion\n"
    "  snapshot release SNAPSHOT                     undo a hold\n"
    "  snapshot clone SNAPSHOT                       make a snapshot writable (auto-recovery)\n"
    "  snapshot freeze SNAPSHOT                      make its clone read-only for good\n"
    "  retention show | set [--keep-last N] [--days D] | apply [--dry-run]\n"
    "                                                the volume's retention policy\n"
    "  df                                            space used by snapshots\n"
    "  fsck [--repair] [--store DIR]                 check the block store\n"
    "  mounts                                        list mounted vssfs volumes\n"
    "  check PATH... [--depth N]                     the share structure rules (exit 5: fails)\n"
    "  restore SNAPSHOT PATH... [--to DIR]           copy files or directories back from a\n"
    "                                                snapshot, with attributes and xattrs\n"
    "  rollback SNAPSHOT PATH...                     revert a live tree to a snapshot\n"
    "  set start|add|prepare|commit|expose|recovery-complete|abort|delete|list|show\n"
    "      |create-expose ...                        shadow copy sets (vssctl set --help)\n"
    "  smb check-path|create|delete|config|watch ... Samba: FSRVP shadow copies and Previous\n"
    "                                                Versions (vssctl smb --help)\n"
    "\n"
    "SNAPSHOT is a name, an id (#3 or 3) or a GUID.\n"
    "\n"
    "Options:\n"
    "  -m, --mount MOUNT   the volume mounted at MOUNT (default: the only vssfs mount)\n"
    "  --json              machine-readable output\n"
    "  -h, --help          this help; COMMAND --help for a command's\n"
    "  -V, --version       print the version\n"
    "\n"
    "Exit status: 0 success, 1 operation failed, 2 usage error, 3 no such snapshot\n"
    "or no daemon for the mount, 4 permission denied, 5 fsck found problems,\n"
    "6 already exists, 7 FSRVP error (set commands).\n";

constexpr char kSnapshotHelp[] =
    "Usage: vssctl [-m MOUNT] [--json] snapshot create|list|show|delete|hold|release|\n"
    "                                           clone|freeze ...\n"
    "\n"
    "  create [--name NAME] [--guid GUID] [--files LIST]\n"
    "      Takes a snapshot of the whole volume: flushes writes that completed\n"
    "      before the request, then records the instant (O(1): nothing is copied).\n"
    "      The default NAME is @GMT-YYYY.MM.DD-HH.MM.SS (UTC), the format Samba's\n"
    "      vfs_shadow_copy2 reads; a second snapshot in the same second waits for\n"
    "      the next second. The snapshot appears at MOUNT/.snapshot/NAME.\n"
    "      --files LIST: a target file list (one path per line, relative to the mount\n"
    "      point or absolute): the snapshot protects and shows only those files and\n"
    "      directories (with everything below a listed directory) and the directories\n"
    "      leading to them; while every snapshot of the volume has a list, writes to\n"
    "      files no snapshot lists pay no copy-on-write at all.\n"
    "  list\n"
    "      All snapshots, oldest first.\n"
    "  show SNAPSHOT\n"
    "      One snapshot's id, name, GUID, creation time and state.\n"
    "  delete SNAPSHOT...\n"
    "      Deletes snapshots; blocks no other snapshot needs are freed (a clone's\n"
    "      too). A held snapshot is refused (exit 1) until released.\n"
    "  hold SNAPSHOT [--reason TEXT] | release SNAPSHOT\n"
    "      Keeps a snapshot from deletion, by hand or by retention; undoes that.\n"
    "  clone SNAPSHOT\n"
    "      Gives the snapshot a writable clone (Remote VSS auto-recovery): from now\n"
    "      on MOUNT/.snapshot/NAME takes writes, creates, deletes, renames, truncates\n"
    "      and xattr changes. They are kept in the block store and seen only there:\n"
    "      the live tree and other snapshots do not change. Exit 6 if it has one.\n"
    "  freeze SNAPSHOT\n"
    "      Makes the clone read-only for good: every write fails with EROFS, for\n"
    "      root and through descriptors opened before. What backups then read is\n"
    "      the snapshot's instant plus the recovery changes.\n";

constexpr char kDfHelp[] =
    "Usage: vssctl [-m MOUNT] [--json] df\n"
    "\n"
    "Space used by snapshots: preserved data (logical), stored once after\n"
    "deduplication, zero blocks (not stored), pack files on disk, catalogue.\n";

constexpr char kCheckHelp[] =
    "Usage: vssctl [--json] check PATH... [--depth N]\n"
    "\n"
    "Checks that each share (a directory) has a structure Remote VSS can shadow-copy,\n"
    "and prints every path that breaks a rule, with the rule and how to fix it:\n"
    "  type   only directories and regular files (no symlinks, devices, fifos, sockets)\n"
    "  link   no hard links\n"
    "  mount  no mount points (junctions) below the share\n"
    "  depth  nothing deeper than N levels below the share root (default 5, ONTAP's\n"
    "         shadow-copy directory depth)\n"
    "  root   the share root holds only VM directories and VM files (.vhdx, .avhdx,\n"
    "         .vmcx, .vmrs, .vmgs, .mdf, .ldf, ... )\n"
    "Exit status: 0 when every share passes, 5 when a rule is broken, 3 when a PATH\n"
    "does not exist.\n";

constexpr char kRestoreHelp[] =
    "Usage: vssctl [-m MOUNT] [--json] restore SNAPSHOT PATH... [--to DIR]\n"
    "\n"
    "Copies each PATH (a file or directory of a mounted vssfs volume, which may have\n"
    "been deleted since) back from SNAPSHOT (name, #id or GUID), with owners, modes,\n"
    "times, xattrs and ACLs, symlinks, holes and hard links. Without --to it goes back\n"
    "to PATH: a file is replaced atomically, a directory is merged into (files the\n"
    "snapshot does not have are left alone). With --to it goes to DIR/<name>.\n"
    "Exit status: 0 restored, 3 no such snapshot, path or volume, 1 a copy failed.\n";

constexpr char kRollbackHelp[] =
    "Usage: vssctl [-m MOUNT] [--json] rollback SNAPSHOT PATH... [--no-safety-snapshot]\n"
    "\n"
    "Reverts each PATH (a share, or any file or directory of a mounted vssfs volume)\n"
    "to what it was in SNAPSHOT: files and directories created since are removed,\n"
    "changed ones are rewritten (large files in place, only the 1 MiB chunks that\n"
    "differ), deleted ones come back, with owners, modes, times, xattrs and ACLs.\n"
    "It goes through the mount like every change, so every snapshot - older or\n"
    "newer than SNAPSHOT - keeps what it shows (unlike a rollback that discards newer\n"
    "snapshots). First it takes a snapshot of the volume (printed), so that the\n"
    "rollback itself can be undone; --no-safety-snapshot skips that. Meant for the\n"
    "NAS and application rollback contexts (vssctl set rollback SET does it for\n"
    "every share of a set). Applications using PATH should be stopped first.\n"
    "Exit status: 0 rolled back, 3 no such snapshot, path or volume, 1 failed (the\n"
    "tree may be partly rolled back; run it again).\n";

constexpr char kFsckHelp[] =
    "Usage: vssctl [-m MOUNT] [--json] fsck [--repair]\n"
    "       vssctl [--json] fsck [--repair] --store DIR    (volume not mounted)\n"
    "\n"
    "Checks the block store: every block is read and its XXH3-128 hash compared\n"
    "with its catalogue key; reference counts are recounted; records naming\n"
    "missing blocks, orphan pack space and index inconsistencies are reported.\n"
    "With --repair, counts and indexes are fixed, orphan space is freed and\n"
    "snapshots that lost data are marked damaged (their damaged files read EIO).\n"
    "Exit status 5 when problems were found (and not all repaired).\n";

std::string Pad(const std::string& s, size_t n) {
  return s.size() >= n ? s + " " : s + std::string(n - s.size(), ' ');
}

const char* CloneName(cow_store::CloneState c) {
  switch (c) {
    case cow_store::CloneState::kWritable:
      return "writable";
    case cow_store::CloneState::kFrozen:
      return "frozen";
    case cow_store::CloneState::kNone:
      break;
  }
  return "none";
}

std::string SnapshotJson(const SnapshotInfo& s) {
  char id[32];
  std::snprintf(id, sizeof id, "%" PRIu64, s.id);
  return std::string("{\"id\":") + id + ",\"name\":" + JsonString(s.name) +
         ",\"guid\":" + JsonString(s.guid.ToString()) +
         ",\"created\":" + JsonString(FormatTime(s.created_ns)) +
         ",\"created_ns\":" + std::to_string(s.created_ns) +
         ",\"intact\":" + (s.intact ? "true" : "false") + ",\"damage\":" + JsonString(s.damage) +
         ",\"hold\":" + JsonString(s.hold) + ",\"clone\":" + JsonString(CloneName(s.clone)) +
         ",\"frozen\":" + JsonString(s.frozen_ns != 0 ? FormatTime(s.frozen_ns) : "") +
         ",\"partial\":" + (s.partial ? "true" : "false") +
         ",\"covered_objects\":" + std::to_string(s.covered.size()) + "}";
}

CommandResult Fail(int code, const std::string& message) {
  CommandResult r;
  r.exit_code = code;
  r.err = "vssctl: " + message + "\n";
  return r;
}

CommandResult FromStatus(const Status& s) { return Fail(ExitCodeFor(s.error()), s.message()); }

}  // namespace

int ExitCodeFor(int error) {
  switch (error) {
    case 0:
      return kExitOk;
    case ENOENT:
    case ECONNREFUSED:
      return kExitNotFound;
    case EACCES:
    case EPERM:
      return kExitPermission;
    case EINVAL:
      return kExitUsage;
    case EEXIST:
      return kExitExists;
    default:
      return kExitFailed;
  }
}

std::string JsonString(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out.push_back(static_cast<char>(c));
        }
    }
  }
  return out + "\"";
}

std::string FormatTime(int64_t ns) {
  time_t t = static_cast<time_t>(ns / 1000000000);
  struct tm tm;
  gmtime_r(&t, &tm);
  char buf[64];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S UTC", &tm);
  return buf;
}

std::string HumanBytes(uint64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024 && u < 5) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.1f %s", v, units[u]);
  return buf;
}

std::string FsckText(const cow_store::FsckReport& r, bool json) {
  if (json) {
    std::string out = "{\"clean\":" + std::string(r.clean() ? "true" : "false") +
                      ",\"blocks_checked\":" + std::to_string(r.blocks_checked) +
                      ",\"records_checked\":" + std::to_string(r.records_checked) +
                      ",\"problems\":[";
    for (size_t i = 0; i < r.problems.size(); ++i) {
      if (i > 0) out += ',';
      out += JsonString(r.problems[i]);
    }
    out += "],\"repairs\":[";
    for (size_t i = 0; i < r.repairs.size(); ++i) {
      if (i > 0) out += ',';
      out += JsonString(r.repairs[i]);
    }
    return out + "]}\n";
  }
  std::string out = "checked " + std::to_string(r.blocks_checked) + " blocks, " +
                    std::to_string(r.records_checked) + " records: " +
                    (r.clean() ? "clean\n" : std::to_string(r.problems.size()) + " problems\n");
  for (const std::string& p : r.problems) out += "  problem: " + p + "\n";
  for (const std::string& p : r.repairs) out += "  repaired: " + p + "\n";
  return out;
}

bool WantsHelp(const std::vector<std::string>& args) {
  for (const std::string& a : args) {
    if (a == "-h" || a == "--help") return true;
  }
  return false;
}

std::string HelpFor(const std::vector<std::string>& words) {
  if (words.empty()) return kTopHelp;
  if (words[0] == "snapshot") return kSnapshotHelp;
  if (words[0] == "df") return kDfHelp;
  if (words[0] == "fsck") return kFsckHelp;
  if (words[0] == "set") return SetHelp();
  if (words[0] == "check") return kCheckHelp;
  if (words[0] == "restore") return kRestoreHelp;
  if (words[0] == "rollback") return kRollbackHelp;
  return kTopHelp;
}

CommandResult RunCommand(Volume& volume, const std::vector<std::string>& all_args) {
  bool json = false;
  std::vector<std::string> args;
  for (const std::string& a : all_args) {
    if (a == "--json") {
      json = true;
    } else {
      args.push_back(a);
    }
  }
  CommandResult r;
  if (args.empty() || WantsHelp(args)) {
    r.out = HelpFor(args);
    return r;
  }
  cow_store::Store& store = volume.store();
  const std::string& cmd = args[0];
  const std::string sub = args.size() > 1 ? args[1] : "";

  if (cmd == "snapshot" && (sub == "clone" || sub == "freeze")) {
    if (args.size() != 3) return Fail(kExitUsage, "usage: snapshot " + sub + " SNAPSHOT");
    Result<SnapshotInfo> snap =
        sub == "clone" ? volume.CloneSnapshot(args[2]) : volume.FreezeSnapshot(args[2]);
    if (!snap.ok()) return FromStatus(snap.status());
    const std::string path = volume.MountPoint() + "/.snapshot/" + snap.value().name;
    r.out = json ? SnapshotJson(snap.value()) + "\n"
                 : (sub == "clone" ? "writable clone of " + snap.value().name + " at\n  " + path
                                   : "froze " + snap.value().name + " (read-only for good)") +
                       "\n";
    return r;
  }
  if (cmd == "snapshot" && (sub == "hold" || sub == "release")) {
    if (args.size() < 3) return Fail(kExitUsage, "usage: snapshot " + sub + " SNAPSHOT");
    std::string reason = sub == "hold" ? "held by the administrator" : "";
    for (size_t i = 3; i < args.size(); ++i) {
      if (sub == "hold" && args[i] == "--reason" && i + 1 < args.size()) {
        reason = args[++i];
        if (reason.empty() || reason.size() > 200) {
          return Fail(kExitUsage, "snapshot hold: --reason must be 1-200 bytes");
        }
      } else {
        return Fail(kExitUsage, "snapshot " + sub + ": unexpected argument '" + args[i] + "'");
      }
    }
    Result<SnapshotInfo> snap = store.FindSnapshot(args[2]);
    if (!snap.ok()) return FromStatus(snap.status());
    if (Status st = store.SetHold(snap.value().id, reason); !st.ok()) return FromStatus(st);
    r.out = json ? "{\"snapshot\":" + JsonString(snap.value().name) +
                       ",\"hold\":" + JsonString(reason) + "}\n"
                 : (sub == "hold" ? "held " : "released ") + snap.value().name + "\n";
    return r;
  }
  if (cmd == "retention") {
    if (sub == "show" || sub.empty()) {
      Result<cow_store::RetentionPolicy> p = store.GetRetention();
      if (!p.ok()) return FromStatus(p.status());
      r.out = json
                  ? "{\"keep_last\":" + std::to_string(p.value().keep_last) +
                        ",\"days\":" + std::to_string(p.value().max_age_s / 86400) +
                        ",\"max_age_s\":" + std::to_string(p.value().max_age_s) + "}\n"
                  : "keep last: " +
                        (p.value().keep_last ? std::to_string(p.value().keep_last) : "no limit") +
                        "\nkeep for:  " +
                        (p.value().max_age_s ? std::to_string(p.value().max_age_s / 86400) + " days"
                                             : "no limit") +
                        "\n";
      return r;
    }
    if (sub == "set") {
      Result<cow_store::RetentionPolicy> cur = store.GetRetention();
      if (!cur.ok()) return FromStatus(cur.status());
      cow_store::RetentionPolicy p = cur.value();
      for (size_t i = 2; i < args.size(); ++i) {
        const bool has_value = i + 1 < args.size();
        const std::string value = has_value ? args[i + 1] : "";
        const bool number = has_value && !value.empty() && value.size() < 10 &&
                            value.find_first_not_of("0123456789") == std::string::npos;
        if (args[i] == "--keep-last" && number) {
          p.keep_last = std::stoull(value);
        } else if (args[i] == "--days" && number) {
          p.max_age_s = std::stoull(value) * 86400;
        } else if (args[i] == "--seconds" && number) {  // For tests.
          p.max_age_s = std::stoull(value);
        } else {
          return Fail(kExitUsage,
                      "retention set: expected --keep-last N and/or --days D (0: no limit)");
        }
        ++i;
      }
      if (Status st = store.SetRetention(p); !st.ok()) return FromStatus(st);
      r.out = "retention: keep last " + std::to_string(p.keep_last) + ", keep for " +
              std::to_string(p.max_age_s / 86400) + " days (0: no limit)\n";
      return r;
    }
    if (sub == "apply") {
      const bool dry = args.size() == 3 && args[2] == "--dry-run";
      if (args.size() > 3 || (args.size() == 3 && !dry)) {
        return Fail(kExitUsage, "usage: retention apply [--dry-run]");
      }
      Result<std::vector<std::string>> gone = volume.ApplyRetention(dry);
      if (!gone.ok()) return FromStatus(gone.status());
      if (json) {
        r.out = "{\"dry_run\":" + std::string(dry ? "true" : "false") + ",\"deleted\":[";
        for (size_t i = 0; i < gone.value().size(); ++i) {
          if (i > 0) r.out += ',';
          r.out += JsonString(gone.value()[i]);
        }
        r.out += "]}\n";
      } else {
        for (const std::string& n : gone.value()) {
          r.out += (dry ? "would delete " : "deleted ") + n + "\n";
        }
        if (gone.value().empty()) r.out = "nothing to delete\n";
      }
      return r;
    }
    return Fail(kExitUsage, "retention: show, set or apply");
  }
  if (cmd == "snapshot" && (sub == "barrier" || sub == "barrier-release")) {
    // The cross-volume write barrier (vssctl set commit uses it).
    if (sub == "barrier-release") {
      volume.ReleaseHold();
      r.out = "released\n";
      return r;
    }
    int timeout_ms = 10000;
    if (args.size() == 4 && args[2] == "--timeout-ms") {
      timeout_ms = std::atoi(args[3].c_str());
    } else if (args.size() != 2) {
      return Fail(kExitUsage, "usage: snapshot barrier [--timeout-ms N]");
    }
    if (timeout_ms <= 0 || timeout_ms > 60000) {
      return Fail(kExitUsage, "snapshot barrier: --timeout-ms must be 1..60000");
    }
    if (Status s = volume.HoldWrites(timeout_ms); !s.ok()) return FromStatus(s);
    r.out = "held\n";
    return r;
  }
  if (cmd == "snapshot" && sub == "create") {
    std::string name;
    std::optional<cow_store::Guid> guid;
    std::vector<std::string> files;
    for (size_t i = 2; i < args.size(); ++i) {
      if (args[i] == "--file" && i + 1 < args.size()) {
        // vssctl turns --files LIST into one --file PATH each (absolute,
        // or relative to the mount point).
        files.push_back(args[++i]);
        if (files.back().empty() || files.back().size() > PATH_MAX) {
          return Fail(kExitUsage, "--file needs a path");
        }
      } else if (args[i] == "--name" && i + 1 < args.size()) {
        name = args[++i];
        if (!cow_store::ValidSnapshotName(name)) {
          return Fail(kExitUsage, "invalid snapshot name '" + name +
                                      "' (1-255 bytes, no '/', not '.' or '..')");
        }
      } else if (args[i] == "--held") {
        // Part of a set's barrier: only under the hold taken for it.
        if (!volume.HoldActive()) {
          return Fail(kExitFailed,
                      "the write hold of this volume expired before the snapshot; the set's "
                      "instant is lost (retry the commit)");
        }
      } else if (args[i] == "--guid" && i + 1 < args.size()) {
        guid = cow_store::Guid::Parse(args[++i]);
        if (!guid) return Fail(kExitUsage, "invalid GUID '" + args[i] + "'");
      } else {
        return Fail(kExitUsage, "snapshot create: unexpected argument '" + args[i] + "'");
      }
    }
    Result<SnapshotInfo> info = volume.CreateSnapshot(name, guid, files);
    if (!info.ok()) return FromStatus(info.status());
    const std::string path = volume.MountPoint() + "/.snapshot/" + info.value().name;
    if (json) {
      std::string j = SnapshotJson(info.value());
      j.pop_back();
      r.out = j + ",\"path\":" + JsonString(path) + "}\n";
    } else {
      r.out = "created snapshot " + info.value().name + " (#" + std::to_string(info.value().id) +
              ", " + info.value().guid.ToString() + ")\n  " + path + "\n";
    }
    return r;
  }
  if (cmd == "snapshot" && sub == "list") {
    if (args.size() > 2) return Fail(kExitUsage, "snapshot list takes no arguments");
    Result<std::vector<SnapshotInfo>> all = store.ListSnapshots();
    if (!all.ok()) return FromStatus(all.status());
    if (json) {
      r.out = "[";
      for (size_t i = 0; i < all.value().size(); ++i) {
        if (i > 0) r.out += ',';
        r.out += SnapshotJson(all.value()[i]);
      }
      r.out += "]\n";
      return r;
    }
    r.out = Pad("ID", 6) + Pad("NAME", 26) + Pad("CREATED", 24) + Pad("GUID", 38) + "STATE\n";
    for (const SnapshotInfo& s : all.value()) {
      r.out +=
          Pad(std::to_string(s.id), 6) + Pad(s.name, 26) + Pad(FormatTime(s.created_ns), 24) +
          Pad(s.guid.ToString(), 38) + (s.intact ? "ok" : "DAMAGED") +
          (s.hold.empty() ? "" : ", held") +
          (s.clone == cow_store::CloneState::kNone ? ""
                                                   : std::string(", clone ") + CloneName(s.clone)) +
          "\n";
    }
    return r;
  }
  if (cmd == "snapshot" && sub == "show") {
    if (args.size() != 3) return Fail(kExitUsage, "usage: snapshot show SNAPSHOT");
    Result<SnapshotInfo> s = store.FindSnapshot(args[2]);
    if (!s.ok()) return FromStatus(s.status());
    const std::string path = volume.MountPoint() + "/.snapshot/" + s.value().name;
    if (json) {
      std::string j = SnapshotJson(s.value());
      j.pop_back();
      r.out = j + ",\"path\":" + JsonString(path) + "}\n";
    } else {
      r.out = "id:       " + std::to_string(s.value().id) + "\nname:     " + s.value().name +
              "\nguid:     " + s.value().guid.ToString() +
              "\ncreated:  " + FormatTime(s.value().created_ns) + "\npath:     " + path +
              "\nstate:    " + (s.value().intact ? "ok" : "DAMAGED: " + s.value().damage) +
              "\nhold:     " + (s.value().hold.empty() ? "none" : s.value().hold) + "\ncovers:   " +
              (s.value().partial
                   ? std::to_string(s.value().covered.size()) + " objects (a target file list)"
                   : std::string("the whole volume")) +
              "\nclone:    " + CloneName(s.value().clone) +
              (s.value().frozen_ns != 0 ? " (frozen " + FormatTime(s.value().frozen_ns) + ")"
                                        : std::string()) +
              "\n";
    }
    return r;
  }
  if (cmd == "snapshot" && sub == "delete") {
    if (args.size() < 3) return Fail(kExitUsage, "usage: snapshot delete SNAPSHOT...");
    std::string jitems;
    for (size_t i = 2; i < args.size(); ++i) {
      Result<cow_store::GcResult> gc = volume.DeleteSnapshot(args[i]);
      if (!gc.ok()) {
        CommandResult f = FromStatus(gc.status());
        f.out = r.out;
        return f;
      }
      if (json) {
        jitems += std::string(jitems.empty() ? "" : ",") + "{\"snapshot\":" + JsonString(args[i]) +
                  ",\"blocks_freed\":" + std::to_string(gc.value().blocks_freed) +
                  ",\"bytes_freed\":" + std::to_string(gc.value().bytes_freed) + "}";
      } else {
        r.out += "deleted " + args[i] + ": freed " + std::to_string(gc.value().blocks_freed) +
                 " blocks (" + HumanBytes(gc.value().bytes_freed) + ")\n";
      }
    }
    if (json) r.out = "[" + jitems + "]\n";
    return r;
  }
  if (cmd == "df") {
    Result<cow_store::SpaceUsage> u = store.Usage();
    if (!u.ok()) return FromStatus(u.status());
    const auto& v = u.value();
    const uint64_t logical = v.referenced_bytes + v.zero_bytes;
    const uint64_t dedup =
        v.referenced_bytes > v.stored_bytes ? v.referenced_bytes - v.stored_bytes : 0;
    if (json) {
      r.out = "{\"snapshots\":" + std::to_string(v.snapshots) +
              ",\"block_size\":" + std::to_string(v.block_size) +
              ",\"preserved_bytes\":" + std::to_string(logical) +
              ",\"stored_blocks\":" + std::to_string(v.stored_blocks) +
              ",\"stored_bytes\":" + std::to_string(v.stored_bytes) +
              ",\"dedup_saved_bytes\":" + std::to_string(dedup) +
              ",\"zero_saved_bytes\":" + std::to_string(v.zero_bytes) +
              ",\"pack_disk_bytes\":" + std::to_string(v.pack_bytes) +
              ",\"catalog_bytes\":" + std::to_string(v.catalog_bytes) +
              ",\"kept_files\":" + std::to_string(v.kept_files) + "}\n";
    } else {
      r.out = "snapshots:          " + std::to_string(v.snapshots) +
              "\nblock size:         " + HumanBytes(v.block_size) +
              "\npreserved data:     " + HumanBytes(logical) +
              "\nstored (deduped):   " + HumanBytes(v.stored_bytes) + " in " +
              std::to_string(v.stored_blocks) + " blocks" +
              "\ndedup savings:      " + HumanBytes(dedup) +
              "\nzero-block savings: " + HumanBytes(v.zero_bytes) +
              "\npack files on disk: " + HumanBytes(v.pack_bytes) +
              "\ncatalogue in use:   " + HumanBytes(v.catalog_bytes) +
              "\nkept files:         " + std::to_string(v.kept_files) + "\n";
    }
    return r;
  }
  if (cmd == "fsck") {
    bool repair = false;
    for (size_t i = 1; i < args.size(); ++i) {
      if (args[i] == "--repair") {
        repair = true;
      } else {
        return Fail(kExitUsage, "fsck: unexpected argument '" + args[i] + "'");
      }
    }
    Result<cow_store::FsckReport> report = store.Fsck(repair, nullptr);
    if (!report.ok()) return FromStatus(report.status());
    r.out = FsckText(report.value(), json);
    const bool fixed = repair && report.value().repairs.size() >= report.value().problems.size();
    r.exit_code = report.value().clean() || fixed ? kExitOk : kExitProblems;
    return r;
  }
  if (cmd == "snapshot") {
    return Fail(kExitUsage, sub.empty()
                                ? "snapshot: missing subcommand (create, list, show, delete)"
                                : "snapshot: unknown subcommand '" + sub + "'");
  }
  return Fail(kExitUsage, "unknown command '" + cmd + "' (see vssctl --help)");
}

Result<std::vector<std::string>> ReadFileList(const std::string& list, const std::string& base) {
  std::ifstream in(list);
  if (!in) return Status::FromErrno(errno ? errno : ENOENT, "file list " + list);
  std::vector<std::string> out;
  std::string line;
  while (std::getline(in, line)) {
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
    if (line.empty() || line[0] == '#') continue;
    out.push_back(line[0] == '/' || base.empty() ? line : base + "/" + line);
  }
  if (in.bad()) return Status::FromErrno(EIO, "read file list " + list);
  if (out.empty()) return Status::Error(EINVAL, "file list " + list + " lists no file");
  return out;
}

}  // namespace vssfs::snapshot_ctl
