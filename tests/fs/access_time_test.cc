// Access times (fs/src/access_time.h): the backing filesystem's rule, an
// open for reading that updates them, the daemon's own reads that never do
// (so an explicit time survives a read that reaches vssfs after it), and
// snapshots that keep the time they had.
#include "access_time.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <string>
#include <vector>

#include "test_support.h"
#include "vssctl.h"

namespace {

using vssfs::fs::AtimePolicy;
using vssfs::fs::AtimePolicyOf;
using vssfs::fs::AtimeUpdateDue;
using vssfs::testing::ScopedMount;
using vssfs::testing::TempDir;
using vssfs::testing::Vssctl;

constexpr time_t kY2000 = 946684800;  // 2000-01-01T00:00:00Z
constexpr time_t kY2001 = 978307200;  // 2001-01-01T00:00:00Z

struct stat Times(time_t atime, time_t mtime, time_t ctime) {
  struct stat st {};
  st.st_atim.tv_sec = atime;
  st.st_mtim.tv_sec = mtime;
  st.st_ctim.tv_sec = ctime;
  return st;
}

time_t AtimeOf(const std::string& path) {
  struct stat st;
  INFO(path << ": " << std::strerror(errno));
  REQUIRE(stat(path.c_str(), &st) == 0);
  return st.st_atim.tv_sec;
}

void SetAtime(const std::string& path, time_t atime) {
  const struct timespec times[2] = {{atime, 0}, {0, UTIME_OMIT}};
  INFO(path);
  REQUIRE(utimensat(AT_FDCWD, path.c_str(), times, 0) == 0);
}

void ReadAll(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  REQUIRE(fd >= 0);
  char buf[65536];
  while (read(fd, buf, sizeof buf) > 0) {
  }
  close(fd);
}

void List(const std::string& path) {
  DIR* d = opendir(path.c_str());
  REQUIRE(d != nullptr);
  while (readdir(d) != nullptr) {
  }
  closedir(d);
}

}  // namespace

TEST_CASE("access time: the rule of each backing mount kind", "[fs][atime]") {
  const struct timespec now = {kY2001 + 10, 0};
  // relatime: due when atime is not after mtime or ctime, or a day old.
  CHECK(AtimeUpdateDue(AtimePolicy::kRelative, Times(kY2001, kY2001, kY2000), now));
  CHECK(AtimeUpdateDue(AtimePolicy::kRelative, Times(kY2000, kY2001, kY2000), now));
  CHECK(AtimeUpdateDue(AtimePolicy::kRelative, Times(kY2000, kY2000 - 1, kY2001), now));
  CHECK_FALSE(AtimeUpdateDue(AtimePolicy::kRelative, Times(kY2001, kY2000, kY2000), now));
  CHECK(AtimeUpdateDue(AtimePolicy::kRelative, Times(kY2001 - 86400 + 10, kY2000, kY2000), now));
  CHECK_FALSE(
      AtimeUpdateDue(AtimePolicy::kRelative, Times(kY2001 - 86400 + 11, kY2000, kY2000), now));
  CHECK(AtimeUpdateDue(AtimePolicy::kStrict, Times(kY2001, kY2000, kY2000), now));
  CHECK_FALSE(AtimeUpdateDue(AtimePolicy::kNever, Times(kY2000, kY2001, kY2001), now));
}

TEST_CASE(
    "access time: an open for reading updates it, reads that reach vssfs never do, and a "
    "snapshot keeps its own",
    "[fs][atime][mount]") {
  REQUIRE(geteuid() == 0);
  TempDir tmp;
  const std::string backing = tmp.Sub("backing");
  const std::string mnt = tmp.Sub("mnt");
  REQUIRE(mkdir(backing.c_str(), 0755) == 0);
  REQUIRE(mkdir(mnt.c_str(), 0755) == 0);
  int root = open(backing.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  REQUIRE(root >= 0);
  const AtimePolicy policy = AtimePolicyOf(root);
  close(root);
  if (policy == AtimePolicy::kNever) {
    WARN(backing << " is on a noatime mount: nothing to check");
    return;
  }
  ScopedMount mount(backing, mnt);
  const time_t start = time(nullptr);

  // A 2 MiB file (large aligned reads take vssfs's O_DIRECT path, small
  // ones its splice path) and a directory with an entry.
  std::string data(2 << 20, 'a');
  {
    int fd = open((mnt + "/f").c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    REQUIRE(fd >= 0);
    REQUIRE(write(fd, data.data(), data.size()) == static_cast<ssize_t>(data.size()));
    REQUIRE(fsync(fd) == 0);
    close(fd);
  }
  REQUIRE(mkdir((mnt + "/d").c_str(), 0755) == 0);
  REQUIRE(close(open((mnt + "/d/x").c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644)) == 0);
  // Old access times, older than ctime (which utimensat sets): a read is
  // due to update them under relatime too.
  SetAtime(mnt + "/f", kY2000);
  SetAtime(mnt + "/d", kY2000);
  int rc = 0;
  std::string out = Vssctl(mnt, {"snapshot", "create", "--name", "s1"}, &rc);
  INFO(out);
  REQUIRE(rc == 0);

  SECTION("an open for reading and a listing update the live times, not the snapshot's") {
    ReadAll(mnt + "/f");
    List(mnt + "/d");
    CHECK(AtimeOf(backing + "/f") >= start);
    CHECK(AtimeOf(backing + "/d") >= start);
    CHECK(AtimeOf(mnt + "/f") >= start);
    // First looked up now: the daemon answers, not a cache of before.
    CHECK(AtimeOf(mnt + "/.snapshot/s1/f") == kY2000);
    CHECK(AtimeOf(mnt + "/.snapshot/s1/d") == kY2000);
  }

  SECTION("a time set after the open stays as set while reads reach vssfs") {
    // O_DIRECT: every read is a READ request to the daemon.
    int fd = open((mnt + "/f").c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC);
    REQUIRE(fd >= 0);
    const struct timespec times[2] = {{kY2001, 0}, {0, UTIME_OMIT}};
    REQUIRE(futimens(fd, times) == 0);
    void* buf = nullptr;
    REQUIRE(posix_memalign(&buf, 4096, 1 << 20) == 0);
    CHECK(pread(fd, buf, 1 << 20, 0) == 1 << 20);  // vssfs's O_DIRECT path
    CHECK(pread(fd, buf, 4096, 1 << 20) == 4096);  // its splice path
    std::free(buf);
    close(fd);
    CHECK(AtimeOf(backing + "/f") == kY2001);
    CHECK(AtimeOf(mnt + "/.snapshot/s1/f") == kY2000);
  }

  SECTION("a file opened with O_NOATIME keeps its time") {
    int fd = open((mnt + "/f").c_str(), O_RDONLY | O_NOATIME | O_CLOEXEC);
    REQUIRE(fd >= 0);
    char c;
    CHECK(pread(fd, &c, 1, 0) == 1);
    close(fd);
    CHECK(AtimeOf(backing + "/f") == kY2000);
  }
}
