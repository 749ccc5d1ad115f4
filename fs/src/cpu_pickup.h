// CpuPickup: /dev/fuse worker threads take each request on the CPU that sent
// it.
//
// The kernel keeps one queue of /dev/fuse requests per connection and hands
// a new request to the worker that has waited longest in read(2). The
// scheduler usually runs that worker on another CPU than the sender's (the
// sender's is busy until the sender blocks for its reply), so every request
// and every reply is a wake-up across CPUs; on a VM whose idle vCPUs halt,
// each one waits for the host to resume a vCPU (docs/LIVE_PATH.md, "Where
// metadata time goes").
//
// CpuPickup gives each CPU one "poller": an idle worker pinned to that CPU
// that waits in poll(2) on its own descriptor rather than in read(2). The
// kernel wakes every poll(2) waiter for a new request, and the poller of the
// sender's CPU is woken there without an inter-processor wake-up: it runs as
// soon as the sender blocks for its reply, and takes the request with a
// non-blocking read(2). Pollers of other CPUs wake later and usually find
// the queue empty. The reply then wakes the sender on the CPU it is on (FUSE
// over io_uring gets the same from its per-CPU queues; channel.h). The price
// is one wake-up per poller per request: at most one poller per CPU, and
// never more than the worker threads (-o threads).
//
// SCHED_IDLE. With an IdleRings (idle_rings.h), pollers answer metadata
// requests as SCHED_IDLE threads, so that the woken sender is not moved to
// another CPU (in fio's create job this took creates from about 4,500 to
// 6,000 per second, and unlinks from 4,000 to 5,600). A watchdog thread calls
// IdleRings::Check every kCheckMs to rescue starved threads; after kQuietMs
// without a request it makes every thread SCHED_OTHER and sleeps until the
// next request is read.
//
// Spares. Idle workers beyond one per CPU wait on an eventfd, not on
// /dev/fuse (a read(2) waiter is woken for every request too, which cost a
// fifth of a stat's time here). A poller that takes a request leaves its
// slot "serving" and takes it back when it returns. If no slot has a poller
// waiting after that, it sends a spare, which claims a serving slot (pinning
// itself to that CPU) and polls: a worker waits for the next request whenever
// any is left (-o threads), as with plain read(2) workers, so a handler that
// waits for another request (a notification that makes the kernel write
// dirty pages back) cannot stall the daemon (while a poller rests, the
// watchdog calls it back for that instead; see Resting). With no spare left, libfuse
// starts another worker, since none is then waiting in its receive call.
//
// Reads from the disk. A request whose handler waits for the disk gains
// little from being taken on the sender's CPU, and pays for the other
// pollers' wake-ups; the pin also keeps the worker off the CPU that takes the
// disk's interrupt. Cold 4 KiB random reads cost 96-102 us each this way
// against 79-83 us with plain readers (native 67-70 us; docs/LIVE_PATH.md,
// item 11). So READ handlers report whether they waited for the disk
// (NoteRead). A score, +1 for such a READ and -1 for any other request
// except READs not reported, kept within [0, kScoreMax], switches the
// workers to plain reading at kPlainAt and back at kPickupAt. Plain readers
// wait in a blocking read(2), unpinned and SCHED_OTHER, and the kernel wakes
// one of them per request. Pollers are woken through an eventfd when the
// switch is made; plain readers become pollers again after their next
// request. A plain reader that takes a request and leaves neither a poller
// nor another plain reader waiting sends a spare, like a poller.
//
// Resting. With one sender (a single-threaded client, fio), the pollers of
// the other CPUs are woken for every request and usually find it taken; on a
// VM each such wake-up makes the sender's CPU interrupt a halted vCPU, about
// 10 us per request here (an unlink of a cached name, 3 requests: 50-55 us
// with both pollers, 19 us with the other one kept off /dev/fuse), and the
// few they win are served away from their sender. So pollers learn where
// their senders are, from their replies: a poller writes the reply to a
// waiting sender's metadata request as SCHED_IDLE, and if the sender waits
// on the poller's CPU, the wake-up preempts the poller at once (one more
// involuntary context switch, getrusage(2)); if it waits elsewhere, it does
// not. A poller whose slot had no such local reply in the last kRestAfter
// requests read is sent to rest by a poller that had one (or by the
// watchdog), unless no other slot has a poller: it leaves /dev/fuse and
// waits on its slot's eventfd, for kRestMs at most. Resting pollers poll
// again as soon as
//   - a poller replies to senders on other CPUs kRemoteRun times in a row
//     (the scheduler moved the client; which CPU it is on is not known, so
//     all are called back and the ones without local replies rest again);
//   - the watchdog sees requests wait and none read since its last check (a
//     handler that waits for another request while the only poller serves
//     it);
//   - a worker takes a data request (READ, WRITE, FSYNC...: it may keep
//     the worker long, or come in a burst, as writeback does);
//   - the watchdog goes to sleep (no request for kQuietMs);
//   - workers switch to plain reads (they all read plainly then).
// While a poller rests, no spare is sent (see Spares): a request that comes
// while the only poller serves another waits for it, or for the watchdog's
// next check (kCheckMs) if that one takes long.
// (The sender's PID is in each request, but reading /proc/PID/stat for its
// CPU can block: a sender in execve(2), closing its files, holds a lock
// that read needs while it waits for its FLUSH.)
//
// Requirements: each worker reads from a descriptor of its own
// (-o clone_fd, the default), because a poller makes its descriptor
// non-blocking. The caller gives workers that read the session's shared
// descriptor plain blocking reads instead.
//
// Thread-safety: Read() and BeforeReply() are called concurrently by the
// worker threads; a worker's role, CPU and open request are thread-local;
// the slots and counters are atomics, sequentially consistent where two
// threads must see each other (a poller and a spare, a reader and the
// sleeping watchdog; see the .cc). No locks of its own (IdleRings has one).
#ifndef VSSFS_FS_SRC_CPU_PICKUP_H_
#define VSSFS_FS_SRC_CPU_PICKUP_H_

