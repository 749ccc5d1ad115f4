// Integration tests of the vssfs daemon: real mounts in private temp dirs.
#include <fcntl.h>
#include <grp.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "test_support.h"

using vssfs::testing::IsVssfsMounted;
using vssfs::testing::PinSelf;
using vssfs::testing::ReadFile;
using vssfs::testing::RunCommand;
using vssfs::testing::ScopedMount;
using vssfs::testing::ScopedUringParameter;
using vssfs::testing::TempDir;
using vssfs::testing::VssfsBinary;

namespace {

using Volume = vssfs::testing::VolumeDirs;

void WriteFile(const std::string& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary);
  out << data;
  REQUIRE(out.good());
}

ino_t Ino(const std::string& path) {
  struct stat st;
  REQUIRE(lstat(path.c_str(), &st) == 0);
  return st.st_ino;
}

// Runs `body` in a child process as uid/gid 65534 and returns its exit code.
template <typename F>
int AsNobody(F&& body) {
  pid_t pid = fork();
  if (pid == 0) {
    gid_t groups[] = {65534};
    if (setgroups(1, groups) != 0 || setresgid(65534, 65534, 65534) != 0 ||
        setresuid(65534, 65534, 65534) != 0) {
      _exit(99);
    }
    _exit(body());
  }
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

}  // namespace

TEST_CASE("mount: files pass through to the backing directory", "[fs][mount]") {
  Volume v;
  WriteFile(v.backing + "/before", "existing\n");
  ScopedMount m(v.backing, v.mnt, {"-o", "allow_other"});
  CHECK(ReadFile(v.mnt + "/before") == "existing\n");
  WriteFile(v.mnt + "/after", "written through vssfs\n");
  CHECK(ReadFile(v.backing + "/after") == "written through vssfs\n");

  // A large file with random content, larger than one FUSE request.
  std::string big(8 << 20, '\0');
  std::mt19937_64 rng(42);
  for (auto& c : big) c = static_cast<char>(rng());
  WriteFile(v.mnt + "/big", big);
  m.Unmount();
  CHECK(ReadFile(v.backing + "/big") == big);
}

TEST_CASE("mount: inode numbers are the backing ones and survive remounts", "[fs][mount]") {
  Volume v;
  ino_t file_ino, link_ino, dir_ino;
  {
    ScopedMount m(v.backing, v.mnt);
    WriteFile(v.mnt + "/f", "x");
    REQUIRE(link((v.mnt + "/f").c_str(), (v.mnt + "/hard").c_str()) == 0);
    REQUIRE(mkdir((v.mnt + "/d").c_str(), 0755) == 0);
    file_ino = Ino(v.mnt + "/f");
    link_ino = Ino(v.mnt + "/hard");
    dir_ino = Ino(v.mnt + "/d");
    CHECK(file_ino == link_ino);
    CHECK(file_ino == Ino(v.backing + "/f"));
    CHECK(dir_ino == Ino(v.backing + "/d"));
    CHECK(Ino(v.mnt) == Ino(v.backing));
  }
  ScopedMount m(v.backing, v.mnt);
  CHECK(Ino(v.mnt + "/f") == file_ino);
  CHECK(Ino(v.mnt + "/hard") == file_ino);
  CHECK(Ino(v.mnt + "/d") == dir_ino);
}

// Descriptors the process `pid` has open.
size_t OpenDescriptors(pid_t pid) {
  size_t n = 0;
  for (const auto& e :
       std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd")) {
    (void)e;
    ++n;
  }
  return n;
}

TEST_CASE("mount: a tree larger than max_inodes is walked within its descriptors", "[fs][mount]") {
  // Every inode the kernel caches holds a descriptor in the daemon; past the
  // budget the daemon closes idle files' descriptors (reopening them by
  // handle) and asks the kernel to forget the least recently used inodes.
  // Without that, a walk of more files than the descriptor limit ends in
  // EMFILE. Each way alone must keep the budget too.
  const std::string mode = GENERATE(as<std::string>{}, "auto", "handles", "prune");
  INFO("-o inode_release=" << mode);
  Volume v;
  constexpr int kFiles = 4000;
  constexpr size_t kBudget = 500;
  REQUIRE(mkdir((v.backing + "/d").c_str(), 0755) == 0);
  std::vector<ino_t> inos;
  for (int i = 0; i < kFiles; ++i) {
    const std::string name = "/d/f" + std::to_string(i);
    WriteFile(v.backing + name, "");
    inos.push_back(Ino(v.backing + name));
  }
  ScopedMount m(v.backing, v.mnt,
                {"-o", "max_inodes=" + std::to_string(kBudget), "-o", "inode_release=" + mode});
  size_t most = 0;
  int failed = 0;
  for (int round = 0; round < 2; ++round) {
    for (int i = 0; i < kFiles; ++i) {
      const std::string path = v.mnt + "/d/f" + std::to_string(i);
      struct stat st;
      if (stat(path.c_str(), &st) != 0 || st.st_ino != inos[i]) ++failed;
      // The kernel answers the second round's stats from its cache; an
      // open reaches the daemon, which reopens an evicted file by handle.
      if (round == 1 && i % 4 == 0) {
        const int fd = open(path.c_str(), O_RDONLY);
        if (fd < 0 || fstat(fd, &st) != 0 || st.st_ino != inos[i]) ++failed;
        if (fd >= 0) close(fd);
      }
      if (i % 50 == 0) most = std::max(most, OpenDescriptors(m.pid()));
    }
  }
  // A listing with attributes (READDIRPLUS) of the whole directory, too.
  size_t listed = 0;
  for (const auto& e : std::filesystem::directory_iterator(v.mnt + "/d")) {
    listed += e.is_regular_file() ? 1 : 0;
    if (listed % 50 == 0) most = std::max(most, OpenDescriptors(m.pid()));
  }
  // Once the walk is over the pruner catches up: the budget plus the
  // daemon's other descriptors (the store, /dev/fuse clones, helpers' pipes).
  size_t settled = OpenDescriptors(m.pid());
  for (int i = 0; i < 200 && settled > kBudget + 150; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    settled = OpenDescriptors(m.pid());
  }
  INFO("vssfs log:\n" << m.Log());
  CHECK(failed == 0);
  CHECK(listed == kFiles);
  CHECK(settled <= kBudget + 150);
  // While it runs the pruner trails the walk by a round or two (more on a
  // loaded machine); without it every file would hold one (4000+).
  CHECK(most < kFiles / 2);
  const bool pruned =
      m.Log().find("asking it to forget the least recently used") != std::string::npos;
  const bool evicted = m.Log().find("closing those of idle files") != std::string::npos;
  // In auto mode the kernel may be asked too (for the directory, and for
  // evicted entries past four per inode of the budget).
  if (mode != "auto") CHECK(pruned == (mode == "prune"));
  CHECK(evicted == (mode != "prune"));
}

