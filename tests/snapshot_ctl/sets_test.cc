// vssctl set: the FSRVP flow end to end over two real volumes, wrong-state
// errors, the message sequence timer and retention.
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "test_support.h"

namespace {

using vssfs::testing::ReadFile;
using vssfs::testing::RunCommand;
using vssfs::testing::ScopedMount;
using vssfs::testing::TempDir;
using vssfs::testing::VolumeDirs;

int Vssctl(std::vector<std::string> args, std::string* out) {
  args.insert(args.begin(), VSSFS_VSSCTL_BINARY);
  return RunCommand(args, out);
}

// Sets VSSFS_STATE_DIR (and optionally the timer lengths) for vssctl runs.
struct StateEnv {
  explicit StateEnv(const std::string& dir, const char* timeouts = nullptr) {
    setenv("VSSFS_STATE_DIR", dir.c_str(), 1);
    if (timeouts != nullptr) setenv("VSSFS_FSRVP_TIMEOUTS", timeouts, 1);
  }
  ~StateEnv() {
    unsetenv("VSSFS_STATE_DIR");
    unsetenv("VSSFS_FSRVP_TIMEOUTS");
  }
};

std::string Field(const std::string& json, const std::string& key) {
  const std::string k = "\"" + key + "\":\"";
  size_t at = json.find(k);
  if (at == std::string::npos) return "";
  at += k.size();
  return json.substr(at, json.find('"', at) - at);
}

void Write(const std::string& path, const std::string& data) { std::ofstream(path) << data; }

}  // namespace

TEST_CASE("vssctl set: the FSRVP sequence over two volumes", "[snapshot_ctl][sets]") {
  REQUIRE(geteuid() == 0);
  TempDir state;
  StateEnv env(state.path());
  VolumeDirs v1, v2;
  ScopedMount m1(v1.backing, v1.mnt), m2(v2.backing, v2.mnt);
  for (const std::string& d : {v1.mnt + "/share1", v1.mnt + "/share2", v2.mnt + "/share3"}) {
    REQUIRE(mkdir(d.c_str(), 0755) == 0);
  }
  Write(v1.mnt + "/share1/vm.vhdx", "before");
  Write(v2.mnt + "/share3/db.mdf", "db before");
  std::string out;

  REQUIRE(Vssctl({"--json", "set", "start", "--context", "app-rollback"}, &out) == 0);
  const std::string set = Field(out, "id");
  REQUIRE(set.size() == 36);
  CHECK(Field(out, "state") == "Started");
  // Wrong-state calls fail with the FSRVP error, exit status 7.
  CHECK(Vssctl({"set", "commit", set}, &out) == 7);
  CHECK_THAT(out, Catch::Contains("FSRVP_E_BAD_STATE (0x80042301)"));
  CHECK(Vssctl({"set", "start", "--context", "backup"}, &out) == 7);
  CHECK_THAT(out, Catch::Contains("FSRVP_E_SHADOW_COPY_SET_IN_PROGRESS"));
  REQUIRE(Vssctl({"set", "add", set, v1.mnt + "/share1", v1.mnt + "/share2", v2.mnt + "/share3"},
                 &out) == 0);
  CHECK(Vssctl({"set", "add", set, v1.mnt + "/share1"}, &out) == 6);
  CHECK(Vssctl({"set", "add", set, "/tmp"}, &out) == 7);
  CHECK_THAT(out, Catch::Contains("FSRVP_E_NOT_SUPPORTED") && Catch::Contains("not on a vssfs"));
  REQUIRE(Vssctl({"set", "prepare", set}, &out) == 0);
  REQUIRE(Vssctl({"set", "commit", set}, &out) == 0);
  CHECK_THAT(out, Catch::Contains("Committed"));
  Write(v1.mnt + "/share1/vm.vhdx", "after");
  Write(v2.mnt + "/share3/db.mdf", "db after");
  REQUIRE(Vssctl({"--json", "set", "expose", set}, &out) == 0);
  CHECK(Field(out, "state") == "Exposed");
  // Both shares of volume 1 come from one snapshot; volume 2 has its own.
  const std::string snap1 = Field(out, "snapshot");
  REQUIRE_FALSE(snap1.empty());
  CHECK(ReadFile(v1.mnt + "/.snapshot/" + snap1 + "/share1/vm.vhdx") == "before");
  std::string list;
  REQUIRE(Vssctl({"-m", v1.mnt, "--json", "snapshot", "list"}, &list) == 0);
  CHECK(list.find("\"id\":2") == std::string::npos);
  REQUIRE(Vssctl({"--json", "set", "show", set}, &out) == 0);
  const size_t third = out.find(v2.mnt + "/.snapshot/");
  REQUIRE(third != std::string::npos);
  const std::string path3 = out.substr(third, out.find('"', third) - third);
  CHECK(ReadFile(path3 + "/db.mdf") == "db before");

  REQUIRE(Vssctl({"set", "recovery-complete", set}, &out) == 0);
  CHECK_THAT(out, Catch::Contains("Recovered"));
  CHECK(Vssctl({"set", "abort", set}, &out) == 7);
  // A new set may start once the previous one is recovered.
  REQUIRE(Vssctl({"--json", "set", "start", "--context", "backup"}, &out) == 0);
  const std::string set2 = Field(out, "id");
  REQUIRE(Vssctl({"set", "abort", set2}, &out) == 0);
  // Deleting the exposure keeps the snapshots (retention decides later).
  REQUIRE(Vssctl({"set", "delete", set}, &out) == 0);
  CHECK_THAT(out, Catch::Contains("snapshots are kept"));
  CHECK(Vssctl({"set", "show", set}, &out) == 3);
  REQUIRE(Vssctl({"-m", v1.mnt, "snapshot", "show", snap1}, &out) == 0);
  CHECK(Vssctl({"set", "start", "--context", "sideways"}, &out) == 2);
  REQUIRE(m1.Unmount() == 0);
  REQUIRE(m2.Unmount() == 0);
}

