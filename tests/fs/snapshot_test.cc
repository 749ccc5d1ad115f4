// Snapshot integration tests on real mounts: the instant rule under
// concurrent writers, crash safety (kill -9 during a write storm while
// snapshots are taken), and a full store.
//
// The writers make every snapshot checkable without a copy: writer w writes
// 4 KiB records to file w<w>; write number s goes to page Position(w, s) and
// carries (w, s, page, checksum). A file's state after writes 1..X is known.
// Even-numbered writers use O_DIRECT (as write-through SMB clients and
// databases do): their file must equal the state after writes 1..X for one
// X between the writes completed before the create request and those
// started when it returned. Odd-numbered writers use buffered writes through
// the writeback cache: every write completed before the request must be
// there, none started after it returned, nothing torn; writes completing
// during the request may be in the snapshot in any subset, and torn at page
// level, as after a crash of a native filesystem (docs/LIVE_PATH.md).
//
// Seeds: VSSFS_SNAPSHOT_SEED replaces the random seed (printed).
#include <fcntl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "test_support.h"
#include "vssctl.h"

namespace {

using vssfs::testing::ScopedMount;
using vssfs::testing::VolumeDirs;
using vssfs::testing::Vssctl;

constexpr size_t kPage = 4096;
constexpr uint64_t kPages = 512;  // 2 MiB per writer file.
constexpr uint64_t kMagic = 0x7673736673746d70ull;

uint64_t Mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

uint64_t Position(uint64_t seed, int w, uint64_t s) {
  return s == 0 ? 0 : Mix(seed ^ (static_cast<uint64_t>(w) << 40) ^ s) % kPages;
}

void MakeRecord(int w, uint64_t s, uint64_t page, char* buf) {
  uint64_t words[kPage / 8];
  words[0] = kMagic;
  words[1] = static_cast<uint64_t>(w);
  words[2] = s;
  words[3] = page;
  uint64_t sum = 0;
  for (size_t i = 5; i < kPage / 8; ++i) {
    words[i] = Mix(s * 131 + page * 7 + i + static_cast<uint64_t>(w));
    sum ^= words[i];
  }
  words[4] = sum ^ s ^ page;
  std::memcpy(buf, words, kPage);
}

// Parses a record; false when torn or foreign.
bool ParseRecord(const char* buf, int w, uint64_t page, uint64_t* s) {
  uint64_t words[kPage / 8];
  std::memcpy(words, buf, kPage);
  if (words[0] != kMagic || words[1] != static_cast<uint64_t>(w) || words[3] != page) return false;
  char expect[kPage];
  MakeRecord(w, words[2], page, expect);
  if (std::memcmp(expect, buf, kPage) != 0) return false;
  *s = words[2];
  return true;
}

struct Cut {
  std::string name;
  std::vector<uint64_t> completed;  // Per writer, before the request.
  std::vector<uint64_t> started;    // Per writer, when it returned.
};

class Writers {
 public:
  Writers(const std::string& dir, int n, uint64_t seed) : dir_(dir), n_(n), seed_(seed) {
    completed_ = std::vector<std::atomic<uint64_t>>(static_cast<size_t>(n));
    started_ = std::vector<std::atomic<uint64_t>>(static_cast<size_t>(n));
    for (int w = 0; w < n; ++w) {
      // The state after zero writes: every page holds record 0.
      std::string path = dir + "/w" + std::to_string(w);
      int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
      REQUIRE(fd >= 0);
      char buf[kPage];
      for (uint64_t p = 0; p < kPages; ++p) {
        MakeRecord(w, 0, p, buf);
        REQUIRE(pwrite(fd, buf, kPage, static_cast<off_t>(p * kPage)) == kPage);
      }
      REQUIRE(fsync(fd) == 0);
      close(fd);
    }
  }
  ~Writers() { Stop(); }