TEST_CASE("mount: an evicted file deleted through the mount stays reachable where natively",
          "[fs][mount]") {
  // A process holding an O_PATH descriptor of a file (no FUSE open) can
  // still reach it after its last name is gone: here its xattrs, through
  // /proc/self/fd. The daemon closed its own descriptor of the file
  // meanwhile (eviction); the unlink must reopen and hold it, or the daemon
  // could only answer ESTALE. (The kernel keeps the name cached, 60 s by
  // default, so it does not look the file up again before the unlink.)
  Volume v;
  REQUIRE(mkdir((v.backing + "/d").c_str(), 0755) == 0);
  for (int i = 0; i < 200; ++i) WriteFile(v.backing + "/d/f" + std::to_string(i), "");
  WriteFile(v.backing + "/victim", "twelve bytes");
  REQUIRE(setxattr((v.backing + "/victim").c_str(), "user.tag", "kept", 4, 0) == 0);
  ScopedMount m(v.backing, v.mnt, {"-o", "max_inodes=32", "-o", "inode_release=handles"});
  const int held = open((v.mnt + "/victim").c_str(), O_PATH | O_CLOEXEC);
  REQUIRE(held >= 0);
  const std::string via_fd = "/proc/self/fd/" + std::to_string(held);
  // 200 other files push the victim out of the daemon's descriptors.
  for (int i = 0; i < 200; ++i) {
    struct stat st;
    REQUIRE(stat((v.mnt + "/d/f" + std::to_string(i)).c_str(), &st) == 0);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  INFO("vssfs log:\n" << m.Log());
  REQUIRE(m.Log().find("closing those of idle files") != std::string::npos);
  REQUIRE(unlink((v.mnt + "/victim").c_str()) == 0);
  // Files made now may take the freed number if nothing holds it.
  for (int i = 0; i < 50; ++i) WriteFile(v.mnt + "/new" + std::to_string(i), "");
  char value[16] = {};
  const ssize_t n = getxattr(via_fd.c_str(), "user.tag", value, sizeof value);
  const int err = errno;
  struct stat after;
  const int r = fstat(held, &after);
  close(held);
  INFO("getxattr: " << (n >= 0 ? "ok" : std::strerror(err)));
  REQUIRE(n == 4);
  CHECK(std::string(value, 4) == "kept");
  REQUIRE(r == 0);
  CHECK(after.st_nlink == 0);
  CHECK(after.st_size == 12);
}

TEST_CASE("mount: a tree larger than the descriptor limit is walked without EMFILE",
          "[fs][mount]") {
  // The default budget is three quarters of the limit. (With
  // CAP_SYS_RESOURCE the daemon raises its limit first, and then nothing
  // is pruned here; the walk must succeed either way.)
  Volume v;
  constexpr int kFiles = 3000;
  REQUIRE(mkdir((v.backing + "/d").c_str(), 0755) == 0);
  for (int i = 0; i < kFiles; ++i) WriteFile(v.backing + "/d/f" + std::to_string(i), "");
  ScopedMount m(v.backing, v.mnt, {}, 1024);
  // Open files pin their inodes and take a descriptor more each: with 300
  // of them the walk runs out of descriptors before the budget is reached,
  // and requests must wait for the pruner (Relieve) instead of failing.
  std::vector<int> held;
  for (int i = 0; i < 300; ++i) {
    int fd = open((v.mnt + "/d/f" + std::to_string(i)).c_str(), O_RDONLY);
    REQUIRE(fd >= 0);
    held.push_back(fd);
  }
  int failed = 0;
  int first_errno = 0;
  for (int i = 300; i < kFiles; ++i) {
    const std::string path = v.mnt + "/d/f" + std::to_string(i);
    struct stat st;
    if (stat(path.c_str(), &st) != 0) {
      if (failed++ == 0) first_errno = errno;
      continue;
    }
    // Opening and creating need descriptors too.
    if (i % 10 == 0) {
      int fd = open(path.c_str(), O_RDONLY);
      if (fd < 0 && failed++ == 0) first_errno = errno;
      if (fd >= 0) close(fd);
      fd = open((path + ".new").c_str(), O_CREAT | O_WRONLY, 0644);
      if (fd < 0 && failed++ == 0) first_errno = errno;
      if (fd >= 0) close(fd);
    }
  }
  for (int fd : held) close(fd);
  const std::string log = m.Log();
  INFO("first error: " << std::strerror(first_errno) << "\nvssfs log:\n" << log);
  CHECK(failed == 0);
  if (log.find("(descriptor limit 1024)") == std::string::npos) {
    WARN("vssfs raised its descriptor limit (CAP_SYS_RESOURCE): pruning is not exercised here");
  } else {
    CHECK((log.find("closing those of idle files") != std::string::npos ||
           log.find("asking it to forget the least recently used") != std::string::npos));
  }
}

TEST_CASE("mount: the store is invisible and unreachable", "[fs][mount]") {
  Volume v;
  ScopedMount m(v.backing, v.mnt);
  struct stat st;
  REQUIRE(stat((v.backing + "/.vssfs").c_str(), &st) == 0);
  CHECK(stat((v.mnt + "/.vssfs").c_str(), &st) == -1);
  CHECK(errno == ENOENT);
  CHECK(stat((v.mnt + "/.vssfs/lock").c_str(), &st) == -1);
  CHECK(errno == ENOENT);
  CHECK(mkdir((v.mnt + "/.vssfs").c_str(), 0755) == -1);
  CHECK(errno == EPERM);
  CHECK(open((v.mnt + "/.vssfs").c_str(), O_CREAT | O_WRONLY, 0644) == -1);
  CHECK(errno == EPERM);
  WriteFile(v.mnt + "/x", "x");
  CHECK(rename((v.mnt + "/x").c_str(), (v.mnt + "/.vssfs").c_str()) == -1);
  CHECK(errno == EPERM);
  CHECK(symlink("x", (v.mnt + "/.vssfs").c_str()) == -1);
  CHECK(errno == EPERM);
  std::string out;
  REQUIRE(RunCommand({"ls", "-a", v.mnt}, &out) == 0);
  CHECK(out == ".\n..\n.snapshot\nx\n");
  // A subdirectory may use the name freely.
  REQUIRE(mkdir((v.mnt + "/sub").c_str(), 0755) == 0);
  CHECK(mkdir((v.mnt + "/sub/.vssfs").c_str(), 0755) == 0);
  CHECK(mkdir((v.mnt + "/sub/.snapshot").c_str(), 0755) == 0);
}

TEST_CASE("mount: .snapshot is an empty read-only directory", "[fs][mount]") {
  Volume v;
  ScopedMount m(v.backing, v.mnt);
  const std::string snap = v.mnt + "/.snapshot";
  struct stat st;
  REQUIRE(stat(snap.c_str(), &st) == 0);
  CHECK(S_ISDIR(st.st_mode));
  CHECK((st.st_mode & 07777) == 0555);
  std::string out;
  REQUIRE(RunCommand({"ls", "-a", snap}, &out) == 0);
  CHECK(out == ".\n..\n");
  // Root is refused too.
  CHECK(mkdir((snap + "/x").c_str(), 0755) == -1);
  CHECK(errno == EROFS);
  CHECK(open((snap + "/f").c_str(), O_CREAT | O_WRONLY, 0644) == -1);
  CHECK(errno == EROFS);
  CHECK(rmdir(snap.c_str()) == -1);
  CHECK(errno == EROFS);
  CHECK(rename(snap.c_str(), (v.mnt + "/moved").c_str()) == -1);
  CHECK(errno == EROFS);
  CHECK(setxattr(snap.c_str(), "user.x", "1", 1, 0) == -1);
  CHECK(errno == EROFS);
  CHECK(chmod(snap.c_str(), 0777) == -1);
  CHECK(errno == EROFS);
  CHECK(mkdir(snap.c_str(), 0755) == -1);
  CHECK(errno == EEXIST);
  // Nothing of it reaches the backing directory.
  CHECK(lstat((v.backing + "/.snapshot").c_str(), &st) == -1);
}

TEST_CASE("mount: xattrs Samba uses pass through", "[fs][mount]") {
  Volume v;
  ScopedMount m(v.backing, v.mnt);
  const std::string f = v.mnt + "/f";
  WriteFile(f, "x");
  const std::string dosattrib("\0\0\4\0\4\0\0\0", 8);
  REQUIRE(setxattr(f.c_str(), "user.DOSATTRIB", dosattrib.data(), dosattrib.size(), 0) == 0);
  std::string ntacl(300, 'n');
  REQUIRE(setxattr(f.c_str(), "security.NTACL", ntacl.data(), ntacl.size(), 0) == 0);
  std::string stream(3000, 's');
  REQUIRE(setxattr(f.c_str(), "user.DosStream.Zone.Identifier:$DATA", stream.data(), stream.size(),
                   0) == 0);
  // A value too large for the backing filesystem fails as it does natively.
  std::string huge(200000, 'h');
  WriteFile(v.backing + "/native", "x");
  errno = 0;
  int native = setxattr((v.backing + "/native").c_str(), "user.huge", huge.data(), huge.size(), 0);
  int native_errno = errno;
  errno = 0;
  CHECK(setxattr(f.c_str(), "user.huge", huge.data(), huge.size(), 0) == native);
  CHECK(errno == native_errno);
  char buf[65536];
  CHECK(getxattr(f.c_str(), "user.DOSATTRIB", nullptr, 0) == 8);
  REQUIRE(getxattr((v.backing + "/f").c_str(), "user.DOSATTRIB", buf, sizeof buf) == 8);
  CHECK(std::string(buf, 8) == dosattrib);
  CHECK(getxattr(f.c_str(), "security.NTACL", buf, 10) == -1);
  CHECK(errno == ERANGE);
  CHECK(getxattr(f.c_str(), "user.DosStream.Zone.Identifier:$DATA", buf, sizeof buf) == 3000);
  CHECK(setxattr(f.c_str(), "user.DOSATTRIB", "a", 1, XATTR_CREATE) == -1);
  CHECK(errno == EEXIST);
  CHECK(removexattr(f.c_str(), "user.DOSATTRIB") == 0);
  CHECK(getxattr(f.c_str(), "user.DOSATTRIB", buf, sizeof buf) == -1);
  CHECK(errno == ENODATA);
  std::string out;
  REQUIRE(RunCommand({"setfacl", "-m", "u:65534:rw", f}, &out) == 0);
  REQUIRE(RunCommand({"getfacl", "-cpn", v.backing + "/f"}, &out) == 0);
  CHECK_THAT(out, Catch::Contains("user:65534:rw-"));
}

TEST_CASE("mount: new files belong to their creator", "[fs][mount]") {
  Volume v;
  ScopedMount m(v.backing, v.mnt, {"-o", "allow_other"});
  REQUIRE(mkdir((v.mnt + "/pub").c_str(), 01777) == 0);
  REQUIRE(chmod((v.mnt + "/pub").c_str(), 01777) == 0);
  const std::string dir = v.mnt + "/pub";
  WriteFile(dir + "/roots", "r");
  int rc = AsNobody([&] {
    umask(027);
    int fd = open((dir + "/mine").c_str(), O_CREAT | O_WRONLY | O_EXCL, 0666);
    if (fd < 0) return 1;
    close(fd);
    if (mkdir((dir + "/sub").c_str(), 0777) != 0) return 2;
    if (symlink("mine", (dir + "/ln").c_str()) != 0) return 3;
    if (unlink((dir + "/roots").c_str()) == 0 || errno != EPERM) return 4;
    return 0;
  });
  REQUIRE(rc == 0);
  struct stat st;
  REQUIRE(lstat((v.backing + "/pub/mine").c_str(), &st) == 0);
  CHECK(st.st_uid == 65534);
  CHECK(st.st_gid == 65534);
  CHECK((st.st_mode & 0777) == 0640);
  REQUIRE(lstat((v.backing + "/pub/sub").c_str(), &st) == 0);
  CHECK(st.st_uid == 65534);
  CHECK((st.st_mode & 0777) == 0750);
  REQUIRE(lstat((v.backing + "/pub/ln").c_str(), &st) == 0);
  CHECK(st.st_uid == 65534);
}

TEST_CASE("mount: setgid directories pass their group on", "[fs][mount]") {
  Volume v;
  ScopedMount m(v.backing, v.mnt, {"-o", "allow_other"});
  const std::string dir = v.mnt + "/team";
  REQUIRE(mkdir(dir.c_str(), 0777) == 0);
  REQUIRE(chown(dir.c_str(), 0, 100) == 0);
  REQUIRE(chmod(dir.c_str(), 02777) == 0);
  int rc = AsNobody([&] {
    if (mkdir((dir + "/sub").c_str(), 0755) != 0) return 1;
    int fd = open((dir + "/f").c_str(), O_CREAT | O_WRONLY, 0644);
    if (fd < 0) return 2;
    close(fd);
    return 0;
  });
  REQUIRE(rc == 0);
  struct stat st;
  REQUIRE(stat((v.backing + "/team/sub").c_str(), &st) == 0);
  CHECK(st.st_gid == 100);
  CHECK((st.st_mode & S_ISGID) != 0);
  REQUIRE(stat((v.backing + "/team/f").c_str(), &st) == 0);
  CHECK(st.st_gid == 100);
  CHECK(st.st_uid == 65534);
}

TEST_CASE("mount: bad input gets one clear message and exit 1", "[fs][mount]") {
  Volume v;
  auto run = [&](std::vector<std::string> args, std::string* out) {
    args.insert(args.begin(), VssfsBinary());
    return RunCommand(args, out);
  };
  std::string out;
  CHECK(run({v.tmp.Sub("missing"), v.mnt}, &out) == 1);
  CHECK(out == "vssfs: backing directory " + v.tmp.Sub("missing") + " does not exist\n");
  CHECK(run({v.backing, v.tmp.Sub("missing")}, &out) == 1);
  CHECK(out == "vssfs: mount point " + v.tmp.Sub("missing") + " does not exist\n");
  CHECK(run({"--bogus", v.backing, v.mnt}, &out) == 1);
  CHECK(out == "vssfs: unknown option '--bogus' (see vssfs --help)\n");
  CHECK(run({v.backing}, &out) == 1);
  CHECK(out == "vssfs: missing MOUNTPOINT (see vssfs --help)\n");
  mkdir((v.backing + "/in").c_str(), 0755);
  CHECK(run({v.backing, v.backing + "/in"}, &out) == 1);
  CHECK_THAT(out, Catch::Contains("lies inside the backing directory"));
  CHECK(run({"--help"}, &out) == 0);
  CHECK_THAT(out, Catch::StartsWith("usage: vssfs [options] BACKING_DIR MOUNTPOINT"));
  CHECK(run({"--version"}, &out) == 0);
  CHECK_THAT(out, Catch::StartsWith("vssfs "));

  ScopedMount m(v.backing, v.mnt);
  // The same mount point again.
  mkdir(v.tmp.Sub("other").c_str(), 0755);
  CHECK(run({v.tmp.Sub("other"), v.mnt}, &out) == 1);
  CHECK_THAT(out, Catch::Contains("is already a mount point"));
  // The same backing directory on a second mount point.
  mkdir(v.tmp.Sub("mnt2").c_str(), 0755);
  CHECK(run({v.backing, v.tmp.Sub("mnt2")}, &out) == 1);
  CHECK_THAT(out, Catch::Contains("in use by another vssfs process (pid " +
                                  std::to_string(m.pid()) + ")"));
  CHECK_FALSE(IsVssfsMounted(v.tmp.Sub("mnt2")));
  // A non-empty mount point.
  WriteFile(v.tmp.Sub("mnt2/x"), "x");
  CHECK(run({v.tmp.Sub("other"), v.tmp.Sub("mnt2")}, &out) == 1);
  CHECK_THAT(out, Catch::Contains("is not empty"));
}

TEST_CASE("mount: SIGTERM and SIGINT unmount cleanly", "[fs][mount]") {
  for (int sig : {SIGTERM, SIGINT}) {
    Volume v;
    ScopedMount m(v.backing, v.mnt);
    WriteFile(v.mnt + "/f", "data");
    REQUIRE(kill(m.pid(), sig) == 0);
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (IsVssfsMounted(v.mnt) && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    CHECK_FALSE(IsVssfsMounted(v.mnt));
    int status = m.Unmount();
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
    CHECK(ReadFile(v.backing + "/f") == "data");
  }
}

TEST_CASE("mount: background mode returns once mounted", "[fs][mount]") {
  Volume v;
  std::string out;
  REQUIRE(RunCommand({VssfsBinary(), v.backing, v.mnt}, &out) == 0);
  REQUIRE(IsVssfsMounted(v.mnt));
  WriteFile(v.mnt + "/f", "bg");
  CHECK(ReadFile(v.backing + "/f") == "bg");
  REQUIRE(RunCommand({"umount", v.mnt}, &out) == 0);
  CHECK_FALSE(IsVssfsMounted(v.mnt));
  // The daemon is gone: the store lock is free again.
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  int rc = 1;
  while (rc != 0 && std::chrono::steady_clock::now() < deadline) {
    rc = RunCommand({VssfsBinary(), v.backing, v.mnt}, &out);
    if (rc != 0) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  CHECK(rc == 0);
  RunCommand({"umount", v.mnt}, &out);
}

TEST_CASE("mount: writes and truncates by another user clear set-id bits as natively",
          "[fs][mount]") {
  Volume v;
  ScopedMount m(v.backing, v.mnt, {"-o", "allow_other"});
  const std::string native = v.tmp.Sub("native");
  REQUIRE(mkdir(native.c_str(), 0755) == 0);
  enum Action { kWrite, kTruncate, kOpenTrunc, kFallocate, kPunchHole, kCopyInto };
  struct Case {
    const char* name;
    mode_t mode;
    Action action;
    bool own;  // Owned by the writer (so it is in the file's group).
  };
  const Case cases[] = {{"suid_w", 04777, kWrite, false},
                        {"sgidx_w", 02777, kWrite, false},
                        {"sgid_noexec_w", 02767, kWrite, false},
                        {"both_w", 06777, kWrite, false},
                        {"own_sgid_noexec_w", 02666, kWrite, true},
                        {"own_both_noexec_w", 06646, kWrite, true},
                        {"suid_t", 04777, kTruncate, false},
                        {"sgidx_t", 02777, kTruncate, false},
                        {"own_sgid_noexec_t", 02666, kTruncate, true},
                        {"suid_o", 04777, kOpenTrunc, false},
                        {"sgidx_o", 02777, kOpenTrunc, false},
                        {"own_sgid_noexec_o", 02666, kOpenTrunc, true},
                        {"suid_f", 04777, kFallocate, false},
                        {"sgidx_f", 02777, kFallocate, false},
                        {"sgidx_p", 02777, kPunchHole, false},
                        {"own_both_c", 06766, kCopyInto, true},
                        {"sgidx_c", 02777, kCopyInto, false}};
  for (const std::string& dir : {native, v.mnt}) {
    WriteFile(dir + "/source", std::string(8192, 's'));
    REQUIRE(chmod((dir + "/source").c_str(), 0644) == 0);
    for (const Case& c : cases) {
      const std::string f = dir + "/" + c.name;
      WriteFile(f, std::string(8192, 'd'));
      if (c.own) REQUIRE(chown(f.c_str(), 65534, 65534) == 0);
      REQUIRE(chmod(f.c_str(), c.mode) == 0);
    }
    int rc = AsNobody([&] {
      int src = open((dir + "/source").c_str(), O_RDONLY);
      if (src < 0) return 10;
      for (const Case& c : cases) {
        const std::string f = dir + "/" + c.name;
        int fd = open(f.c_str(), O_WRONLY | (c.action == kOpenTrunc ? O_TRUNC : 0));
        if (fd < 0) return 1;
        switch (c.action) {
          case kWrite:
            if (write(fd, "x", 1) != 1) return 2;
            break;
          case kTruncate:
            if (ftruncate(fd, 3) != 0) return 3;
            break;
          case kOpenTrunc:
            break;
          case kFallocate:
            if (fallocate(fd, 0, 0, 65536) != 0) return 4;
            break;
          case kPunchHole:
            if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 4096) != 0) return 5;
            break;
          case kCopyInto: {
            loff_t in = 0, out = 0;
            if (copy_file_range(src, &in, fd, &out, 4096, 0) != 4096) return 6;
            break;
          }
        }
        close(fd);
      }
      close(src);
      return 0;
    });
    REQUIRE(rc == 0);
  }
  int changed = 0;
  for (const Case& c : cases) {
    struct stat want, got;
    REQUIRE(stat((native + "/" + c.name).c_str(), &want) == 0);
    REQUIRE(stat((v.mnt + "/" + c.name).c_str(), &got) == 0);
    INFO(c.name << ": native " << std::oct << want.st_mode << ", vssfs " << got.st_mode);
    CHECK(got.st_mode == want.st_mode);
    REQUIRE(stat((v.backing + "/" + c.name).c_str(), &got) == 0);
    CHECK(got.st_mode == want.st_mode);
    if ((want.st_mode & 07777) != c.mode) ++changed;
  }
  // Both outcomes occur: bits cleared for most, kept for the owner's
  // non-executable set-group-ID files.
  CHECK(changed >= 10);
  CHECK(changed < static_cast<int>(std::size(cases)));
}

TEST_CASE("mount: fchmod, fchown and futimens on open directories and files", "[fs][mount]") {
  Volume v;
  ScopedMount m(v.backing, v.mnt);
  REQUIRE(mkdir((v.mnt + "/d").c_str(), 0755) == 0);
  WriteFile(v.mnt + "/f", "x");
  int dfd = open((v.mnt + "/d").c_str(), O_RDONLY | O_DIRECTORY);
  int ffd = open((v.mnt + "/f").c_str(), O_RDWR);
  REQUIRE(dfd >= 0);
  REQUIRE(ffd >= 0);
  CHECK(fchmod(dfd, 0700) == 0);
  CHECK(fchown(dfd, 65534, 100) == 0);
  struct timespec times[2] = {{1000, 1}, {2000, 2}};
  CHECK(futimens(dfd, times) == 0);
  CHECK(fchmod(ffd, 0600) == 0);
  CHECK(futimens(ffd, times) == 0);
  CHECK(ftruncate(ffd, 100) == 0);
  struct stat st;
  REQUIRE(fstat(dfd, &st) == 0);
  CHECK((st.st_mode & 07777) == 0700);
  REQUIRE(stat((v.backing + "/d").c_str(), &st) == 0);
  CHECK((st.st_mode & 07777) == 0700);
  CHECK(st.st_uid == 65534);
  CHECK(st.st_gid == 100);
  CHECK(st.st_mtim.tv_sec == 2000);
  CHECK(st.st_mtim.tv_nsec == 2);
  CHECK(st.st_atim.tv_sec == 1000);
  REQUIRE(stat((v.backing + "/f").c_str(), &st) == 0);
  CHECK((st.st_mode & 07777) == 0600);
  CHECK(st.st_size == 100);
  close(dfd);
  close(ffd);
  // The other entries are untouched.
  REQUIRE(stat(v.backing.c_str(), &st) == 0);
  CHECK((st.st_mode & 07777) == 0755);
}

TEST_CASE("mount: works from an fstab line through mount.fuse3", "[fs][mount]") {
  Volume v;
  // The "fuse" type with PROGRAM#SOURCE names the daemon by absolute path;
  // "fuse.vssfs" would need vssfs installed on root's PATH.
  const std::string fstab = v.tmp.Sub("fstab");
  WriteFile(fstab, VssfsBinary() + "#" + v.backing + " " + v.mnt +
                       " fuse allow_other,_netdev,nofail,noauto 0 0\n");
  std::string out;
  REQUIRE(RunCommand({"mount", "-T", fstab, v.mnt}, &out) == 0);
  CHECK(out.empty());
  REQUIRE(IsVssfsMounted(v.mnt));
  WriteFile(v.mnt + "/f", "fstab");
  CHECK(ReadFile(v.backing + "/f") == "fstab");
  CHECK(RunCommand({"umount", v.mnt}, &out) == 0);
  CHECK_FALSE(IsVssfsMounted(v.mnt));
}

TEST_CASE("mount: POSIX record locks and flock work between processes", "[fs][mount]") {
  Volume v;
  ScopedMount m(v.backing, v.mnt, {"-o", "allow_other"});
  const std::string f = v.mnt + "/locked";
  WriteFile(f, std::string(4096, 'x'));
  int fd = open(f.c_str(), O_RDWR);
  REQUIRE(fd >= 0);
  struct flock lk {};
  lk.l_type = F_WRLCK;
  lk.l_whence = SEEK_SET;
  lk.l_start = 100;
  lk.l_len = 50;
  REQUIRE(fcntl(fd, F_SETLK, &lk) == 0);
  REQUIRE(flock(fd, LOCK_EX | LOCK_NB) == 0);

  // Another process sees both locks, as Samba's smbd processes would.
  int pipefd[2];
  REQUIRE(pipe(pipefd) == 0);
  pid_t child = fork();
  if (child == 0) {
    close(pipefd[0]);
    int cfd = open(f.c_str(), O_RDWR);
    int result[5] = {cfd >= 0, 0, 0, 0, 0};
    struct flock want {};
    want.l_type = F_WRLCK;
    want.l_whence = SEEK_SET;
    want.l_start = 120;
    want.l_len = 10;
    result[1] = fcntl(cfd, F_SETLK, &want) == -1 && (errno == EAGAIN || errno == EACCES);
    struct flock probe = want;
    result[2] = fcntl(cfd, F_GETLK, &probe) == 0 && probe.l_type == F_WRLCK &&
                probe.l_pid == getppid() && probe.l_start == 100 && probe.l_len == 50;
    want.l_start = 200;  // Outside the locked range.
    result[3] = fcntl(cfd, F_SETLK, &want) == 0;
    result[4] = flock(cfd, LOCK_SH | LOCK_NB) == -1 && errno == EWOULDBLOCK;
    if (write(pipefd[1], result, sizeof result) != sizeof result) _exit(2);
    _exit(0);
  }
  close(pipefd[1]);
  int result[5] = {};
  REQUIRE(read(pipefd[0], result, sizeof result) == sizeof result);
  close(pipefd[0]);
  int status = 0;
  waitpid(child, &status, 0);
  CHECK(result[0] == 1);  // opened
  CHECK(result[1] == 1);  // conflicting record lock refused
  CHECK(result[2] == 1);  // F_GETLK names the holder and its range
  CHECK(result[3] == 1);  // a disjoint range can be locked
  CHECK(result[4] == 1);  // flock conflict
  // Closing releases: now the other process could lock.
  close(fd);
  fd = open(f.c_str(), O_RDWR);
  REQUIRE(fd >= 0);
  CHECK(flock(fd, LOCK_EX | LOCK_NB) == 0);
  close(fd);
}

namespace {

// Large writes through the mount reach the backing file (as uncached
// buffered writes, or O_DIRECT where those are refused) and large reads come
// back through the mount (O_DIRECT), coherent with data written beside it.
void CheckLargeIoCoherent(const std::string& backing, const std::string& mnt) {
  std::mt19937_64 rng(7);
  auto random_bytes = [&](size_t n) {
    std::string s(n, '\0');
    for (auto& c : s) c = static_cast<char>(rng());
    return s;
  };
  // Drops the mount's cached pages of a file so the next read reaches vssfs.
  auto drop_mount_cache = [](const std::string& path) {
    int fd = open(path.c_str(), O_RDONLY);
    REQUIRE(fd >= 0);
    REQUIRE(posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) == 0);
    close(fd);
  };
  // Written through the mount, read back through the mount after its cache
  // is dropped.
  const std::string data = random_bytes(8 << 20);
  {
    int fd = open((mnt + "/big").c_str(), O_CREAT | O_WRONLY, 0644);
    REQUIRE(fd >= 0);
    REQUIRE(write(fd, data.data(), data.size()) == static_cast<ssize_t>(data.size()));
    REQUIRE(fsync(fd) == 0);
    close(fd);
  }
  CHECK(ReadFile(backing + "/big") == data);
  drop_mount_cache(mnt + "/big");
  CHECK(ReadFile(mnt + "/big") == data);
  // An unaligned tail and a partial overwrite through the mount.
  const std::string tail = random_bytes(12345);
  {
    int fd = open((mnt + "/big").c_str(), O_WRONLY | O_APPEND);
    REQUIRE(fd >= 0);
    REQUIRE(write(fd, tail.data(), tail.size()) == static_cast<ssize_t>(tail.size()));
    close(fd);
    fd = open((mnt + "/big").c_str(), O_WRONLY);
    REQUIRE(fd >= 0);
    REQUIRE(pwrite(fd, "patch", 5, 1 << 20) == 5);
    close(fd);
  }
  std::string want = data + tail;
  want.replace(1 << 20, 5, "patch");
  drop_mount_cache(mnt + "/big");
  CHECK(ReadFile(mnt + "/big") == want);
  // A large write at an unaligned offset (uncached writes take it as it is,
  // the O_DIRECT fallback leaves it to a plain buffered write).
  const std::string odd = random_bytes(1 << 20);
  {
    int fd = open((mnt + "/big").c_str(), O_WRONLY);
    REQUIRE(fd >= 0);
    REQUIRE(pwrite(fd, odd.data(), odd.size(), 3 * (1 << 20) + 100) ==
            static_cast<ssize_t>(odd.size()));
    REQUIRE(fdatasync(fd) == 0);
    close(fd);
  }
  want.replace(3 * (1 << 20) + 100, odd.size(), odd);
  CHECK(ReadFile(backing + "/big") == want);
  // Data still dirty in the backing file's page cache (written beside the
  // mount, not synced) is what a direct read returns.
  const std::string beside = random_bytes(4 << 20);
  {
    int fd = open((backing + "/big").c_str(), O_WRONLY);
    REQUIRE(fd >= 0);
    REQUIRE(pwrite(fd, beside.data(), beside.size(), 0) == static_cast<ssize_t>(beside.size()));
    close(fd);
  }
  want.replace(0, beside.size(), beside);
  drop_mount_cache(mnt + "/big");
  CHECK(ReadFile(mnt + "/big") == want);
}

// Whether the filesystem holding `dir` takes pwritev2(RWF_DONTCACHE).
bool TakesUncachedWrites(const std::string& dir) {
  const std::string probe = dir + "/.probe";
  int fd = open(probe.c_str(), O_CREAT | O_WRONLY | O_TRUNC, 0600);
  REQUIRE(fd >= 0);
  char byte = 'x';
  iovec v{&byte, 1};
  const bool ok = pwritev2(fd, &v, 1, 0, 0x80 /* RWF_DONTCACHE */) == 1;
  const int err = errno;
  close(fd);
  unlink(probe.c_str());
  if (!ok) REQUIRE(err == EOPNOTSUPP);
  return ok;
}

constexpr const char* kUncachedRefused = "uncached writes (RWF_DONTCACHE) refused";

}  // namespace