TEST_CASE("vssctl set: the message sequence timer aborts a stalled set", "[snapshot_ctl][sets]") {
  REQUIRE(geteuid() == 0);
  TempDir state;
  StateEnv env(state.path(), "1,1");
  VolumeDirs v;
  ScopedMount m(v.backing, v.mnt);
  REQUIRE(mkdir((v.mnt + "/share").c_str(), 0755) == 0);
  std::string out;
  REQUIRE(
      Vssctl({"--json", "set", "create-expose", "--context", "file-share-backup", v.mnt + "/share"},
             &out) == 0);
  const std::string set = Field(out, "id");
  const std::string snap = Field(out, "snapshot");
  REQUIRE_FALSE(snap.empty());
  std::this_thread::sleep_for(std::chrono::milliseconds(1300));
  // Exposed but never recovered: the timer removes it and its snapshot
  // (this vssctl call, or the daemon's sweeper before it, reports it).
  REQUIRE(Vssctl({"set", "list"}, &out) == 0);
  CHECK_THAT(out, Catch::Contains("no shadow copy sets"));
  CHECK(Vssctl({"-m", v.mnt, "snapshot", "show", snap}, &out) == 3);
  REQUIRE(m.Unmount() == 0);
}

TEST_CASE("vssctl set: the daemons fire the message sequence timer without any vssctl call",
          "[snapshot_ctl][sets]") {
  REQUIRE(geteuid() == 0);
  TempDir state;
  StateEnv env(state.path(), "1,1");  // The daemon inherits both.
  VolumeDirs v;
  ScopedMount m(v.backing, v.mnt);
  REQUIRE(mkdir((v.mnt + "/share").c_str(), 0755) == 0);
  std::string out;
  REQUIRE(Vssctl({"--json", "set", "start", "--context", "backup"}, &out) == 0);
  const std::string set = Field(out, "id");
  REQUIRE(Vssctl({"set", "add", set, v.mnt + "/share"}, &out) == 0);
  REQUIRE(Vssctl({"set", "prepare", set}, &out) == 0);
  REQUIRE(Vssctl({"--json", "set", "commit", set}, &out) == 0);
  const std::string snap = Field(out, "snapshot");
  REQUIRE_FALSE(snap.empty());
  // Committed, then silence: the daemon's sweeper aborts the set and
  // deletes its snapshot (within the 1 s timer plus its 1 s period).
  bool gone = false;
  for (int i = 0; i < 100 && !gone; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    gone = Vssctl({"-m", v.mnt, "snapshot", "show", snap}, &out) == 3;
  }
  CHECK(gone);
  const std::string saved = ReadFile(state.path() + "/fsrvp.state");
  CHECK(saved.find(set) == std::string::npos);
  REQUIRE(Vssctl({"set", "list"}, &out) == 0);
  CHECK_THAT(out, Catch::Contains("no shadow copy sets"));
  REQUIRE(m.Unmount() == 0);
}

