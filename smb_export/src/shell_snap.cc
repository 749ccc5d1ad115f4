// vfs_shell_snap commands over vssctl (see shell_snap.h).
#include "vssfs/smb_export/shell_snap.h"

#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

namespace vssfs::smb_export {
namespace {

int64_t NowS() { return static_cast<int64_t>(time(nullptr)); }

std::string SnapshotPath(const std::string& volume, const std::string& name) {
  return volume + "/.snapshot/" + name;
}

// How long the volumes of a set spanning several hold writes at most while
// their snapshots are taken (as vssctl set commit).
constexpr int kHoldTimeoutMs = 10000;

// Margin past Samba's message sequence timer before a snapshot Samba never
// exposed is taken as abandoned.
constexpr int64_t kReapGraceS = 5;

// Runs argv (no shell); captures stdout and stderr. Returns the exit status,
// or -1 when it could not run.
int Run(const std::vector<std::string>& argv, std::string* out, std::string* err) {
  int o[2], e[2];
  if (pipe2(o, O_CLOEXEC) != 0) return -1;
  if (pipe2(e, O_CLOEXEC) != 0) {
    close(o[0]);
    close(o[1]);
    return -1;
  }
  const pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    dup2(o[1], 1);
    dup2(e[1], 2);
    std::vector<char*> args;
    for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execvp(args[0], args.data());
    _exit(127);
  }
  close(o[1]);
  close(e[1]);
  pollfd fds[2] = {{o[0], POLLIN, 0}, {e[0], POLLIN, 0}};
  int open_fds = 2;
  char buf[4096];
  while (open_fds > 0) {
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || fds[i].revents == 0) continue;
      ssize_t n = read(fds[i].fd, buf, sizeof buf);
      if (n > 0) {
        (i == 0 ? out : err)->append(buf, static_cast<size_t>(n));
      } else if (n == 0 || errno != EINTR) {
        close(fds[i].fd);
        fds[i].fd = -1;
        --open_fds;
      }
    }
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// The string value of "key" in a flat JSON object, or "".
std::string JsonField(const std::string& json, const std::string& key) {
  const std::string k = "\"" + key + "\":\"";
  size_t at = json.find(k);
  if (at == std::string::npos) return "";
  at += k.size();
  return json.substr(at, json.find('"', at) - at);
}

struct State {
  struct Pending {
    std::string share;
    int64_t at = 0;
  };
  struct Taken {
    std::string share, snapshot;
    int64_t at = 0;
  };
  struct Exposed {
    std::string volume;
    int count = 0;   // Creates answered with it (Samba's shadow copies of it).
    int64_t at = 0;  // When it was taken (0: unknown, state of an older vssfs-smb).
  };
  std::vector<Pending> pending;
  std::vector<Taken> taken;
  // By snapshot path (VOLUME/.snapshot/NAME): names repeat across volumes.
  std::map<std::string, Exposed> exposed;
};

class Registry {
 public:
  // Locks and loads STATE_DIR/smb.state; false with *why on failure.
  bool Open(const std::string& dir, std::string* why) {
    dir_ = dir;
    if (mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
      *why = "cannot create " + dir + ": " + std::strerror(errno);
      return false;
    }
    lock_ = open((dir + "/smb.lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (lock_ < 0 || flock(lock_, LOCK_EX) != 0) {
      *why = "cannot lock " + dir + "/smb.lock: " + std::strerror(errno);
      return false;
    }
    std::ifstream in(dir + "/smb.state");
    std::string line;
    if (in && std::getline(in, line) && line != "vssfs-smb 1") {
      *why = dir + "/smb.state: unknown format";
      return false;
    }
    while (std::getline(in, line)) {
      std::istringstream words(line);
      std::string kind;
      words >> kind;
      if (kind == "pending") {
        State::Pending p;
        words >> p.share >> p.at;
        if (words) state.pending.push_back(p);
      } else if (kind == "taken") {
        State::Taken t;
        words >> t.share >> t.snapshot >> t.at;
        if (words) state.taken.push_back(t);
      } else if (kind == "exposed") {
        std::string snap;
        State::Exposed e;
        if (words >> snap >> e.volume >> e.count) {
          if (!(words >> e.at)) e.at = 0;  // Written before the time was kept.
          state.exposed[SnapshotPath(e.volume, snap)] = e;
        }
      }
    }
    return true;
  }
  ~Registry() {
    if (lock_ >= 0) close(lock_);
  }
  bool Save(std::string* why) {
    const std::string path = dir_ + "/smb.state", tmp = path + ".tmp";
    {
      std::ofstream out(tmp, std::ios::trunc);
      out << "vssfs-smb 1\n";
      for (const auto& p : state.pending) out << "pending " << p.share << ' ' << p.at << '\n';
      for (const auto& t : state.taken) {
        out << "taken " << t.share << ' ' << t.snapshot << ' ' << t.at << '\n';
      }
      for (const auto& [path, e] : state.exposed) {
        out << "exposed " << path.substr(path.rfind('/') + 1) << ' ' << e.volume << ' ' << e.count
            << ' ' << e.at << '\n';
      }
      out.flush();
      if (!out) {
        *why = "cannot write " + tmp;
        return false;
      }
    }
    const int fd = open(tmp.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
      fsync(fd);
      close(fd);
    }
    if (rename(tmp.c_str(), path.c_str()) != 0) {
      *why = "cannot replace " + path + ": " + std::strerror(errno);
      return false;
    }
    return true;
  }
  State state;

 private:
  std::string dir_;
  int lock_ = -1;
};

class Commands {
 public:
  Commands(const ShellSnapOptions& o, std::ostream& out, std::ostream& err)
      : o_(o), out_(out), err_(err) {}

