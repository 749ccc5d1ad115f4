// Unit tests of IdleRings (fs/src/idle_rings.h): ring threads that answer
// metadata requests as SCHED_IDLE, and their rescue when a busy CPU starves
// them.
#include "idle_rings.h"

#include <pthread.h>
#include <sched.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "test_support.h"

namespace {

using vssfs::testing::AffinityCpus;
using vssfs::testing::PinSelf;
using vssfs::testing::SpinCpu;

using vssfs::fs::IdleRings;
using Clock = std::chrono::steady_clock;
using Kind = IdleRings::Kind;

// A CPU this process may run on.
int SomeCpu() {
  const std::vector<int> cpus = AffinityCpus();
  REQUIRE_FALSE(cpus.empty());
  return cpus.front();
}

// A ring thread's stand-in: pinned to `cpu` and registered with IdleRings,
// it sleeps until a "request" is posted, as a ring thread sleeps in
// io_uring_enter (so IdleRings sees it only as a thread, busy or runnable).
class FakeRingThread {
 public:
  FakeRingThread(IdleRings& rings, int cpu) : rings_(rings) {
    thread_ = std::thread([this, cpu] {
      PinSelf(cpu);
      IdleRings::Slot* slot = rings_.Register();
      tid_ = static_cast<pid_t>(syscall(SYS_gettid));
      registered_ = slot != nullptr;
      ready_ = true;
      std::unique_lock lock(mutex_);
      while (true) {
        cv_.wait(lock, [this] { return stop_ || pending_; });
        if (stop_) break;
        const Kind kind = kind_;
        const int work_ms = work_ms_;
        const int tail_ms = tail_ms_;
        const int sleep_ms = sleep_ms_;
        const int write_ms = write_ms_;
        lock.unlock();
        if (slot != nullptr) slot->Started(kind);
        policy_during_ = sched_getscheduler(0);
        SpinCpu(work_ms);
        // Blocked, as on a slow disk (state S).
        if (sleep_ms > 0) {
          sleeping_ = true;
          std::this_thread::sleep_for(std::chrono::milliseconds(sleep_ms));
          sleeping_ = false;
        }
        if (write_ms > 0) {
          // A /dev/fuse worker's reply: announced, then written (and
          // preempted inside the write, as by the sender it woke).
          if (slot != nullptr) slot->Finished(kind, /*replying=*/true);
          policy_after_ = sched_getscheduler(0);
          if (slot != nullptr) slot->Writing();
          SpinCpu(write_ms);
          if (slot != nullptr) slot->Replied();
        } else {
          if (slot != nullptr) slot->Finished(kind);
          policy_after_ = sched_getscheduler(0);
        }
        SpinCpu(tail_ms);  // like committing the reply (io_uring): runnable, not busy
        lock.lock();
        pending_ = false;
        done_cv_.notify_all();
      }
      lock.unlock();
      rings_.Unregister(slot);
      policy_at_end_ = sched_getscheduler(0);
    });
    while (!ready_.load()) std::this_thread::yield();
  }
  ~FakeRingThread() { Join(); }
  void Join() {
    {
      std::lock_guard lock(mutex_);
      stop_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }

  bool registered() const { return registered_; }
  pid_t tid() const { return tid_; }
  // Posts a request; its handling takes `work_ms` of CPU time, then sleeps
  // `sleep_ms`, and the thread spins `tail_ms` more after finishing it.
  // With `write_ms`, the thread replies as a /dev/fuse worker does, and
  // spins that long inside the write.
  void Post(Kind kind, int work_ms = 0, int tail_ms = 0, int sleep_ms = 0, int write_ms = 0) {
    std::lock_guard lock(mutex_);
    kind_ = kind;
    work_ms_ = work_ms;
    tail_ms_ = tail_ms;
    sleep_ms_ = sleep_ms;
    write_ms_ = write_ms;
    pending_ = true;
    cv_.notify_all();
  }
  // Waits up to `limit` for the posted request; returns whether it was
  // handled.
  bool Wait(std::chrono::milliseconds limit) {
    std::unique_lock lock(mutex_);
    return done_cv_.wait_for(lock, limit, [this] { return !pending_; });
  }
  bool Done() {
    std::lock_guard lock(mutex_);
    return !pending_;
  }
  // Posts a request and waits until it is handled.
  void Handle(Kind kind) {
    Post(kind);
    REQUIRE(Wait(std::chrono::seconds(10)));
  }
  // Whether the thread sleeps inside its request now.
  bool sleeping() const { return sleeping_.load(); }
  int policy_during() const { return policy_during_.load(); }
  int policy_after() const { return policy_after_.load(); }
  int policy_at_end() const { return policy_at_end_.load(); }

 private:
  IdleRings& rings_;
  std::thread thread_;
  std::atomic<bool> ready_{false};
  std::atomic<bool> registered_{false};
  std::atomic<pid_t> tid_{0};
  std::mutex mutex_;
  std::condition_variable cv_;       // a request or stop
  std::condition_variable done_cv_;  // the request was handled
  bool stop_ = false;                // guarded by mutex_
  bool pending_ = false;             // guarded by mutex_
  Kind kind_ = Kind::kLatency;       // guarded by mutex_
  int work_ms_ = 0;                  // guarded by mutex_
  int tail_ms_ = 0;                  // guarded by mutex_
  int sleep_ms_ = 0;                 // guarded by mutex_
  int write_ms_ = 0;                 // guarded by mutex_
  std::atomic<bool> sleeping_{false};
  std::atomic<int> policy_during_{-1};
  std::atomic<int> policy_after_{-1};
  std::atomic<int> policy_at_end_{-1};
};

// A normal thread spinning on `cpu` until destroyed.
class Hog {
 public:
  explicit Hog(int cpu) {
    thread_ = std::thread([this, cpu] {
      PinSelf(cpu);
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

int Check(IdleRings& rings, int between_ticks = 2) {
  bool watch = false;
  return rings.Check(&watch, between_ticks);
}

}  // namespace

TEST_CASE("IdleRings: latency requests leave a thread SCHED_IDLE until it unregisters",
          "[fs][idle_rings]") {
  if (SkipUnlessAvailable()) return;
  IdleRings rings;
  FakeRingThread t(rings, SomeCpu());
  REQUIRE(t.registered());
  // A new thread is normal (its first REGISTER must not wait for a CPU).
  CHECK(sched_getscheduler(t.tid()) == SCHED_OTHER);
  t.Handle(Kind::kLatency);
  CHECK(t.policy_during() == SCHED_OTHER);
  CHECK(t.policy_after() == SCHED_IDLE);
  CHECK(sched_getscheduler(t.tid()) == SCHED_IDLE);
  // Asleep without work, it is not turned back, however often Check runs.
  for (int i = 0; i < 5; ++i) {
    CHECK(Check(rings) == 0);
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  CHECK(sched_getscheduler(t.tid()) == SCHED_IDLE);
  t.Join();
  CHECK(t.policy_at_end() == SCHED_OTHER);
  CHECK(rings.stalls() == 0);
}

TEST_CASE("IdleRings: a thread started by a SCHED_IDLE thread is normal once registered",
          "[fs][idle_rings]") {
  if (SkipUnlessAvailable()) return;
  IdleRings rings;
  int inherited = -1;
  int registered = -1;
  int lowered = -1;
  std::thread parent([&] {
    sched_param param{};
    lowered = sched_setscheduler(0, SCHED_IDLE, &param);
    // As libfuse starts a worker from a worker: the child inherits the policy.
    std::thread child([&] {
      inherited = sched_getscheduler(0);
      IdleRings::Slot* slot = rings.Register();
      registered = sched_getscheduler(0);
      rings.Unregister(slot);
    });
    child.join();
    sched_setscheduler(0, SCHED_OTHER, &param);
  });
  parent.join();
  REQUIRE(lowered == 0);
  CHECK(inherited == SCHED_IDLE);
  // Not watched as SCHED_IDLE until its first latency request: it must not be
  // SCHED_IDLE before that, or nothing would rescue it.
  CHECK(registered == SCHED_OTHER);
}

TEST_CASE("IdleRings: data requests are handled at SCHED_OTHER", "[fs][idle_rings]") {
  if (SkipUnlessAvailable()) return;
  IdleRings rings;
  FakeRingThread t(rings, SomeCpu());
  REQUIRE(t.registered());
  t.Handle(Kind::kLatency);
  REQUIRE(t.policy_after() == SCHED_IDLE);
  t.Handle(Kind::kData);
  CHECK(t.policy_during() == SCHED_OTHER);
  CHECK(t.policy_after() == SCHED_OTHER);
  // A reply nobody waits for changes nothing.
  t.Handle(Kind::kNeutral);
  CHECK(t.policy_after() == SCHED_OTHER);
  // A latency request's reply is committed as SCHED_IDLE.
  t.Handle(Kind::kLatency);
  CHECK(t.policy_during() == SCHED_OTHER);
  CHECK(t.policy_after() == SCHED_IDLE);
  t.Handle(Kind::kNeutral);
  CHECK(t.policy_after() == SCHED_IDLE);
  CHECK(rings.stalls() == 0);
}

// Posts a request that makes `t` run for a while as SCHED_IDLE on `cpu`
// while a normal thread spins there, calls Check() every 2 ms as the
// watchdog does, and returns how many threads it turned back. `work_ms`:
// CPU time the request takes (the thread is busy); `tail_ms`: CPU time the
// thread spins after it (runnable, not busy, as while committing a reply).
int StarveAndRescue(IdleRings& rings, FakeRingThread& t, int cpu, int work_ms, int tail_ms) {
  Hog hog(cpu);
  std::this_thread::sleep_for(std::chrono::milliseconds(20));  // the hog is running
  t.Post(Kind::kLatency, work_ms, tail_ms);
  const auto start = Clock::now();
  int turned = 0;
  while (!t.Done() && Clock::now() - start < std::chrono::seconds(10)) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    turned += Check(rings);
  }
  const auto ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start).count();
  INFO("request handled after " << ms << " ms; threads turned back: " << turned);
  REQUIRE(t.Done());
  // Without the rescue: 18 ms of CPU at a SCHED_IDLE thread's share behind
  // a spinning one take seconds.
  CHECK(ms < 1000);
  return turned;
}

TEST_CASE("IdleRings: a thread starved on a busy CPU is turned back to SCHED_OTHER",
          "[fs][idle_rings]") {
  if (SkipUnlessAvailable()) return;
  const int cpu = SomeCpu();
  IdleRings rings;
  FakeRingThread t(rings, cpu);
  REQUIRE(t.registered());
  t.Handle(Kind::kLatency);
  REQUIRE(sched_getscheduler(t.tid()) == SCHED_IDLE);
  SECTION("while handling a request") {
    CHECK(StarveAndRescue(rings, t, cpu, 18, 0) == 1);
    // Rescued while busy: it finishes at SCHED_OTHER and stays so for
    // kNormalMs (the CPU is busy).
    CHECK(t.policy_after() == SCHED_OTHER);
  }
  SECTION("while runnable between requests") { CHECK(StarveAndRescue(rings, t, cpu, 0, 18) == 1); }
  CHECK(rings.stalls() == 1);
  t.Handle(Kind::kLatency);
  CHECK(t.policy_after() == SCHED_OTHER);
  // kNormalMs later, its next latency request makes it SCHED_IDLE again.
  std::this_thread::sleep_for(std::chrono::milliseconds(IdleRings::kNormalMs + 100));
  t.Handle(Kind::kLatency);
  CHECK(t.policy_after() == SCHED_IDLE);
  CHECK(sched_getscheduler(t.tid()) == SCHED_IDLE);
}

namespace {

// A registered ring thread made SCHED_IDLE by a latency request, then a
// normal thread spinning on its CPU.
struct IdleBehindHog {
  const int cpu = SomeCpu();
  IdleRings rings;
  FakeRingThread t{rings, cpu};
  std::unique_ptr<Hog> hog;
  IdleBehindHog() {
    REQUIRE(t.registered());
    t.Handle(Kind::kLatency);
    REQUIRE(sched_getscheduler(t.tid()) == SCHED_IDLE);
    hog = std::make_unique<Hog>(cpu);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));  // the hog is running
  }

  // Checks `calls` times, 2 ms apart; returns how many threads were turned
  // back.
  int CheckRepeatedly(int calls, int between_ticks = 2) {
    int turned = 0;
    for (int i = 0; i < calls; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
      turned += Check(rings, between_ticks);
    }
    return turned;
  }
  // Checks up to 20 times, 2 ms apart, until the thread is turned back or
  // its request done; returns how many threads were turned back.
  int CheckUntilTurned() {
    int turned = 0;
    for (int i = 0; i < 20 && turned == 0 && !t.Done(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
      turned += Check(rings);
    }
    return turned;
  }
};

}  // namespace

TEST_CASE("IdleRings: a thread blocked in a request on a busy CPU keeps SCHED_IDLE",
          "[fs][idle_rings]") {
  if (SkipUnlessAvailable()) return;
  IdleBehindHog setup;
  IdleRings& rings = setup.rings;
  FakeRingThread& t = setup.t;
  // The request sleeps 2 s (a slow disk): not runnable, so not starved,
  // though busy at many checks in a row. (Until 2026-12-06 it was turned
  // back.) Reaching the sleep may itself wait for the CPU, behind the hog:
  // the checks run only while it sleeps.
  t.Post(Kind::kLatency, 0, 0, 2000);
  const auto start = Clock::now();
  while (!t.sleeping() && Clock::now() - start < std::chrono::seconds(10)) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  REQUIRE(t.sleeping());
  const int turned = setup.CheckRepeatedly(20);
  CHECK(t.sleeping());  // still: every check saw it blocked
  CHECK(turned == 0);
  CHECK(rings.stalls() == 0);
  REQUIRE(t.Wait(std::chrono::seconds(10)));
}

TEST_CASE("IdleRings: a thread runnable between requests may be given more checks",
          "[fs][idle_rings]") {
  if (SkipUnlessAvailable()) return;
  IdleBehindHog setup;
  FakeRingThread& t = setup.t;
  // 18 ms of CPU after the request, at a SCHED_IDLE share behind the hog:
  // runnable and starved, but not in a request.
  t.Post(Kind::kLatency, 0, 18);
  CHECK(setup.CheckRepeatedly(20, /*between_ticks=*/1000) == 0);
  CHECK(sched_getscheduler(t.tid()) == SCHED_IDLE);
  // Counted again, it is turned back.
  CHECK(setup.CheckUntilTurned() == 1);
  REQUIRE(t.Wait(std::chrono::seconds(10)));
}

TEST_CASE("IdleRings: a thread runnable inside the write of its reply gets more checks",
          "[fs][idle_rings]") {
  if (SkipUnlessAvailable()) return;
  IdleBehindHog setup;
  FakeRingThread& t = setup.t;
  // 18 ms of CPU inside the write, at a SCHED_IDLE share behind the hog: as
  // a poller preempted by the sender its reply woke, while that sender
  // computes. (Until 2026-12-06 two checks turned it back, for a second:
  // fio's create and unlink ran at half speed after such a stall.)
  t.Post(Kind::kLatency, 0, 0, 0, /*write_ms=*/18);
  CHECK(setup.CheckRepeatedly(IdleRings::kWritingChecks - 2) == 0);
  CHECK(sched_getscheduler(t.tid()) == SCHED_IDLE);
  // Starved that long, it may hold its reply up after all: turned back.
  CHECK(setup.CheckUntilTurned() == 1);
  REQUIRE(t.Wait(std::chrono::seconds(10)));
}

TEST_CASE("IdleRings: RaiseAll makes threads SCHED_OTHER for now, ReleaseAll for good",
          "[fs][idle_rings]") {
  if (SkipUnlessAvailable()) return;
  IdleRings rings;
  FakeRingThread t(rings, SomeCpu());
  REQUIRE(t.registered());
  t.Handle(Kind::kLatency);
  REQUIRE(sched_getscheduler(t.tid()) == SCHED_IDLE);
  SECTION("RaiseAll: until the next latency request") {
    rings.RaiseAll();
    CHECK(sched_getscheduler(t.tid()) == SCHED_OTHER);
    t.Handle(Kind::kLatency);
    CHECK(t.policy_after() == SCHED_IDLE);
    CHECK(rings.stalls() == 0);
  }
  SECTION("ReleaseAll: for good") {
    rings.ReleaseAll();
    CHECK(sched_getscheduler(t.tid()) == SCHED_OTHER);
    t.Handle(Kind::kLatency);
    CHECK(t.policy_after() == SCHED_OTHER);
  }
}