namespace {

// Writer w appends 4 KiB records to file w<w> on each of `mnts` in turn
// (write s goes to volume s % n, as its record s / n), O_DIRECT.
class RoundRobinWriter {
 public:
  // Bounds the files (and the time to check them, also under sanitizers).
  static constexpr uint64_t kMaxWrites = 30000;
  RoundRobinWriter(const std::vector<std::string>& mnts, int w) : mnts_(mnts), w_(w) {}
  ~RoundRobinWriter() { Stop(); }
  void Start() {
    thread_ = std::thread([this] { Run(); });
  }
  void Stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }

 private:
  void Run() {
    std::vector<int> fds;
    for (const std::string& m : mnts_) {
      fds.push_back(open((m + "/share/w" + std::to_string(w_)).c_str(),
                         O_WRONLY | O_CREAT | O_DIRECT | O_CLOEXEC, 0644));
    }
    void* mem = nullptr;
    if (posix_memalign(&mem, 4096, 4096) != 0) return;
    char* buf = static_cast<char*>(mem);
    const size_t n = mnts_.size();
    for (uint64_t s = 0; !stop_ && s < kMaxWrites; ++s) {
      std::memset(buf, 0, 4096);
      std::memcpy(buf, &s, sizeof s);
      if (pwrite(fds[s % n], buf, 4096, static_cast<off_t>(s / n * 4096)) != 4096) break;
    }
    free(mem);
    for (int fd : fds) close(fd);
  }

  std::vector<std::string> mnts_;
  int w_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// "" when the snapshot files of writer w on the volumes are one instant.
std::string CheckRoundRobin(const std::vector<std::string>& files) {
  const size_t n = files.size();
  std::vector<uint64_t> count(n);
  uint64_t cut = 0;
  bool any = false;
  for (size_t v = 0; v < n; ++v) {
    std::string data = ReadFile(files[v]);
    if (data.size() % 4096 != 0) return files[v] + ": size not a whole number of records";
    count[v] = data.size() / 4096;
    for (uint64_t i = 0; i < count[v]; ++i) {
      uint64_t s;
      std::memcpy(&s, data.data() + i * 4096, sizeof s);
      if (s != i * n + v) return files[v] + ": record " + std::to_string(i) + " is torn or lost";
    }
    if (count[v] > 0) {
      const uint64_t last = (count[v] - 1) * n + v;
      if (!any || last > cut) cut = last;
      any = true;
    }
  }
  if (!any) return "";
  for (size_t v = 0; v < n; ++v) {
    const uint64_t expect = cut >= v ? (cut - v) / n + 1 : 0;
    if (count[v] != expect) {
      return files[v] + ": " + std::to_string(count[v]) + " records, but write " +
             std::to_string(cut) + " on another volume implies " + std::to_string(expect) +
             " (not one instant across volumes)";
    }
  }
  return "";
}

}  // namespace

