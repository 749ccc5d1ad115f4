// vssctl restore: files and directories back from a snapshot with their
// attributes, xattrs, hard links, symlinks and holes.
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <fstream>
#include <string>
#include <vector>

#include "test_support.h"

namespace {

using vssfs::testing::ReadFile;
using vssfs::testing::RunCommand;
using vssfs::testing::ScopedMount;
using vssfs::testing::VolumeDirs;

void Write(const std::string& path, const std::string& data) { std::ofstream(path) << data; }

}  // namespace

TEST_CASE("vssctl restore: a directory and a file, in place and elsewhere",
          "[snapshot_ctl][restore]") {
  REQUIRE(geteuid() == 0);
  VolumeDirs v;
  ScopedMount m(v.backing, v.mnt);
  const std::string vm = v.mnt + "/vm1";
  REQUIRE(mkdir(vm.c_str(), 0750) == 0);
  REQUIRE(mkdir((vm + "/sub").c_str(), 0755) == 0);
  Write(vm + "/disk.vhdx", "data");
  REQUIRE(setxattr((vm + "/disk.vhdx").c_str(), "user.DOSATTRIB", "\x20", 1, 0) == 0);
  REQUIRE(link((vm + "/disk.vhdx").c_str(), (vm + "/sub/hard.vhdx").c_str()) == 0);
  REQUIRE(symlink("disk.vhdx", (vm + "/link").c_str()) == 0);
  REQUIRE(truncate((vm + "/sparse.vhdx").c_str(), 0) != 0);  // does not exist yet
  Write(vm + "/sparse.vhdx", "");
  REQUIRE(truncate((vm + "/sparse.vhdx").c_str(), 8 << 20) == 0);
  REQUIRE(chmod((vm + "/disk.vhdx").c_str(), 0640) == 0);
  REQUIRE(chown((vm + "/disk.vhdx").c_str(), 1234, 5678) == 0);
  const timespec old_times[2] = {{1577836800, 0}, {1577836800, 0}};
  REQUIRE(utimensat(AT_FDCWD, (vm + "/disk.vhdx").c_str(), old_times, 0) == 0);
  std::string out;
  REQUIRE(RunCommand({VSSFS_VSSCTL_BINARY, "-m", v.mnt, "snapshot", "create", "--name", "s1"},
                     &out) == 0);

  Write(vm + "/disk.vhdx", "changed");
  REQUIRE(unlink((vm + "/sub/hard.vhdx").c_str()) == 0);
  REQUIRE(rmdir((vm + "/sub").c_str()) == 0);
  REQUIRE(unlink((vm + "/link").c_str()) == 0);
  Write(vm + "/new.txt", "kept");

  REQUIRE(RunCommand({VSSFS_VSSCTL_BINARY, "-m", v.mnt, "restore", "s1", vm}, &out) == 0);
  CHECK_THAT(out, Catch::Contains("4 files, 2 directories"));
  CHECK(ReadFile(vm + "/disk.vhdx") == "data");
  CHECK(ReadFile(vm + "/new.txt") == "kept");  // Merged, not replaced.
  struct stat a, b;
  REQUIRE(stat((vm + "/disk.vhdx").c_str(), &a) == 0);
  REQUIRE(stat((vm + "/sub/hard.vhdx").c_str(), &b) == 0);
  CHECK(a.st_ino == b.st_ino);  // The hard link is a hard link again.
  CHECK(a.st_nlink == 2);
  CHECK((a.st_mode & 07777) == 0640);
  CHECK(a.st_uid == 1234);
  CHECK(a.st_gid == 5678);
  CHECK(a.st_mtim.tv_sec == 1577836800);
  char x[8];
  CHECK(getxattr((vm + "/disk.vhdx").c_str(), "user.DOSATTRIB", x, sizeof x) == 1);
  char target[64] = {};
  CHECK(readlink((vm + "/link").c_str(), target, sizeof target - 1) == 9);
  CHECK(std::string(target) == "disk.vhdx");
  REQUIRE(stat((vm + "/sparse.vhdx").c_str(), &a) == 0);
  CHECK(a.st_size == 8 << 20);
  CHECK(a.st_blocks == 0);  // Holes stay holes.
  struct stat dir;
  REQUIRE(stat(vm.c_str(), &dir) == 0);
  CHECK((dir.st_mode & 07777) == 0750);

  // --to: a copy elsewhere; the JSON names source and target.
  const std::string elsewhere = v.tmp.Sub("out");
  REQUIRE(mkdir(elsewhere.c_str(), 0755) == 0);
  REQUIRE(RunCommand({VSSFS_VSSCTL_BINARY, "-m", v.mnt, "--json", "restore", "s1",
                      vm + "/disk.vhdx", "--to", elsewhere},
                     &out) == 0);
  CHECK_THAT(out, Catch::Contains("\"to\":\"" + elsewhere + "/disk.vhdx\""));
  CHECK(ReadFile(elsewhere + "/disk.vhdx") == "data");
  CHECK(RunCommand({VSSFS_VSSCTL_BINARY, "-m", v.mnt, "restore", "nope", vm}, &out) == 3);
  CHECK(RunCommand({VSSFS_VSSCTL_BINARY, "-m", v.mnt, "restore", "s1"}, &out) == 2);
  REQUIRE(m.Unmount() == 0);
}

