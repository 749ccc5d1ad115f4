// IdleRings: worker threads pinned to a CPU answer metadata requests as
// SCHED_IDLE threads, so that the task a reply wakes stays on the CPU it sent
// its request from. Used for FUSE-over-io_uring ring threads and for
// /dev/fuse pollers (cpu_pickup.h); "ring thread" below stands for both.
//
// A ring thread serves one CPU's queue and is pinned to that CPU, so a
// request reaches it by a wake-up on the sender's own CPU (a poller: by the
// poll(2) wake-up on that CPU). The reply wakes
// the sender again while the ring thread is still running there, and the
// scheduler then moves the woken task to another CPU if one is idle: with a
// normal ring thread, fio's create loop moved between the two vCPUs of the
// benchmark VM 1.6 times per file. On a VM whose idle vCPUs halt, every such
// wake-up waits for the host to resume the other vCPU. A CPU that runs only
// SCHED_IDLE tasks counts as idle for that choice, so with SCHED_IDLE ring
// threads the woken task stays, preempts the ring thread at once, and the
// whole request/reply exchange stays on one CPU. (Lowering a thread only for
// the commit of each reply was tried: two policy changes per request cost
// ~4 us on this VM, and a thread that had just left SCHED_IDLE was often
// picked before the woken task.)
//
// Only small synchronous requests (metadata: Kind::kLatency) gain from this.
// A SCHED_IDLE thread handling a stream of WRITEs or READs runs only while
// its CPU has nothing else to do, which made 1 GiB sequential writes about
// 10% slower, so a data request (Kind::kData) turns the thread SCHED_OTHER,
// and the next latency request turns it back before its reply: a thread
// changes its policy only where the kind of its requests changes. A thread
// starts SCHED_OTHER (its first REGISTER must not wait for a busy CPU).
//
// The price is starvation: a SCHED_IDLE thread gets CPU time only when no
// normal task wants it, and on this kernel one waited 1.3 s each time
// behind a spinning process. A watchdog calls Check() every few
// milliseconds; a SCHED_IDLE thread that was runnable (state R in
// /proc/thread-self/stat) at two calls in a row and picked up or finished no
// request in between is turned back to SCHED_OTHER for kNormalMs (its CPU is
// busy: no other CPU is idle for a woken task to move to, so SCHED_IDLE
// would gain nothing there). Being runnable is what counts, inside a request
// or outside one: the kernel hands a request to a ring entry by task work
// that runs in the ring thread itself, so a woken thread that has not got
// its CPU shows nothing in its completion queue. A thread busy with a
// request but blocked (state D or S: a slow disk, a lock) is not starved:
// counting it too (until 2026-12-06) turned threads back for a second at a
// time during fio's create job, whose cold creates read the disk, and cost
// a fifth of its creates. Nor is a thread inside the write of its reply
// (Slot::Writing()) until kWritingChecks calls: the sender its reply wakes
// on the same CPU preempts it there, by design, and may compute for
// milliseconds before it blocks again. Two checks turned such a poller back
// about once per fio job, and the job then ran at half speed (its poller
// SCHED_OTHER for a second: no resting, a wake-up of the other CPU per
// request).
//
// Leaving SCHED_IDLE needs CAP_SYS_NICE (or an RLIMIT_NICE that allows the
// thread's nice value); without it IdleRings is off.
//
// Thread-safety: Register/Unregister/Check/ReleaseAll from any thread; a
// Slot's Started/Finished only from the thread that registered it. Lock
// order: mutex_ is a leaf lock (Check logs while holding it); no policy is
// lowered while it is held (a thread preempted as SCHED_IDLE while holding
// it would block the watchdog that is to rescue it).
#ifndef VSSFS_FS_SRC_IDLE_RINGS_H_
#define VSSFS_FS_SRC_IDLE_RINGS_H_

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "vssfs/cow_store/unique_fd.h"

namespace vssfs::fs {

class IdleRings {
 public:
  // How long a thread found stalled stays SCHED_OTHER.
  static constexpr int64_t kNormalMs = 1000;
  // Calls of Check() in a row a thread may be runnable inside the write of
  // its reply before it counts as stalled (see Slot::Writing()).
  static constexpr int kWritingChecks = 25;

  // What a request needs of the thread's policy.
  enum class Kind {
    kLatency,  // small and synchronous (metadata): reply as SCHED_IDLE
    kData,     // READ, WRITE and the like: handled at SCHED_OTHER (see above)
    kNeutral,  // nobody waits for a reply (RELEASE, FORGET): no change
  };