TEST_CASE("mount: large reads and writes stay coherent with the backing file", "[fs][mount]") {
  Volume v;
  const bool uncached = TakesUncachedWrites(v.backing);
  ScopedMount m(v.backing, v.mnt);
  CheckLargeIoCoherent(v.backing, v.mnt);
  INFO("backing filesystem takes RWF_DONTCACHE: " << uncached);
  CHECK((m.Log().find(kUncachedRefused) == std::string::npos) == uncached);
}

TEST_CASE("mount: large writes fall back to O_DIRECT where uncached writes are refused",
          "[fs][mount]") {
  REQUIRE(geteuid() == 0);
  Volume v;
  // tmpfs keeps no separate cache to drop, so it refuses RWF_DONTCACHE.
  REQUIRE(mount("tmpfs", v.backing.c_str(), "tmpfs", 0, "size=64m,mode=0755") == 0);
  struct Unmounter {
    std::string path;
    ~Unmounter() { umount2(path.c_str(), MNT_DETACH); }
  } unmounter{v.backing};
  REQUIRE_FALSE(TakesUncachedWrites(v.backing));
  ScopedMount m(v.backing, v.mnt);
  CheckLargeIoCoherent(v.backing, v.mnt);
  CHECK(m.Log().find(kUncachedRefused) != std::string::npos);
  REQUIRE(m.Unmount() == 0);
}