  int CheckPath(const std::string& path) {
    std::string share, volume;
    if (!Share(path, &share, &volume)) return 1;
    std::string cout, cerr;
    const int rc = Run({o_.vssctl, "check", share}, &cout, &cerr);
    if (rc == 5) {
      err_ << "vssfs-smb: " << share << " fails the structure check:\n" << cout;
      if (o_.strict) return 1;
    } else if (rc != 0) {
      err_ << "vssfs-smb: vssctl check " << share << ": " << cerr;
      return 1;
    }
    Registry reg;
    std::string why;
    if (!reg.Open(o_.state_dir, &why)) return Fail(why);
    Expire(&reg.state);
    auto& p = reg.state.pending;
    p.erase(std::remove_if(p.begin(), p.end(), [&](const auto& x) { return x.share == share; }),
            p.end());
    p.push_back({share, NowS()});
    return reg.Save(&why) ? 0 : Fail(why);
  }

  int Create(const std::string& path) {
    std::string share, volume;
    if (!Share(path, &share, &volume)) return 1;
    Registry reg;
    std::string why;
    if (!reg.Open(o_.state_dir, &why)) return Fail(why);
    Expire(&reg.state);
    State& s = reg.state;
    std::string snap;
    auto taken = std::find_if(s.taken.begin(), s.taken.end(),
                              [&](const auto& t) { return t.share == share; });
    if (taken != s.taken.end()) {
      // Another share of the same set took the volume's snapshot already.
      snap = taken->snapshot;
      s.taken.erase(taken);
    } else {
      // The first create of a set: every volume with a share announced for
      // it is taken now, at one instant (Take), and the other shares'
      // creates answer from these snapshots.
      std::map<std::string, std::string> volume_of;  // Announced share -> volume.
      std::vector<std::string> volumes = {volume};
      for (const auto& p : s.pending) {
        const std::string v = VolumeOf(p.share);
        if (v.empty()) continue;  // Unmounted since it was announced.
        volume_of[p.share] = v;
        if (std::find(volumes.begin(), volumes.end(), v) == volumes.end()) volumes.push_back(v);
      }
      std::map<std::string, std::string> snaps;  // Volume -> snapshot.
      if (!Take(volumes, &snaps)) return 1;
      snap = snaps[volume];
      const int64_t now = NowS();
      for (const auto& [v, name] : snaps) {
        if (v != volume) s.exposed[SnapshotPath(v, name)] = {v, 0, now};  // No create yet.
      }
      for (const auto& [p, v] : volume_of) {
        if (p != share) s.taken.push_back({p, snaps[v], now});
      }
      s.pending.clear();
    }
    s.pending.erase(std::remove_if(s.pending.begin(), s.pending.end(),
                                   [&](const auto& p) { return p.share == share; }),
                    s.pending.end());
    State::Exposed& e = s.exposed[SnapshotPath(volume, snap)];
    e.volume = volume;
    ++e.count;
    if (e.at == 0) e.at = NowS();
    if (!reg.Save(&why)) return Fail(why);
    const std::string rel = share == volume ? "" : share.substr(volume.size());
    out_ << SnapshotPath(volume, snap) << rel << "\n";
    return 0;
  }

