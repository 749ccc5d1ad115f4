// Unit tests of DeferredRelease (fs/src/deferred_release.h): references
// dropped on a thread of its own, soon, in order, and all by destruction.
#include "deferred_release.h"

#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdlib>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "test_support.h"

namespace {

using vssfs::fs::DeferredRelease;
using vssfs::testing::AffinityCpus;
using vssfs::testing::PinSelf;

// Records which thread dropped each reference, in order.
struct Drops {
  std::mutex mutex;
  std::vector<int> order;
  std::vector<pid_t> threads;

  std::shared_ptr<void> Make(int id) {
    return std::shared_ptr<void>(new int(id), [this](void* p) {
      std::unique_ptr<int> owned(static_cast<int*>(p));
      std::lock_guard lock(mutex);
      order.push_back(*owned);
      threads.push_back(static_cast<pid_t>(syscall(SYS_gettid)));
    });
  }
  size_t count() {
    std::lock_guard lock(mutex);
    return order.size();
  }
};

bool WaitFor(const std::function<bool()>& done) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (!done() && std::chrono::steady_clock::now() < end) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return done();
}

}  // namespace

TEST_CASE("DeferredRelease: drops references on its own thread, in order", "[fs][deferred]") {
  Drops drops;
  const pid_t me = static_cast<pid_t>(syscall(SYS_gettid));
  DeferredRelease release;
  for (int i = 0; i < 100; ++i) release.Add(drops.Make(i));
  REQUIRE(WaitFor([&] { return release.released() == 100; }));
  CHECK(drops.count() == 100);
  // Asleep (after kIdleTicks without work), the next one wakes it.
  REQUIRE(WaitFor([&] { return release.asleep(); }));
  release.Add(drops.Make(100));
  CHECK(WaitFor([&] { return release.released() == 101; }));
  CHECK(drops.count() == 101);
  std::lock_guard lock(drops.mutex);
  for (int i = 0; i < static_cast<int>(drops.order.size()); ++i) CHECK(drops.order[i] == i);
  for (pid_t t : drops.threads) CHECK(t != me);
}

TEST_CASE("DeferredRelease: a reference held elsewhere is dropped there", "[fs][deferred]") {
  Drops drops;
  std::shared_ptr<void> kept = drops.Make(7);
  {
    DeferredRelease release;
    release.Add(kept);
    REQUIRE(WaitFor([&] { return release.released() == 1; }));
    CHECK(drops.count() == 0);
  }
  kept.reset();
  CHECK(drops.count() == 1);
}

TEST_CASE("DeferredRelease: everything queued is dropped by destruction", "[fs][deferred]") {
  Drops drops;
  {
    DeferredRelease release;
    for (int i = 0; i < 1000; ++i) release.Add(drops.Make(i));
  }
  CHECK(drops.count() == 1000);
}

TEST_CASE("DeferredRelease: Flush drops what is queued on the caller's thread", "[fs][deferred]") {
  Drops drops;
  const pid_t me = static_cast<pid_t>(syscall(SYS_gettid));
  DeferredRelease release;
  // The thread and Flush() race for these; each is dropped once.
  for (int i = 0; i <= 50; ++i) release.Add(drops.Make(i));
  const size_t flushed = release.Flush();
  CHECK(WaitFor([&] { return drops.count() == 51; }));
  CHECK(release.released() == 51);
  std::lock_guard lock(drops.mutex);
  size_t mine = 0;
  for (pid_t t : drops.threads) mine += t == me ? 1 : 0;
  CHECK(mine == flushed);
}

TEST_CASE("DeferredRelease: its thread is not pinned like the thread that starts it",
          "[fs][deferred]") {
  const std::vector<int> all = AffinityCpus();
  REQUIRE_FALSE(all.empty());
  if (all.size() < 2) {
    WARN("one CPU only: nothing to unpin");
    return;
  }
  std::atomic<int> cpus{0};
  std::thread starter([&] {
    if (!PinSelf(all.front())) return;  // cpus stays 0: fails below
    DeferredRelease release;
    release.Add(std::shared_ptr<void>(new int(0), [&cpus](void* p) {
      delete static_cast<int*>(p);
      cpu_set_t set;
      if (sched_getaffinity(0, sizeof set, &set) == 0) cpus = CPU_COUNT(&set);
    }));
    WaitFor([&] { return release.released() == 1; });
  });
  starter.join();
  CHECK(cpus.load() == static_cast<int>(all.size()));
}

TEST_CASE("DeferredRelease: closes the last descriptor of a deleted file", "[fs][deferred]") {
  char path[] = "/tmp/vssfs-deferred-XXXXXX";
  const int fd = mkstemp(path);
  REQUIRE(fd >= 0);
  REQUIRE(unlink(path) == 0);
  const std::string proc = "/proc/self/fd/" + std::to_string(fd);
  {
    DeferredRelease release;
    release.Add(std::shared_ptr<void>(new int(fd), [](void* p) {
      std::unique_ptr<int> owned(static_cast<int*>(p));
      ::close(*owned);
    }));
    CHECK(WaitFor([&] { return access(proc.c_str(), F_OK) != 0; }));
  }
  CHECK(access(proc.c_str(), F_OK) != 0);
}
