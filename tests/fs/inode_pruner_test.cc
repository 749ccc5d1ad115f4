#include "inode_pruner.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "fake_inodes.h"

namespace cow_store = vssfs::cow_store;
using vssfs::fs::DefaultInodeBudget;
using vssfs::fs::InodePruner;
using vssfs::fs::InodeTable;
using vssfs::testing::SomeFd;
using vssfs::testing::StatWithIno;

namespace {

// Stands in for the kernel: records what it is asked to prune and forgets
// those of the ids it holds no reference to (the "busy" ones stay).
class FakeKernel {
 public:
  explicit FakeKernel(InodeTable* table) : table_(table) {}
  int Prune(const std::vector<uint64_t>& ids) {
    std::lock_guard lock(mutex_);
    ++calls_;
    if (refuse_) return -EINVAL;
    batches_.push_back(ids);
    for (uint64_t id : ids) {
      if (std::find(busy_.begin(), busy_.end(), id) == busy_.end()) table_->Forget(id, 1);
    }
    return 0;
  }
  void Refuse() {
    std::lock_guard lock(mutex_);
    refuse_ = true;
  }
  void SetBusy(std::vector<uint64_t> busy) {
    std::lock_guard lock(mutex_);
    busy_ = std::move(busy);
  }
  std::vector<std::vector<uint64_t>> batches() {
    std::lock_guard lock(mutex_);
    return batches_;
  }
  // Notifications asked for, refused ones included.
  int calls() {
    std::lock_guard lock(mutex_);
    return calls_;
  }

 private:
  InodeTable* table_;
  std::mutex mutex_;
  bool refuse_ = false;
  int calls_ = 0;
  std::vector<uint64_t> busy_;
  std::vector<std::vector<uint64_t>> batches_;
};

// A table (holding the root, node 1), the fake kernel over it, and a
// pruner that sends to that kernel.
struct Rig {
  InodeTable table{SomeFd(), StatWithIno(2, S_IFDIR)};
  FakeKernel kernel{&table};
  std::unique_ptr<InodePruner> pruner;  // Last: stopped before the rest go.

  // Starts the pruner with `budget`; with `hook`, the table pokes it when a
  // new entry passes the budget, as in the daemon.
  InodePruner& Start(size_t budget, bool hook = true) {
    pruner = std::make_unique<InodePruner>(
        &table, budget, [this](const std::vector<uint64_t>& ids) { return kernel.Prune(ids); });
    if (hook) table.SetPressureHook(pruner->budget(), [p = pruner.get()] { p->Poke(); });
    return *pruner;
  }
  // One lookup of each inode number in [first, end).
  void LookUp(ino_t first, ino_t end) {
    for (ino_t ino = first; ino < end; ++ino) REQUIRE(table.Acquire(SomeFd(), StatWithIno(ino)));
  }
};

// Waits up to 5 s for `done`.
template <typename F>
bool Eventually(F done) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (!done()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return true;
}

}  // namespace

TEST_CASE("inode pruner: the default budget leaves a quarter of the descriptors",
          "[fs][inode_pruner]") {
  CHECK(DefaultInodeBudget(20000) == 15000);
  CHECK(DefaultInodeBudget(1048576) == 786432);
  CHECK(DefaultInodeBudget(10) == 16);
}

TEST_CASE("inode pruner: past the budget the least recently used are forgotten",
          "[fs][inode_pruner]") {
  Rig rig;
  InodePruner& pruner = rig.Start(100);
  rig.LookUp(1000, 1100);
  // 101 entries with the root: one past the budget.
  CHECK(Eventually([&] { return rig.table.size() <= 90; }));
  CHECK(rig.table.size() == 90);  // Nine tenths of the budget.
  const auto batches = rig.kernel.batches();
  REQUIRE(batches.size() == 1);
  // The 11 looked up first, oldest first.
  std::vector<uint64_t> expected;
  for (uint64_t id = 1000; id < 1011; ++id) expected.push_back(id);
  CHECK(batches[0] == expected);
  CHECK(rig.table.Find(1000) == nullptr);
  CHECK(rig.table.Find(1011) != nullptr);
  CHECK(rig.table.Find(1) != nullptr);  // The root stays.
  CHECK(pruner.sent() == 11);
  CHECK(pruner.supported());
}