  void Start() {
    for (int w = 0; w < n_; ++w) {
      threads_.emplace_back([this, w] { Run(w); });
    }
  }
  void Stop() {
    stop_ = true;
    for (auto& t : threads_) t.join();
    threads_.clear();
  }
  std::vector<uint64_t> Completed() const {
    std::vector<uint64_t> v;
    for (const auto& c : completed_) v.push_back(c.load());
    return v;
  }
  std::vector<uint64_t> Started() const {
    std::vector<uint64_t> v;
    for (const auto& c : started_) v.push_back(c.load());
    return v;
  }
  int n() const { return n_; }
  uint64_t seed() const { return seed_; }

 private:
  void Run(int w) {
    std::string path = dir_ + "/w" + std::to_string(w);
    int fd = open(path.c_str(), O_WRONLY | O_CLOEXEC);
    if (fd < 0) return;
    const bool direct = w % 2 == 0;
    if (direct) {
      close(fd);
      fd = open(path.c_str(), O_WRONLY | O_DIRECT | O_CLOEXEC);
      if (fd < 0) return;
    }
    void* mem = nullptr;
    if (posix_memalign(&mem, kPage, kPage) != 0) return;
    std::unique_ptr<char, decltype(&std::free)> holder(static_cast<char*>(mem), std::free);
    char* buf = holder.get();
    for (uint64_t s = 1; !stop_; ++s) {
      const uint64_t page = Position(seed_, w, s);
      MakeRecord(w, s, page, buf);
      started_[static_cast<size_t>(w)] = s;
      if (pwrite(fd, buf, kPage, static_cast<off_t>(page * kPage)) != kPage) break;
      completed_[static_cast<size_t>(w)] = s;
    }
    close(fd);
  }

  std::string dir_;
  int n_;
  uint64_t seed_;
  std::atomic<bool> stop_{false};
  std::vector<std::atomic<uint64_t>> completed_;
  std::vector<std::atomic<uint64_t>> started_;
  std::vector<std::thread> threads_;
};

// Checks writer w's file at `path` against the cut; "" when correct.
std::string CheckFile(const std::string& path, int w, uint64_t seed, uint64_t lo, uint64_t hi) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return path + ": " + std::strerror(errno);
  std::vector<char> data(kPages * kPage);
  ssize_t n = pread(fd, data.data(), data.size(), 0);
  close(fd);
  if (n != static_cast<ssize_t>(data.size())) return path + ": short read";
  std::vector<uint64_t> seqs(kPages);
  uint64_t x = 0;
  // Buffered writes that complete during the request can reach the
  // snapshot torn at page level when a later write to the page races with
  // the kernel's writeback of it (as on a native filesystem crash); they are
  // accepted for pages such a write touched.
  std::vector<bool> racing(kPages, false);
  if (w % 2 != 0 && hi != UINT64_MAX) {
    for (uint64_t s = lo + 1; s <= hi; ++s) racing[Position(seed, w, s)] = true;
  }
  for (uint64_t p = 0; p < kPages; ++p) {
    if (!ParseRecord(data.data() + p * kPage, w, p, &seqs[p])) {
      if (racing[p]) {
        seqs[p] = UINT64_MAX;  // Unknown: skip the checks below.
        continue;
      }
      return path + ": torn or foreign record at page " + std::to_string(p);
    }
    x = std::max(x, seqs[p]);
  }
  if (x > hi) {
    return path + ": holds write " + std::to_string(x) + ", started after the request returned (" +
           std::to_string(hi) + ")";
  }
  // The state after writes 1..lo must be covered: no completed write lost.
  std::vector<uint64_t> floor(kPages, 0);
  for (uint64_t s = 1; s <= lo; ++s) floor[Position(seed, w, s)] = s;
  for (uint64_t p = 0; p < kPages; ++p) {
    if (seqs[p] != UINT64_MAX && seqs[p] < floor[p]) {
      return path + ": page " + std::to_string(p) + " holds write " + std::to_string(seqs[p]) +
             " but write " + std::to_string(floor[p]) + " completed before the request";
    }
  }
  if (w % 2 != 0) return "";
  // Write-through writers: exactly the state after writes 1..x.
  if (x < lo) return path + ": newest write " + std::to_string(x) + " < " + std::to_string(lo);
  std::vector<uint64_t> expect(kPages, 0);
  for (uint64_t s = 1; s <= x; ++s) expect[Position(seed, w, s)] = s;
  for (uint64_t p = 0; p < kPages; ++p) {
    if (seqs[p] != expect[p]) {
      return path + ": page " + std::to_string(p) + " holds write " + std::to_string(seqs[p]) +
             ", the state after write " + std::to_string(x) + " has " + std::to_string(expect[p]) +
             " (not one instant)";
    }
  }
  return "";
}

