#include "vssfs/fs/preflight.h"

#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <fstream>

#include "test_support.h"

using vssfs::fs::CheckFuseDevice;
using vssfs::fs::CheckPaths;
using vssfs::testing::TempDir;

namespace {

using Dirs = vssfs::testing::VolumeDirs;

vssfs::cow_store::Status Check(const std::string& b, const std::string& m,
                               const std::string& store = "") {
  return CheckPaths(b, m, store).status();
}

}  // namespace

TEST_CASE("preflight: good paths resolve", "[fs][preflight]") {
  Dirs d;
  auto r = CheckPaths(d.tmp.Sub("backing/"), d.tmp.Sub("mnt/../mnt"), "");
  REQUIRE(r.ok());
  char real[4096];
  REQUIRE(realpath(d.tmp.path().c_str(), real) != nullptr);
  CHECK(r.value().backing_dir == std::string(real) + "/backing");
  CHECK(r.value().mountpoint == std::string(real) + "/mnt");
  CHECK(r.value().store_dir == std::string(real) + "/backing/.vssfs");
}

TEST_CASE("preflight: missing or wrong kinds of paths", "[fs][preflight]") {
  Dirs d;
  auto s = Check(d.tmp.Sub("nope"), d.tmp.Sub("mnt"));
  CHECK(s.error() == ENOENT);
  CHECK(s.message() == "backing directory " + d.tmp.Sub("nope") + " does not exist");
  s = Check(d.tmp.Sub("backing"), d.tmp.Sub("nope"));
  CHECK(s.error() == ENOENT);
  CHECK(s.message() == "mount point " + d.tmp.Sub("nope") + " does not exist");
  std::ofstream(d.tmp.Sub("file")) << "x";
  s = Check(d.tmp.Sub("file"), d.tmp.Sub("mnt"));
  CHECK(s.error() == ENOTDIR);
  CHECK(s.message() == "backing directory " + d.tmp.Sub("file") + " is not a directory");
  s = Check(d.tmp.Sub("backing"), d.tmp.Sub("file"));
  CHECK(s.error() == ENOTDIR);
}

TEST_CASE("preflight: mount point must be empty", "[fs][preflight]") {
  Dirs d;
  std::ofstream(d.tmp.Sub("mnt/leftover")) << "x";
  auto s = Check(d.tmp.Sub("backing"), d.tmp.Sub("mnt"));
  CHECK(s.error() == ENOTEMPTY);
  CHECK_THAT(s.message(), Catch::Contains("is not empty (it holds 'leftover')"));
}

TEST_CASE("preflight: nesting is refused both ways", "[fs][preflight]") {
  Dirs d;
  mkdir(d.tmp.Sub("backing/inner").c_str(), 0755);
  auto s = Check(d.tmp.Sub("backing"), d.tmp.Sub("backing/inner"));
  CHECK(s.error() == EINVAL);
  CHECK_THAT(s.message(), Catch::Contains("lies inside the backing directory"));
  s = Check(d.tmp.Sub("backing"), d.tmp.Sub("backing"));
  CHECK(s.error() == EINVAL);
  CHECK_THAT(s.message(), Catch::Contains("is the backing directory itself"));
  mkdir(d.tmp.Sub("mnt2").c_str(), 0755);
  // A backing directory inside the mount point (only possible through a
  // symlink once mounted, or by pointing at the parent).
  s = Check(d.tmp.Sub("mnt2"), d.tmp.path());
  CHECK(s.error() == EINVAL);
}

TEST_CASE("preflight: store placement", "[fs][preflight]") {
  Dirs d;
  auto s = Check(d.tmp.Sub("backing"), d.tmp.Sub("mnt"), d.tmp.Sub("backing/sub"));
  CHECK(s.error() == EINVAL);
  CHECK_THAT(s.message(), Catch::Contains("the store must be BACKING_DIR/.vssfs"));
  auto r = CheckPaths(d.tmp.Sub("backing"), d.tmp.Sub("mnt"), d.tmp.Sub("elsewhere"));
  REQUIRE(r.ok());
  CHECK_THAT(r.value().store_dir, Catch::EndsWith("/elsewhere"));
}

TEST_CASE("preflight: a mount point that is already mounted", "[fs][preflight]") {
  // /proc is always a mount point.
  TempDir tmp;
  auto s = Check(tmp.path(), "/proc");
  CHECK(s.error() == EBUSY);
  CHECK_THAT(s.message(), Catch::Contains("is already a mount point"));
}

TEST_CASE("preflight: FUSE device", "[fs][preflight]") {
  CHECK(CheckFuseDevice("/dev/fuse").ok());
  auto s = CheckFuseDevice("/dev/no-such-fuse");
  CHECK(s.error() == ENODEV);
  CHECK_THAT(s.message(), Catch::Contains("does not exist"));
}
