#include "idle_rings.h"

#include <fcntl.h>
#include <linux/capability.h>
#include <linux/fuse.h>
#include <pthread.h>
#include <sched.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string_view>

#include "creds.h"
#include "log.h"

namespace vssfs::fs {
namespace {

// sched_setscheduler(2) on one thread (0: the calling one). Returns 0 or a
// negative errno.
int SetPolicy(pid_t tid, int policy) {
  sched_param param{};
  return sched_setscheduler(tid, policy, &param) == 0 ? 0 : -errno;
}

int64_t NowMs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

// Whether the thread whose /proc/.../stat is open as `fd` is running or
// waiting for a CPU (state R).
bool Runnable(int fd) {
  char buf[256];
  const ssize_t n = pread(fd, buf, sizeof buf, 0);
  if (n <= 0) return false;
  // "tid (comm) S ...": the command may contain anything, ')' included.
  const std::string_view line(buf, static_cast<size_t>(n));
  const size_t close = line.rfind(')');
  return close != std::string_view::npos && close + 2 < line.size() && line[close + 2] == 'R';
}

}  // namespace

IdleRings::Kind IdleRings::KindOf(uint32_t opcode) {
  switch (opcode) {
    case FUSE_READ:
    case FUSE_WRITE:
    case FUSE_FALLOCATE:
    case FUSE_COPY_FILE_RANGE:
    case FUSE_FSYNC:
    case FUSE_FSYNCDIR:
      return Kind::kData;
    case FUSE_RELEASE:
    case FUSE_RELEASEDIR:
    case FUSE_FORGET:
    case FUSE_BATCH_FORGET:
    case FUSE_INTERRUPT:
      return Kind::kNeutral;
    default:
      return Kind::kLatency;
  }
}

void IdleRings::Slot::Started(Kind kind) {
  writing_.store(false, std::memory_order_relaxed);
  busy_.store(true, std::memory_order_relaxed);
  progress_.fetch_add(1, std::memory_order_relaxed);
  if (kind == Kind::kData) Normal();
}

void IdleRings::Slot::Writing() { writing_.store(true, std::memory_order_relaxed); }

void IdleRings::Slot::Replied() {
  writing_.store(false, std::memory_order_relaxed);
  busy_.store(false, std::memory_order_relaxed);
  progress_.fetch_add(1, std::memory_order_relaxed);
}

void IdleRings::Slot::Normal() {
  if (idle_.load(std::memory_order_relaxed) && SetPolicy(0, SCHED_OTHER) == 0) {
    idle_.store(false, std::memory_order_relaxed);
  }
}

void IdleRings::Slot::Finished(Kind kind, bool replying) {
  busy_.store(replying, std::memory_order_relaxed);
  progress_.fetch_add(1, std::memory_order_relaxed);
  if (kind != Kind::kLatency || idle_.load(std::memory_order_relaxed)) return;
  uint64_t raised;
  {
    std::lock_guard lock(owner_->mutex_);
    if (owner_->released_) return;
    if (normal_) {
      if (NowMs() < normal_until_ms_) return;
      normal_ = false;
    }
    idle_.store(true, std::memory_order_relaxed);
    raised = raised_.load(std::memory_order_relaxed);
  }
  // Outside the lock (see the header). Should Check() or ReleaseAll() have
  // raised the thread meanwhile, raise it again.
  if (SetPolicy(0, SCHED_IDLE) != 0) {
    idle_.store(false, std::memory_order_relaxed);
  } else if (raised_.load() != raised) {
    SetPolicy(0, SCHED_OTHER);
  }
}

bool IdleRings::Available(std::string* why) {
  if (HasCapability(CAP_SYS_NICE)) return true;
  // Without CAP_SYS_NICE, leaving SCHED_IDLE is allowed when RLIMIT_NICE
  // covers the thread's nice value (a limit of 20 - nice).
  rlimit rl{};
  errno = 0;
  const int nice = getpriority(PRIO_PROCESS, 0);
  if (errno == 0 && getrlimit(RLIMIT_NICE, &rl) == 0 &&
      rl.rlim_cur >= static_cast<rlim_t>(20 - nice)) {
    return true;
  }
  *why = "no CAP_SYS_NICE, and RLIMIT_NICE does not allow leaving SCHED_IDLE";
  return false;
}

IdleRings::Slot* IdleRings::Register() {
  // A thread inherits its creator's policy: libfuse starts a worker from a
  // worker, and a ring thread may be added by a ring thread.
  SetPolicy(0, SCHED_OTHER);
  cow_store::UniqueFd stat(open("/proc/thread-self/stat", O_RDONLY | O_CLOEXEC));
  if (!stat) {
    LOG_WARN("worker thread stays SCHED_OTHER: /proc/thread-self/stat: %s", strerror(errno));
    return nullptr;
  }
  std::lock_guard lock(mutex_);
  Slot* slot = nullptr;
  for (auto& s : slots_) {
    if (!s->in_use_) {
      slot = s.get();
      break;
    }
  }
  if (slot == nullptr) {
    slots_.push_back(std::make_unique<Slot>());
    slot = slots_.back().get();
  }
  slot->owner_ = this;
  slot->tid_ = static_cast<pid_t>(syscall(SYS_gettid));
  slot->stat_ = std::move(stat);
  slot->busy_ = false;
  slot->writing_ = false;
  slot->idle_ = false;
  slot->normal_ = false;
  slot->checked_progress_ = slot->progress_.load();
  slot->runs_ = 0;
  slot->in_use_ = true;
  return slot;
}

void IdleRings::Unregister(Slot* slot) {
  if (slot == nullptr) return;
  // Called from a thread-local destructor while the thread exits, which
  // libfuse may cancel at that moment (it cancels every worker at the end):
  // closing the stat descriptor is a cancellation point, and unwinding out
  // of a destructor would terminate the process.
  int cancel_state;
  pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &cancel_state);
  SetPolicy(0, SCHED_OTHER);  // before the lock (see the header)
  {
    std::lock_guard lock(mutex_);
    slot->idle_ = false;
    slot->in_use_ = false;
    slot->stat_.reset();
  }
  pthread_setcancelstate(cancel_state, nullptr);
}