std::string CheckCut(const std::string& mnt, const std::string& dir, const Writers& wr,
                     const Cut& cut) {
  for (int w = 0; w < wr.n(); ++w) {
    std::string r = CheckFile(mnt + "/.snapshot/" + cut.name + "/" + dir + "/w" + std::to_string(w),
                              w, wr.seed(), cut.completed[static_cast<size_t>(w)],
                              cut.started[static_cast<size_t>(w)]);
    if (!r.empty()) return "snapshot " + cut.name + ": " + r;
  }
  return "";
}

// Takes snapshot `name` while the writers run, recording the bounds.
Cut TakeCut(const std::string& mnt, const Writers& writers, const std::string& name) {
  Cut cut;
  cut.name = name;
  cut.completed = writers.Completed();
  int rc = 0;
  std::string out = Vssctl(mnt, {"snapshot", "create", "--name", name}, &rc);
  cut.started = writers.Started();
  INFO(out);
  REQUIRE(rc == 0);
  return cut;
}

uint64_t TestSeed() {
  const char* env = std::getenv("VSSFS_SNAPSHOT_SEED");
  if (env != nullptr && *env != '\0') return std::strtoull(env, nullptr, 10);
  std::random_device rd;
  return (static_cast<uint64_t>(rd()) << 32) | rd();
}

}  // namespace