#include <sys/types.h>
#include <sys/uio.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "idle_rings.h"
#include "vssfs/cow_store/unique_fd.h"

struct fuse_in_header;

namespace vssfs::fs {

class CpuPickup {
 public:
  // Watchdog interval while requests come (SCHED_IDLE only).
  static constexpr int kCheckMs = 2;
  // No request for this long: every thread SCHED_OTHER, the watchdog sleeps.
  static constexpr int kQuietMs = 200;
  // Checks in a row a SCHED_IDLE worker may stay runnable outside a request
  // while requests are being read (or none waits) before it is rescued.
  static constexpr int kSlowTicks = 25;
  // The plain-reader score: +1 for a READ that waited for the disk, -1 for
  // any other request, kept within [0, kScoreMax]; workers read plainly from
  // kPlainAt up, and poll again from kPickupAt down.
  static constexpr int kScoreMax = 32;
  static constexpr int kPlainAt = 24;
  static constexpr int kPickupAt = 8;
  // Resting (see above): a poller rests after kRestAfter requests (read by
  // any worker) without a local reply, for kRestMs at most.
  static constexpr uint64_t kRestAfter = 16;
  // Replies in a row to senders elsewhere that call resting pollers back
  // (one may be a local sender that did not preempt: a false alarm).
  static constexpr int kRemoteRun = 4;
  static constexpr int kRestMs = 1000;

  // One poller slot per CPU in the process's affinity mask at the time of
  // the call; `sched_idle`: whether pollers answer metadata requests as
  // SCHED_IDLE (off if IdleRings::Available says no; *idle_why then says
  // why). Returns nullptr, with *why set, when that mask has fewer than two
  // CPUs (nothing to gain) or an eventfd or the watchdog cannot be made.
  // `session_fd`: the session's /dev/fuse descriptor (duplicated, to see
  // whether requests wait).
  static std::unique_ptr<CpuPickup> Create(int session_fd, bool sched_idle, std::string* why,
                                           std::string* idle_why);

