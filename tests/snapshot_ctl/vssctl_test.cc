// vssctl end to end: help, usage errors and exit statuses, and every
// snapshot command against a real mount (human and JSON output).
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdlib>
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

TEST_CASE("vssctl: holds and the retention policy", "[snapshot_ctl]") {
  REQUIRE(geteuid() == 0);
  VolumeDirs dirs;
  ScopedMount mount(dirs.backing, dirs.mnt);
  const std::string m = dirs.mnt;
  std::string out;
  for (const char* name : {"a", "b", "c"}) {
    REQUIRE(Vssctl({"-m", m, "snapshot", "create", "--name", name}, &out) == 0);
  }
  REQUIRE(Vssctl({"-m", m, "snapshot", "hold", "a", "--reason", "legal hold"}, &out) == 0);
  CHECK(Vssctl({"-m", m, "snapshot", "delete", "a"}, &out) == 1);
  CHECK_THAT(out, Catch::Contains("is held (legal hold)"));
  REQUIRE(Vssctl({"-m", m, "snapshot", "show", "a"}, &out) == 0);
  CHECK_THAT(out, Catch::Contains("hold:     legal hold"));
  // Keep the newest unheld one: b would go (a is held and does not count).
  REQUIRE(Vssctl({"-m", m, "retention", "set", "--keep-last", "1"}, &out) == 0);
  REQUIRE(Vssctl({"-m", m, "--json", "retention", "show"}, &out) == 0);
  CHECK_THAT(out, Catch::Contains("\"keep_last\":1"));
  REQUIRE(Vssctl({"-m", m, "retention", "apply", "--dry-run"}, &out) == 0);
  CHECK_THAT(out, Catch::Contains("would delete b") && !Catch::Contains("would delete c"));
  REQUIRE(Vssctl({"-m", m, "snapshot", "show", "b"}, &out) == 0);
  // Taking a snapshot applies the policy: b and c go, a (held) and d stay.
  REQUIRE(Vssctl({"-m", m, "snapshot", "create", "--name", "d"}, &out) == 0);
  REQUIRE(Vssctl({"-m", m, "--json", "snapshot", "list"}, &out) == 0);
  CHECK_THAT(out, Catch::Contains("\"name\":\"a\"") && Catch::Contains("\"name\":\"d\""));
  CHECK_THAT(out, !Catch::Contains("\"name\":\"b\"") && !Catch::Contains("\"name\":\"c\""));
  CHECK_THAT(out, Catch::Contains("\"hold\":\"legal hold\""));
  // Released, the held one goes at the next application.
  REQUIRE(Vssctl({"-m", m, "snapshot", "release", "a"}, &out) == 0);
  REQUIRE(Vssctl({"-m", m, "retention", "apply"}, &out) == 0);
  CHECK_THAT(out, Catch::Contains("deleted a"));
  // By age.
  REQUIRE(Vssctl({"-m", m, "retention", "set", "--keep-last", "0", "--seconds", "1"}, &out) == 0);
  sleep(2);
  REQUIRE(Vssctl({"-m", m, "snapshot", "create", "--name", "e"}, &out) == 0);
  REQUIRE(Vssctl({"-m", m, "--json", "snapshot", "list"}, &out) == 0);
  CHECK_THAT(out, Catch::StartsWith("[{\"id\":5,\"name\":\"e\""));
  CHECK(Vssctl({"-m", m, "retention", "set", "--keep-last", "x"}, &out) == 2);
  REQUIRE(mount.Unmount() == 0);
}

TEST_CASE("vssctl: the control socket serves root, and a configured group's members",
          "[snapshot_ctl]") {
  REQUIRE(geteuid() == 0);
  VolumeDirs dirs;
  REQUIRE(chmod(dirs.tmp.path().c_str(), 0755) == 0);
  REQUIRE(chmod(dirs.mnt.c_str(), 0755) == 0);
  // A private run directory, so that the test leaves /run/vssfs alone.
  const std::string run = dirs.tmp.Sub("run");
  setenv("VSSFS_RUN_DIR", run.c_str(), 1);
  auto as = [&](const std::string& groups, std::vector<std::string> args, std::string* out) {
    std::vector<std::string> argv = {"setpriv", "--reuid", "65534", "--regid", "65534"};
    if (groups.empty()) {
      argv.push_back("--clear-groups");
    } else {
      argv.insert(argv.end(), {"--groups", groups});
    }
    argv.push_back(VSSFS_VSSCTL_BINARY);
    argv.insert(argv.end(), args.begin(), args.end());
    return RunCommand(argv, out);
  };
  std::string out;
  {
    // Default: root only.
    ScopedMount mount(dirs.backing, dirs.mnt);
    CHECK(as("65533", {"-m", dirs.mnt, "snapshot", "list"}, &out) == 4);
    CHECK_THAT(out, Catch::Contains("permission denied"));
    REQUIRE(mount.Unmount() == 0);
  }
  {
    ScopedMount mount(dirs.backing, dirs.mnt, {"--control-group=65533"});
    CHECK(as("65533", {"-m", dirs.mnt, "snapshot", "create", "--name", "by-group"}, &out) == 0);
    CHECK(as("", {"-m", dirs.mnt, "snapshot", "list"}, &out) == 4);
    CHECK_THAT(out, Catch::Contains("permission denied"));
    CHECK(Vssctl({"-m", dirs.mnt, "snapshot", "show", "by-group"}, &out) == 0);
    REQUIRE(mount.Unmount() == 0);
  }
  unsetenv("VSSFS_RUN_DIR");
  // An unknown group is refused before mounting.
  CHECK(RunCommand({vssfs::testing::VssfsBinary(), "--control-group=no-such-group-x", dirs.backing,
                    dirs.mnt},
                   &out) != 0);
  CHECK_THAT(out, Catch::Contains("no group 'no-such-group-x'"));
}
