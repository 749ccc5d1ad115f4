// vssctl set ...: shadow copy sets (MS-FSRVP) over vssfs volumes.
//
// The FSRVP state of the host lives in $VSSFS_STATE_DIR (default
// /var/lib/vssfs)/fsrvp.state, written atomically and guarded by an
// exclusive flock on fsrvp.lock for the whole of each command: load, fire
// the message sequence timer if it expired (cleaning up what it removed),
// apply the command and its side effects on the volumes' daemons, save.
#include "sets.h"

#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>

#include "commands.h"
#include "restore.h"
#include "vssfs/snapshot_ctl/control.h"
#include "vssfs/snapshot_ctl/fsrvp.h"
#include "vssfs/snapshot_ctl/structure_check.h"

namespace vssfs::snapshot_ctl {

using cow_store::Guid;
using cow_store::Result;
using cow_store::Status;
using cow_store::UniqueFd;

namespace {

constexpr int kExitFsrvp = 7;  // An FSRVP error (named in the message).
// How long a volume holds writes for a set's barrier at most (each volume's
// hold starts when it is reached; see docs/VSS_SETS.md).
constexpr int kHoldTimeoutMs = 10000;

int64_t NowNs() {
  timespec t;
  clock_gettime(CLOCK_REALTIME, &t);
  return int64_t{t.tv_sec} * 1000000000 + t.tv_nsec;
}

std::string StateDir() {
  const char* env = std::getenv("VSSFS_STATE_DIR");
  return env != nullptr && env[0] != '\0' ? env : "/var/lib/vssfs";
}

CommandResult Fail(int code, const std::string& message) {
  CommandResult r;
  r.exit_code = code;
  r.err = "vssctl: " + message + "\n";
  return r;
}

CommandResult FromFsrvp(const FsrvpStatus& s) {
  char code[16];
  std::snprintf(code, sizeof code, "0x%08x", static_cast<uint32_t>(s.code));
  int exit_code = kExitFsrvp;
  if (s.code == FsrvpError::kObjectNotFound || s.code == FsrvpError::kShadowCopySetIdMismatch) {
    exit_code = kExitNotFound;
  } else if (s.code == FsrvpError::kObjectAlreadyExists) {
    exit_code = kExitExists;
  } else if (s.code == FsrvpError::kInvalidArg) {
    exit_code = kExitUsage;
  }
  return Fail(exit_code, std::string(FsrvpErrorName(s.code)) + " (" + code + "): " + s.message);
}

// The persistent machine, locked for the registry's lifetime.
class Registry {
 public:
  static Result<Registry> Open() {
    Registry r;
    r.dir_ = StateDir();
    if (mkdir(r.dir_.c_str(), 0700) != 0 && errno != EEXIST) {
      return Status::FromErrno(errno, "create state directory " + r.dir_);
    }
    r.lock_.reset(open((r.dir_ + "/fsrvp.lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
    if (!r.lock_) return Status::FromErrno(errno, "open " + r.dir_ + "/fsrvp.lock");
    if (flock(r.lock_.get(), LOCK_EX) != 0) return Status::FromErrno(errno, "lock FSRVP state");
    std::ifstream in(r.dir_ + "/fsrvp.state");
    if (in) {
      std::stringstream ss;
      ss << in.rdbuf();
      Result<FsrvpMachine> m = FsrvpMachine::Parse(ss.str(), r.LoadTimeouts());
      if (!m.ok())
        return Status::Error(m.status().error(), r.dir_ + "/fsrvp.state: " + m.status().message());
      r.machine_ = std::move(m.value());
    } else {
      r.machine_ = FsrvpMachine(r.LoadTimeouts());
    }
    return r;
  }

  FsrvpMachine& machine() { return machine_; }

  Status Save() {
    const std::string path = dir_ + "/fsrvp.state";
    const std::string tmp = path + ".tmp";
    const std::string text = machine_.Serialize();
    UniqueFd fd(open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    if (!fd) return Status::FromErrno(errno, "create " + tmp);
    if (write(fd.get(), text.data(), text.size()) != static_cast<ssize_t>(text.size()) ||
        fsync(fd.get()) != 0) {
      return Status::FromErrno(errno ? errno : EIO, "write " + tmp);
    }
    if (rename(tmp.c_str(), path.c_str()) != 0) return Status::FromErrno(errno, "rename " + tmp);
    UniqueFd dir(open(dir_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (dir) fsync(dir.get());
    return Status();
  }

  // Timer lengths: $VSSFS_FSRVP_TIMEOUTS="SHORT,LONG" in seconds (tests),
  // else the specification's 180 and 1800.
  Timeouts LoadTimeouts() const {
    Timeouts t;
    const char* env = std::getenv("VSSFS_FSRVP_TIMEOUTS");
    if (env != nullptr) {
      double a = 0, b = 0;
      if (std::sscanf(env, "%lf,%lf", &a, &b) == 2 && a > 0 && b > 0) {
        t.short_ns = static_cast<int64_t>(a * 1e9);
        t.long_ns = static_cast<int64_t>(b * 1e9);
      }
    }
    return t;
  }

 private:
  std::string dir_;
  UniqueFd lock_;
  FsrvpMachine machine_;
};

Result<CommandResult> Daemon(const std::string& volume, const std::vector<std::string>& args) {
  return CallDaemon(ControlSocketPath(volume), args);
}

// Releases the holds a set keeps on its snapshots (best effort, reported).
void ReleaseHolds(const ShadowCopySet& s, std::string* err) {
  std::map<std::string, std::string> snaps;
  for (const ShadowCopy& c : s.copies) {
    if (!c.snapshot.empty()) snaps[c.volume] = c.snapshot;
  }
  for (const auto& [volume, snap] : snaps) {
    Result<CommandResult> r = Daemon(volume, {"snapshot", "release", snap});
    if (!r.ok() || r.value().exit_code != 0) {
      *err += "vssctl: warning: could not release snapshot " + snap + " of " + volume + "\n";
    }
  }
}

// Freezes the writable clones of an auto-recovery set: every copy read-only
// for good. Returns false (with *err) when a volume could not be frozen.
bool Freeze(const ShadowCopySet& s, std::string* err) {
  if (!AutoRecovery(s.context)) return true;
  std::map<std::string, std::string> snaps;
  for (const ShadowCopy& c : s.copies) {
    if (!c.snapshot.empty()) snaps[c.volume] = c.snapshot;
  }
  bool ok = true;
  for (const auto& [volume, snap] : snaps) {
    Result<CommandResult> r = Daemon(volume, {"snapshot", "freeze", snap});
    if (!r.ok() || r.value().exit_code != 0) {
      *err += "vssctl: cannot freeze snapshot " + snap + " of " + volume + ": " +
              (r.ok() ? r.value().err : r.status().message() + "\n");
      ok = false;
    }
  }
  return ok;
}

// Deletes the snapshots a removed set had taken (best effort, reported).
void CleanUp(const ShadowCopySet& s, std::string* err) {
  std::map<std::string, std::string> snaps;  // volume -> snapshot
  for (const ShadowCopy& c : s.copies) {
    if (!c.snapshot.empty()) snaps[c.volume] = c.snapshot;
  }
  for (const auto& [volume, snap] : snaps) {
    (void)Daemon(volume, {"snapshot", "release", snap});
    Result<CommandResult> r = Daemon(volume, {"snapshot", "delete", snap});
    if (!r.ok() || r.value().exit_code != 0) {
      *err += "vssctl: warning: could not delete snapshot " + snap + " of " + volume + ": " +
              (r.ok() ? r.value().err : r.status().message() + "\n");
    }
  }
}

std::string Relative(const std::string& share, const std::string& volume) {
  return share.size() > volume.size() ? share.substr(volume.size() + 1) : "";
}

std::string SetJson(const ShadowCopySet& s) {
  std::string out = "{\"id\":" + JsonString(s.id.ToString()) +
                    ",\"state\":" + JsonString(SetStateName(s.state)) +
                    ",\"target_files\":" + std::to_string(s.files.size()) +
                    ",\"context\":" + JsonString(ContextName(s.context)) +
                    ",\"created\":" + JsonString(FormatTime(s.created_ns)) + ",\"shadow_copies\":[";
  for (size_t i = 0; i < s.copies.size(); ++i) {
    const ShadowCopy& c = s.copies[i];
    if (i > 0) out += ',';
    out += "{\"id\":" + JsonString(c.id.ToString()) + ",\"share\":" + JsonString(c.share) +
           ",\"volume\":" + JsonString(c.volume) + ",\"snapshot\":" + JsonString(c.snapshot) +
           ",\"exposed\":" + (c.exposed ? "true" : "false") +
           ",\"path\":" + JsonString(c.exposed_path) + "}";
  }
  return out + "]}";
}

std::string SetText(const ShadowCopySet& s) {
  std::string out = "set " + s.id.ToString() + "  " + SetStateName(s.state) + "  " +
                    ContextName(s.context) + "  " + FormatTime(s.created_ns) + "\n";
  for (const ShadowCopy& c : s.copies) {
    out += "  shadow copy " + c.id.ToString() + "  " + c.share;
    if (!c.snapshot.empty()) out += "  snapshot " + c.snapshot;
    if (c.exposed) out += "\n    " + c.exposed_path;
    out += "\n";
  }
  return out;
}

Result<Guid> SetArg(const std::vector<std::string>& args, size_t i) {
  if (args.size() <= i) return Status::Error(EINVAL, "missing SET (a set GUID)");
  std::optional<Guid> g = Guid::Parse(args[i]);
  if (!g) return Status::Error(EINVAL, "'" + args[i] + "' is not a GUID");
  return *g;
}

// The operations, on a loaded machine. Each returns the FSRVP outcome.
FsrvpStatus DoStart(FsrvpMachine& m, uint32_t context, Guid* id) {
  const int64_t now = NowNs();
  const std::string client = "vssctl-" + std::to_string(getpid());
  FsrvpStatus s = m.SetContext(context, client, now, nullptr);
  if (!s.ok()) return s;
  *id = Guid::Random();
  return m.Start(*id, now);
}

FsrvpStatus DoAdd(FsrvpMachine& m, const Guid& set, const std::string& path, bool strict,
                  std::string* err) {
  char real[PATH_MAX];
  if (realpath(path.c_str(), real) == nullptr) {
    return FsrvpStatus::Error(FsrvpError::kObjectNotFound, path + ": " + std::strerror(errno));
  }
  struct stat st;
  if (stat(real, &st) != 0 || !S_ISDIR(st.st_mode)) {
    return FsrvpStatus::Error(FsrvpError::kInvalidArg, path + " is not a directory");
  }
  const std::string volume = VolumeContaining(real);
  if (volume.empty()) {
    return FsrvpStatus::Error(FsrvpError::kNotSupported,
                              std::string(real) + " is not on a vssfs volume");
  }
  const std::string rel = Relative(real, volume);
  if (rel == ".snapshot" || rel.rfind(".snapshot/", 0) == 0) {
    return FsrvpStatus::Error(FsrvpError::kNotSupported,
                              std::string(real) + " is inside a snapshot");
  }
  // The structure rules: refused in strict mode, a warning otherwise.
  Result<std::vector<StructureProblem>> problems = CheckStructure(real, kDefaultShadowCopyDepth);
  if (problems.ok() && !problems.value().empty()) {
    std::string list;
    for (const StructureProblem& p : problems.value()) {
      list += "  " + std::string(real) + "/" + p.path + ": " + p.rule + ": " + p.what + "\n";
    }
    if (strict) {
      return FsrvpStatus::Error(
          FsrvpError::kNotSupported,
          std::string(real) + " fails the structure check (vssctl check):\n" + list);
    }
    *err += "vssctl: warning: " + std::string(real) +
            " fails the structure check (vssctl check; --strict refuses it):\n" + list;
  }
  return m.Add(set, Guid::Random(), real, volume, NowNs());
}

FsrvpStatus DoCommit(FsrvpMachine& m, const Guid& set, std::string* err) {
  FsrvpStatus s = m.BeginCommit(set, NowNs());
  if (!s.ok()) return s;
  const ShadowCopySet* sc = m.Find(set);
  // One snapshot per volume: every share of a volume at one instant. With
  // several volumes, writes are first held on all of them (a barrier), so
  // the snapshots share one instant too.
  std::map<std::string, std::string> taken;
  bool ok = true;
  std::string why;
  std::vector<std::string> volumes;
  for (const ShadowCopy& c : sc->copies) {
    if (std::find(volumes.begin(), volumes.end(), c.volume) == volumes.end()) {
      volumes.push_back(c.volume);
    }
  }
  std::vector<std::string> held;
  if (volumes.size() > 1) {
    for (const std::string& v : volumes) {
      Result<CommandResult> r =
          Daemon(v, {"snapshot", "barrier", "--timeout-ms", std::to_string(kHoldTimeoutMs)});
      if (!r.ok() || r.value().exit_code != 0) {
        ok = false;
        why = v + ": cannot hold writes: " + (r.ok() ? r.value().err : r.status().message());
        break;
      }
      held.push_back(v);
    }
    if (!ok) {
      for (const std::string& v : held) (void)Daemon(v, {"snapshot", "barrier-release"});
    }
  }
  for (const ShadowCopy& c : sc->copies) {
    if (!ok) break;
    if (taken.count(c.volume)) continue;
    std::vector<std::string> create = {"snapshot", "create", "--guid", set.ToString(), "--json"};
    if (!held.empty()) create.push_back("--held");
    // A target file list: this volume's part of it.
    bool listed = false;
    for (const std::string& f : sc->files) {
      if (f.rfind(c.volume + "/", 0) == 0) {
        create.insert(create.end(), {"--file", f});
        listed = true;
      }
    }
    if (!sc->files.empty() && !listed) {
      ok = false;
      why = c.volume + ": the set's file list names no file on this volume";
      break;
    }
    Result<CommandResult> r = Daemon(c.volume, create);
    if (!r.ok() || r.value().exit_code != 0) {
      ok = false;
      why = c.volume + ": " + (r.ok() ? r.value().err : r.status().message());
      break;
    }
    const std::string& out = r.value().out;
    const size_t at = out.find("\"name\":\"");
    const size_t end = at == std::string::npos ? at : out.find('"', at + 8);
    if (end == std::string::npos) {
      ok = false;
      why = c.volume + ": unexpected reply from the daemon";
      break;
    }
    taken[c.volume] = out.substr(at + 8, end - at - 8);
  }
  // Auto-recovery: each snapshot gets its writable clone, where the
  // requestor's writers recover before RecoveryComplete freezes it.
  if (ok && AutoRecovery(sc->context)) {
    for (const auto& [volume, snap] : taken) {
      Result<CommandResult> r = Daemon(volume, {"snapshot", "clone", snap});
      if (!r.ok() || r.value().exit_code != 0) {
        ok = false;
        why = volume + ": cannot make snapshot " + snap +
              " writable: " + (r.ok() ? r.value().err : r.status().message());
        break;
      }
    }
  }
  std::vector<std::string> names;
  if (ok) {
    for (const ShadowCopy& c : sc->copies) names.push_back(taken[c.volume]);
    // Retention leaves a set's snapshots alone until the set is deleted.
    for (const auto& [volume, snap] : taken) {
      Result<CommandResult> r = Daemon(
          volume, {"snapshot", "hold", snap, "--reason", "shadow copy set " + set.ToString()});
      if (!r.ok() || r.value().exit_code != 0) {
        *err += "vssctl: warning: could not hold snapshot " + snap + " of " + volume + "\n";
      }
    }
  } else {
    for (const std::string& v : held) (void)Daemon(v, {"snapshot", "barrier-release"});
    // No half-taken set: drop what was taken.
    ShadowCopySet partial = *sc;
    for (ShadowCopy& c : partial.copies) c.snapshot = taken.count(c.volume) ? taken[c.volume] : "";
    CleanUp(partial, err);
  }
  FsrvpStatus e = m.EndCommit(set, ok, names, NowNs());
  if (!ok) e.message += ": " + why;
  return e;
}

// vssctl set rollback: every share of a NAS or application rollback set back
// to its shadow copy (one safety snapshot per volume first).
FsrvpStatus DoRollback(const FsrvpMachine& m, const Guid& set, std::string* out) {
  const ShadowCopySet* s = m.Find(set);
  if (s == nullptr) {
    return FsrvpStatus::Error(FsrvpError::kShadowCopySetIdMismatch,
                              "no shadow copy set " + set.ToString());
  }
  const uint32_t base = s->context & ~(kAttrAutoRecovery | kAttrNoAutoRecovery);
  if (base != kCtxNasRollback && base != kCtxAppRollback) {
    return FsrvpStatus::Error(FsrvpError::kUnsupportedContext,
                              "rollback is for the nas-rollback and app-rollback contexts; this "
                              "set is " +
                                  ContextName(s->context));
  }
  if (s->state != SetState::kExposed && s->state != SetState::kRecovered) {
    return FsrvpStatus::Error(FsrvpError::kBadState,
                              "the set must be Exposed or Recovered to roll back to it");
  }
  std::map<std::string, std::string> safety;
  for (const ShadowCopy& c : s->copies) {
    if (safety.count(c.volume)) continue;
    Result<CommandResult> r = Daemon(c.volume, {"snapshot", "create", "--json"});
    if (!r.ok() || r.value().exit_code != 0) {
      return FsrvpStatus::Error(FsrvpError::kUnexpected,
                                c.volume + ": cannot take the safety snapshot: " +
                                    (r.ok() ? r.value().err : r.status().message()));
    }
    const std::string& j = r.value().out;
    const size_t at = j.find("\"name\":\"");
    safety[c.volume] =
        at == std::string::npos ? "" : j.substr(at + 8, j.find('"', at + 8) - at - 8);
  }
  for (const ShadowCopy& c : s->copies) {
    Result<RestoreStats> st = Rollback(c.volume + "/.snapshot/" + c.snapshot,
                                       Relative(c.share, c.volume), c.share, c.volume);
    if (!st.ok()) {
      return FsrvpStatus::Error(
          FsrvpError::kUnexpected,
          c.share + ": rollback failed (run it again): " + st.status().message());
    }
    *out += "rolled " + c.share + " back to " + c.snapshot + ": " + HumanBytes(st.value().bytes) +
            " written, " + std::to_string(st.value().removed) +
            " entries removed; the state before is snapshot " + safety[c.volume] + "\n";
  }
  return FsrvpStatus();
}

FsrvpStatus DoExpose(FsrvpMachine& m, const Guid& set) {
  const ShadowCopySet* sc = m.Find(set);
  std::vector<std::string> paths;
  if (sc != nullptr) {
    for (const ShadowCopy& c : sc->copies) {
      std::string rel = Relative(c.share, c.volume);
      paths.push_back(c.volume + "/.snapshot/" + c.snapshot + (rel.empty() ? "" : "/" + rel));
    }
  }
  return m.Expose(set, paths, NowNs());
}

}  // namespace

std::string SweepExpiredSets() {
  struct stat st;
  if (stat((StateDir() + "/fsrvp.state").c_str(), &st) != 0) return "";
  Result<Registry> reg = Registry::Open();
  if (!reg.ok()) return "cannot read the FSRVP state: " + reg.status().message() + "\n";
  std::vector<ShadowCopySet> expired;
  if (!reg.value().machine().Expire(NowNs(), &expired)) return "";
  std::string report;
  for (const ShadowCopySet& s : expired) {
    report += "shadow copy set " + s.id.ToString() + " (" + SetStateName(s.state) +
              ") was aborted by the message sequence timer\n";
    CleanUp(s, &report);
  }
  if (Status s = reg.value().Save(); !s.ok())
    report += "cannot save the FSRVP state: " + s.message();
  return report;
}

std::string SetHelp() {
  return "Usage: vssctl [--json] set COMMAND ...\n"
         "\n"
         "Shadow copy sets with Remote VSS (MS-FSRVP) semantics over vssfs volumes.\n"
         "\n"
         "  set start --context CTX          start a set (prints its GUID)\n"
         "  set add SET [--strict] PATH...   add shares (directories on vssfs volumes); a\n"
         "                                   share failing vssctl check is warned about, or\n"
         "                                   refused with --strict\n"
         "  set prepare SET                  PrepareShadowCopySet\n"
         "  set commit SET                   take the shadow copies (one snapshot per volume)\n"
         "  set expose SET                   expose them (prints each shadow copy's path)\n"
         "  set recovery-complete SET        end recovery: auto-recovery copies are frozen\n"
         "                                   read-only for good (EROFS, also for open files)\n"
         "  set abort SET                    abort a set not yet recovered (drops its snapshots)\n"
         "  set rollback SET                 nas-rollback / app-rollback sets: revert every\n"
         "                                   share's live tree to its shadow copy (vssctl\n"
         "                                   rollback --help); Exposed or Recovered sets\n"
         "  set delete SET [--delete-snapshots]\n"
         "                                   remove the exposure; snapshots are kept unless asked\n"
         "  set list | set show SET\n"
         "  set create-expose --context CTX [--auto-recovery] [--strict] [--files LIST] PATH...\n"
         "                                   start, add, prepare, commit and expose in one go\n"
         "  (set start and create-expose take --files LIST: a target file list, one path per\n"
         "  line; the shadow copies then protect and show only those files and their\n"
         "  directories, and writes to other files pay no copy-on-write)\n"
         "\n"
         "CTX: backup (0x0), file-share-backup (0x10), nas-rollback (0x19), app-rollback (0x9),\n"
         "optionally +auto-recovery or +no-auto-recovery; or a number. With auto-recovery\n"
         "(or --auto-recovery), commit gives every shadow copy a writable clone at its path\n"
         "(MOUNT/.snapshot/NAME/...): writes go to the block store, seen only there, until\n"
         "recovery-complete (or set delete) freezes it. Without, copies are read-only.\n"
         "\n"
         "State: $VSSFS_STATE_DIR (default /var/lib/vssfs)/fsrvp.state; the message sequence\n"
         "timer (180 s, 1800 s after add, prepare and get-mapping) aborts stalled sets, checked\n"
         "on every vssctl set command ($VSSFS_FSRVP_TIMEOUTS=SHORT,LONG in seconds overrides).\n"
         "\n"
         "Exit status: 0 success, 2 invalid argument, 3 no such set or share, 6 already\n"
         "exists, 7 other FSRVP error (the message names it, e.g. FSRVP_E_BAD_STATE), 1 other\n"
         "failures.\n";
}

CommandResult RunSetCommand(const std::vector<std::string>& args, bool json) {
  if (args.size() < 2 || WantsHelp(args)) {
    CommandResult r;
    r.out = SetHelp();
    r.exit_code = args.size() < 2 && !WantsHelp(args) ? kExitUsage : kExitOk;
    return r;
  }
  const std::string& sub = args[1];
  Result<Registry> reg = Registry::Open();
  if (!reg.ok()) return Fail(ExitCodeFor(reg.status().error()), reg.status().message());
  FsrvpMachine& m = reg.value().machine();
  CommandResult r;
  // The message sequence timer.
  std::vector<ShadowCopySet> expired;
  if (m.Expire(NowNs(), &expired)) {
    for (const ShadowCopySet& s : expired) {
      r.err += "vssctl: shadow copy set " + s.id.ToString() + " (" + SetStateName(s.state) +
               ") was aborted by the message sequence timer\n";
      CleanUp(s, &r.err);
    }
  }
  FsrvpStatus st;
  std::optional<Guid> shown;
  auto need_set = [&](size_t i) -> Result<Guid> { return SetArg(args, i); };

  if (sub == "start" || sub == "create-expose") {
    std::optional<uint32_t> ctx;
    std::vector<std::string> paths;
    std::vector<std::string> files;
    bool strict = false;
    for (size_t i = 2; i < args.size(); ++i) {
      if (args[i] == "--files" && i + 1 < args.size()) {
        char cwd[PATH_MAX];
        if (getcwd(cwd, sizeof cwd) == nullptr) return Fail(kExitFailed, "getcwd failed");
        Result<std::vector<std::string>> list = ReadFileList(args[++i], cwd);
        if (!list.ok()) {
          return Fail(list.status().error() == EINVAL ? kExitUsage : kExitNotFound,
                      list.status().message());
        }
        for (std::string& f : list.value()) {
          // The volume's own spelling of the path (symlinks to it resolved).
          char real[PATH_MAX];
          if (realpath(f.c_str(), real) == nullptr) {
            return Fail(kExitNotFound, "target file " + f + ": " + std::strerror(errno));
          }
          files.emplace_back(real);
        }
      } else if (args[i] == "--context" && i + 1 < args.size()) {
        ctx = ParseContext(args[++i]);
        if (!ctx)
          return Fail(kExitUsage, "invalid context '" + args[i] + "' (see vssctl set --help)");
      } else if (args[i] == "--strict") {
        strict = true;
      } else if (args[i] == "--auto-recovery") {
        if (!ctx) ctx = kCtxBackup;
        *ctx |= kAttrAutoRecovery;
      } else if (sub == "create-expose" && args[i][0] != '-') {
        paths.push_back(args[i]);
      } else {
        return Fail(kExitUsage, "set " + sub + ": unexpected argument '" + args[i] + "'");
      }
    }
    if (!ctx) return Fail(kExitUsage, "set " + sub + ": --context is required");
    if (sub == "create-expose" && paths.empty()) {
      return Fail(kExitUsage, "set create-expose: at least one PATH is needed");
    }
    Guid id;
    st = DoStart(m, *ctx, &id);
    shown = id;
    if (st.ok() && !files.empty()) st = m.SetFiles(id, files);
    if (st.ok() && sub == "create-expose") {
      for (const std::string& p : paths) {
        st = DoAdd(m, id, p, strict, &r.err);
        if (!st.ok()) break;
      }
      if (st.ok()) st = m.Prepare(id, NowNs());
      if (st.ok()) st = DoCommit(m, id, &r.err);
      if (st.ok()) st = DoExpose(m, id);
      if (!st.ok() && m.Find(id) != nullptr) {
        ShadowCopySet removed;
        if (m.Abort(id, NowNs(), &removed).ok()) CleanUp(removed, &r.err);
      }
    }
  } else if (sub == "add") {
    Result<Guid> set = need_set(2);
    if (!set.ok()) return Fail(kExitUsage, set.status().message());
    if (args.size() < 4) return Fail(kExitUsage, "set add: PATH missing");
    const bool strict = std::find(args.begin() + 3, args.end(), "--strict") != args.end();
    for (size_t i = 3; i < args.size() && st.ok(); ++i) {
      if (args[i] != "--strict") st = DoAdd(m, set.value(), args[i], strict, &r.err);
    }
    shown = set.value();
  } else if (sub == "prepare" || sub == "commit" || sub == "expose" || sub == "recovery-complete" ||
             sub == "abort" || sub == "show" || sub == "rollback") {
    Result<Guid> set = need_set(2);
    if (!set.ok()) return Fail(kExitUsage, set.status().message());
    if (args.size() > 3)
      return Fail(kExitUsage, "set " + sub + ": unexpected argument '" + args[3] + "'");
    const Guid id = set.value();
    shown = id;
    if (sub == "prepare") {
      st = m.Prepare(id, NowNs());
    } else if (sub == "commit") {
      st = DoCommit(m, id, &r.err);
    } else if (sub == "expose") {
      st = DoExpose(m, id);
    } else if (sub == "recovery-complete") {
      // Without auto-recovery the copies are read-only from the start; with
      // it, they are frozen first (the state changes only once they are).
      const ShadowCopySet* s = m.Find(id);
      if (s != nullptr && s->state == SetState::kExposed && !Freeze(*s, &r.err)) {
        st = FsrvpStatus::Error(FsrvpError::kUnexpected,
                                "the shadow copies could not all be made read-only");
      } else {
        st = m.RecoveryComplete(id, NowNs());
      }
    } else if (sub == "rollback") {
      std::string done;
      st = DoRollback(m, id, &done);
      if (!json) r.out += done;
    } else if (sub == "abort") {
      ShadowCopySet removed;
      st = m.Abort(id, NowNs(), &removed);
      if (st.ok()) {
        CleanUp(removed, &r.err);
        r.out = json ? "{\"aborted\":" + JsonString(id.ToString()) + "}\n"
                     : "aborted shadow copy set " + id.ToString() + "\n";
        shown.reset();
      }
    } else if (m.Find(id) == nullptr) {
      st = FsrvpStatus::Error(FsrvpError::kShadowCopySetIdMismatch,
                              "no shadow copy set " + id.ToString());
    }
  } else if (sub == "delete") {
    Result<Guid> set = need_set(2);
    if (!set.ok()) return Fail(kExitUsage, set.status().message());
    bool delete_snapshots = false;
    for (size_t i = 3; i < args.size(); ++i) {
      if (args[i] == "--delete-snapshots") {
        delete_snapshots = true;
      } else {
        return Fail(kExitUsage, "set delete: unexpected argument '" + args[i] + "'");
      }
    }
    const ShadowCopySet* s = m.Find(set.value());
    if (s == nullptr) {
      st = FsrvpStatus::Error(FsrvpError::kObjectNotFound,
                              "no shadow copy set " + set.value().ToString());
    } else {
      ShadowCopySet copy = *s;
      for (const ShadowCopy& c : copy.copies) {
        st = m.DeleteShareMapping(copy.id, c.id, c.share, nullptr);
        if (!st.ok()) break;
      }
      if (st.ok()) {
        if (delete_snapshots) {
          CleanUp(copy, &r.err);
        } else {
          // Kept as backups, frozen, under the retention policy.
          (void)Freeze(copy, &r.err);
          ReleaseHolds(copy, &r.err);
        }
        r.out =
            json ? "{\"deleted\":" + JsonString(copy.id.ToString()) +
                       ",\"snapshots_kept\":" + (delete_snapshots ? "false" : "true") + "}\n"
                 : "deleted shadow copy set " + copy.id.ToString() +
                       (delete_snapshots ? " and its snapshots\n" : "; its snapshots are kept\n");
      }
    }
  } else if (sub == "list") {
    if (json) {
      r.out = "[";
      for (size_t i = 0; i < m.sets().size(); ++i) {
        if (i > 0) r.out += ',';
        r.out += SetJson(m.sets()[i]);
      }
      r.out += "]\n";
    } else {
      for (const ShadowCopySet& s : m.sets()) r.out += SetText(s);
      if (m.sets().empty()) r.out = "no shadow copy sets\n";
    }
  } else {
    return Fail(kExitUsage, "set: unknown command '" + sub + "' (see vssctl set --help)");
  }
  if (Status s = reg.value().Save(); !s.ok()) return Fail(kExitFailed, s.message());
  if (!st.ok()) {
    CommandResult f = FromFsrvp(st);
    f.err = r.err + f.err;
    return f;
  }
  if (shown) {
    const ShadowCopySet* s = m.Find(*shown);
    if (s != nullptr) r.out += json ? SetJson(*s) + "\n" : SetText(*s);
  }
  return r;
}

}  // namespace vssfs::snapshot_ctl