  ~CpuPickup();  // Stop()
  CpuPickup(const CpuPickup&) = delete;
  CpuPickup& operator=(const CpuPickup&) = delete;

  // Stops the watchdog (after the workers are gone). Idempotent.
  void Stop();

  // Reads the next request from `fd` into `iov` as readv(2) would, as this
  // CPU's poller, as a spare until a slot needs a poller, or as a plain
  // reader (plain()). `fd` must be the calling thread's own descriptor (see
  // above); the call may pin or unpin the thread, change its scheduling
  // policy, and set or clear `fd`'s O_NONBLOCK flag.
  // iov[0] must hold at least the request's header. Returns the byte count,
  // or -1 with errno set (EINTR, ENODEV once unmounted, ...), never EAGAIN.
  // A cancellation point (libfuse cancels idle workers at the end).
  ssize_t Read(int fd, const iovec* iov, int count);

  // Called on a worker thread before it writes the reply with FUSE unique
  // `unique` (a metadata request's reply is written as SCHED_IDLE), and
  // after the write (which tells a poller where its sender is; see
  // resting).
  void BeforeReply(uint64_t unique);
  void AfterReply();

  // Called on a worker thread that handles a READ request (between Read()
  // and BeforeReply()): `blocked` when its data was not all in the page
  // cache and the read waited for the disk. Other requests need no call.
  void NoteRead(bool blocked);
  // Whether workers read as plain blocking readers now (see above).
  bool plain() const { return (mode_.load() & kPlainBit) != 0; }
  // Workers waiting in a plain read now.
  int plain_waiting() const { return plain_waiting_.load(); }
  // Times workers switched between polling and plain reading.
  uint64_t switches() const { return switches_.load(std::memory_order_relaxed); }

  // CPUs with a poller slot.
  size_t cpus() const { return slots_.size(); }
  // Whether pollers use SCHED_IDLE (if their watchdog thread starts, at the
  // first Read()).
  bool sched_idle() const { return idle_ != nullptr; }
  // Requests read on each CPU so far (by sched_getcpu() right after the
  // read; index = CPU number, sized to the highest CPU with a slot + 1).
  std::vector<uint64_t> ReadPerCpu() const;
  // Requests read so far.
  uint64_t taken() const { return taken_.load(std::memory_order_relaxed); }
  // Workers waiting as spares now.
  int spares_waiting() const { return spares_.load(); }
  // Times a poller sent a spare (no other poller was waiting).
  uint64_t spares_sent() const { return spares_sent_.load(std::memory_order_relaxed); }
  // Threads the watchdog found starved as SCHED_IDLE.
  uint64_t stalls() const { return idle_ ? idle_->stalls() : 0; }
  // Pollers resting now; times pollers were sent to rest; times resting
  // pollers were called back before kRestMs (see above).
  int resting() const;
  uint64_t rests() const { return rests_.load(std::memory_order_relaxed); }
  uint64_t rest_wakes() const { return rest_wakes_.load(std::memory_order_relaxed); }

 private:
  enum State : int {
    kEmpty = 0,    // no poller: claimable
    kPolling = 1,  // a poller waits for a request
    kServing = 2,  // its poller is handling a request: claimable
    kDead = 3,     // the CPU cannot be pinned to (offline, out of the cpuset)
    kResting = 4,  // its poller rests or is told to (see above): not claimable
  };
  struct Slot {
    int cpu = 0;
    std::atomic<int> state{kEmpty};
    std::atomic<uint64_t> read{0};  // requests read while running on this CPU
    // taken_ at its pollers' last reply to a sender on this CPU, or when its
    // poller was last called back from a rest.
    std::atomic<uint64_t> last_local{0};
    // Replies in a row of its pollers to senders on other CPUs.
    std::atomic<int> remote_run{0};
    cow_store::UniqueFd rest_fd;  // eventfd: tells its poller to rest, or to stop resting
  };

