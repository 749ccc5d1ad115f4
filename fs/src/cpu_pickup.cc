#include "cpu_pickup.h"

#include <fcntl.h>
#include <linux/fuse.h>
#include <poll.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>

#include "log.h"

namespace vssfs::fs {
namespace {

// The calling thread's role, for the CpuPickup it last read through (unit
// tests make several in turn).
struct ThreadState {
  const void* owner = nullptr;
  int index = -1;                   // the slot whose CPU this thread is pinned to, or -1
  bool pinned = true;               // may be pinned to one CPU (a new thread inherits a pin)
  int nonblock_fd = -1;             // the descriptor this thread made non-blocking
  IdleRings* rings = nullptr;       // the owner's, while the thread is registered
  IdleRings::Slot* idle = nullptr;  // its IdleRings registration, if any
  bool open = false;                // a request read and not replied to
  bool replying = false;            // its reply is being written
  bool plain = false;               // it read its request as a plain reader
  uint64_t open_unique = 0;
  IdleRings::Kind open_kind = IdleRings::Kind::kNeutral;
  uint32_t open_opcode = 0;
  int64_t preempted = -1;  // Preemptions() before the reply, if it tells where the sender is

  // A worker that ends (cancelled at the end of the session) leaves
  // IdleRings, which must not raise its thread id later. The owner outlives
  // its workers (libfuse joins them before the session ends).
  ~ThreadState() {
    if (rings != nullptr) rings->Unregister(idle);
  }
};
thread_local ThreadState t_state;

bool PinTo(const std::vector<int>& cpus) {
  cpu_set_t set;
  CPU_ZERO(&set);
  for (int cpu : cpus) CPU_SET(cpu, &set);
  return sched_setaffinity(0, sizeof set, &set) == 0;
}

// Sets or clears O_NONBLOCK on `fd` unless the thread did already.
void SetNonblocking(int fd, bool on) {
  if ((t_state.nonblock_fd == fd) == on) return;
  const int flags = fcntl(fd, F_GETFL);
  // On failure the read that follows reports the descriptor's error.
  if (flags >= 0 && fcntl(fd, F_SETFL, on ? flags | O_NONBLOCK : flags & ~O_NONBLOCK) == 0) {
    t_state.nonblock_fd = on ? fd : -1;
  }
}

// Adds `n` to an eventfd; whether it did (it cannot overflow here: counts
// are taken as fast as they are posted).
bool Post(int fd, uint64_t n) { return ::write(fd, &n, sizeof n) == sizeof n; }

// The request's header in *in, if the read of `n` bytes into `iov` holds
// one; else nullptr.
const fuse_in_header* HeaderOf(const iovec* iov, ssize_t n, fuse_in_header* in) {
  if (static_cast<size_t>(n) < sizeof *in || iov[0].iov_len < sizeof *in) return nullptr;
  std::memcpy(in, iov[0].iov_base, sizeof *in);
  return in;
}

// Drains an eventfd (non-blocking).
void Drain(int fd) {
  uint64_t v;
  while (::read(fd, &v, sizeof v) == sizeof v) {
  }
}

// Involuntary context switches of the calling thread so far, or -1.
int64_t Preemptions() {
  rusage u;
  return getrusage(RUSAGE_THREAD, &u) == 0 ? u.ru_nivcsw : -1;
}

// Whether the sender of a metadata request with `opcode` waits for its
// reply: the reply wakes it (not FORGET, nor what the kernel sends in the
// background for itself: RELEASE, INTERRUPT). Data requests (FSYNC, READ,
// WRITE...) leave their worker SCHED_OTHER, so BeforeReply never asks.
bool SenderWaits(uint32_t opcode) {
  switch (opcode) {
    case FUSE_LOOKUP:
    case FUSE_GETATTR:
    case FUSE_SETATTR:
    case FUSE_READLINK:
    case FUSE_SYMLINK:
    case FUSE_MKNOD:
    case FUSE_MKDIR:
    case FUSE_UNLINK:
    case FUSE_RMDIR:
    case FUSE_RENAME:
    case FUSE_RENAME2:
    case FUSE_LINK:
    case FUSE_OPEN:
    case FUSE_OPENDIR:
    case FUSE_CREATE:
    case FUSE_STATFS:
    case FUSE_ACCESS:
    case FUSE_GETXATTR:
    case FUSE_LISTXATTR:
    case FUSE_SETXATTR:
    case FUSE_REMOVEXATTR:
    case FUSE_FLUSH:
    case FUSE_READDIR:
    case FUSE_READDIRPLUS:
      return true;
    default:
      return false;
  }
}

// Sets a slot back to empty unless released: a poller cancelled in poll(2)
// (end of the session) or failing its read gives its slot up.
class SlotGuard {
 public:
  SlotGuard(std::atomic<int>* state, int empty) : state_(state), empty_(empty) {}
  ~SlotGuard() {
    if (state_ != nullptr) state_->store(empty_);
  }
  SlotGuard(const SlotGuard&) = delete;
  SlotGuard& operator=(const SlotGuard&) = delete;
  void Release() { state_ = nullptr; }
  // Gives the slot up now.
  void GiveUp() {
    if (state_ != nullptr) state_->store(empty_);
    state_ = nullptr;
  }