  // One registered thread.
  class Slot {
   public:
    // The thread picked up a request of `kind`; a data request makes it
    // SCHED_OTHER.
    void Started(Kind kind);
    // The thread handled its request (before committing the reply); a
    // latency request makes it SCHED_IDLE, unless it was found stalled less
    // than kNormalMs ago or ReleaseAll() was called. `replying`: the thread
    // still counts as in a request until Replied() (a /dev/fuse worker
    // writes its reply after this call; starved in between, it holds the
    // reply up).
    void Finished(Kind kind, bool replying = false);
    // The reply announced by Finished(kind, true) is being written (called
    // right before the write). Preempted from here on, the thread was most
    // likely preempted by the sender its reply woke, and holds nothing up:
    // Check() gives it kWritingChecks calls, not 2.
    void Writing();
    // The reply announced by Finished(kind, true) is written.
    void Replied();
    // Whether the thread is SCHED_IDLE now (as far as this slot knows).
    bool idle() const { return idle_.load(std::memory_order_relaxed); }
    // Makes the thread SCHED_OTHER now if it is SCHED_IDLE (it is about to
    // start a thread, which would inherit the policy); its next latency
    // request lowers it again.
    void Normal();

   private:
    friend class IdleRings;
    IdleRings* owner_ = nullptr;
    pid_t tid_ = 0;
    cow_store::UniqueFd stat_;  // the thread's /proc/thread-self/stat
    std::atomic<bool> busy_{false};
    std::atomic<bool> writing_{false};  // between Writing() and Replied()
    std::atomic<uint64_t> progress_{0};
    // The thread is (or is about to be) SCHED_IDLE. Set under mutex_;
    // cleared without it (SCHED_OTHER is always safe).
    std::atomic<bool> idle_{false};
    // Bumped under mutex_ whenever someone else makes the thread
    // SCHED_OTHER, so that a lowering that raced with it is undone.
    std::atomic<uint64_t> raised_{0};
    bool normal_ = false;            // found stalled: SCHED_OTHER until... (mutex_)
    int64_t normal_until_ms_ = 0;    // ...this time (mutex_)
    uint64_t checked_progress_ = 0;  // progress_ at the previous Check (mutex_)
    int runs_ = 0;                   // Checks in a row it was runnable, without progress (mutex_)
    bool in_use_ = false;            // (mutex_)
  };

  IdleRings() = default;
  IdleRings(const IdleRings&) = delete;
  IdleRings& operator=(const IdleRings&) = delete;

  // What a request of FUSE opcode `opcode` needs (see Kind).
  static Kind KindOf(uint32_t opcode);

  // Whether this process may switch a thread back from SCHED_IDLE. On false,
  // *why says why not.
  static bool Available(std::string* why);

  // Registers the calling thread and makes it SCHED_OTHER (it may have
  // inherited SCHED_IDLE from the thread that started it) until it finishes
  // a latency request. Returns nullptr if its state cannot be watched (the
  // thread then keeps its policy). The pointer stays valid until Unregister.
  Slot* Register();
  // Makes the calling thread SCHED_OTHER and ends its registration. Not a
  // cancellation point (it runs in thread-local destructors).
  void Unregister(Slot* slot);

  // Turns every SCHED_IDLE thread that was runnable at this call and the
  // previous one, and made no progress in between, back to SCHED_OTHER (for
  // kNormalMs); inside the write of its reply (Slot::Writing()), at
  // kWritingChecks calls in a row. `between_ticks`: how many calls in a row
  // it takes for a thread outside a request (a ring thread's request may be
  // waiting for it, so 2; a /dev/fuse poller woken for a request another one
  // took holds nothing up, so its caller asks for more while requests are
  // being read).
  // Returns how many; sets *watch to whether some thread is busy, or some
  // SCHED_IDLE thread runnable, now (call again soon).
  int Check(bool* watch, int between_ticks = 2);

  // Makes every SCHED_IDLE thread SCHED_OTHER now; each may lower itself
  // again with its next latency request (used before the caller stops
  // calling Check() while no requests come).
  void RaiseAll();

  // Makes every registered thread SCHED_OTHER for good (before shutdown:
  // threads that are to notice a stop flag must not starve).
  void ReleaseAll();

  // Threads turned back so far.
  uint64_t stalls() const { return stalls_.load(); }

 private:
  void Raise(Slot& s);  // SCHED_OTHER now; mutex_ held

  std::mutex mutex_;
  std::vector<std::unique_ptr<Slot>> slots_;  // guarded by mutex_; reused, never shrinks
  bool released_ = false;                     // guarded by mutex_
  std::atomic<uint64_t> stalls_{0};
};

}  // namespace vssfs::fs

#endif  // VSSFS_FS_SRC_IDLE_RINGS_H_