namespace {

// Whether the fuse module offers FUSE over io_uring while `uring` is in
// scope; warns if not.
bool UringOffered(const ScopedUringParameter& uring) {
  if (!uring.available()) {
    WARN("the fuse module has no enable_uring parameter: FUSE over io_uring not tested");
  }
  return uring.available();
}

// Sends a request through `m` and says whether vssfs served it through
// io_uring, its log saying `what`; warns if not.
bool ServedThroughUring(const ScopedMount& m, const std::string& what) {
  WriteFile(m.mountpoint() + "/probe", "a request through the mount");
  const std::string log = m.Log();
  if (log.find("FUSE over io_uring: serving requests") == std::string::npos ||
      log.find(what) == std::string::npos) {
    WARN("vssfs did not use FUSE over io_uring (or its log lacks '" << what << "') here:\n" << log);
    return false;
  }
  return true;
}

// The daemon's thread count, from /proc/PID/status.
int ThreadsOf(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("Threads:", 0) == 0) return std::stoi(line.substr(8));
  }
  FAIL("no Threads line in /proc/" << pid << "/status");
  return -1;
}

}  // namespace

TEST_CASE("mount: io_uring entries do not pile up while writeback streams through",
          "[fs][mount][uring]") {
  REQUIRE(geteuid() == 0);
  ScopedUringParameter uring;
  if (!UringOffered(uring)) return;
  Volume v;
  ScopedMount m(v.backing, v.mnt);
  if (!ServedThroughUring(m, "FUSE over io_uring: serving requests")) return;
  const int before = ThreadsOf(m.pid());
  // Writeback sends many WRITEs of one file at once and vssfs serialises
  // them, so every entry of the writer's queue is busy throughout; entries
  // keep finishing requests, so more of them would only wait in line.
  // Before the watchdog looked for progress, each 256 MiB flush added 2-5
  // threads (and their 1 MiB buffers), each 1 GiB flush 11-15, up to 32 per
  // queue.
  const std::string chunk(1 << 20, 'w');
  for (int round = 0; round < 3; ++round) {
    int fd = open((v.mnt + "/stream").c_str(), O_CREAT | O_WRONLY | O_TRUNC, 0644);
    REQUIRE(fd >= 0);
    for (int i = 0; i < 512; ++i) {
      REQUIRE(write(fd, chunk.data(), chunk.size()) == static_cast<ssize_t>(chunk.size()));
    }
    REQUIRE(fsync(fd) == 0);
    close(fd);
  }
  const int after = ThreadsOf(m.pid());
  INFO("daemon threads before " << before << ", after " << after);
  CHECK(after - before <= 6);
  REQUIRE(m.Unmount() == 0);
}