 private:
  std::atomic<int>* state_;
  int empty_;
};

// Counts a spare or a plain reader while it waits (cancellation included).
class SpareCount {
 public:
  explicit SpareCount(std::atomic<int>* n) : n_(n) { n_->fetch_add(1); }
  ~SpareCount() { n_->fetch_sub(1); }
  SpareCount(const SpareCount&) = delete;
  SpareCount& operator=(const SpareCount&) = delete;

 private:
  std::atomic<int>* n_;
};

}  // namespace

std::unique_ptr<CpuPickup> CpuPickup::Create(int session_fd, bool sched_idle, std::string* why,
                                             std::string* idle_why) {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) != 0) {
    *why = std::string("cannot read the CPU affinity: ") + strerror(errno);
    return nullptr;
  }
  std::vector<int> cpus;
  for (int c = 0; c < CPU_SETSIZE; ++c) {
    if (CPU_ISSET(c, &set)) cpus.push_back(c);
  }
  if (cpus.size() < 2) {
    *why = "the process may run on one CPU only";
    return nullptr;
  }
  cow_store::UniqueFd spare_fd(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK | EFD_SEMAPHORE));
  cow_store::UniqueFd wake_fd(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  cow_store::UniqueFd mode_fd(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  std::vector<cow_store::UniqueFd> rest_fds;
  bool made = spare_fd && wake_fd && mode_fd;
  for (size_t i = 0; made && i < cpus.size(); ++i) {
    rest_fds.emplace_back(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    made = static_cast<bool>(rest_fds.back());
  }
  if (!made) {
    *why = std::string("eventfd: ") + strerror(errno);
    return nullptr;
  }
  std::unique_ptr<IdleRings> idle;
  cow_store::UniqueFd queue_fd;
  if (sched_idle && IdleRings::Available(idle_why)) {
    queue_fd.reset(fcntl(session_fd, F_DUPFD_CLOEXEC, 0));
    if (!queue_fd) {
      *why = std::string("cannot duplicate the /dev/fuse descriptor: ") + strerror(errno);
      return nullptr;
    }
    idle = std::make_unique<IdleRings>();
  }
  return std::unique_ptr<CpuPickup>(new CpuPickup(cpus, std::move(rest_fds), std::move(spare_fd),
                                                  std::move(wake_fd), std::move(mode_fd),
                                                  std::move(queue_fd), std::move(idle)));
}

void CpuPickup::StartWatchdog() {
  if (!idle_) return;
  try {
    watchdog_ = std::thread([this] { Watch(); });
    watching_.store(true);
  } catch (const std::exception& e) {
    // Without the rescue SCHED_IDLE threads could starve: stay SCHED_OTHER.
    LOG_WARN("/dev/fuse workers stay SCHED_OTHER: cannot start their watchdog thread: %s",
             e.what());
  }
}

CpuPickup::CpuPickup(const std::vector<int>& cpus, std::vector<cow_store::UniqueFd> rest_fds,
                     cow_store::UniqueFd spare_fd, cow_store::UniqueFd wake_fd,
                     cow_store::UniqueFd mode_fd, cow_store::UniqueFd queue_fd,
                     std::unique_ptr<IdleRings> idle)
    : all_(cpus),
      alive_(static_cast<int>(cpus.size())),
      spare_fd_(std::move(spare_fd)),
      wake_fd_(std::move(wake_fd)),
      queue_fd_(std::move(queue_fd)),
      idle_(std::move(idle)),
      mode_fd_(std::move(mode_fd)) {
  index_of_.assign(static_cast<size_t>(cpus.back()) + 1, -1);
  for (int cpu : cpus) {
    index_of_[static_cast<size_t>(cpu)] = static_cast<int>(slots_.size());
    slots_.push_back(std::make_unique<Slot>());
    slots_.back()->cpu = cpu;
    slots_.back()->rest_fd = std::move(rest_fds[slots_.size() - 1]);
  }
}

CpuPickup::~CpuPickup() { Stop(); }

void CpuPickup::Stop() {
  if (stop_.exchange(true)) return;
  if (watchdog_.joinable()) {
    Post(wake_fd_.get(), 1);
    watchdog_.join();
  }
  // The duplicate would keep the FUSE connection open: requests still
  // queued (dirty pages a helper writes back through its clone of the
  // mount) would wait for the daemon, and the daemon for them.
  queue_fd_.reset();
}

void CpuPickup::Enter() {
  if (t_state.owner != this) {
    // Started by the first worker, not at Create(): the daemon may fork into
    // the background in between, and threads do not survive fork().
    std::call_once(start_once_, [this] { StartWatchdog(); });
    // (A thread that read through another CpuPickup before, in tests,
    // stays registered there.)
    t_state.owner = this;
    t_state.index = -1;
    t_state.pinned = true;
    t_state.nonblock_fd = -1;
    t_state.open = false;
    t_state.replying = false;
    t_state.rings = nullptr;
    t_state.idle = nullptr;
    if (watching_.load()) {
      t_state.idle = idle_->Register();
      if (t_state.idle != nullptr) t_state.rings = idle_.get();
    }
  }
  if (t_state.idle != nullptr && t_state.open) {
    // FORGET, BATCH_FORGET and INTERRUPT get no reply.
    t_state.idle->Finished(t_state.open_kind);
  }
  if (t_state.idle != nullptr && t_state.replying) t_state.idle->Replied();
  t_state.open = false;
  t_state.replying = false;
}

CpuPickup::Slot* CpuPickup::Claim() {
  if (t_state.index >= 0) {
    Slot& own = *slots_[static_cast<size_t>(t_state.index)];
    for (int from : {kServing, kEmpty}) {
      if (own.state.compare_exchange_strong(from, kPolling)) return &own;
    }
  }
  // Look from the CPU the thread runs on, so that it moves only if that one
  // has a poller already.
  const int here = sched_getcpu();
  size_t start = 0;
  if (here >= 0 && static_cast<size_t>(here) < index_of_.size() && index_of_[here] >= 0) {
    start = static_cast<size_t>(index_of_[here]);
  }
  for (size_t k = 0; k < slots_.size(); ++k) {
    const size_t i = (start + k) % slots_.size();
    if (static_cast<int>(i) == t_state.index) continue;
    Slot& s = *slots_[i];
    int from = s.state.load();
    if ((from != kEmpty && from != kServing) || !s.state.compare_exchange_strong(from, kPolling)) {
      continue;
    }
    t_state.pinned = true;
    if (!PinTo({s.cpu})) {
      // Offline, or out of the cpuset now: nobody tries it again. When no
      // slot is left, the spares are woken to read as plain workers.
      s.state.store(kDead);
      if (alive_.fetch_sub(1) == 1) Post(spare_fd_.get(), 1 << 20);
      continue;
    }
    t_state.index = static_cast<int>(i);
    return &s;
  }
  return nullptr;
}

CpuPickup::Slot* CpuPickup::ClaimAsSpare(bool* interrupted) {
  // Counted first, then a slot is looked for: a poller that takes a request
  // stores kServing first, then looks at spares_ (KeepOnePolling), so one of
  // the two sees the other (both sequentially consistent).
  SpareCount counted(&spares_);
  for (;;) {
    if (plain()) return nullptr;
    if (Slot* s = Claim()) return s;
    if (alive_.load() == 0) return nullptr;
    pollfd p{spare_fd_.get(), POLLIN, 0};
    if (::poll(&p, 1, -1) < 0) {
      // A signal (SIGTERM): libfuse checks whether the session ended.
      if (errno == EINTR) {
        *interrupted = true;
        return nullptr;
      }
      ::usleep(1000);  // Cannot wait (ENOMEM): try again shortly, not in a spin.
      continue;
    }
    // A semaphore eventfd gives one count per read; another spare may have
    // taken it (EAGAIN). Either way look for a slot again.
    uint64_t one;
    if (::read(spare_fd_.get(), &one, sizeof one) < 0 && errno != EAGAIN) ::usleep(1000);
  }
}

void CpuPickup::KeepOnePolling(const fuse_in_header* in) {
  if (plain_waiting_.load() > 0) return;
  bool resting = false;
  for (const auto& s : slots_) {
    const int state = s->state.load();
    if (state == kPolling) return;
    if (state == kResting) resting = true;
  }
  if (resting) {
    // Calling a resting poller back for every request would cost what its
    // rest saves: the watchdog calls it back if a request waits unread (see
    // the header). A data request (READ, WRITE, FSYNC...) may keep this
    // worker long, or come in a burst (writeback): those call it back now.
    if (in != nullptr && IdleRings::KindOf(in->opcode) == IdleRings::Kind::kData) {
      WakeResting();
    }
    return;
  }
  if (spares_.load() == 0) {
    // libfuse starts a worker from this thread (see the header), which
    // inherits its policy: not SCHED_IDLE, which nobody would watch.
    if (t_state.idle != nullptr) t_state.idle->Normal();
    return;
  }
  if (Post(spare_fd_.get(), 1)) spares_sent_.fetch_add(1, std::memory_order_relaxed);
}

void CpuPickup::RestRemote() {
  auto active = [this](const Slot* except) {
    return std::any_of(slots_.begin(), slots_.end(), [except](const auto& o) {
      const int state = o->state.load();
      return o.get() != except && (state == kPolling || state == kServing);
    });
  };
  const uint64_t now = taken_.load(std::memory_order_relaxed);
  for (const auto& s : slots_) {
    // (A local reply or a call-back after `now` was read leaves last_local
    // ahead of it: not stale.)
    const uint64_t last = s->last_local.load(std::memory_order_relaxed);
    if (s->state.load() != kPolling || last >= now || now - last <= kRestAfter ||
        !active(s.get())) {
      continue;
    }
    int polling = kPolling;
    if (!s->state.compare_exchange_strong(polling, kResting)) continue;
    if (!active(s.get())) {
      // Another thread rested the one counted on meanwhile: this one stays.
      int resting = kResting;
      s->state.compare_exchange_strong(resting, kPolling);
      continue;
    }
    rests_.fetch_add(1, std::memory_order_relaxed);
    Post(s->rest_fd.get(), 1);
  }
}

void CpuPickup::WakeResting() {
  for (const auto& s : slots_) {
    if (s->state.load() != kResting) continue;
    // A fresh window: not sent to rest again before it could take requests.
    s->last_local.store(taken_.load(std::memory_order_relaxed), std::memory_order_relaxed);
    int resting = kResting;
    if (s->state.compare_exchange_strong(resting, kPolling)) {
      rest_wakes_.fetch_add(1, std::memory_order_relaxed);
      Post(s->rest_fd.get(), 1);
    }
  }
}

int CpuPickup::resting() const {
  return static_cast<int>(std::count_if(slots_.begin(), slots_.end(),
                                        [](const auto& s) { return s->state.load() == kResting; }));
}

void CpuPickup::Took(const fuse_in_header* in) {
  // Sequentially consistent, then asleep_ is read: see Watch().
  taken_.fetch_add(1);
  const int here = sched_getcpu();
  if (here >= 0 && static_cast<size_t>(here) < index_of_.size() && index_of_[here] >= 0) {
    slots_[static_cast<size_t>(index_of_[here])]->read.fetch_add(1, std::memory_order_relaxed);
  }
  if (in != nullptr && in->opcode != FUSE_READ) Vote(-1);
  t_state.open_opcode = in != nullptr ? in->opcode : 0;
  if (t_state.idle == nullptr || in == nullptr) return;
  t_state.open = true;
  t_state.open_unique = in->unique;
  t_state.open_kind = IdleRings::KindOf(in->opcode);
  t_state.idle->Started(t_state.open_kind);
  if (asleep_.load() && asleep_.exchange(false)) Post(wake_fd_.get(), 1);
}

void CpuPickup::BeforeReply(uint64_t unique) {
  if (t_state.owner != this || !t_state.open || t_state.open_unique != unique) return;
  t_state.open = false;
  if (t_state.idle == nullptr) return;
  // A plain reader stays SCHED_OTHER: it is not pinned where its sender is.
  t_state.idle->Finished(t_state.plain ? IdleRings::Kind::kNeutral : t_state.open_kind,
                         /*replying=*/true);
  // A poller's reply as SCHED_IDLE to a sender waiting on the same CPU is
  // preempted by the sender it wakes: whether it is tells where the sender
  // runs (AfterReply). Only for pollers, while the watchdog runs.
  t_state.preempted = t_state.index >= 0 && !t_state.plain && t_state.idle->idle() &&
                              SenderWaits(t_state.open_opcode)
                          ? Preemptions()
                          : -1;
  t_state.replying = true;
  // Last: preempted before this (as it turned SCHED_IDLE above, say), the
  // thread holds its reply up and is rescued within two checks. Only where
  // a sender waits on this CPU is a preemption inside the write expected
  // (preempted while the reply is still being copied, say by a long
  // READDIRPLUS, a thread is rescued later than it could be).
  if (t_state.preempted >= 0) t_state.idle->Writing();
}

void CpuPickup::AfterReply() {
  if (t_state.owner != this || !t_state.replying) return;
  t_state.replying = false;
  const int64_t before = t_state.preempted;
  t_state.preempted = -1;
  const int64_t after = before >= 0 ? Preemptions() : -1;
  if (t_state.idle != nullptr) t_state.idle->Replied();
  if (before >= 0 && after >= 0 && t_state.index >= 0) {
    Slot& slot = *slots_[static_cast<size_t>(t_state.index)];
    if (after > before) {
      // The sender ran here: this slot's poller is where it should be.
      slot.last_local.store(taken_.load(std::memory_order_relaxed), std::memory_order_relaxed);
      slot.remote_run.store(0, std::memory_order_relaxed);
      RestRemote();
    } else if (after == before &&
               slot.remote_run.fetch_add(1, std::memory_order_relaxed) + 1 >= kRemoteRun) {
      // Its senders run on another CPU: if that one's poller rests, it
      // should not (which one is not known: all are called back).
      slot.remote_run.store(0, std::memory_order_relaxed);
      WakeResting();
    }
  }
}

void CpuPickup::Unpin() {
  t_state.pinned = !PinTo(all_);
  t_state.index = -1;
}

ssize_t CpuPickup::ReadPlain(int fd, const iovec* iov, int count) {
  if (t_state.pinned) Unpin();  // (a thread with a slot is pinned too)
  if (t_state.idle != nullptr) t_state.idle->Normal();
  t_state.plain = true;
  SetNonblocking(fd, false);
  ssize_t n;
  {
    // Counted while it waits, for KeepOnePolling (sequentially consistent,
    // like spares_).
    SpareCount waiting(&plain_waiting_);
    n = ::readv(fd, iov, count);
  }
  if (n <= 0) return n;
  fuse_in_header in;
  const fuse_in_header* header = HeaderOf(iov, n, &in);
  Took(header);
  KeepOnePolling(header);
  return n;
}

void CpuPickup::NoteRead(bool blocked) { Vote(blocked ? 1 : -1); }

void CpuPickup::Vote(int delta) {
  int mode = mode_.load(std::memory_order_relaxed);
  int next;
  do {
    const int score = std::clamp((mode & ~kPlainBit) + delta, 0, kScoreMax);
    bool plain = (mode & kPlainBit) != 0;
    if (score >= kPlainAt) plain = true;
    if (score <= kPickupAt) plain = false;
    next = score | (plain ? kPlainBit : 0);
    if (next == mode) return;  // the usual case: at a bound, no switch
  } while (!mode_.compare_exchange_weak(mode, next));
  if (((mode ^ next) & kPlainBit) == 0) return;
  switches_.fetch_add(1, std::memory_order_relaxed);
  if ((next & kPlainBit) != 0) {
    // Wakes the pollers, which then read plainly (spares see it when they
    // are next sent). Posted after the switch: a poller that finds the
    // eventfd readable and plain() false drains it (Read).
    Post(mode_fd_.get(), 1);
  } else {
    Drain(mode_fd_.get());
  }
}

ssize_t CpuPickup::Read(int fd, const iovec* iov, int count) {
  Enter();
  if (plain()) return ReadPlain(fd, iov, count);
  Slot* slot = Claim();
  if (slot == nullptr) {
    bool interrupted = false;
    slot = ClaimAsSpare(&interrupted);
    if (interrupted) {
      errno = EINTR;
      return -1;
    }
    // No CPU left to pin to, or workers read plainly now.
    if (slot == nullptr) return ReadPlain(fd, iov, count);
  }
  t_state.plain = false;
  SlotGuard guard(&slot->state, kEmpty);
  SetNonblocking(fd, true);
  ssize_t n;
  // While the slot rests (RestRemote set kResting and posted rest_fd), the
  // poller leaves /dev/fuse out of its poll(2) until rest_end. The wait is
  // this same poll(2): a cancellation (libfuse ends idle workers so) then
  // unwinds from here, as when polling.
  std::chrono::steady_clock::time_point rest_end{};
  for (;;) {
    n = ::readv(fd, iov, count);
    if (n >= 0 || errno != EAGAIN) break;
    if (plain()) {
      guard.GiveUp();
      return ReadPlain(fd, iov, count);
    }
    int timeout = -1;
    if (slot->state.load() != kResting) {
      rest_end = {};
    } else {
      const auto now = std::chrono::steady_clock::now();
      if (rest_end == std::chrono::steady_clock::time_point{}) {
        rest_end = now + std::chrono::milliseconds(kRestMs);
      }
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(rest_end - now);
      if (left.count() <= 0) {
        int resting = kResting;  // The time is up: poll again.
        slot->state.compare_exchange_strong(resting, kPolling);
        rest_end = {};
        continue;
      }
      timeout = static_cast<int>(left.count()) + 1;
    }
    // (poll(2) skips a negative descriptor.)
    pollfd p[3] = {{timeout < 0 ? fd : -1, POLLIN, 0},
                   {mode_fd_.get(), POLLIN, 0},
                   {slot->rest_fd.get(), POLLIN, 0}};
    const int ready = ::poll(p, 3, timeout);
    if (ready > 0 && (p[1].revents & POLLIN) != 0 && !plain()) {
      // Posted for a switch to plain that was switched back since.
      Drain(mode_fd_.get());
    }
    // Told to rest or called back: the slot's state says which.
    if (ready > 0 && (p[2].revents & POLLIN) != 0) Drain(slot->rest_fd.get());
    if (ready < 0) {
      // A signal (SIGTERM): returned, so that libfuse checks whether the
      // session ended. Anything else (ENOMEM): wait a little, try again.
      if (errno == EINTR) {
        n = -1;
        break;
      }
      ::usleep(1000);
    }
  }
  if (n <= 0) return n;  // The guard gives the slot up.
  fuse_in_header in;
  const fuse_in_header* header = HeaderOf(iov, n, &in);
  if (header != nullptr && header->opcode == FUSE_INIT) {
    // The threads vssfs starts while it handles INIT (the inode pruner,
    // io_uring's) inherit this one's CPU and policy: neither pinned nor
    // SCHED_IDLE, then. It gives its slot up and serves INIT unpinned, and
    // INIT is counted but not booked as a SCHED_IDLE request.
    Unpin();
    if (t_state.idle != nullptr) t_state.idle->Normal();
    Took(nullptr);
    return n;  // The guard gives the slot up.
  }
  guard.Release();
  slot->state.store(kServing);
  Took(header);
  KeepOnePolling(header);
  return n;
}

void CpuPickup::Watch() {
  // Started from a worker: neither its pin nor its policy.
  PinTo(all_);
  sched_param param{};
  sched_setscheduler(0, SCHED_OTHER, &param);
  uint64_t seen = taken_.load();
  int quiet_ms = 0;
  while (!stop_.load()) {
    pollfd p{wake_fd_.get(), POLLIN, 0};
    ::poll(&p, 1, kCheckMs);
    Drain(wake_fd_.get());
    if (stop_.load()) break;
    // A poller starved between requests usually holds nothing up (woken
    // for a request another one took): it is rescued at once only when
    // requests wait and none was read since the previous check, else after
    // kSlowTicks (it may have been preempted between reading a request and
    // saying so).
    const uint64_t now = taken_.load();
    pollfd q{queue_fd_.get(), POLLIN, 0};
    const bool waiting = ::poll(&q, 1, 0) > 0;
    bool watch = false;
    idle_->Check(&watch, waiting && now == seen ? 2 : kSlowTicks);
    if (waiting && now == seen) {
      // A request waits and none was read since the last check: resting
      // pollers take it (the only poller may wait in its handler for it).
      WakeResting();
    } else {
      RestRemote();
    }
    if (now != seen) {
      seen = now;
      quiet_ms = 0;
      continue;
    }
    quiet_ms += kCheckMs;
    if (watch || quiet_ms < kQuietMs) continue;
    // Quiet: nobody is left SCHED_IDLE to starve, and the next request
    // read wakes the watchdog. A reader bumps taken_ before it looks at
    // asleep_, the watchdog sets asleep_ before it looks at taken_: one
    // of them sees the other.
    idle_->RaiseAll();
    // Nobody would call resting pollers back while the watchdog sleeps.
    WakeResting();
    asleep_.store(true);
    if (taken_.load() == seen && !stop_.load()) {
      p = pollfd{wake_fd_.get(), POLLIN, 0};
      ::poll(&p, 1, -1);
      Drain(wake_fd_.get());
    }
    asleep_.store(false);
    quiet_ms = 0;
  }
}

std::vector<uint64_t> CpuPickup::ReadPerCpu() const {
  std::vector<uint64_t> out(index_of_.size(), 0);
  for (const auto& s : slots_) out[static_cast<size_t>(s->cpu)] = s->read.load();
  return out;
}

}  // namespace vssfs::fs