  int Delete(const std::string& base, const std::string& snap_path) {
    (void)base;
    Registry reg;
    std::string why;
    if (!reg.Open(o_.state_dir, &why)) return Fail(why);
    std::string volume, snap;
    if (!SplitShadowCopyPath(snap_path, &volume, &snap)) {
      return Fail(snap_path + " is not a vssfs shadow copy path");
    }
    auto it = reg.state.exposed.find(SnapshotPath(volume, snap));
    if (it != reg.state.exposed.end() && --it->second.count > 0) {
      return reg.Save(&why) ? 0 : Fail(why);
    }
    if (it != reg.state.exposed.end()) reg.state.exposed.erase(it);
    // The last exposure: frozen for good, kept under the retention policy.
    if (Retire(volume, snap) != 0) return 1;
    return reg.Save(&why) ? 0 : Fail(why);
  }

  // See ReapAbandoned (shell_snap.h).
  int Reap(const std::set<std::string>& samba_keeps, int64_t sequence_timeout_s) {
    Registry reg;
    std::string why;
    if (!reg.Open(o_.state_dir, &why)) return Fail(why);
    State& s = reg.state;
    const int64_t deadline = NowS() - sequence_timeout_s - kReapGraceS;
    int rc = 0;
    bool changed = false;
    for (auto it = s.exposed.begin(); it != s.exposed.end();) {
      const auto& [path, e] = *it;
      if (e.at == 0 || e.at > deadline || samba_keeps.count(path)) {
        ++it;
        continue;
      }
      const std::string name = path.substr(path.rfind('/') + 1);
      if (e.count == 0) {
        // Taken for a share whose create never came: nobody ever saw it.
        std::string cout, cerr;
        (void)Run({o_.vssctl, "-m", e.volume, "snapshot", "release", name}, &cout, &cerr);
        if (Run({o_.vssctl, "-m", e.volume, "snapshot", "delete", name}, &cout, &cerr) != 0) {
          err_ << "vssfs-smb: cannot delete unused snapshot " << name << " of " << e.volume << ": "
               << cerr;
          rc = 1;
          ++it;
          continue;
        }
        err_ << "vssfs-smb: deleted snapshot " << name << " of " << e.volume
             << ": taken for a Samba shadow copy set that never used it" << std::endl;
      } else {
        if (Retire(e.volume, name) != 0) {
          rc = 1;
          ++it;
          continue;
        }
        err_ << "vssfs-smb: froze snapshot " << name << " of " << e.volume
             << " and left it to retention: its Samba shadow copy set was not exposed within "
             << sequence_timeout_s << " s (the FSRVP message sequence timer)" << std::endl;
      }
      const std::string& volume = e.volume;  // (A lambda cannot capture a binding.)
      s.taken.erase(std::remove_if(s.taken.begin(), s.taken.end(),
                                   [&](const auto& t) {
                                     return t.snapshot == name && Within(t.share, volume);
                                   }),
                    s.taken.end());
      it = s.exposed.erase(it);
      changed = true;
    }
    if (changed && !reg.Save(&why)) return Fail(why);
    return rc;
  }

