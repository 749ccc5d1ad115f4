#include "deferred_release.h"

#include <sched.h>
#include <unistd.h>

#include <chrono>
#include <exception>
#include <utility>

#include "log.h"

namespace vssfs::fs {

DeferredRelease::~DeferredRelease() {
  {
    std::lock_guard lock(mutex_);
    stop_ = true;
  }
  cv_.notify_one();
  if (thread_.joinable()) thread_.join();
  queue_.clear();  // Left by a thread that never started.
}

void DeferredRelease::Add(std::shared_ptr<void> ref) noexcept {
  bool wake = false;
  try {
    std::lock_guard lock(mutex_);
    if (!started_) {
      started_ = true;  // Tried once: on failure, callers drop their own.
      thread_ = std::thread([this] { Run(); });
    }
    if (thread_.joinable() && !stop_) {
      wake = asleep_;
      queue_.push_back(std::move(ref));
    }
  } catch (const std::exception& e) {
    LOG_WARN("releasing on the request's thread: %s", e.what());
  }
  if (wake) cv_.notify_one();
  ref.reset();  // (Still set if not queued.)
}

uint64_t DeferredRelease::released() const {
  std::lock_guard lock(mutex_);
  return released_;
}

bool DeferredRelease::asleep() const {
  std::lock_guard lock(mutex_);
  return asleep_;
}

size_t DeferredRelease::Flush() noexcept {
  std::vector<std::shared_ptr<void>> batch;
  {
    std::lock_guard lock(mutex_);
    batch.swap(queue_);
  }
  const size_t n = batch.size();
  batch.clear();
  std::lock_guard lock(mutex_);
  released_ += n;
  return n;
}

void DeferredRelease::Unpin() {
  // The main thread keeps the process's CPUs (only workers are pinned).
  cpu_set_t set;
  if (sched_getaffinity(getpid(), sizeof set, &set) == 0) sched_setaffinity(0, sizeof set, &set);
  sched_param param{};
  sched_setscheduler(0, SCHED_OTHER, &param);
}

void DeferredRelease::Run() {
  Unpin();
  std::unique_lock lock(mutex_);
  int idle = 0;
  for (;;) {
    if (queue_.empty()) {
      if (stop_) return;
      if (idle < kIdleTicks) {
        ++idle;
        cv_.wait_for(lock, std::chrono::milliseconds(kTickMs));
      } else {
        asleep_ = true;
        cv_.wait(lock, [this] { return stop_ || !queue_.empty(); });
        asleep_ = false;
        idle = 0;
      }
      continue;
    }
    idle = 0;
    lock.unlock();
    Flush();  // The releases themselves, outside the lock.
    lock.lock();
  }
}

}  // namespace vssfs::fs