TEST_CASE("snapshot: one instant for every file under concurrent writers", "[fs][snapshot]") {
  REQUIRE(geteuid() == 0);
  static const uint64_t seed = TestSeed();
  WARN("seed " << seed << " (rerun with VSSFS_SNAPSHOT_SEED=" << seed << ")");
  VolumeDirs dirs;
  ScopedMount mount(dirs.backing, dirs.mnt);
  REQUIRE(mkdir((dirs.mnt + "/data").c_str(), 0755) == 0);
  Writers writers(dirs.mnt + "/data", 4, seed);
  writers.Start();
  std::vector<Cut> cuts;
  for (int i = 0; i < 20; ++i) {
    cuts.push_back(TakeCut(dirs.mnt, writers, "cut" + std::to_string(i)));
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  // Checked while the writers keep going: frozen snapshots stay frozen.
  for (const Cut& cut : cuts) {
    std::string r = CheckCut(dirs.mnt, "data", writers, cut);
    INFO(r);
    REQUIRE(r.empty());
  }
  writers.Stop();
  for (const Cut& cut : cuts) REQUIRE(CheckCut(dirs.mnt, "data", writers, cut).empty());
  int rc = 0;
  std::string fsck = Vssctl(dirs.mnt, {"fsck"}, &rc);
  INFO(fsck);
  REQUIRE(rc == 0);
  REQUIRE(mount.Unmount() == 0);
}

TEST_CASE("snapshot: kill -9 during a write storm leaves every snapshot correct",
          "[fs][snapshot][crash]") {
  REQUIRE(geteuid() == 0);
  static const uint64_t seed = TestSeed();
  WARN("seed " << seed << " (rerun with VSSFS_SNAPSHOT_SEED=" << seed << ")");
  VolumeDirs dirs;
  std::vector<Cut> cuts;
  Cut in_flight;
  std::vector<uint64_t> last_started;
  {
    ScopedMount mount(dirs.backing, dirs.mnt);
    REQUIRE(mkdir((dirs.mnt + "/data").c_str(), 0755) == 0);
    Writers writers(dirs.mnt + "/data", 3, seed);
    writers.Start();
    for (int i = 0; i < 12; ++i) {
      cuts.push_back(TakeCut(dirs.mnt, writers, "cut" + std::to_string(i)));
    }
    // One more snapshot races with the kill.
    in_flight.name = "cut-in-flight";
    in_flight.completed = writers.Completed();
    std::thread racer([&] {
      int rc = 0;
      Vssctl(dirs.mnt, {"snapshot", "create", "--name", in_flight.name}, &rc);
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(Mix(seed) % 30));
    mount.Kill();
    racer.join();
    writers.Stop();
    last_started = writers.Started();
  }
  ScopedMount again(dirs.backing, dirs.mnt);
  int rc = 0;
  std::string fsck = Vssctl(dirs.mnt, {"fsck"}, &rc);
  INFO(fsck);
  REQUIRE(rc == 0);
  // Every snapshot taken before the crash is intact; the racing one is
  // either complete and correct or absent.
  for (const Cut& cut : cuts) {
    for (int w = 0; w < 3; ++w) {
      std::string r =
          CheckFile(dirs.mnt + "/.snapshot/" + cut.name + "/data/w" + std::to_string(w), w, seed,
                    cut.completed[static_cast<size_t>(w)], cut.started[static_cast<size_t>(w)]);
      INFO(cut.name << ": " << r);
      REQUIRE(r.empty());
    }
  }
  struct stat st;
  if (stat((dirs.mnt + "/.snapshot/" + in_flight.name).c_str(), &st) == 0) {
    for (int w = 0; w < 3; ++w) {
      std::string r = CheckFile(
          dirs.mnt + "/.snapshot/" + in_flight.name + "/data/w" + std::to_string(w), w, seed,
          in_flight.completed[static_cast<size_t>(w)], last_started[static_cast<size_t>(w)]);
      INFO("in-flight snapshot: " << r);
      REQUIRE(r.empty());
    }
  }
  // The write-through writers' live files hold whole records only (old or
  // new, never torn); buffered ones may lose or tear unsynced pages.
  for (int w = 0; w < 3; w += 2) {
    std::string r = CheckFile(dirs.mnt + "/data/w" + std::to_string(w), w, seed, 0, UINT64_MAX);
    // Live files need not be one instant (unsynced pages may be lost), only untorn.
    if (!r.empty()) REQUIRE(r.find("torn") == std::string::npos);
  }
  REQUIRE(again.Unmount() == 0);
}

TEST_CASE("snapshot: a full store fails writes with ENOSPC and loses nothing", "[fs][snapshot]") {
  REQUIRE(geteuid() == 0);
  VolumeDirs dirs;
  const std::string store = dirs.tmp.Sub("store");
  REQUIRE(mkdir(store.c_str(), 0700) == 0);
  // A 6 MiB store filesystem.
  REQUIRE(mount("tmpfs", store.c_str(), "tmpfs", 0, "size=6m,mode=0700") == 0);
  struct Unmounter {
    std::string path;
    ~Unmounter() { umount2(path.c_str(), MNT_DETACH); }
  } unmounter{store};

  std::string original(16 << 20, '\0');
  std::mt19937_64 rng(42);
  for (size_t i = 0; i < original.size(); i += 8) {
    uint64_t v = rng();
    std::memcpy(&original[i], &v, 8);
  }
  {
    ScopedMount mount(dirs.backing, dirs.mnt, {"--store", store + "/vssfs"});
    const std::string file = dirs.mnt + "/disk.vhdx";
    int fd = open(file.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    REQUIRE(fd >= 0);
    REQUIRE(pwrite(fd, original.data(), original.size(), 0) ==
            static_cast<ssize_t>(original.size()));
    REQUIRE(fsync(fd) == 0);
    close(fd);
    int rc = 0;
    std::string out = Vssctl(dirs.mnt, {"snapshot", "create", "--name", "before"}, &rc);
    INFO(out);
    REQUIRE(rc == 0);

    // Overwrite everything with O_DIRECT (errors come back on the write):
    // preserving 16 MiB cannot fit in 6 MiB.
    void* mem = nullptr;
    REQUIRE(posix_memalign(&mem, kPage, 1 << 20) == 0);
    std::unique_ptr<char, decltype(&std::free)> buf(static_cast<char*>(mem), std::free);
    std::memset(buf.get(), 0x5a, 1 << 20);
    fd = open(file.c_str(), O_WRONLY | O_DIRECT | O_CLOEXEC);
    REQUIRE(fd >= 0);
    int error = 0;
    size_t written = 0;
    for (size_t off = 0; off < original.size(); off += 1 << 20) {
      if (pwrite(fd, buf.get(), 1 << 20, static_cast<off_t>(off)) != (1 << 20)) {
        error = errno;
        break;
      }
      written = off + (1 << 20);
    }
    close(fd);
    CHECK(error == ENOSPC);
    CHECK(written < original.size());

    // The snapshot still shows the original bytes.
    CHECK(vssfs::testing::ReadFile(dirs.mnt + "/.snapshot/before/disk.vhdx") == original);
    // The live file: what was written, then the original.
    std::string live = vssfs::testing::ReadFile(file);
    REQUIRE(live.size() == original.size());
    CHECK(live.substr(0, written) == std::string(written, '\x5a'));
    CHECK(live.substr(written) == original.substr(written));
    out = Vssctl(dirs.mnt, {"fsck"}, &rc);
    INFO(out);
    CHECK(rc == 0);
    // Deleting the snapshot frees the store; writes work again.
    out = Vssctl(dirs.mnt, {"snapshot", "delete", "before"}, &rc);
    INFO(out);
    CHECK(rc == 0);
    fd = open(file.c_str(), O_WRONLY | O_DIRECT | O_CLOEXEC);
    REQUIRE(fd >= 0);
    CHECK(pwrite(fd, buf.get(), 1 << 20, static_cast<off_t>(written)) == (1 << 20));
    close(fd);
    REQUIRE(mount.Unmount() == 0);
  }
}

TEST_CASE("snapshot: a symlink keeps its xattrs after the name vssfs opened it by is unlinked",
          "[fs][snapshot]") {
  // Found by the snapshot model test (seed 340264015839): a symlink made as
  // `first`, linked as `second`, given an xattr and unlinked as `first`
  // keeps its descriptor's name gone; changing it after a snapshot must still
  // preserve the xattr, which is only reachable through a path.
  REQUIRE(geteuid() == 0);
  VolumeDirs dirs;
  ScopedMount m(dirs.backing, dirs.mnt);
  const std::string first = dirs.mnt + "/first";
  const std::string second = dirs.mnt + "/second";
  REQUIRE(symlink("target", first.c_str()) == 0);
  REQUIRE(link(first.c_str(), second.c_str()) == 0);
  REQUIRE(lsetxattr(first.c_str(), "trusted.x", "v1", 2, 0) == 0);
  REQUIRE(unlink(first.c_str()) == 0);
  int rc = 0;
  const std::string out = Vssctl(dirs.mnt, {"snapshot", "create", "--name", "s1"}, &rc);
  INFO(out);
  REQUIRE(rc == 0);
  REQUIRE(lchown(second.c_str(), static_cast<uid_t>(-1), 100) == 0);  // after the snapshot
  REQUIRE(lremovexattr(second.c_str(), "trusted.x") == 0);
  char value[16] = {};
  const std::string snap = dirs.mnt + "/.snapshot/s1/second";
  const ssize_t n = lgetxattr(snap.c_str(), "trusted.x", value, sizeof value);
  INFO("lgetxattr " << snap << ": " << (n < 0 ? std::strerror(errno) : "ok"));
  REQUIRE(n == 2);
  CHECK(std::string(value, 2) == "v1");
  struct stat st;
  REQUIRE(lstat(snap.c_str(), &st) == 0);
  CHECK(st.st_gid == 0);  // the group it had at the snapshot
}

namespace {

// Runs setfacl with `args` on `path`.
void SetFacl(std::vector<std::string> args, const std::string& path) {
  args.insert(args.begin(), "setfacl");
  args.push_back(path);
  std::string out;
  const int rc = vssfs::testing::RunCommand(args, &out);
  INFO("setfacl: " << out);
  REQUIRE(rc == 0);
}

// Gives `path` the ACL the clone model test's seed 243720785714 left on a
// directory (as its default ACL too, for a directory), and a small xattr.
void Decorate(const std::string& path, bool directory) {
  const std::string acl = "u::rw,u:65534:rw,g::rx,g:65533:rwx,m::r,o::r";
  SetFacl({"-m", acl}, path);
  if (directory) SetFacl({"-d", "-m", acl}, path);
  REQUIRE(setxattr(path.c_str(), "user.b", "v474", 4, 0) == 0);
}

// Takes snapshot `name` of the volume at `mnt` and makes it a writable clone.
void SnapshotAndClone(const std::string& mnt, const std::string& name) {
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{"snapshot", "create", "--name", name},
        std::vector<std::string>{"snapshot", "clone", name}}) {
    int rc = 0;
    const std::string out = Vssctl(mnt, args, &rc);
    INFO(out);
    REQUIRE(rc == 0);
  }
}

// setxattr's outcome: 0 or errno.
int SetBig(const std::string& path, size_t size) {
  const std::string value(size, 'x');
  return setxattr(path.c_str(), "user.big", value.data(), value.size(), 0) == 0 ? 0 : errno;
}

}  // namespace

TEST_CASE("snapshot: a clone takes a large xattr exactly when the backing filesystem would",
          "[fs][snapshot][clone]") {
  // Found by the clone model test (seed 243720785714): the clone probed a
  // set of xattrs on the backing filesystem without its ACLs, which share
  // ext4's one block with them, and took a value the live tree refused.
  REQUIRE(geteuid() == 0);
  VolumeDirs dirs;
  const std::string ref = dirs.tmp.Sub("ref");  // Native, on the backing filesystem.
  REQUIRE(mkdir(ref.c_str(), 0755) == 0);
  ScopedMount m(dirs.backing, dirs.mnt);
  for (const char* name : {"dir", "file"}) {
    const bool directory = std::strcmp(name, "dir") == 0;
    const std::string live = dirs.mnt + "/" + name, native = ref + "/" + name;
    for (const std::string& p : {live, native}) {
      if (directory) {
        REQUIRE(mkdir(p.c_str(), 0755) == 0);
      } else {
        REQUIRE(close(open(p.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0644)) == 0);
      }
      Decorate(p, directory);
    }
  }
  SnapshotAndClone(dirs.mnt, "s1");
  for (const char* name : {"dir", "file"}) {
    const std::string clone = dirs.mnt + "/.snapshot/s1/" + name, native = ref + "/" + name;
    int refused = 0;
    for (size_t size = 3000; size <= 4100; size += 16) {
      INFO(name << ", a " << size << "-byte value");
      const int want = SetBig(native, size);
      const int got = SetBig(clone, size);
      CHECK(got == want);
      if (want == 0) REQUIRE(removexattr(native.c_str(), "user.big") == 0);
      if (got == 0) REQUIRE(removexattr(clone.c_str(), "user.big") == 0);
      if (want != 0) ++refused;
    }
    if (refused == 0) WARN("the backing filesystem took every size: its limit is not tested here");
  }
}

TEST_CASE("snapshot: a clone refuses a mkdir whose inherited ACLs would not fit natively",
          "[fs][snapshot][clone]") {
  REQUIRE(geteuid() == 0);
  // A default ACL naming 300 users: about 2.4 KiB on ext4. A new directory
  // inherits it twice (as its access and its default ACL), which exceeds
  // ext4's xattr space; a new file inherits it once, which fits.
  std::string acl = "u::rwx";
  for (uint32_t uid = 20000; uid < 20300; ++uid) acl += ",u:" + std::to_string(uid) + ":rx";
  acl += ",g::rx,m::rwx,o::rx";
  VolumeDirs dirs;
  const std::string ref = dirs.tmp.Sub("ref");
  REQUIRE(mkdir(ref.c_str(), 0755) == 0);
  ScopedMount m(dirs.backing, dirs.mnt);
  for (const std::string& p : {dirs.mnt + "/parent", ref + "/parent"}) {
    REQUIRE(mkdir(p.c_str(), 0755) == 0);
    SetFacl({"-d", "-m", acl}, p);
  }
  SnapshotAndClone(dirs.mnt, "s1");
  const std::string clone = dirs.mnt + "/.snapshot/s1/parent", native = ref + "/parent";
  auto outcome = [](int r) { return r == 0 ? 0 : errno; };
  const int want_dir = outcome(mkdir((native + "/d").c_str(), 0755));
  CHECK(outcome(mkdir((clone + "/d").c_str(), 0755)) == want_dir);
  const int want_file = outcome(mknod((native + "/f").c_str(), S_IFREG | 0644, 0));
  CHECK(outcome(mknod((clone + "/f").c_str(), S_IFREG | 0644, 0)) == want_file);
  if (want_dir == 0) WARN("the backing filesystem took both inherited ACLs: not tested here");
}

namespace {

// Bytes the store directory `dir` occupies on disk.
uint64_t DiskBytes(const std::string& dir) {
  uint64_t bytes = 0;
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir)) {
    struct stat st;
    if (lstat(e.path().c_str(), &st) == 0) bytes += static_cast<uint64_t>(st.st_blocks) * 512;
  }
  return bytes;
}

}  // namespace