 private:
  // Freezes a snapshot Samba is done with, releases it and applies the
  // volume's retention policy: kept as a backup, or deleted by the policy.
  int Retire(const std::string& volume, const std::string& snap) {
    if (FreezeShadowCopy(o_, SnapshotPath(volume, snap), err_) != 0) return 1;
    std::string cout, cerr;
    if (Run({o_.vssctl, "-m", volume, "snapshot", "release", snap}, &cout, &cerr) != 0) {
      err_ << "vssfs-smb: warning: cannot release " << snap << ": " << cerr;
    }
    (void)Run({o_.vssctl, "-m", volume, "retention", "apply"}, &cout, &cerr);
    return 0;
  }

  // Takes one snapshot of each of `volumes` at one instant (with several,
  // writes are held on all of them first: the cross-volume barrier of
  // vssctl set commit), gives each a writable clone and holds it. On
  // failure nothing stays taken and the reason is printed.
  bool Take(const std::vector<std::string>& volumes, std::map<std::string, std::string>* snaps) {
    std::string cout, cerr;
    std::vector<std::string> held;
    auto release = [&] {
      for (const std::string& v : held) {
        std::string o, e;
        (void)Run({o_.vssctl, "-m", v, "snapshot", "barrier-release"}, &o, &e);
      }
      held.clear();
    };
    auto undo = [&](const std::string& why) {
      release();
      for (const auto& [v, name] : *snaps) {
        std::string o, e;
        (void)Run({o_.vssctl, "-m", v, "snapshot", "release", name}, &o, &e);
        (void)Run({o_.vssctl, "-m", v, "snapshot", "delete", name}, &o, &e);
      }
      snaps->clear();
      Fail(why);
      return false;
    };
    if (volumes.size() > 1) {
      for (const std::string& v : volumes) {
        cerr.clear();
        if (Run({o_.vssctl, "-m", v, "snapshot", "barrier", "--timeout-ms",
                 std::to_string(kHoldTimeoutMs)},
                &cout, &cerr) != 0) {
          return undo("cannot hold the writes of " + v + ": " + cerr);
        }
        held.push_back(v);
      }
    }
    for (const std::string& v : volumes) {
      std::vector<std::string> create = {o_.vssctl, "-m", v, "--json", "snapshot", "create"};
      if (!held.empty()) create.push_back("--held");
      cout.clear();
      cerr.clear();
      if (Run(create, &cout, &cerr) != 0) return undo("snapshot of " + v + " failed: " + cerr);
      const std::string name = JsonField(cout, "name");
      if (name.empty()) return undo("unexpected reply from vssctl: " + cout);
      (*snaps)[v] = name;
    }
    release();
    for (const auto& [v, name] : *snaps) {
      // Writable for auto-recovery until the exposure goes (Samba never
      // says whether the requestor asked for it); held while exposed.
      cerr.clear();
      if (Run({o_.vssctl, "-m", v, "snapshot", "clone", name}, &cout, &cerr) != 0 ||
          Run({o_.vssctl, "-m", v, "snapshot", "hold", name, "--reason", "Samba FSRVP shadow copy"},
              &cout, &cerr) != 0) {
        return undo("cannot prepare snapshot " + name + " of " + v + ": " + cerr);
      }
    }
    return true;
  }

  // The vssfs volume holding `path` (its longest mount point), or "".
  std::string VolumeOf(const std::string& path) const {
    std::string volume;
    for (const std::string& m : mounts_) {
      if (Within(path, m) && m.size() > volume.size()) volume = m;
    }
    return volume;
  }

  int Fail(const std::string& why) {
    err_ << "vssfs-smb: " << why << (why.empty() || why.back() != '\n' ? "\n" : "");
    return 1;
  }

  static bool Within(const std::string& path, const std::string& volume) {
    return path == volume || path.rfind(volume + "/", 0) == 0;
  }

  void Expire(State* s) const {
    const int64_t limit = NowS() - o_.batch_window_s;
    s->pending.erase(std::remove_if(s->pending.begin(), s->pending.end(),
                                    [&](const auto& p) { return p.at < limit; }),
                     s->pending.end());
    s->taken.erase(std::remove_if(s->taken.begin(), s->taken.end(),
                                  [&](const auto& t) { return t.at < limit; }),
                   s->taken.end());
  }

