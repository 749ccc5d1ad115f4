// vssctl end to end: help, usage errors and exit statuses, and every
// snapshot command against a real mount (human and JSON output).
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "test_support.h"

namespace {

using vssfs::testing::RunCommand;
using vssfs::testing::ScopedMount;
using vssfs::testing::VolumeDirs;

int Vssctl(std::vector<std::string> args, std::string* out) {
  args.insert(args.begin(), VSSFS_VSSCTL_BINARY);
  return RunCommand(args, out);
}

}  // namespace

TEST_CASE("vssctl: help and usage errors need no daemon", "[snapshot_ctl]") {
  std::string out;
  CHECK(Vssctl({"--help"}, &out) == 0);
  CHECK_THAT(out, Catch::Contains("snapshot create") && Catch::Contains("Exit status"));
  CHECK(Vssctl({"snapshot", "create", "--help"}, &out) == 0);
  CHECK_THAT(out, Catch::Contains("@GMT-YYYY.MM.DD-HH.MM.SS"));
  CHECK(Vssctl({"fsck", "--help"}, &out) == 0);
  CHECK(Vssctl({}, &out) == 2);
  CHECK(Vssctl({"--version"}, &out) == 0);
  // A directory that is not a vssfs mount: no daemon.
  CHECK(Vssctl({"-m", "/", "snapshot", "list"}, &out) == 3);
  CHECK_THAT(out, Catch::Contains("no vssfs daemon serves /"));
}

TEST_CASE("vssctl: snapshot commands against a mount", "[snapshot_ctl]") {
  REQUIRE(geteuid() == 0);
  VolumeDirs dirs;
  ScopedMount mount(dirs.backing, dirs.mnt);
  const std::string m = dirs.mnt;
  std::string out;

  REQUIRE(Vssctl({"-m", m, "snapshot", "create", "--name", "one"}, &out) == 0);
  CHECK_THAT(out, Catch::Contains("created snapshot one (#1"));
  CHECK_THAT(out, Catch::Contains(m + "/.snapshot/one"));
  // A default name in @GMT format, as JSON.
  REQUIRE(Vssctl({"-m", m, "--json", "snapshot", "create"}, &out) == 0);
  CHECK_THAT(out, Catch::StartsWith("{\"id\":2,\"name\":\"@GMT-"));
  CHECK_THAT(out, Catch::Contains("\"path\":\"" + m + "/.snapshot/@GMT-"));

  CHECK(Vssctl({"-m", m, "snapshot", "create", "--name", "one"}, &out) == 6);
  CHECK_THAT(out, Catch::Contains("exists"));
  CHECK(Vssctl({"-m", m, "snapshot", "create", "--name", "a/b"}, &out) == 2);
  CHECK(Vssctl({"-m", m, "snapshot", "create", "--guid", "nonsense"}, &out) == 2);
  CHECK(Vssctl({"-m", m, "snapshot", "frobnicate"}, &out) == 2);
  CHECK(Vssctl({"-m", m, "snapshot", "show", "missing"}, &out) == 3);
  CHECK(Vssctl({"-m", m, "snapshot", "delete", "missing"}, &out) == 3);

  REQUIRE(Vssctl({"-m", m, "snapshot", "list"}, &out) == 0);
  CHECK_THAT(out, Catch::Contains("NAME") && Catch::Contains("one"));
  REQUIRE(Vssctl({"-m", m, "--json", "snapshot", "list"}, &out) == 0);
  CHECK_THAT(out, Catch::StartsWith("[{\"id\":1,\"name\":\"one\""));
  REQUIRE(Vssctl({"-m", m, "snapshot", "show", "#1"}, &out) == 0);
  CHECK_THAT(out, Catch::Contains("name:     one") && Catch::Contains("state:    ok"));
  REQUIRE(Vssctl({"-m", m, "--json", "df"}, &out) == 0);
  CHECK_THAT(out, Catch::Contains("\"snapshots\":2") && Catch::Contains("\"block_size\":65536"));
  REQUIRE(Vssctl({"-m", m, "fsck"}, &out) == 0);
  CHECK_THAT(out, Catch::Contains("clean"));
  // Without -m, the only vssfs mount is found (when it is the only one).
  struct stat st;
  CHECK(stat((m + "/.snapshot/one").c_str(), &st) == 0);
  REQUIRE(Vssctl({"-m", m, "snapshot", "delete", "one"}, &out) == 0);
  CHECK_THAT(out, Catch::Contains("deleted one"));
  CHECK(stat((m + "/.snapshot/one").c_str(), &st) != 0);
  REQUIRE(mount.Unmount() == 0);
}
