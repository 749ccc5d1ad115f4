// Unit tests of IdleRings (fs/src/idle_rings.h): SCHED_IDLE ring threads and
// their rescue when a busy CPU starves them.
#include "idle_rings.h"

#include <pthread.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <string>
#include <thread>

namespace {

using vssfs::fs::IdleRings;
using Clock = std::chrono::steady_clock;

void PinTo(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

// A CPU this process may run on.
int SomeCpu() {
  cpu_set_t set;
  REQUIRE(sched_getaffinity(0, sizeof set, &set) == 0);
  for (int c = 0; c < CPU_SETSIZE; ++c) {
    if (CPU_ISSET(c, &set)) return c;
  }
  FAIL("no CPU in the affinity mask");
  return 0;
}

// A ring thread's stand-in: pinned to `cpu`, registered with IdleRings, it
// handles a "request" whenever `pending` is set (spinning while it waits, so
// that it always wants the CPU).
class FakeRingThread {
 public:
  FakeRingThread(IdleRings& rings, int cpu) : rings_(rings) {
    thread_ = std::thread([this, cpu] {
      PinTo(cpu);
      IdleRings::Slot* slot = rings_.Register([this] { return pending_.load(); });
      tid_ = static_cast<pid_t>(syscall(SYS_gettid));
      registered_ = slot != nullptr;
      ready_ = true;
      while (!stop_.load()) {
        if (!pending_.load()) continue;
        const IdleRings::Kind kind = kind_.load();
        if (slot != nullptr) slot->Started(kind);
        policy_during_ = sched_getscheduler(0);
        if (slot != nullptr) slot->Finished(kind);
        policy_after_ = sched_getscheduler(0);
        ++handled_;
        pending_ = false;
      }
      rings_.Unregister(slot);
      policy_at_end_ = sched_getscheduler(0);
    });
    while (!ready_.load()) std::this_thread::yield();
  }
  ~FakeRingThread() { Join(); }
  void Join() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }

  bool registered() const { return registered_; }
  pid_t tid() const { return tid_; }
  void Post(IdleRings::Kind kind = IdleRings::Kind::kLatency) {
    kind_ = kind;
    pending_ = true;
  }
  // Posts a request and waits until it is handled.
  void Handle(IdleRings::Kind kind) {
    Post(kind);
    while (!Done()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  bool Done() const { return !pending_.load(); }
  int handled() const { return handled_.load(); }
  int policy_during() const { return policy_during_.load(); }
  int policy_after() const { return policy_after_.load(); }
  int policy_at_end() const { return policy_at_end_.load(); }

 private:
  IdleRings& rings_;
  std::thread thread_;
  std::atomic<bool> ready_{false};
  std::atomic<bool> stop_{false};
  std::atomic<bool> pending_{false};
  std::atomic<IdleRings::Kind> kind_{IdleRings::Kind::kLatency};
  std::atomic<bool> registered_{false};
  std::atomic<pid_t> tid_{0};
  std::atomic<int> handled_{0};
  std::atomic<int> policy_during_{-1};
  std::atomic<int> policy_after_{-1};
  std::atomic<int> policy_at_end_{-1};
};

// A normal thread spinning on `cpu` until destroyed.
class Hog {
 public:
  explicit Hog(int cpu) {
    thread_ = std::thread([this, cpu] {
      PinTo(cpu);
      while (!stop_.load()) {
      }
    });
  }
  ~Hog() {
    stop_ = true;
    thread_.join();
  }

 private:
  std::thread thread_;
  std::atomic<bool> stop_{false};
};

bool SkipUnlessAvailable() {
  std::string why;
  if (IdleRings::Available(&why)) return false;
  WARN("IdleRings not available here: " << why);
  return true;
}

}  // namespace

TEST_CASE("IdleRings: a registered thread is SCHED_IDLE until it unregisters", "[fs][idle_rings]") {
  if (SkipUnlessAvailable()) return;
  IdleRings rings;
  FakeRingThread t(rings, SomeCpu());
  REQUIRE(t.registered());
  CHECK(sched_getscheduler(t.tid()) == SCHED_IDLE);
  t.Handle(IdleRings::Kind::kLatency);
  CHECK(t.policy_after() == SCHED_IDLE);
  // Without work, no Check() turns it back, however often it runs.
  for (int i = 0; i < 5; ++i) CHECK(rings.Check() == 0);
  CHECK(sched_getscheduler(t.tid()) == SCHED_IDLE);
  t.Join();
  CHECK(t.policy_at_end() == SCHED_OTHER);
  CHECK(rings.stalls() == 0);
}

TEST_CASE("IdleRings: a thread starved on a busy CPU is turned back to SCHED_OTHER",
          "[fs][idle_rings]") {
  if (SkipUnlessAvailable()) return;
  const int cpu = SomeCpu();
  IdleRings rings;
  FakeRingThread t(rings, cpu);
  REQUIRE(t.registered());
  {
    Hog hog(cpu);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));  // the hog is running
    t.Post();
    // What the watchdog does: Check() every 2 ms.
    const auto start = Clock::now();
    int turned = 0;
    while (!t.Done() && Clock::now() - start < std::chrono::seconds(10)) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
      turned += rings.Check();
    }
    const auto ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start).count();
    INFO("request handled after " << ms << " ms; threads turned back: " << turned);
    REQUIRE(t.Done());
    CHECK(ms < 1000);
    // Starved, then turned back (once it had work at two checks in a row
    // and no progress in between), unless the scheduler happened to give the
    // SCHED_IDLE thread its slice first.
    if (turned == 1) {
      CHECK(rings.stalls() == 1);
      CHECK(t.policy_after() == SCHED_OTHER);
      // It stays SCHED_OTHER for kNormalMs: the CPU is busy.
      t.Handle(IdleRings::Kind::kLatency);
      CHECK(t.policy_after() == SCHED_OTHER);
    } else {
      WARN("the SCHED_IDLE thread ran on the busy CPU within " << ms << " ms");
    }
  }
  // kNormalMs later, the next request it handles makes it SCHED_IDLE again.
  std::this_thread::sleep_for(std::chrono::milliseconds(IdleRings::kNormalMs + 100));
  t.Handle(IdleRings::Kind::kLatency);
  CHECK(t.policy_after() == SCHED_IDLE);
  CHECK(sched_getscheduler(t.tid()) == SCHED_IDLE);
}

TEST_CASE("IdleRings: data requests are handled at SCHED_OTHER", "[fs][idle_rings]") {
  if (SkipUnlessAvailable()) return;
  IdleRings rings;
  FakeRingThread t(rings, SomeCpu());
  REQUIRE(t.registered());
  t.Handle(IdleRings::Kind::kData);
  CHECK(t.policy_during() == SCHED_OTHER);
  CHECK(t.policy_after() == SCHED_OTHER);
  // A reply nobody waits for changes nothing.
  t.Handle(IdleRings::Kind::kNeutral);
  CHECK(t.policy_after() == SCHED_OTHER);
  // A latency request's reply is committed as SCHED_IDLE.
  t.Handle(IdleRings::Kind::kLatency);
  CHECK(t.policy_during() == SCHED_OTHER);
  CHECK(t.policy_after() == SCHED_IDLE);
  t.Handle(IdleRings::Kind::kNeutral);
  CHECK(t.policy_after() == SCHED_IDLE);
  // An idle thread with a data request is not starving: Check() leaves it.
  CHECK(rings.Check() == 0);
  CHECK(rings.stalls() == 0);
}