TEST_CASE("vssctl set: a set over three volumes is one instant under concurrent writers",
          "[snapshot_ctl][sets]") {
  REQUIRE(geteuid() == 0);
  TempDir state;
  StateEnv env(state.path());
  VolumeDirs v1, v2, v3;
  ScopedMount m1(v1.backing, v1.mnt), m2(v2.backing, v2.mnt), m3(v3.backing, v3.mnt);
  const std::vector<std::string> mnts = {v1.mnt, v2.mnt, v3.mnt};
  for (const std::string& m : mnts) REQUIRE(mkdir((m + "/share").c_str(), 0755) == 0);
  std::vector<std::unique_ptr<RoundRobinWriter>> writers;
  for (int w = 0; w < 3; ++w) {
    writers.push_back(std::make_unique<RoundRobinWriter>(mnts, w));
    writers.back()->Start();
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  // Sets are taken (and recovered, so the next may start) while the writers
  // run; they are checked afterwards.
  std::vector<std::pair<std::string, std::vector<std::string>>> taken;
  for (int i = 0; i < 5; ++i) {
    std::string out;
    REQUIRE(Vssctl({"--json", "set", "create-expose", "--context", "backup", v1.mnt + "/share",
                    v2.mnt + "/share", v3.mnt + "/share"},
                   &out) == 0);
    const std::string set = Field(out, "id");
    std::vector<std::string> paths;
    for (size_t at = out.find("\"path\":\""); at != std::string::npos;
         at = out.find("\"path\":\"", at + 1)) {
      paths.push_back(out.substr(at + 8, out.find('"', at + 8) - at - 8));
    }
    REQUIRE(paths.size() == 3);
    REQUIRE(Vssctl({"set", "recovery-complete", set}, &out) == 0);
    taken.emplace_back(set, paths);
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  for (auto& w : writers) w->Stop();
  for (size_t i = 0; i < taken.size(); ++i) {
    for (int w = 0; w < 3; ++w) {
      std::vector<std::string> files;
      for (const std::string& p : taken[i].second) files.push_back(p + "/w" + std::to_string(w));
      const std::string r = CheckRoundRobin(files);
      INFO("set " << i << ", writer " << w << ": " << r);
      REQUIRE(r.empty());
    }
    std::string out;
    REQUIRE(Vssctl({"set", "delete", taken[i].first, "--delete-snapshots"}, &out) == 0);
  }
  for (auto& w : writers) w->Stop();
  REQUIRE(m1.Unmount() == 0);
  REQUIRE(m2.Unmount() == 0);
  REQUIRE(m3.Unmount() == 0);
}

TEST_CASE("vssctl set: a share failing the structure check is warned about or refused",
          "[snapshot_ctl][sets]") {
  REQUIRE(geteuid() == 0);
  TempDir state;
  StateEnv env(state.path());
  VolumeDirs v;
  ScopedMount m(v.backing, v.mnt);
  REQUIRE(mkdir((v.mnt + "/share").c_str(), 0755) == 0);
  REQUIRE(symlink("elsewhere", (v.mnt + "/share/link").c_str()) == 0);
  std::string out;
  CHECK(Vssctl({"set", "create-expose", "--context", "backup", "--strict", v.mnt + "/share"},
               &out) == 7);
  CHECK_THAT(out, Catch::Contains("FSRVP_E_NOT_SUPPORTED") &&
                      Catch::Contains("share/link: type: is a symbolic link"));
  // The failed set was aborted: another may start, and the default warns.
  REQUIRE(Vssctl({"--json", "set", "create-expose", "--context", "backup", v.mnt + "/share"},
                 &out) == 0);
  CHECK_THAT(out, Catch::Contains("warning") && Catch::Contains("fails the structure check"));
  REQUIRE(m.Unmount() == 0);
}

TEST_CASE("vssctl set: auto-recovery clones take writes, recovery-complete freezes them for good",
          "[snapshot_ctl][sets][clone]") {
  REQUIRE(geteuid() == 0);
  TempDir state;
  StateEnv env(state.path());
  VolumeDirs v1, v2;
  ScopedMount m1(v1.backing, v1.mnt), m2(v2.backing, v2.mnt);
  for (const std::string& d : {v1.mnt + "/share1", v2.mnt + "/share3"}) {
    REQUIRE(mkdir(d.c_str(), 0755) == 0);
  }
  Write(v1.mnt + "/share1/vm.vhdx", "before");
  Write(v1.mnt + "/share1/old.avhdx", "to be merged");
  Write(v2.mnt + "/share3/db.mdf", "db before");
  std::string out;
  REQUIRE(Vssctl({"--json", "set", "create-expose", "--context", "backup", "--auto-recovery",
                  v1.mnt + "/share1", v2.mnt + "/share3"},
                 &out) == 0);
  const std::string set = Field(out, "id");
  CHECK(Field(out, "state") == "Exposed");
  CHECK(Field(out, "context") == "backup+auto-recovery");
  const std::string snap1 = Field(out, "snapshot");
  const std::string clone1 = v1.mnt + "/.snapshot/" + snap1 + "/share1";
  const size_t third = out.find(v2.mnt + "/.snapshot/");
  REQUIRE(third != std::string::npos);
  const std::string clone3 = out.substr(third, out.find('"', third) - third);
  Write(v1.mnt + "/share1/vm.vhdx", "live after");

  // The requestor's writers recover in the clones: every kind of change.
  Write(clone1 + "/vm.vhdx", "recovered");
  Write(clone1 + "/journal.tmp", "replayed");
  REQUIRE(rename((clone1 + "/journal.tmp").c_str(), (clone1 + "/journal.log").c_str()) == 0);
  REQUIRE(unlink((clone1 + "/old.avhdx").c_str()) == 0);
  REQUIRE(mkdir((clone1 + "/Snapshots").c_str(), 0755) == 0);
  REQUIRE(truncate((clone3 + "/db.mdf").c_str(), 2) == 0);
  REQUIRE(setxattr((clone3 + "/db.mdf").c_str(), "user.DOSATTRIB", "A", 1, 0) == 0);
  CHECK(ReadFile(clone1 + "/vm.vhdx") == "recovered");
  CHECK(ReadFile(clone3 + "/db.mdf") == "db");
  // Only there: the live tree keeps its own state.
  CHECK(ReadFile(v1.mnt + "/share1/vm.vhdx") == "live after");
  CHECK(ReadFile(v1.mnt + "/share1/old.avhdx") == "to be merged");
  CHECK(access((v1.mnt + "/share1/journal.log").c_str(), F_OK) != 0);
  CHECK(ReadFile(v2.mnt + "/share3/db.mdf") == "db before");
  // A descriptor opened before the freeze.
  const int early = open((clone1 + "/journal.log").c_str(), O_WRONLY | O_APPEND);
  REQUIRE(early >= 0);
  REQUIRE(write(early, "+1", 2) == 2);

  REQUIRE(Vssctl({"--json", "set", "recovery-complete", set}, &out) == 0);
  CHECK(Field(out, "state") == "Recovered");
  // Frozen: EROFS on every write path, for root and for the early descriptor.
  errno = 0;
  CHECK(write(early, "+2", 2) == -1);
  CHECK(errno == EROFS);
  close(early);
  auto erofs = [](int rc) { return rc != 0 && errno == EROFS; };
  CHECK(open((clone1 + "/vm.vhdx").c_str(), O_WRONLY) == -1);
  CHECK(errno == EROFS);
  CHECK(erofs(unlink((clone1 + "/vm.vhdx").c_str())));
  CHECK(erofs(mkdir((clone1 + "/more").c_str(), 0755)));
  CHECK(erofs(truncate((clone3 + "/db.mdf").c_str(), 0)));
  CHECK(erofs(chmod((clone3 + "/db.mdf").c_str(), 0600)));
  CHECK(erofs(setxattr((clone3 + "/db.mdf").c_str(), "user.x", "1", 1, 0)));
  CHECK(erofs(rename((clone1 + "/vm.vhdx").c_str(), (clone1 + "/vm2.vhdx").c_str())));
  // What backups read: the instant plus the recovery.
  CHECK(ReadFile(clone1 + "/vm.vhdx") == "recovered");
  CHECK(ReadFile(clone1 + "/journal.log") == "replayed+1");
  CHECK(access((clone1 + "/old.avhdx").c_str(), F_OK) != 0);
  REQUIRE(Vssctl({"-m", v1.mnt, "--json", "snapshot", "show", snap1}, &out) == 0);
  CHECK(Field(out, "clone") == "frozen");

  // Deleting the exposure keeps the frozen snapshots; they survive a
  // remount and the stores check clean.
  REQUIRE(Vssctl({"set", "delete", set}, &out) == 0);
  REQUIRE(m1.Unmount() == 0);
  ScopedMount again(v1.backing, v1.mnt);
  CHECK(ReadFile(clone1 + "/vm.vhdx") == "recovered");
  CHECK(open((clone1 + "/vm.vhdx").c_str(), O_WRONLY) == -1);
  CHECK(errno == EROFS);
  REQUIRE(Vssctl({"-m", v1.mnt, "fsck"}, &out) == 0);

  // A set deleted without recovery-complete is frozen too.
  Write(v1.mnt + "/share1/vm.vhdx", "second");
  REQUIRE(Vssctl({"--json", "set", "create-expose", "--context", "file-share-backup",
                  "--auto-recovery", v1.mnt + "/share1"},
                 &out) == 0);
  const std::string set2 = Field(out, "id");
  const std::string clone2 = v1.mnt + "/.snapshot/" + Field(out, "snapshot") + "/share1";
  Write(clone2 + "/vm.vhdx", "second recovered");
  REQUIRE(Vssctl({"set", "delete", set2}, &out) == 0);
  CHECK(erofs(truncate((clone2 + "/vm.vhdx").c_str(), 0)));
  CHECK(ReadFile(clone2 + "/vm.vhdx") == "second recovered");
  REQUIRE(again.Unmount() == 0);
  REQUIRE(m2.Unmount() == 0);
}

TEST_CASE("vssctl set: kill -9 of the daemon after commit and after expose leaves a usable set",
          "[snapshot_ctl][sets][clone][crash]") {
  REQUIRE(geteuid() == 0);
  TempDir state;
  StateEnv env(state.path());
  VolumeDirs v;
  auto mount = std::make_unique<ScopedMount>(v.backing, v.mnt);
  REQUIRE(mkdir((v.mnt + "/share").c_str(), 0755) == 0);
  Write(v.mnt + "/share/db.mdf", "committed page");
  std::string out;
  REQUIRE(Vssctl({"--json", "set", "start", "--context", "app-rollback+auto-recovery"}, &out) == 0);
  const std::string set = Field(out, "id");
  REQUIRE(Vssctl({"set", "add", set, v.mnt + "/share"}, &out) == 0);
  REQUIRE(Vssctl({"set", "prepare", set}, &out) == 0);
  REQUIRE(Vssctl({"--json", "set", "commit", set}, &out) == 0);
  const std::string snap = Field(out, "snapshot");
  REQUIRE_FALSE(snap.empty());
  const std::string copy = v.mnt + "/.snapshot/" + snap + "/share";

  // Crash between commit and expose: the set stays Committed (MS-FSRVP
  // allows expose, abort or the timer from there) and its clone writable.
  mount->Kill();
  mount = std::make_unique<ScopedMount>(v.backing, v.mnt);
  REQUIRE(Vssctl({"--json", "set", "show", set}, &out) == 0);
  CHECK(Field(out, "state") == "Committed");
  REQUIRE(Vssctl({"--json", "set", "expose", set}, &out) == 0);
  CHECK(Field(out, "state") == "Exposed");
  Write(copy + "/db.mdf", "rolled back page");
  Write(copy + "/recovery.log", "done");

  // Crash between expose and recovery-complete: the recovery writes were
  // durable when they returned, the set is still Exposed.
  mount->Kill();
  mount = std::make_unique<ScopedMount>(v.backing, v.mnt);
  REQUIRE(Vssctl({"--json", "set", "show", set}, &out) == 0);
  CHECK(Field(out, "state") == "Exposed");
  CHECK(ReadFile(copy + "/db.mdf") == "rolled back page");
  CHECK(ReadFile(copy + "/recovery.log") == "done");
  CHECK(ReadFile(v.mnt + "/share/db.mdf") == "committed page");
  REQUIRE(Vssctl({"-m", v.mnt, "fsck"}, &out) == 0);
  REQUIRE(Vssctl({"--json", "set", "recovery-complete", set}, &out) == 0);
  CHECK(Field(out, "state") == "Recovered");
  errno = 0;
  CHECK(open((copy + "/db.mdf").c_str(), O_WRONLY) == -1);
  CHECK(errno == EROFS);

  // And after a crash once frozen, it stays frozen.
  mount->Kill();
  mount = std::make_unique<ScopedMount>(v.backing, v.mnt);
  CHECK(open((copy + "/db.mdf").c_str(), O_WRONLY) == -1);
  CHECK(errno == EROFS);
  CHECK(ReadFile(copy + "/db.mdf") == "rolled back page");
  INFO(out);
  REQUIRE(Vssctl({"-m", v.mnt, "fsck"}, &out) == 0);
  REQUIRE(Vssctl({"set", "delete", set}, &out) == 0);
  REQUIRE(mount->Unmount() == 0);
}

TEST_CASE("vssctl set: 64 shares in one set, one instant; a 65th is refused",
          "[snapshot_ctl][sets]") {
  REQUIRE(geteuid() == 0);
  TempDir state;
  StateEnv env(state.path());
  VolumeDirs v;
  ScopedMount m(v.backing, v.mnt);
  std::vector<std::string> args = {"--json", "set", "create-expose", "--context",
                                   "file-share-backup"};
  for (int i = 0; i < 65; ++i) {
    const std::string d = v.mnt + "/share" + std::to_string(i);
    REQUIRE(mkdir(d.c_str(), 0755) == 0);
    Write(d + "/vm.vhdx", "disk " + std::to_string(i));
    if (i < 64) args.push_back(d);
  }
  std::string out;
  REQUIRE(Vssctl(args, &out) == 0);
  const std::string set = Field(out, "id");
  size_t copies = 0;
  for (size_t at = out.find("\"share\":"); at != std::string::npos;
       at = out.find("\"share\":", at + 1)) {
    ++copies;
  }
  CHECK(copies == 64);
  // One snapshot holds all 64 shares.
  std::string list;
  REQUIRE(Vssctl({"-m", v.mnt, "--json", "snapshot", "list"}, &list) == 0);
  CHECK(list.find("\"id\":1,") != std::string::npos);
  CHECK(list.find("\"id\":2,") == std::string::npos);
  const std::string snap = Field(out, "snapshot");
  CHECK(ReadFile(v.mnt + "/.snapshot/" + snap + "/share63/vm.vhdx") == "disk 63");
  REQUIRE(Vssctl({"set", "recovery-complete", set}, &out) == 0);
  REQUIRE(Vssctl({"set", "delete", set, "--delete-snapshots"}, &out) == 0);

  // A 65th share does not fit.
  args.push_back(v.mnt + "/share64");
  CHECK(Vssctl(args, &out) != 0);
  CHECK_THAT(out, Catch::Contains("at most 64 shares"));
  REQUIRE(Vssctl({"--json", "set", "list"}, &out) == 0);
  CHECK(out == "[]\n");
  REQUIRE(m.Unmount() == 0);
}

TEST_CASE("vssctl set rollback: a rollback set's shares back to their shadow copies",
          "[snapshot_ctl][sets][rollback]") {
  REQUIRE(geteuid() == 0);
  TempDir state;
  StateEnv env(state.path());
  VolumeDirs v1, v2;
  ScopedMount m1(v1.backing, v1.mnt), m2(v2.backing, v2.mnt);
  for (const std::string& d : {v1.mnt + "/db", v2.mnt + "/logs"}) {
    REQUIRE(mkdir(d.c_str(), 0755) == 0);
  }
  Write(v1.mnt + "/db/data.mdf", "consistent");
  Write(v2.mnt + "/logs/db.ldf", "log 1");
  std::string out;
  REQUIRE(Vssctl({"--json", "set", "create-expose", "--context", "app-rollback", v1.mnt + "/db",
                  v2.mnt + "/logs"},
                 &out) == 0);
  const std::string set = Field(out, "id");
  Write(v1.mnt + "/db/data.mdf", "corrupted by a bad upgrade");
  Write(v1.mnt + "/db/upgrade.tmp", "junk");
  Write(v2.mnt + "/logs/db.ldf", "log 1 + bad");
  REQUIRE(Vssctl({"set", "rollback", set}, &out) == 0);
  CHECK_THAT(out, Catch::Contains("rolled " + v1.mnt + "/db back"));
  CHECK(ReadFile(v1.mnt + "/db/data.mdf") == "consistent");
  CHECK(access((v1.mnt + "/db/upgrade.tmp").c_str(), F_OK) != 0);
  CHECK(ReadFile(v2.mnt + "/logs/db.ldf") == "log 1");
  REQUIRE(Vssctl({"set", "recovery-complete", set}, &out) == 0);
  REQUIRE(Vssctl({"set", "delete", set}, &out) == 0);

  // A backup set is not for rolling back.
  REQUIRE(Vssctl({"--json", "set", "create-expose", "--context", "backup", v1.mnt + "/db"}, &out) ==
          0);
  const std::string backup = Field(out, "id");
  CHECK(Vssctl({"set", "rollback", backup}, &out) == 7);
  CHECK_THAT(out, Catch::Contains("FSRVP_E_UNSUPPORTED_CONTEXT"));
  REQUIRE(Vssctl({"set", "recovery-complete", backup}, &out) == 0);
  REQUIRE(m1.Unmount() == 0);
  REQUIRE(m2.Unmount() == 0);
}

namespace {

uint64_t Preserved(const std::string& mnt) {
  std::string out;
  if (Vssctl({"-m", mnt, "--json", "df"}, &out) != 0) return UINT64_MAX;
  const size_t at = out.find("\"preserved_bytes\":");
  return at == std::string::npos ? UINT64_MAX : std::stoull(out.substr(at + 18));
}

void Overwrite(const std::string& path, size_t mib) {
  REQUIRE(RunCommand({"dd", "if=/dev/urandom", "of=" + path, "bs=1M",
                      "count=" + std::to_string(mib), "conv=notrunc,fsync", "status=none"}) == 0);
}

}  // namespace

TEST_CASE(
    "vssctl set --files: shadow copies of listed files only; other writes pay no "
    "copy-on-write",
    "[snapshot_ctl][sets][files]") {
  REQUIRE(geteuid() == 0);
  TempDir state;
  StateEnv env(state.path());
  VolumeDirs v;
  ScopedMount m(v.backing, v.mnt);
  const std::string share = v.mnt + "/share";
  for (const std::string& d : {share, share + "/vm1", share + "/vm2"}) {
    REQUIRE(mkdir(d.c_str(), 0755) == 0);
  }
  Overwrite(share + "/vm1/disk.vhdx", 4);
  Overwrite(share + "/vm2/disk.vhdx", 4);
  Write(share + "/vm1/notes.txt", "notes");
  const std::string vm1_before = ReadFile(share + "/vm1/disk.vhdx");
  const std::string list = state.Sub("files.list");
  Write(list, "# the SQL data file only\n" + share + "/vm1/disk.vhdx\n");
  std::string out;
  REQUIRE(Vssctl({"--json", "set", "create-expose", "--context", "backup", "--files", list, share},
                 &out) == 0);
  const std::string set = Field(out, "id");
  const std::string snap = Field(out, "snapshot");
  const std::string copy = v.mnt + "/.snapshot/" + snap + "/share";
  REQUIRE(Vssctl({"-m", v.mnt, "--json", "snapshot", "show", snap}, &out) == 0);
  CHECK_THAT(out, Catch::Contains("\"partial\":true"));

  // Writes to files no snapshot lists preserve nothing; the listed one's do.
  REQUIRE(Preserved(v.mnt) == 0);
  Overwrite(share + "/vm2/disk.vhdx", 4);
  Write(share + "/vm1/notes.txt", "changed");
  REQUIRE(unlink((share + "/vm1/notes.txt").c_str()) == 0);
  CHECK(Preserved(v.mnt) == 0);
  Overwrite(share + "/vm1/disk.vhdx", 1);
  CHECK(Preserved(v.mnt) == (1u << 20));
  // The shadow copy shows the listed file as it was, its directories, and
  // nothing else.
  CHECK(ReadFile(copy + "/vm1/disk.vhdx") == vm1_before);
  CHECK(access((copy + "/vm2").c_str(), F_OK) != 0);
  CHECK(access((copy + "/vm1/notes.txt").c_str(), F_OK) != 0);
  std::string listing;
  REQUIRE(RunCommand({"ls", "-A", copy + "/vm1"}, &listing) == 0);
  CHECK(listing == "disk.vhdx\n");

  // A whole-volume snapshot covers everything again while it exists.
  REQUIRE(Vssctl({"-m", v.mnt, "snapshot", "create", "--name", "full"}, &out) == 0);
  Overwrite(share + "/vm2/disk.vhdx", 2);
  CHECK(Preserved(v.mnt) == (3u << 20));
  REQUIRE(Vssctl({"-m", v.mnt, "snapshot", "delete", "full"}, &out) == 0);
  const uint64_t after_delete = Preserved(v.mnt);
  Overwrite(share + "/vm2/disk.vhdx", 4);
  CHECK(Preserved(v.mnt) == after_delete);
  CHECK(ReadFile(copy + "/vm1/disk.vhdx") == vm1_before);

  // A list naming nothing on the set's volumes is refused at commit.
  REQUIRE(Vssctl({"set", "recovery-complete", set}, &out) == 0);
  Write(list, "/nonexistent/file\n");
  CHECK(Vssctl({"set", "create-expose", "--context", "backup", "--files", list, share}, &out) == 3);
  REQUIRE(Vssctl({"-m", v.mnt, "fsck"}, &out) == 0);
  REQUIRE(m.Unmount() == 0);
}
