// vssfs-smb against a real smbd: Samba's FSRVP server (rpcclient fss_*)
// drives the shell_snap commands over shares of a vssfs volume. smbd runs
// on 127.0.0.1 on a free port above 1024 with every state directory in a
// private temporary directory, and is stopped (with the helpers it started)
// by PID at the end of each test.
#include "vssfs/smb_export/shell_snap.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <tdb.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "test_support.h"

namespace {

using vssfs::testing::ReadFile;
using vssfs::testing::RunCommand;
using vssfs::testing::ScopedMount;
using vssfs::testing::TempDir;
using vssfs::testing::VolumeDirs;

sockaddr_in Loopback(int port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return a;
}

int FreePort() {
  std::random_device rd;
  for (int attempt = 0; attempt < 50; ++attempt) {
    const int port = 20000 + static_cast<int>(rd() % 30000);
    int s = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a = Loopback(port);
    const bool ok = bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
    close(s);
    if (ok) return port;
  }
  return -1;
}

// Runs argv in a process group of its own (its id is the PID): the
// server and every worker it forks are stopped together by Stop().
pid_t StartGroup(const std::vector<std::string>& argv) {
  const pid_t pid = fork();
  if (pid == 0) {
    setpgid(0, 0);
    int null = open("/dev/null", O_RDWR);
    dup2(null, 0);
    dup2(null, 1);
    dup2(null, 2);
    std::vector<char*> args;
    for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execvp(args[0], args.data());
    _exit(127);
  }
  if (pid > 0) setpgid(pid, pid);
  return pid;
}
void StopGroup(pid_t pid) {
  if (pid <= 0) return;
  kill(-pid, SIGTERM);
  int status;
  for (int i = 0; i < 100 && waitpid(pid, &status, WNOHANG) == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  kill(-pid, SIGKILL);  // Workers that outlived the server.
  waitpid(pid, &status, 0);
}

// smbd serving `shares` (name -> path) with vfs_shell_snap over vssfs-smb.
class SmbServer {
 public:
  // Each share exports a directory of the vssfs volume mounted at `volume`
  // with shadow_copy2 (Previous Versions, docs/SAMBA.md) and shell_snap.
  SmbServer(const std::string& dir, const std::vector<std::pair<std::string, std::string>>& shares,
            const std::string& state_dir, const std::string& volume, bool previous_versions)
      : dir_(dir), port_(FreePort()) {
    REQUIRE(port_ > 0);
    for (const char* d : {"lock", "state", "cache", "private", "pid", "ncalrpc"}) {
      REQUIRE(mkdir((dir_ + "/" + d).c_str(), 0755) == 0);
    }
    const std::string cmd = std::string(VSSFS_SMB_BINARY) + " --vssctl " + VSSFS_VSSCTL_BINARY +
                            " --state-dir " + state_dir;
    std::ofstream conf(Conf());
    conf << "[global]\n  netbios name = VSSFSTEST\n  workgroup = WG\n  smb ports = " << port_
         << "\n  interfaces = 127.0.0.1\n  bind interfaces only = yes\n"
         << "  server role = standalone server\n  registry shares = yes\n  include = registry\n"
         // The RPC server (FSRVP included) is started here, not by smbd:
         // samba-dcerpcd started on demand would leave its own session.
         << "  rpc start on demand helpers = false\n";
    for (const char* d : {"lock", "state", "cache", "pid"}) {
      conf << "  " << d << " directory = " << dir_ << "/" << d << "\n";
    }
    conf << "  ncalrpc dir = " << dir_ << "/ncalrpc\n";
    conf << "  private dir = " << dir_ << "/private\n  passdb backend = tdbsam:" << dir_
         << "/private/passdb.tdb\n  log file = " << dir_ << "/log.%m\n";
    for (const auto& [name, path] : shares) {
      conf << "[" << name << "]\n  path = " << path << "\n  read only = no\n"
           << "  vfs objects = " << (previous_versions ? "shadow_copy2 " : "") << "shell_snap\n"
           << "  shadow:mountpoint = " << volume << "\n  shadow:snapdir = .snapshot\n"
           << "  shadow:format = @GMT-%Y.%m.%d-%H.%M.%S\n  shadow:localtime = no\n"
           << "  shadow:sort = desc\n  shadow:fixinodes = no\n"
           << "  shell_snap:check path command = " << cmd << " check-path\n"
           << "  shell_snap:create command = " << cmd << " create\n"
           << "  shell_snap:delete command = " << cmd << " delete\n";
    }
    conf.close();
    std::string out;
    REQUIRE(RunCommand({"sh", "-c",
                        std::string("printf 'secret\\nsecret\\n' | smbpasswd -c '") + Conf() +
                            "' -s -a root"},
                       &out) == 0);
    rpcd_ = StartGroup({"/usr/libexec/samba/samba-dcerpcd", "--libexec-rpcds", "--foreground",
                        "--no-process-group", "-s", Conf()});
    pid_ = StartGroup({"smbd", "--foreground", "--no-process-group", "-s", Conf()});
    // Ready when the port answers, then when the FSRVP server (in
    // samba-dcerpcd, which starts on its own) answers too.
    bool up = false;
    for (int i = 0; i < 200 && !up; ++i) {
      int s = socket(AF_INET, SOCK_STREAM, 0);
      sockaddr_in a = Loopback(port_);
      up = connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
      close(s);
      if (!up) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    if (!up) {
      // A constructor that throws gets no destructor: stop them here.
      Stop();
      FAIL("smbd did not start; see " << dir_ << "/log.smbd");
    }
    // Up to 60 s: on a loaded machine samba-dcerpcd and its workers can
    // take a while (10 s was seen to be too short).
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (std::chrono::steady_clock::now() < deadline) {
      if (Rpc("fss_get_sup_version", &out) == 0 &&
          out.find("supports FSRVP versions") != std::string::npos) {
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    Stop();
    FAIL("the FSRVP server did not answer in 60 s: " << out << " (see " << dir_ << "/log.*)");
  }
  ~SmbServer() { Stop(); }
  // Stops smbd and samba-dcerpcd with every worker (their process groups).
  void Stop() {
    StopGroup(pid_);
    StopGroup(rpcd_);
    pid_ = rpcd_ = -1;
  }
  SmbServer(const SmbServer&) = delete;
  SmbServer& operator=(const SmbServer&) = delete;

  std::string Conf() const { return dir_ + "/smb.conf"; }
  // One smbclient command on share `share`; returns its exit status.
  int Client(const std::string& share, const std::string& command, std::string* out) {
    return RunCommand({"timeout", "120", "smbclient", "-s", Conf(), "-p", std::to_string(port_),
                       "-U", "root%secret", "//127.0.0.1/" + share, "-c", command},
                      out);
  }
  // One rpcclient command; returns its exit status and output.
  int Rpc(const std::string& command, std::string* out) {
    return RunCommand({"timeout", "120", "rpcclient", "-s", Conf(), "-p", std::to_string(port_),
                       "-U", "root%secret", "127.0.0.1", "-c", command},
                      out);
  }

 private:
  std::string dir_;
  int port_;
  pid_t pid_ = -1;
  pid_t rpcd_ = -1;
};

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) out.push_back(line);
  return out;
}

// The set id and the two shadow copy ids rpcclient printed.
struct Exposed {
  std::string set;
  std::vector<std::string> copies;  // In share order.
};

Exposed ParseCreateExpose(const std::string& out) {
  Exposed e;
  for (const std::string& l : Lines(out)) {
    const size_t paren = l.find('(');
    if (l.find("shadow-copy set created") != std::string::npos) e.set = l.substr(0, l.find(':'));
    if (paren != std::string::npos && l.find("shadow-copy added to set") != std::string::npos) {
      e.copies.push_back(l.substr(paren + 1, l.find(')') - paren - 1));
    }
  }
  return e;
}

// A vssfs volume whose daemon listens in a private run directory (smbd and
// vssfs-smb find it through VSSFS_RUN_DIR), unmounted at the end.
struct SambaVolume {
  SambaVolume() {
    setenv("VSSFS_RUN_DIR", run.c_str(), 1);
    mount = std::make_unique<ScopedMount>(v.backing, v.mnt,
                                          std::vector<std::string>{"-o", "allow_other"});
  }
  ~SambaVolume() {
    mount2.reset();
    mount.reset();
    unsetenv("VSSFS_RUN_DIR");
  }
  // A second volume served beside the first (same run directory).
  void MountSecond() {
    mount2 = std::make_unique<ScopedMount>(v2.backing, v2.mnt,
                                           std::vector<std::string>{"-o", "allow_other"});
  }
  TempDir tmp;
  VolumeDirs v, v2;
  const std::string run = tmp.Sub("run");
  std::unique_ptr<ScopedMount> mount, mount2;
};

// The names of the snapshots of the volume at `mnt`, oldest first.
std::vector<std::string> SnapshotNames(const std::string& mnt) {
  std::string list;
  REQUIRE(RunCommand({VSSFS_VSSCTL_BINARY, "-m", mnt, "--json", "snapshot", "list"}, &list) == 0);
  std::vector<std::string> names;
  for (size_t at = list.find("\"name\":\""); at != std::string::npos;
       at = list.find("\"name\":\"", at + 1)) {
    names.push_back(list.substr(at + 8, list.find('"', at + 8) - at - 8));
  }
  return names;
}

// vssctl snapshot show SNAP --json of the volume at `mnt`.
std::string ShowSnapshot(const std::string& mnt, const std::string& snap) {
  std::string out;
  REQUIRE(RunCommand({VSSFS_VSSCTL_BINARY, "-m", mnt, "--json", "snapshot", "show", snap}, &out) ==
          0);
  return out;
}

// Stores a set and one shadow copy in Samba's FSRVP state (srv_fss.tdb,
// created if missing) as Samba's server leaves them (watch.cc): the set's
// record is its id string, NUL, padding to 4 bytes, then the state as a
// little-endian u32; the copy's is its id, base path and shadow copy path,
// each NUL-terminated.
void StoreSambaSet(const std::string& tdb_path, const std::string& set, uint32_t state,
                   const std::string& copy, const std::string& base, const std::string& snap_path) {
  std::string rec = set;
  rec += '\0';
  while (rec.size() % 4 != 0) rec += '\0';
  for (int i = 0; i < 4; ++i) rec += static_cast<char>(state >> (8 * i) & 0xff);
  std::string sc = copy;
  sc += '\0';
  sc += base;
  sc += '\0';
  sc += snap_path;
  sc += '\0';
  TDB_CONTEXT* tdb = tdb_open(tdb_path.c_str(), 0, TDB_DEFAULT, O_RDWR | O_CREAT, 0600);
  REQUIRE(tdb != nullptr);
  auto data = [](std::string& str) {
    return TDB_DATA{reinterpret_cast<unsigned char*>(str.data()), str.size()};
  };
  std::string set_key = "sc_set/" + set;
  std::string sc_key = set_key + "/sc/" + copy;
  const int r1 = tdb_store(tdb, data(set_key), data(rec), TDB_REPLACE);
  const int r2 = tdb_store(tdb, data(sc_key), data(sc), TDB_REPLACE);
  tdb_close(tdb);
  REQUIRE(r1 == 0);
  REQUIRE(r2 == 0);
}

// A writer alternating 4 KiB O_DIRECT records between two logs (record n to
// logs[n % 2] at offset n / 2 * 4 KiB, about 5000 a second: many during a
// commit, bounded files). One instant means that the two logs as a snapshot
// shows them hold records 0..k-1 exactly, whatever k is (CheckOneInstant).
class AlternatingWriter {
 public:
  AlternatingWriter(const std::string& log0, const std::string& log1)
      : thread_([this, log0, log1] { Run(log0, log1); }) {
    while (written_ < 200 && !failed_) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  ~AlternatingWriter() { Stop(); }
  void Stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  uint64_t written() const { return written_; }

 private:
  void Run(const std::string& log0, const std::string& log1) {
    int fds[2] = {open(log0.c_str(), O_WRONLY | O_CREAT | O_DIRECT, 0644),
                  open(log1.c_str(), O_WRONLY | O_CREAT | O_DIRECT, 0644)};
    void* mem = nullptr;
    if (fds[0] >= 0 && fds[1] >= 0 && posix_memalign(&mem, 4096, 4096) == 0) {
      char* buf = static_cast<char*>(mem);
      for (uint64_t n = 0; !stop_ && n < 200000; ++n) {
        std::memset(buf, 0, 4096);
        std::memcpy(buf, &n, sizeof n);
        if (pwrite(fds[n % 2], buf, 4096, static_cast<off_t>(n / 2 * 4096)) != 4096) break;
        written_ = n + 1;
        std::this_thread::sleep_for(std::chrono::microseconds(200));
      }
      free(mem);
    }
    for (int fd : fds) {
      if (fd >= 0) close(fd);
    }
    failed_ = true;  // Done, one way or another.
  }
  std::atomic<bool> stop_{false}, failed_{false};
  std::atomic<uint64_t> written_{0};
  std::thread thread_;
};

// The two logs of an AlternatingWriter as a snapshot shows them hold records
// 0..k-1 exactly, with 200 <= k < written; returns k.
size_t CheckOneInstant(const std::string& log0, const std::string& log1, uint64_t written) {
  std::vector<uint64_t> seen;
  const std::string logs[2] = {log0, log1};
  for (int i = 0; i < 2; ++i) {
    const std::string data = ReadFile(logs[i]);
    REQUIRE(data.size() % 4096 == 0);
    for (size_t off = 0; off < data.size(); off += 4096) {
      uint64_t n;
      std::memcpy(&n, data.data() + off, sizeof n);
      CHECK(n == off / 4096 * 2 + static_cast<uint64_t>(i));
      seen.push_back(n);
    }
  }
  std::sort(seen.begin(), seen.end());
  for (size_t i = 0; i < seen.size(); ++i) REQUIRE(seen[i] == i);
  WARN("records in the snapshot: " << seen.size() << " of " << written);
  CHECK(seen.size() >= 200);
  CHECK(seen.size() < written);
  return seen.size();
}

// vssfs-smb watch over Samba's lock directory, stopped (by its process
// group) when it goes.
struct Watcher {
  Watcher(const std::string& state, const std::string& lock_dir,
          const std::vector<std::string>& extra = {}) {
    std::vector<std::string> argv = {
        VSSFS_SMB_BINARY,   "--vssctl", VSSFS_VSSCTL_BINARY, "--state-dir", state, "watch",
        "--samba-lock-dir", lock_dir,   "--interval-ms",     "50"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    pid = StartGroup(argv);
  }
  ~Watcher() { StopGroup(pid); }
  Watcher(const Watcher&) = delete;
  Watcher& operator=(const Watcher&) = delete;
  pid_t pid;
};

// rpcclient fss_create_expose backup rw vm1 vm2 while an AlternatingWriter
// writes log0 and log1; the set as exposed, and the records written.
Exposed CreateExposeWhileWriting(SmbServer& smb, const std::string& log0, const std::string& log1,
                                 uint64_t* written) {
  AlternatingWriter writer(log0, log1);
  std::string out;
  const int rc = smb.Rpc("fss_create_expose backup rw vm1 vm2", &out);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  writer.Stop();
  *written = writer.written();
  INFO(out);
  REQUIRE(rc == 0);
  Exposed e = ParseCreateExpose(out);
  REQUIRE(e.copies.size() == 2);
  return e;
}

}  // namespace

TEST_CASE(
    "vssfs-smb: Samba FSRVP takes both shares of a volume at one instant, then freezes "
    "and keeps the snapshot",
    "[smb_export][samba]") {
  REQUIRE(geteuid() == 0);
  SambaVolume volume;
  TempDir& tmp = volume.tmp;
  VolumeDirs& v = volume.v;
  const std::string s1 = v.mnt + "/vm1", s2 = v.mnt + "/vm2";
  REQUIRE(mkdir(s1.c_str(), 0755) == 0);
  REQUIRE(mkdir(s2.c_str(), 0755) == 0);
  const std::string state = tmp.Sub("vssfs-state");
  REQUIRE(mkdir(tmp.Sub("smb").c_str(), 0755) == 0);
  SmbServer smb(tmp.Sub("smb"), {{"vm1", s1}, {"vm2", s2}}, state, v.mnt, false);
  // The RecoveryComplete watcher.
  Watcher watcher(state, tmp.Sub("smb") + "/lock");
  uint64_t written = 0;
  const Exposed e = CreateExposeWhileWriting(smb, s1 + "/log", s2 + "/log", &written);
  std::string out;

  // One snapshot for both shares.
  std::string list;
  REQUIRE(RunCommand({VSSFS_VSSCTL_BINARY, "-m", v.mnt, "--json", "snapshot", "list"}, &list) == 0);
  const size_t first = list.find("\"name\":\"");
  REQUIRE(first != std::string::npos);
  CHECK(list.find("\"name\":\"", first + 1) == std::string::npos);
  const std::string snap = list.substr(first + 8, list.find('"', first + 8) - first - 8);
  CHECK(list.find("\"clone\":\"writable\"") != std::string::npos);

  // The logs in it: records 0..k-1, split between the shares.
  CheckOneInstant(v.mnt + "/.snapshot/" + snap + "/vm1/log",
                  v.mnt + "/.snapshot/" + snap + "/vm2/log", written);

  // The clone is what Samba exposes: writable for auto-recovery, through
  // SMB too, and only there.
  const std::string exposed1 = "vm1@{" + e.copies[0] + "}";
  const std::string upload = tmp.Sub("upload");
  std::ofstream(upload) << "yes";
  const int put = smb.Client(exposed1, "put " + upload + " recovered", &out);
  INFO("smbclient put: " << out);
  REQUIRE(put == 0);
  CHECK(ReadFile(v.mnt + "/.snapshot/" + snap + "/vm1/recovered") == "yes");
  CHECK(access((s1 + "/recovered").c_str(), F_OK) != 0);

  // RecoveryComplete: the watcher sees Samba record the set Recovered and
  // freezes its copies.
  const std::string probe = v.mnt + "/.snapshot/" + snap + "/vm1/recovered";
  REQUIRE(smb.Rpc("fss_recovery_complete " + e.set, &out) == 0);
  const auto t0 = std::chrono::steady_clock::now();
  bool frozen = false;
  while (!frozen && std::chrono::steady_clock::now() - t0 < std::chrono::seconds(10)) {
    const int fd = open(probe.c_str(), O_WRONLY);
    frozen = fd < 0 && errno == EROFS;
    if (fd >= 0) close(fd);
    if (!frozen) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  const auto delay =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0)
          .count();
  WARN("RecoveryComplete to EROFS: " << delay << " ms");
  REQUIRE(frozen);
  CHECK(delay < 1000);
  // Through SMB as well; what backups read is the instant plus the recovery.
  CHECK(smb.Client(exposed1, "put " + upload + " late", &out) != 0);
  REQUIRE(smb.Client(exposed1, "get recovered " + tmp.Sub("back"), &out) == 0);
  CHECK(ReadFile(tmp.Sub("back")) == "yes");
  // The exposures go one by one; the last releases the hold and leaves the
  // snapshot to retention.
  REQUIRE(smb.Rpc("fss_delete vm1 " + e.set + " " + e.copies[0], &out) == 0);
  REQUIRE(RunCommand({VSSFS_VSSCTL_BINARY, "-m", v.mnt, "--json", "snapshot", "show", snap},
                     &list) == 0);
  CHECK(list.find("\"hold\":\"Samba FSRVP shadow copy\"") != std::string::npos);
  REQUIRE(smb.Rpc("fss_delete vm2 " + e.set + " " + e.copies[1], &out) == 0);
  REQUIRE(RunCommand({VSSFS_VSSCTL_BINARY, "-m", v.mnt, "--json", "snapshot", "show", snap},
                     &list) == 0);
  CHECK(list.find("\"clone\":\"frozen\"") != std::string::npos);
  CHECK(list.find("\"hold\":\"\"") != std::string::npos);
  CHECK(ReadFile(v.mnt + "/.snapshot/" + snap + "/vm1/recovered") == "yes");
  REQUIRE(volume.mount->Unmount() == 0);
}

TEST_CASE("vssfs-smb: share paths a shell would split are refused, and nothing runs",
          "[smb_export]") {
  using vssfs::smb_export::PlainSharePath;
  CHECK(PlainSharePath("/srv/vssfs/vms/vm1"));
  CHECK(PlainSharePath("/srv/a_b-c.d+e@f,g:h=i"));
  CHECK_FALSE(PlainSharePath("relative/path"));
  CHECK_FALSE(PlainSharePath("/srv/with space"));
  CHECK_FALSE(PlainSharePath("/srv/x;touch /tmp/pwned"));
  CHECK_FALSE(PlainSharePath("/srv/$(id)"));
  CHECK_FALSE(PlainSharePath("/srv/'quoted'"));
  TempDir tmp;
  std::string out;
  const std::string evil = tmp.path() + "/x;touch " + tmp.path() + "/pwned";
  CHECK(RunCommand({VSSFS_SMB_BINARY, "--state-dir", tmp.Sub("st"), "check-path", evil}, &out) ==
        1);
  CHECK_THAT(out, Catch::Contains("is not plain"));
  CHECK(access((tmp.path() + "/pwned").c_str(), F_OK) != 0);
  CHECK(RunCommand({VSSFS_SMB_BINARY, "frobnicate"}, &out) == 2);
}

TEST_CASE(
    "Previous Versions: shadow_copy2 over .snapshot lists the snapshots and reads each "
    "version",
    "[smb_export][samba]") {
  REQUIRE(geteuid() == 0);
  SambaVolume volume;
  TempDir& tmp = volume.tmp;
  VolumeDirs& v = volume.v;
  const std::string share = v.mnt + "/docs";
  REQUIRE(mkdir(share.c_str(), 0755) == 0);
  std::vector<std::string> snaps;
  for (int version = 1; version <= 3; ++version) {
    std::ofstream(share + "/report.txt") << "version " << version << "\n";
    if (version == 3) break;
    std::string out;
    REQUIRE(RunCommand({VSSFS_VSSCTL_BINARY, "-m", v.mnt, "--json", "snapshot", "create"}, &out) ==
            0);
    const size_t at = out.find("\"name\":\"");
    snaps.push_back(out.substr(at + 8, out.find('"', at + 8) - at - 8));
  }
  REQUIRE(mkdir(tmp.Sub("smb").c_str(), 0755) == 0);
  SmbServer smb(tmp.Sub("smb"), {{"docs", share}}, tmp.Sub("vssfs-state"), v.mnt, true);
  std::string out;
  REQUIRE(smb.Client("docs", "allinfo report.txt", &out) == 0);
  INFO(out);
  for (const std::string& s : snaps) CHECK_THAT(out, Catch::Contains(s));
  for (size_t i = 0; i < snaps.size(); ++i) {
    std::string name = "v";  // Appended, not "v" + ...: GCC 12 -O3 -Wrestrict.
    name += std::to_string(i);
    const std::string local = tmp.Sub(name);
    REQUIRE(smb.Client("docs", "get " + snaps[i] + "/report.txt " + local, &out) == 0);
    std::string want = "version ";
    want += std::to_string(i + 1);
    want += "\n";
    CHECK(ReadFile(local) == want);
  }
  REQUIRE(smb.Client("docs", "get report.txt " + tmp.Sub("live"), &out) == 0);
  CHECK(ReadFile(tmp.Sub("live")) == "version 3\n");
  // A snapshot with a writable clone (a recovery in progress) is no
  // previous version until it is frozen.
  REQUIRE(RunCommand({VSSFS_VSSCTL_BINARY, "-m", v.mnt, "--json", "snapshot", "create"}, &out) ==
          0);
  const size_t at = out.find("\"name\":\"");
  const std::string recovering = out.substr(at + 8, out.find('"', at + 8) - at - 8);
  REQUIRE(RunCommand({VSSFS_VSSCTL_BINARY, "-m", v.mnt, "snapshot", "clone", recovering}, &out) ==
          0);
  std::ofstream(v.mnt + "/.snapshot/" + recovering + "/docs/report.txt") << "recovering\n";
  REQUIRE(smb.Client("docs", "allinfo report.txt", &out) == 0);
  CHECK_THAT(out, !Catch::Contains(recovering));
  CHECK_THAT(out, Catch::Contains(snaps[0]));
  REQUIRE(RunCommand({VSSFS_VSSCTL_BINARY, "-m", v.mnt, "snapshot", "freeze", recovering}, &out) ==
          0);
  REQUIRE(smb.Client("docs", "allinfo report.txt", &out) == 0);
  CHECK_THAT(out, Catch::Contains(recovering));
  REQUIRE(smb.Client("docs", "get " + recovering + "/report.txt " + tmp.Sub("rec"), &out) == 0);
  CHECK(ReadFile(tmp.Sub("rec")) == "recovering\n");
  REQUIRE(volume.mount->Unmount() == 0);
}

TEST_CASE("vssfs-smb: FSRVP calls Samba refuses, and a share not on vssfs, change nothing",
          "[smb_export][samba]") {
  REQUIRE(geteuid() == 0);
  SambaVolume volume;
  TempDir& tmp = volume.tmp;
  VolumeDirs& v = volume.v;
  const std::string on = v.mnt + "/data", off = tmp.Sub("plain");
  REQUIRE(mkdir(on.c_str(), 0755) == 0);
  REQUIRE(mkdir(off.c_str(), 0755) == 0);
  REQUIRE(mkdir(tmp.Sub("smb").c_str(), 0755) == 0);
  SmbServer smb(tmp.Sub("smb"), {{"data", on}, {"plain", off}}, tmp.Sub("vssfs-state"), v.mnt,
                true);
  std::string out;
  REQUIRE(smb.Rpc("fss_get_sup_version", &out) == 0);
  CHECK_THAT(out, Catch::Contains("supports FSRVP versions from 1 to 1"));
  REQUIRE(smb.Rpc("fss_is_path_sup data", &out) == 0);
  CHECK_THAT(out, Catch::Contains("supports shadow copy requests"));
  // Not on a vssfs volume: check-path fails, Samba refuses the share.
  smb.Rpc("fss_is_path_sup plain", &out);
  CHECK_THAT(out, !Catch::Contains("supports shadow copy requests"));
  // (rpcclient exits 0 whatever the server says: the FSRVP result is read.)
  smb.Rpc("fss_create_expose backup ro plain", &out);
  CHECK_THAT(out, Catch::Contains("result: 0x8004230c"));  // FSRVP_E_NOT_SUPPORTED
  // Unknown share; out-of-order calls (recovery complete of no set).
  smb.Rpc("fss_create_expose backup ro nosuchshare", &out);
  CHECK_THAT(out, Catch::Contains("result: 0x80070057"));  // E_INVALIDARG
  smb.Rpc("fss_recovery_complete 00000000-0000-0000-0000-000000000001", &out);
  CHECK_THAT(out, Catch::Contains("failed"));
  // Nothing was taken.
  REQUIRE(RunCommand({VSSFS_VSSCTL_BINARY, "-m", v.mnt, "--json", "snapshot", "list"}, &out) == 0);
  CHECK(out == "[]\n");
  // A read-only file-share backup set of one share works too.
  REQUIRE(smb.Rpc("fss_create_expose file_share_backup ro data", &out) == 0);
  REQUIRE(RunCommand({VSSFS_VSSCTL_BINARY, "-m", v.mnt, "--json", "snapshot", "list"}, &out) == 0);
  CHECK_THAT(out, Catch::Contains("\"id\":1,"));
  REQUIRE(volume.mount->Unmount() == 0);
}

TEST_CASE("vssfs-smb config: an smb.conf testparm accepts, with both shares per path",
          "[smb_export]") {
  REQUIRE(geteuid() == 0);
  SambaVolume volume;
  const std::string docs = volume.v.mnt + "/docs";
  REQUIRE(mkdir(docs.c_str(), 0755) == 0);
  const std::string samba = volume.tmp.Sub("samba");
  std::string out;
  REQUIRE(RunCommand({VSSFS_SMB_BINARY, "--vssctl", VSSFS_VSSCTL_BINARY, "config", "--port", "4459",
                      "--samba-state-dir", samba, "--loopback", "docs=" + docs},
                     &out) == 0);
  const std::string conf = volume.tmp.Sub("smb.conf");
  std::ofstream(conf) << out;
  CHECK_THAT(out, Catch::Contains("[docs]") && Catch::Contains("[docs-versions]") &&
                      Catch::Contains("shell_snap:create command = ") &&
                      Catch::Contains("shadow:mountpoint = " + volume.v.mnt) &&
                      Catch::Contains("lock directory = " + samba + "/lock") &&
                      Catch::Contains("smb ports = 4459"));
  // testparm wants the state directories to exist.
  REQUIRE(mkdir(samba.c_str(), 0755) == 0);
  for (const char* d : {"lock", "state", "cache", "pid", "ncalrpc", "private"}) {
    REQUIRE(mkdir((samba + "/" + d).c_str(), 0755) == 0);
  }
  std::string parsed;
  const int trc = RunCommand({"testparm", "-s", conf}, &parsed);
  INFO(parsed);
  REQUIRE(trc == 0);
  CHECK_THAT(parsed, Catch::Contains("[docs-versions]"));
  // The same through vssctl smb, --state-dir naming Samba's state directory;
  // the comment names the watcher to run.
  std::string via_vssctl;
  REQUIRE(RunCommand({VSSFS_VSSCTL_BINARY, "smb", "config", "--port", "4459", "--state-dir", samba,
                      "--loopback", "docs=" + docs},
                     &via_vssctl) == 0);
  CHECK_THAT(via_vssctl, Catch::Contains("lock directory = " + samba + "/lock") &&
                             Catch::Contains("watch --samba-lock-dir " + samba + "/lock") &&
                             Catch::Contains("--vssctl " VSSFS_VSSCTL_BINARY));
  CHECK(RunCommand({VSSFS_VSSCTL_BINARY, "smb", "config", "--state-dir", "rel", "docs=" + docs},
                   &out) == 2);
  // Refused: a bad share name, a path Samba would hand a shell unquoted, a
  // path on no vssfs volume.
  CHECK(RunCommand({VSSFS_SMB_BINARY, "--vssctl", VSSFS_VSSCTL_BINARY, "config", "a b=" + docs},
                   &out) == 2);
  CHECK(RunCommand(
            {VSSFS_SMB_BINARY, "--vssctl", VSSFS_VSSCTL_BINARY, "config", "x=" + docs + "/a;b"},
            &out) == 2);
  CHECK_THAT(out, Catch::Contains("not plain"));
  CHECK(RunCommand(
            {VSSFS_SMB_BINARY, "--vssctl", VSSFS_VSSCTL_BINARY, "config", "x=" + volume.tmp.path()},
            &out) == 2);
  CHECK_THAT(out, Catch::Contains("not on a mounted vssfs volume"));
  REQUIRE(volume.mount->Unmount() == 0);
}

TEST_CASE(
    "vssfs-smb: an FSRVP set over shares of two volumes is one instant, and Samba's "
    "timer leaves an exposed set alone",
    "[smb_export][samba]") {
  REQUIRE(geteuid() == 0);
  SambaVolume volume;
  volume.MountSecond();
  TempDir& tmp = volume.tmp;
  const std::string a = volume.v.mnt, b = volume.v2.mnt;
  const std::string s1 = a + "/vm1", s2 = b + "/vm2";
  REQUIRE(mkdir(s1.c_str(), 0755) == 0);
  REQUIRE(mkdir(s2.c_str(), 0755) == 0);
  const std::string state = tmp.Sub("vssfs-state");
  REQUIRE(mkdir(tmp.Sub("smb").c_str(), 0755) == 0);
  SmbServer smb(tmp.Sub("smb"), {{"vm1", s1}, {"vm2", s2}}, state, a, false);
  // A one-second sequence timeout: an exposed set must outlive it.
  Watcher watcher(state, tmp.Sub("smb") + "/lock", {"--sequence-timeout", "1"});
  // Records alternate between the volumes (record n to volume n%2).
  uint64_t written = 0;
  const Exposed e = CreateExposeWhileWriting(smb, s1 + "/log", s2 + "/log", &written);
  std::string out;

  // One snapshot per volume; together they hold records 0..k-1 exactly.
  const std::vector<std::string> na = SnapshotNames(a), nb = SnapshotNames(b);
  REQUIRE(na.size() == 1);
  REQUIRE(nb.size() == 1);
  CheckOneInstant(a + "/.snapshot/" + na[0] + "/vm1/log", b + "/.snapshot/" + nb[0] + "/vm2/log",
                  written);

  // Past Samba's (one-second) timer and the watcher's margin, the exposed
  // copies are still writable: only sets Samba dropped unexposed retire.
  std::this_thread::sleep_for(std::chrono::seconds(8));
  const std::string upload = tmp.Sub("upload");
  std::ofstream(upload) << "recovered";
  for (int i = 0; i < 2; ++i) {
    const std::string share = "vm" + std::to_string(i + 1) + "@{" + e.copies[i] + "}";
    REQUIRE(smb.Client(share, "put " + upload + " fixed", &out) == 0);
  }
  CHECK(ReadFile(a + "/.snapshot/" + na[0] + "/vm1/fixed") == "recovered");
  CHECK(ReadFile(b + "/.snapshot/" + nb[0] + "/vm2/fixed") == "recovered");
  CHECK(access((s1 + "/fixed").c_str(), F_OK) != 0);
  CHECK(access((s2 + "/fixed").c_str(), F_OK) != 0);

  // RecoveryComplete freezes both volumes' copies.
  REQUIRE(smb.Rpc("fss_recovery_complete " + e.set, &out) == 0);
  const auto t0 = std::chrono::steady_clock::now();
  bool frozen = false;
  while (!frozen && std::chrono::steady_clock::now() - t0 < std::chrono::seconds(10)) {
    frozen = ShowSnapshot(a, na[0]).find("\"clone\":\"frozen\"") != std::string::npos &&
             ShowSnapshot(b, nb[0]).find("\"clone\":\"frozen\"") != std::string::npos;
    if (!frozen) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  REQUIRE(frozen);
  // Volume b keeps only its newest snapshot, and a newer one is taken: the
  // set's snapshot stays while Samba exposes it, and goes by that policy
  // once its exposure is deleted. Volume a has no policy: it is kept.
  REQUIRE(RunCommand({VSSFS_VSSCTL_BINARY, "-m", b, "retention", "set", "--keep-last", "1"},
                     &out) == 0);
  REQUIRE(RunCommand({VSSFS_VSSCTL_BINARY, "-m", b, "snapshot", "create"}, &out) == 0);
  REQUIRE(SnapshotNames(b).size() == 2);
  for (int i = 0; i < 2; ++i) {
    const std::string share = "vm" + std::to_string(i + 1) + "@{" + e.copies[i] + "}";
    CHECK(smb.Client(share, "put " + upload + " late", &out) != 0);
    REQUIRE(smb.Rpc("fss_delete vm" + std::to_string(i + 1) + " " + e.set + " " + e.copies[i],
                    &out) == 0);
    // The exposure is gone.
    CHECK(smb.Client(share, "ls", &out) != 0);
    CHECK_THAT(out, Catch::Contains("NT_STATUS_BAD_NETWORK_NAME"));
  }
  const std::string kept = ShowSnapshot(a, na[0]);
  CHECK(kept.find("\"hold\":\"\"") != std::string::npos);
  CHECK(kept.find("\"clone\":\"frozen\"") != std::string::npos);
  const std::vector<std::string> left = SnapshotNames(b);
  REQUIRE(left.size() == 1);
  CHECK(left[0] != nb[0]);
  REQUIRE(volume.mount2->Unmount() == 0);
  REQUIRE(volume.mount->Unmount() == 0);
}

TEST_CASE(
    "vssfs-smb watch: a set Samba's timer dropped before exposing it is frozen and "
    "released, an unused snapshot deleted, an exposed one left alone",
    "[smb_export]") {
  REQUIRE(geteuid() == 0);
  SambaVolume volume;
  volume.MountSecond();
  TempDir& tmp = volume.tmp;
  const std::string a = volume.v.mnt, b = volume.v2.mnt;
  for (const std::string& d : {a + "/vm1", a + "/vm3", b + "/vm2"}) {
    REQUIRE(mkdir(d.c_str(), 0755) == 0);
  }
  const std::string state = tmp.Sub("vssfs-state");
  auto smb = [&](std::vector<std::string> args, std::string* out) {
    args.insert(args.begin(),
                {VSSFS_SMB_BINARY, "--vssctl", VSSFS_VSSCTL_BINARY, "--state-dir", state});
    return RunCommand(args, out);
  };
  // Samba's commit of a set announcing vm1 (volume a) and vm2 (volume b)
  // that stopped after vm1's create: both volumes are taken at once, vm2's
  // snapshot never handed out. Then a second set, vm3, created and exposed.
  std::string out;
  REQUIRE(smb({"check-path", a + "/vm1"}, &out) == 0);
  REQUIRE(smb({"check-path", b + "/vm2"}, &out) == 0);
  REQUIRE(smb({"create", a + "/vm1"}, &out) == 0);
  const std::string copy1 = out.substr(0, out.find('\n'));
  REQUIRE(SnapshotNames(a).size() == 1);
  REQUIRE(SnapshotNames(b).size() == 1);
  const std::string dropped = SnapshotNames(a)[0], unused = SnapshotNames(b)[0];
  CHECK(copy1 == a + "/.snapshot/" + dropped + "/vm1");
  REQUIRE(smb({"check-path", a + "/vm3"}, &out) == 0);
  REQUIRE(smb({"create", a + "/vm3"}, &out) == 0);
  const std::string copy3 = out.substr(0, out.find('\n'));
  REQUIRE(SnapshotNames(a).size() == 2);
  const std::string kept = SnapshotNames(a)[1];

  // Samba's state: the first set still recorded Committed (its timer freed
  // it without storing), the second Exposed.
  const std::string lock = tmp.Sub("lock");
  REQUIRE(mkdir(lock.c_str(), 0755) == 0);
  const std::string tdb = lock + "/srv_fss.tdb";
  StoreSambaSet(tdb, "11111111-2222-3333-4444-555555555555", 3,
                "aaaaaaaa-2222-3333-4444-555555555555", a + "/vm1", copy1);
  StoreSambaSet(tdb, "66666666-2222-3333-4444-555555555555", 4,
                "bbbbbbbb-2222-3333-4444-555555555555", a + "/vm3", copy3);

  const auto t0 = std::chrono::steady_clock::now();
  Watcher watcher(state, lock, {"--sequence-timeout", "1"});
  bool done = false;
  while (!done && std::chrono::steady_clock::now() - t0 < std::chrono::seconds(30)) {
    const std::string d = ShowSnapshot(a, dropped);
    done = d.find("\"clone\":\"frozen\"") != std::string::npos &&
           d.find("\"hold\":\"\"") != std::string::npos && SnapshotNames(b).empty();
    if (!done) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  const auto secs =
      std::chrono::duration_cast<std::chrono::seconds>(std::chrono::steady_clock::now() - t0)
          .count();
  INFO("after " << secs << " s");
  REQUIRE(done);
  // Not before the timer and the margin (1 + 5 s) had passed.
  CHECK(secs >= 5);
  // The exposed set's snapshot, taken a little later, is past its own
  // deadline too after 3 more seconds: it must still be there, writable.
  std::this_thread::sleep_for(std::chrono::seconds(3));
  // The dropped copy stays as a frozen backup; the exposed one is untouched.
  CHECK(open((copy1 + "/x").c_str(), O_WRONLY | O_CREAT, 0644) < 0);
  CHECK(errno == EROFS);
  const std::string k = ShowSnapshot(a, kept);
  CHECK(k.find("\"clone\":\"writable\"") != std::string::npos);
  CHECK(k.find("\"hold\":\"Samba FSRVP shadow copy\"") != std::string::npos);
  std::ofstream(copy3 + "/recovery") << "ok";
  CHECK(ReadFile(copy3 + "/recovery") == "ok");
  REQUIRE(volume.mount2->Unmount() == 0);
  REQUIRE(volume.mount->Unmount() == 0);
}
