#include "vssfs/fs/options.h"

#include <catch2/catch.hpp>
#include <string>
#include <vector>

using vssfs::fs::Options;
using vssfs::fs::ParseOptions;

namespace {

vssfs::cow_store::Result<Options> Parse(std::vector<std::string> args) {
  args.insert(args.begin(), "vssfs");
  std::vector<const char*> argv;
  for (const auto& a : args) argv.push_back(a.c_str());
  return ParseOptions(static_cast<int>(argv.size()), argv.data());
}

std::string Error(std::vector<std::string> args) {
  auto r = Parse(std::move(args));
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().error() == EINVAL);
  return r.status().message();
}

}  // namespace

TEST_CASE("options: positionals and defaults", "[fs][options]") {
  auto r = Parse({"/srv/share", "/mnt/share"});
  REQUIRE(r.ok());
  const Options& o = r.value();
  CHECK(o.backing_dir == "/srv/share");
  CHECK(o.mountpoint == "/mnt/share");
  CHECK_FALSE(o.foreground);
  CHECK(o.store_dir.empty());
  CHECK(o.threads > 0);
  CHECK(o.fuse_options.empty());
}

TEST_CASE("options: vssfs options in both spellings", "[fs][options]") {
  auto r = Parse({"-f", "--store=/var/lib/vssfs/s", "--log-level", "debug", "-o",
                  "timeout=5,negative_timeout=0,threads=4,no_clone_fd", "b", "m"});
  REQUIRE(r.ok());
  CHECK(r.value().foreground);
  CHECK(r.value().store_dir == "/var/lib/vssfs/s");
  CHECK(r.value().log_level == "debug");
  CHECK(r.value().timeout == 5.0);
  CHECK(r.value().negative_timeout == 0.0);
  CHECK(r.value().threads == 4);
  CHECK_FALSE(r.value().clone_fd);
  CHECK(r.value().io_uring);  // default: used when the kernel offers it
  CHECK(r.value().uring_threads == 2);
  CHECK(r.value().sched_idle);
  CHECK(r.value().cpu_pickup);
  CHECK(r.value().flush_behind);
  auto u =
      Parse({"-o", "no_io_uring,uring_threads=5,no_uring_sched_idle,no_flush_behind", "b", "m"});
  REQUIRE(u.ok());
  CHECK_FALSE(u.value().io_uring);
  CHECK(u.value().uring_threads == 5);
  CHECK_FALSE(u.value().sched_idle);  // the older name
  CHECK_FALSE(u.value().flush_behind);
  auto p = Parse({"-o", "no_cpu_pickup,no_sched_idle", "b", "m"});
  REQUIRE(p.ok());
  CHECK_FALSE(p.value().cpu_pickup);
  CHECK_FALSE(p.value().sched_idle);
  CHECK(Parse({"-o", "no_sched_idle,sched_idle", "b", "m"}).value().sched_idle);
  CHECK_FALSE(Parse({"-o", "cpu_pickup=1", "b", "m"}).ok());
  CHECK(Parse({"b", "m"}).value().max_inodes == 0);
  CHECK(Parse({"b", "m", "-o", "max_inodes=5000"}).value().max_inodes == 5000);
  using vssfs::fs::InodeRelease;
  CHECK(Parse({"b", "m"}).value().inode_release == InodeRelease::kAuto);
  CHECK(Parse({"b", "m", "-o", "inode_release=handles"}).value().inode_release ==
        InodeRelease::kHandles);
  CHECK(Parse({"b", "m", "-o", "inode_release=prune"}).value().inode_release ==
        InodeRelease::kPrune);
  CHECK(Parse({"b", "m", "-o", "inode_release=prune,inode_release=auto"}).value().inode_release ==
        InodeRelease::kAuto);
  auto f = Parse({"b", "m", "-ostore=/x,log_level=warn"});
  REQUIRE(f.ok());
  CHECK(f.value().store_dir == "/x");
  CHECK(f.value().log_level == "warn");
}

TEST_CASE("options: libfuse and fstab options", "[fs][options]") {
  // What mount.fuse3 passes for an fstab line such as
  // "/srv/share /mnt/share fuse.vssfs defaults,allow_other,_netdev,x-systemd.requires=foo 0 0".
  auto r = Parse({"/srv/share", "/mnt/share", "-o",
                  "rw,defaults,allow_other,_netdev,nofail,x-systemd.requires=foo,"
                  "max_write=1048576,no_splice_read,noatime,fsname=a\\,b"});
  REQUIRE(r.ok());
  CHECK(r.value().fuse_options == std::vector<std::string>{"rw", "allow_other", "max_write=1048576",
                                                           "no_splice_read", "noatime",
                                                           "fsname=a,b"});
}

TEST_CASE("options: help and version need no arguments", "[fs][options]") {
  REQUIRE(Parse({"--help"}).ok());
  CHECK(Parse({"--help"}).value().show_help);
  CHECK(Parse({"-V"}).value().show_version);
  CHECK_THAT(vssfs::fs::UsageText("vssfs"),
             Catch::Contains("usage: vssfs [options] BACKING_DIR MOUNTPOINT"));
}

TEST_CASE("options: every bad input gets a precise message", "[fs][options]") {
  CHECK(Error({}) == "missing BACKING_DIR and MOUNTPOINT (see vssfs --help)");
  CHECK(Error({"b"}) == "missing MOUNTPOINT (see vssfs --help)");
  CHECK_THAT(Error({"b", "m", "c"}), Catch::Contains("unexpected argument 'c'"));
  CHECK(Error({"--frobnicate", "b", "m"}) == "unknown option '--frobnicate' (see vssfs --help)");
  CHECK(Error({"-o", "frob", "b", "m"}) == "unknown option '-o frob' (see vssfs --help)");
  CHECK_THAT(Error({"-o", "timeout=abc", "b", "m"}), Catch::Contains("number of seconds"));
  CHECK_THAT(Error({"-o", "threads=0", "b", "m"}), Catch::Contains("needs a whole number > 0"));
  CHECK_THAT(Error({"-o", "max_dirty_ratio=101", "b", "m"}), Catch::Contains("0-100"));
  CHECK_THAT(Error({"-o", "max_inodes=15", "b", "m"}), Catch::Contains(">= 16"));
  CHECK_THAT(Error({"-o", "max_inodes", "b", "m"}), Catch::Contains(">= 16"));
  CHECK_THAT(Error({"-o", "inode_release=lru", "b", "m"}),
             Catch::Contains("auto, handles or prune"));
  CHECK_THAT(Error({"-o", "inode_release", "b", "m"}), Catch::Contains("auto, handles or prune"));
  CHECK_THAT(Error({"-o", "uring_threads=0", "b", "m"}), Catch::Contains("1-64"));
  CHECK_THAT(Error({"-o", "io_uring=yes", "b", "m"}), Catch::Contains("unknown option"));
  CHECK_THAT(Error({"-o", "flush_behind=1", "b", "m"}), Catch::Contains("unknown option"));
  CHECK_THAT(Error({"-o", "store", "b", "m"}), Catch::Contains("needs a value"));
  CHECK_THAT(Error({"--log-level=loud", "b", "m"}), Catch::Contains("unknown log level 'loud'"));
  CHECK_THAT(Error({"b", "m", "-o"}), Catch::Contains("needs a value"));
}