TEST_CASE("inode pruner: large rounds go out in notifications of 512 ids", "[fs][inode_pruner]") {
  Rig rig;
  // Filled before the pruner exists, as if the kernel had outgrown it at once.
  rig.LookUp(1000, 3000);
  InodePruner& pruner = rig.Start(500, /*hook=*/false);
  pruner.Poke();
  CHECK(Eventually([&] { return rig.table.size() <= 450; }));
  const auto batches = rig.kernel.batches();
  REQUIRE(batches.size() == 4);  // 2001 - 450 = 1551 ids
  CHECK(batches[0].size() == 512);
  CHECK(batches[1].size() == 512);
  CHECK(batches[2].size() == 512);
  CHECK(batches[3].size() == 15);
}

TEST_CASE("inode pruner: a kernel that cannot prune is not asked again", "[fs][inode_pruner]") {
  Rig rig;
  rig.kernel.Refuse();
  InodePruner& pruner = rig.Start(16);
  rig.LookUp(1000, 1020);
  CHECK(Eventually([&] { return !pruner.supported(); }));
  rig.LookUp(1020, 1040);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  CHECK(rig.kernel.calls() == 1);
  CHECK(rig.table.size() == 41);  // Nothing forgotten.
  CHECK_FALSE(pruner.Relieve(std::chrono::milliseconds(10)));
}

TEST_CASE("inode pruner: a request out of descriptors gets room under the budget",
          "[fs][inode_pruner]") {
  Rig rig;
  InodePruner& pruner = rig.Start(200, /*hook=*/false);
  rig.LookUp(1000, 1100);
  // Under the budget, but open files took the descriptors: a tenth of the
  // budget (20) more is pruned.
  CHECK(pruner.Relieve(std::chrono::seconds(5)));
  CHECK(Eventually([&] { return rig.table.size() == 81; }));
  REQUIRE(rig.kernel.batches().size() == 1);
  CHECK(rig.kernel.batches()[0].front() == 1000);
}

TEST_CASE("inode pruner: inodes the kernel keeps leave the table over budget, not looping",
          "[fs][inode_pruner]") {
  Rig rig;
  std::vector<uint64_t> busy;
  for (uint64_t id = 1000; id < 1040; ++id) busy.push_back(id);
  rig.kernel.SetBusy(busy);  // Every inode is in use: the kernel drops none.
  rig.Start(32);
  rig.LookUp(1000, 1040);
  CHECK(Eventually([&] { return !rig.kernel.batches().empty(); }));
  // After three rounds that freed nothing (100 ms each, waiting for
  // FORGETs) the pruner pauses for a second instead of asking again.
  std::this_thread::sleep_for(std::chrono::milliseconds(800));
  CHECK(rig.kernel.batches().size() == 3);
  CHECK(rig.table.size() == 41);
}

TEST_CASE("inode pruner: entries the kernel kept are not named again first", "[fs][inode_pruner]") {
  Rig rig;
  rig.kernel.SetBusy({1000, 1001, 1002});  // The three oldest are in use.
  rig.Start(100);
  rig.LookUp(1000, 1100);
  CHECK(Eventually([&] { return rig.kernel.batches().size() == 1; }));
  // The round named 1000-1010; 1003-1010 were forgotten, the busy three kept.
  CHECK(Eventually([&] { return rig.table.size() == 93; }));
  rig.LookUp(1100, 1110);
  CHECK(Eventually([&] { return rig.kernel.batches().size() == 2; }));
  // The next round starts with 1011, not with the three the kernel kept.
  const auto batches = rig.kernel.batches();
  REQUIRE_FALSE(batches[1].empty());
  CHECK(batches[1].front() == 1011);
  CHECK(std::find(batches[1].begin(), batches[1].end(), 1000) == batches[1].end());
}