TEST_CASE(
    "snapshot: a file made after the latest snapshot stays uncopied when the kernel "
    "forgets it",
    "[fs][snapshot]") {
  // vssfs knows that a file created after the latest snapshot has nothing to
  // preserve. With a small inode budget the kernel is asked to forget the
  // file between its creation and its rewrite; that knowledge must survive.
  REQUIRE(geteuid() == 0);
  VolumeDirs dirs;
  REQUIRE(mkdir((dirs.backing + "/other").c_str(), 0755) == 0);
  for (int i = 0; i < 200; ++i) {
    int fd =
        open((dirs.backing + "/other/f" + std::to_string(i)).c_str(), O_CREAT | O_WRONLY, 0644);
    REQUIRE(fd >= 0);
    close(fd);
  }
  ScopedMount mount(dirs.backing, dirs.mnt, {"-o", "max_inodes=32", "-o", "inode_release=prune"});
  int rc;
  std::string out = Vssctl(dirs.mnt, {"snapshot", "create", "--name", "before"}, &rc);
  INFO(out);
  REQUIRE(rc == 0);
  const std::string file = dirs.mnt + "/new.vhdx";
  // Random data: the store would keep one copy of identical blocks.
  std::mt19937_64 rng(7);
  auto write_all = [&] {
    std::string block(8 << 20, '\0');
    for (size_t i = 0; i < block.size(); i += 8) {
      const uint64_t v = rng();
      std::memcpy(&block[i], &v, 8);
    }
    int fd = open(file.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    REQUIRE(fd >= 0);
    REQUIRE(pwrite(fd, block.data(), block.size(), 0) == static_cast<ssize_t>(block.size()));
    REQUIRE(fsync(fd) == 0);
    REQUIRE(close(fd) == 0);
  };
  write_all();
  // 200 lookups push the new file out of the kernel's cache.
  for (int i = 0; i < 200; ++i) {
    struct stat st;
    REQUIRE(stat((dirs.mnt + "/other/f" + std::to_string(i)).c_str(), &st) == 0);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  const uint64_t before = DiskBytes(dirs.backing + "/.vssfs");
  write_all();
  const uint64_t after = DiskBytes(dirs.backing + "/.vssfs");
  INFO("vssfs log:\n" << mount.Log());
  CHECK(mount.Log().find("asking it to forget the least recently used") != std::string::npos);
  // Nothing of the file was preserved (a copy would be 8 MiB).
  CHECK(after - std::min(after, before) < (1u << 20));
}