void IdleRings::Raise(Slot& s) {
  s.raised_.fetch_add(1);
  s.idle_.store(false, std::memory_order_relaxed);
  // Registered, hence alive or exiting now (ESRCH): the tid is the thread's
  // own.
  if (int r = SetPolicy(s.tid_, SCHED_OTHER); r != 0 && r != -ESRCH) {
    LOG_WARN("cannot make worker thread %d SCHED_OTHER: %s", static_cast<int>(s.tid_),
             strerror(-r));
  }
}

int IdleRings::Check(bool* watch, int between_ticks) {
  std::lock_guard lock(mutex_);
  *watch = false;
  int turned = 0;
  for (auto& s : slots_) {
    if (!s->in_use_) continue;
    // Runnable now and at the previous call, and no request picked up or
    // finished in between: the thread has been waiting for its CPU for a
    // whole interval (or computing, which no request does for that long). A
    // thread busy with a request but blocked (state D or S: a slow disk, a
    // lock) is not starved and keeps its policy.
    const uint64_t progress = s->progress_.load(std::memory_order_relaxed);
    const bool busy = s->busy_.load(std::memory_order_relaxed);
    const bool runnable = s->idle_.load(std::memory_order_relaxed) &&
                          progress == s->checked_progress_ && Runnable(s->stat_.get());
    s->runs_ = runnable ? s->runs_ + 1 : 0;
    s->checked_progress_ = progress;
    // Inside the write of its reply, it was most likely preempted by the
    // sender it woke (Slot::Writing()).
    const int allowed = s->writing_.load(std::memory_order_relaxed)
                            ? std::max(between_ticks, kWritingChecks)
                        : busy ? 2
                               : std::max(between_ticks, 2);
    const bool stalled = s->runs_ >= allowed;
    // A busy thread of either policy keeps the caller watching: it may
    // become SCHED_IDLE when it finishes.
    if (!stalled && (runnable || busy)) *watch = true;
    if (!stalled) continue;
    s->runs_ = 0;
    s->normal_ = true;
    s->normal_until_ms_ = NowMs() + kNormalMs;
    Raise(*s);
    ++stalls_;
    ++turned;
    LOG_DEBUG("worker thread %d stalled as SCHED_IDLE (%s); SCHED_OTHER for %lld ms",
              static_cast<int>(s->tid_), busy ? "in a request" : "between requests",
              static_cast<long long>(kNormalMs));
  }
  return turned;
}

void IdleRings::RaiseAll() {
  std::lock_guard lock(mutex_);
  for (auto& s : slots_) {
    if (s->in_use_ && s->idle_.load(std::memory_order_relaxed)) Raise(*s);
  }
}

void IdleRings::ReleaseAll() {
  std::lock_guard lock(mutex_);
  released_ = true;
  for (auto& s : slots_) {
    if (s->in_use_) Raise(*s);
  }
}

}  // namespace vssfs::fs