  CpuPickup(const std::vector<int>& cpus, std::vector<cow_store::UniqueFd> rest_fds,
            cow_store::UniqueFd spare_fd, cow_store::UniqueFd wake_fd, cow_store::UniqueFd mode_fd,
            cow_store::UniqueFd queue_fd, std::unique_ptr<IdleRings> idle);

  // Makes the calling thread a slot's poller (pinned to its CPU), preferring
  // its own slot, then the CPU it runs on. nullptr when none is claimable.
  Slot* Claim();
  // Waits as a spare until a slot can be claimed; returns it, or nullptr
  // when a signal interrupts the wait (*interrupted set), no slot is left
  // (every CPU gone) or workers read plainly (plain()).
  Slot* ClaimAsSpare(bool* interrupted);
  // Lets the calling thread run on every CPU of all_, without a slot.
  void Unpin();
  // A plain blocking read, unpinned and SCHED_OTHER (no slot left, or
  // plain()).
  ssize_t ReadPlain(int fd, const iovec* iov, int count);
  // Adds `delta` to the score within [0, kScoreMax] and switches between
  // polling and plain reading by it (one compare-and-swap of mode_).
  void Vote(int delta);
  // Starts the watchdog (with SCHED_IDLE only); on failure the threads stay
  // SCHED_OTHER.
  void StartWatchdog();
  // After a worker took a request (`in`: its header, if known): sends a
  // spare if no slot has a poller waiting and no plain reader waits; if a
  // slot's poller rests instead, calls it back after a data request.
  void KeepOnePolling(const fuse_in_header* in);
  // Sends to rest the pollers whose slots had no local reply in the last
  // kRestAfter requests, while another slot has a poller.
  void RestRemote();
  // Calls back every resting poller.
  void WakeResting();
  // Books a request read by the calling thread: counts it and, given its
  // header, opens it for IdleRings (and wakes the sleeping watchdog).
  void Took(const fuse_in_header* in);
  // Registers the calling thread on its first call; closes the books on a
  // request that got no reply (FORGET).
  void Enter();
  void Watch();

  std::vector<std::unique_ptr<Slot>> slots_;
  std::vector<int> index_of_;          // CPU number -> index in slots_, or -1
  std::vector<int> all_;               // the CPUs at Create(), to unpin
  std::atomic<int> alive_;             // slots not kDead
  cow_store::UniqueFd spare_fd_;       // eventfd (semaphore): one count per spare sent
  cow_store::UniqueFd wake_fd_;        // eventfd: wakes the watchdog
  cow_store::UniqueFd queue_fd_;       // /dev/fuse (a duplicate), polled by the watchdog
  std::unique_ptr<IdleRings> idle_;    // null: no SCHED_IDLE
  std::atomic<int> spares_{0};         // workers waiting as spares
  std::atomic<int> plain_waiting_{0};  // workers waiting in a plain read
  // The score (see kScoreMax) in the low bits, and kPlainBit while workers
  // read plainly: one word, so that the switch follows the score exactly.
  static constexpr int kPlainBit = 1 << 8;
  std::atomic<int> mode_{0};
  cow_store::UniqueFd mode_fd_;  // eventfd: readable after a switch to plain, for pollers
  std::atomic<uint64_t> switches_{0};
  std::atomic<bool> asleep_{false};  // the watchdog waits for wake_fd_ only
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> taken_{0};
  std::atomic<uint64_t> spares_sent_{0};
  std::atomic<uint64_t> rests_{0};
  std::atomic<uint64_t> rest_wakes_{0};
  std::once_flag start_once_;
  std::atomic<bool> watching_{false};  // the watchdog runs: threads may go SCHED_IDLE
  std::thread watchdog_;               // only with SCHED_IDLE
};

}  // namespace vssfs::fs

#endif  // VSSFS_FS_SRC_CPU_PICKUP_H_