  // The share's canonical path and its vssfs volume.
  bool Share(const std::string& path, std::string* share, std::string* volume) {
    if (!PlainSharePath(path)) {
      Fail("share path '" + path +
           "' is not plain (letters, digits and /._-+@,:= only): Samba passes it to "
           "shell_snap commands unquoted");
      return false;
    }
    char real[PATH_MAX];
    if (realpath(path.c_str(), real) == nullptr) {
      Fail(path + ": " + std::strerror(errno));
      return false;
    }
    *share = real;
    std::string why;
    if (!VssfsVolumes(o_.vssctl, &mounts_, &why)) {
      Fail(why);
      return false;
    }
    *volume = VolumeOf(*share);
    if (volume->empty()) {
      Fail(*share + " is not on a vssfs volume");
      return false;
    }
    if (share->rfind(*volume + "/.snapshot", 0) == 0) {
      Fail(*share + " is inside a snapshot");
      return false;
    }
    return true;
  }

  const ShellSnapOptions& o_;
  std::ostream& out_;
  std::ostream& err_;
  std::vector<std::string> mounts_;  // The vssfs mount points (Share fills it).
};

}  // namespace

bool VssfsVolumes(const std::string& vssctl, std::vector<std::string>* out, std::string* error) {
  std::string cout, cerr;
  if (Run({vssctl, "--json", "mounts"}, &cout, &cerr) != 0) {
    *error = "vssctl mounts failed: " + cerr;
    return false;
  }
  out->clear();
  for (size_t at = cout.find('"'); at != std::string::npos; at = cout.find('"', at + 1)) {
    const size_t end = cout.find('"', at + 1);
    if (end == std::string::npos) break;
    out->push_back(cout.substr(at + 1, end - at - 1));
    at = end;
  }
  return true;
}

bool SplitShadowCopyPath(const std::string& path, std::string* volume, std::string* snapshot) {
  const std::string marker = "/.snapshot/";
  const size_t at = path.find(marker);
  if (at == std::string::npos) return false;
  *volume = path.substr(0, at);
  const std::string rest = path.substr(at + marker.size());
  *snapshot = rest.substr(0, rest.find('/'));
  return true;
}

int FreezeShadowCopy(const ShellSnapOptions& options, const std::string& snap_path,
                     std::ostream& err) {
  std::string volume, snap;
  if (!SplitShadowCopyPath(snap_path, &volume, &snap)) {
    err << "vssfs-smb: " << snap_path << " is not a vssfs shadow copy path\n";
    return 1;
  }
  std::string cout, cerr;
  const int rc = Run({options.vssctl, "-m", volume, "snapshot", "freeze", snap}, &cout, &cerr);
  if (rc != 0 && rc != 2) {  // 2: the snapshot has no clone (read-only already).
    err << "vssfs-smb: cannot freeze " << snap << " of " << volume << ": " << cerr;
    return 1;
  }
  return 0;
}

int ReapAbandoned(const ShellSnapOptions& options, const std::set<std::string>& samba_keeps,
                  int64_t sequence_timeout_s, std::ostream& log) {
  std::ostringstream out;
  Commands c(options, out, log);
  return c.Reap(samba_keeps, sequence_timeout_s);
}

bool PlainSharePath(const std::string& path) {
  if (path.empty() || path[0] != '/' || path.size() >= PATH_MAX) return false;
  return std::all_of(path.begin(), path.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           std::strchr("/._-+@,:=", c) != nullptr;
  });
}

int RunShellSnap(const ShellSnapOptions& options, const std::vector<std::string>& args,
                 std::ostream& out, std::ostream& err) {
  Commands c(options, out, err);
  if (args.size() == 2 && args[0] == "check-path") return c.CheckPath(args[1]);
  if (args.size() == 2 && args[0] == "create") return c.Create(args[1]);
  if (args.size() == 3 && args[0] == "delete") return c.Delete(args[1], args[2]);
  err << "usage: vssfs-smb [--vssctl PATH] [--state-dir DIR] [--strict]\n"
         "         check-path SHARE_PATH | create SHARE_PATH | delete BASE_PATH SNAP_PATH\n";
  return 2;
}

}  // namespace vssfs::smb_export