TEST_CASE("inode pruner: a stopped pruner neither prunes nor waits", "[fs][inode_pruner]") {
  Rig rig;
  InodePruner& pruner = rig.Start(16);
  pruner.Stop();
  rig.LookUp(1000, 1040);
  const auto start = std::chrono::steady_clock::now();
  CHECK_FALSE(pruner.Relieve(std::chrono::seconds(5)));
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(1));
  CHECK(rig.kernel.batches().empty());
}

namespace {

using vssfs::testing::RealFiles;

// A table over real files with eviction on, the fake kernel over it, and a
// pruner sending to that kernel.
struct FileRig {
  RealFiles files;
  std::unique_ptr<InodeTable> table;
  std::unique_ptr<FakeKernel> kernel;
  std::unique_ptr<InodePruner> pruner;  // Last: stopped before the rest go.

  FileRig() {
    struct stat st;
    cow_store::UniqueFd root = files.RootFd(&st);
    table = std::make_unique<InodeTable>(std::move(root), st);
    const int r = table->EnableEviction(files.mount_fd());
    INFO("EnableEviction: " << std::strerror(-r) << " (needs CAP_DAC_READ_SEARCH)");
    REQUIRE(r == 0);
    kernel = std::make_unique<FakeKernel>(table.get());
  }
  InodePruner& Start(size_t budget) {
    pruner = std::make_unique<InodePruner>(
        table.get(), budget,
        [this](const std::vector<uint64_t>& ids) { return kernel->Prune(ids); });
    table->SetPressureHook(pruner->budget(), [p = pruner.get()] { p->Poke(); });
    return *pruner;
  }
  // Looks up `count` new directories or files named with `prefix`; returns
  // their node ids.
  std::vector<uint64_t> LookUp(const std::string& prefix, int count, bool directories) {
    std::vector<uint64_t> ids;
    for (int i = 0; i < count; ++i) {
      const std::string name = prefix + std::to_string(i);
      struct stat st;
      cow_store::UniqueFd fd;
      if (directories) {
        REQUIRE(mkdir(files.Path(name).c_str(), 0755) == 0);
        fd = files.Open(name, &st);
      } else {
        fd = files.Make(name, &st);
      }
      REQUIRE(fd);
      auto inode = table->Acquire(std::move(fd), st);
      REQUIRE(inode);
      ids.push_back(inode->nodeid);
    }
    return ids;
  }
};

}  // namespace

TEST_CASE("inode pruner: idle files are evicted first, the rest is pruned", "[fs][inode_pruner]") {
  FileRig rig;
  rig.Start(16);
  // 20 directories: past the budget with the root, and only the kernel can
  // release them; then 30 files, which eviction closes.
  const std::vector<uint64_t> dirs = rig.LookUp("d", 20, /*directories=*/true);
  const std::vector<uint64_t> files = rig.LookUp("f", 30, /*directories=*/false);
  CHECK(Eventually([&] { return rig.table->descriptors() <= 16; }));
  CHECK(rig.table->evicted() > 0);
  // The kernel was asked about directories only: files were evicted.
  std::vector<uint64_t> named;
  for (const auto& batch : rig.kernel->batches())
    named.insert(named.end(), batch.begin(), batch.end());
  CHECK_FALSE(named.empty());
  for (uint64_t id : named) {
    INFO("named " << id);
    CHECK(std::find(dirs.begin(), dirs.end(), id) != dirs.end());
  }
  // Every file is still known, reopened on use.
  for (uint64_t id : files) {
    auto inode = rig.table->Find(id);
    REQUIRE(inode);
    CHECK(inode->fd);
  }
}

TEST_CASE("inode pruner: without kernel pruning, eviction alone keeps the budget",
          "[fs][inode_pruner]") {
  FileRig rig;
  InodePruner& pruner = rig.Start(16);
  pruner.MarkUnsupported();
  rig.LookUp("f", 100, /*directories=*/false);
  CHECK(Eventually([&] { return rig.table->descriptors() <= 16; }));
  CHECK(rig.table->size() == 101);  // All still known.
  CHECK(rig.kernel->calls() == 0);
  // A request out of descriptors gets room by eviction too: the files
  // still holding one are closed.
  const uint64_t before = rig.table->released();
  CHECK(pruner.Relieve(std::chrono::seconds(5)));
  CHECK(rig.table->released() > before);
}