namespace {

std::string Sum(const std::string& path) {
  std::string out;
  RunCommand({"sh", "-c",
              "cd '" + path +
                  "' && find . -printf '%y %m %U %s %p\\n' | sort && "
                  "find . -type f -exec md5sum {} + | sort && getfattr -R -d -m - . 2>/dev/null | "
                  "grep -v '^# file' | sort"},
             &out);
  return out;
}

int Vssctl(std::vector<std::string> args, std::string* out) {
  args.insert(args.begin(), VSSFS_VSSCTL_BINARY);
  return RunCommand(args, out);
}

std::string Field(const std::string& json, const std::string& key) {
  const std::string k = "\"" + key + "\":";
  size_t at = json.find(k);
  if (at == std::string::npos) return "";
  at += k.size();
  if (json[at] == '"') return json.substr(at + 1, json.find('"', at + 1) - at - 1);
  return json.substr(at, json.find_first_of(",}", at) - at);
}

}  // namespace

TEST_CASE(
    "vssctl rollback: a share back to a snapshot, writing only what changed; newer "
    "snapshots keep theirs",
    "[snapshot_ctl][restore][rollback]") {
  REQUIRE(geteuid() == 0);
  VolumeDirs v;
  ScopedMount m(v.backing, v.mnt);
  const std::string share = v.mnt + "/app";
  REQUIRE(mkdir(share.c_str(), 0755) == 0);
  REQUIRE(mkdir((share + "/logs").c_str(), 0700) == 0);
  REQUIRE(RunCommand({"dd", "if=/dev/urandom", "of=" + share + "/db.mdf", "bs=1M", "count=16",
                      "status=none"}) == 0);
  Write(share + "/logs/a.log", "first");
  Write(share + "/config", "v1");
  REQUIRE(setxattr((share + "/config").c_str(), "user.DOSATTRIB", "A", 1, 0) == 0);
  std::string out;
  REQUIRE(Vssctl({"-m", v.mnt, "snapshot", "create", "--name", "good"}, &out) == 0);
  const std::string good = Sum(share);

  // What the application did afterwards.
  REQUIRE(RunCommand({"dd", "if=/dev/urandom", "of=" + share + "/db.mdf", "bs=64K", "count=4",
                      "seek=40", "conv=notrunc", "status=none"}) == 0);
  REQUIRE(truncate((share + "/db.mdf").c_str(), 20 << 20) == 0);
  Write(share + "/config", "v2");
  REQUIRE(removexattr((share + "/config").c_str(), "user.DOSATTRIB") == 0);
  REQUIRE(setxattr((share + "/config").c_str(), "user.other", "x", 1, 0) == 0);
  REQUIRE(unlink((share + "/logs/a.log").c_str()) == 0);
  REQUIRE(mkdir((share + "/logs/a.log").c_str(), 0755) == 0);  // Now a directory.
  REQUIRE(mkdir((share + "/tmp").c_str(), 0755) == 0);
  Write(share + "/tmp/new", "new");
  REQUIRE(chmod((share + "/logs").c_str(), 0755) == 0);
  REQUIRE(Vssctl({"-m", v.mnt, "snapshot", "create", "--name", "later"}, &out) == 0);
  const std::string later = Sum(share);
  REQUIRE(later != good);

  REQUIRE(Vssctl({"-m", v.mnt, "--json", "rollback", "good", share}, &out) == 0);
  CHECK(Sum(share) == good);
  // Only the 1 MiB chunk that changed, the config and the log were written.
  CHECK(std::stoull(Field(out, "bytes")) <= (1u << 20) + 64);
  CHECK(Field(out, "removed") == "2");  // tmp, and the directory a.log.
  const std::string safety = Field(out, "safety_snapshot");
  REQUIRE_FALSE(safety.empty());
  // Every other snapshot still shows its own state: the newer one, and the
  // safety snapshot (the state the rollback replaced).
  CHECK(Sum(v.mnt + "/.snapshot/later/app") == later);
  CHECK(Sum(v.mnt + "/.snapshot/" + safety + "/app") == later);
  CHECK(Sum(v.mnt + "/.snapshot/good/app") == good);
  // Undo: roll forward to the safety snapshot.
  REQUIRE(Vssctl({"-m", v.mnt, "rollback", safety, share, "--no-safety-snapshot"}, &out) == 0);
  CHECK(Sum(share) == later);
  REQUIRE(Vssctl({"-m", v.mnt, "fsck"}, &out) == 0);
  CHECK(Vssctl({"-m", v.mnt, "rollback", "missing", share}, &out) == 3);
  REQUIRE(m.Unmount() == 0);
}