namespace {

// How many of `pid`'s threads run under scheduling policy `policy` (field 41
// of /proc/PID/task/TID/stat); threads that end meanwhile are skipped.
int ThreadsWithPolicy(pid_t pid, int policy) {
  int count = 0;
  const std::string dir = "/proc/" + std::to_string(pid) + "/task";
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    std::ifstream in(entry.path().string() + "/stat");
    std::string stat;
    if (!std::getline(in, stat)) continue;
    const size_t close = stat.rfind(')');
    if (close == std::string::npos) continue;
    // Fields after the command name (which may contain spaces).
    std::istringstream rest(stat.substr(close + 1));
    std::string field;
    for (int i = 3; i <= 41 && rest >> field; ++i) {
      if (i == 41 && field == std::to_string(policy)) ++count;
    }
  }
  return count;
}

}  // namespace

TEST_CASE("mount: SCHED_IDLE ring threads still serve requests while every CPU is busy",
          "[fs][mount][uring]") {
  REQUIRE(geteuid() == 0);
  ScopedUringParameter uring;
  if (!UringOffered(uring)) return;
  Volume v;
  ScopedMount m(v.backing, v.mnt);
  if (!ServedThroughUring(m, "threads each, SCHED_IDLE")) return;
  // Metadata requests leave the thread that served them SCHED_IDLE.
  for (int i = 0; i < 5; ++i) {
    const std::string path = v.mnt + "/meta." + std::to_string(i);
    const int fd = open(path.c_str(), O_CREAT | O_EXCL | O_WRONLY, 0644);
    REQUIRE(fd >= 0);
    close(fd);
    REQUIRE(unlink(path.c_str()) == 0);
  }
  CHECK(ThreadsWithPolicy(m.pid(), SCHED_IDLE) >= 1);
  // A normal thread spinning on every CPU: a SCHED_IDLE ring thread gets
  // almost no CPU time now (a SCHED_IDLE thread waited 1.3 s for its CPU
  // each time on this VM's kernel). The watchdog notices a SCHED_IDLE ring
  // thread that has been runnable, or busy with a request, at two of its
  // 2 ms checks in a row and makes it SCHED_OTHER.
  std::atomic<bool> stop{false};
  std::vector<std::thread> hogs;
  const unsigned cpus = std::max(1u, std::thread::hardware_concurrency());
  for (unsigned c = 0; c < cpus; ++c) {
    hogs.emplace_back([&stop, c] {
      PinSelf(static_cast<int>(c));
      while (!stop.load()) {
      }
    });
  }
  const auto start = std::chrono::steady_clock::now();
  int done = 0;
  // Metadata only: data requests (READ, WRITE) make a ring thread
  // SCHED_OTHER by themselves.
  for (int i = 0; i < 300; ++i) {
    const std::string path = v.mnt + "/busy." + std::to_string(i);
    const int fd = open(path.c_str(), O_CREAT | O_EXCL | O_WRONLY, 0644);
    if (fd < 0) break;
    close(fd);
    struct stat st;
    if (stat(path.c_str(), &st) != 0 || unlink(path.c_str()) != 0) break;
    ++done;
  }
  const auto seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  stop = true;
  for (std::thread& t : hogs) t.join();
  INFO("300 create+stat+unlink with " << cpus << " busy CPUs took " << seconds << " s");
  CHECK(done == 300);
  // 0.15 s here; without the watchdog's rescue, 21 s.
  CHECK(seconds < 10);
  REQUIRE(m.Unmount() == 0);
}
