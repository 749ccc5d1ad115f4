// The share structure rules (vssctl check) and their use by set add.
#include "vssfs/snapshot_ctl/structure_check.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <fstream>
#include <map>
#include <string>

#include "test_support.h"

namespace {

using vssfs::testing::RunCommand;
using vssfs::testing::TempDir;
using namespace vssfs::snapshot_ctl;

void File(const std::string& path) { std::ofstream(path) << "x"; }

}  // namespace

TEST_CASE("structure check: every rule with its path", "[snapshot_ctl][check]") {
  TempDir tmp;
  const std::string s = tmp.Sub("share");
  REQUIRE(mkdir(s.c_str(), 0755) == 0);
  REQUIRE(mkdir((s + "/vm1").c_str(), 0755) == 0);
  File(s + "/vm1/disk.vhdx");
  File(s + "/vm1/config.vmcx");
  File(s + "/root.vhdx");  // A VM file at the root: fine.
  File(s + "/notes.txt");  // Not a VM file: root rule.
  REQUIRE(symlink("disk.vhdx", (s + "/vm1/alias.vhdx").c_str()) == 0);
  REQUIRE(mkfifo((s + "/vm1/pipe").c_str(), 0644) == 0);
  REQUIRE(link((s + "/vm1/config.vmcx").c_str(), (s + "/vm1/config2.vmcx").c_str()) == 0);
  std::string deep = s + "/vm1";
  for (int i = 2; i <= 6; ++i) {
    deep += "/d" + std::to_string(i);
    REQUIRE(mkdir(deep.c_str(), 0755) == 0);
  }
  File(deep + "/too-deep.vhdx");

  auto r = CheckStructure(s, kDefaultShadowCopyDepth);
  REQUIRE(r.ok());
  std::map<std::string, std::string> by_path;
  for (const StructureProblem& p : r.value()) by_path[p.path] += p.rule + ";";
  CHECK(by_path["notes.txt"] == "root;");
  CHECK(by_path["vm1/alias.vhdx"] == "type;");
  CHECK(by_path["vm1/pipe"] == "type;");
  CHECK(by_path["vm1/config.vmcx"] == "link;");
  CHECK(by_path["vm1/config2.vmcx"] == "link;");
  CHECK(by_path["vm1/d2/d3/d4/d5/d6"] == "depth;");  // Level 6, reported once.
  CHECK(by_path.count("root.vhdx") == 0);
  CHECK(by_path.count("vm1/disk.vhdx") == 0);
  CHECK(r.value().size() == 6);
  for (const StructureProblem& p : r.value()) CHECK_FALSE(p.hint.empty());
  // A deeper limit accepts the deep file.
  auto deeper = CheckStructure(s, 7);
  REQUIRE(deeper.ok());
  CHECK(deeper.value().size() == 5);
  CHECK(IsVmFileName("Disk.VHDX"));
  CHECK_FALSE(IsVmFileName("vhdx"));
  CHECK(CheckStructure(tmp.Sub("missing"), 5).status().error() == ENOENT);
}

TEST_CASE("vssctl check: output and exit status", "[snapshot_ctl][check]") {
  TempDir tmp;
  const std::string good = tmp.Sub("good"), bad = tmp.Sub("bad");
  REQUIRE(mkdir(good.c_str(), 0755) == 0);
  REQUIRE(mkdir((good + "/vm").c_str(), 0755) == 0);
  File(good + "/vm/a.vhdx");
  REQUIRE(mkdir(bad.c_str(), 0755) == 0);
  REQUIRE(symlink("/etc", (bad + "/etc").c_str()) == 0);
  std::string out;
  CHECK(RunCommand({VSSFS_VSSCTL_BINARY, "check", good}, &out) == 0);
  CHECK_THAT(out, Catch::Contains("passes the structure check"));
  CHECK(RunCommand({VSSFS_VSSCTL_BINARY, "check", bad}, &out) == 5);
  CHECK_THAT(out, Catch::Contains(bad + "/etc: type: is a symbolic link"));
  CHECK(RunCommand({VSSFS_VSSCTL_BINARY, "--json", "check", bad}, &out) == 5);
  CHECK_THAT(out, Catch::Contains("\"rule\":\"type\""));
  CHECK(RunCommand({VSSFS_VSSCTL_BINARY, "check", tmp.Sub("nope")}, &out) == 3);
  CHECK(RunCommand({VSSFS_VSSCTL_BINARY, "check", good, "--depth", "0"}, &out) == 2);
}
