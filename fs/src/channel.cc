#include "channel.h"

#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <liburing.h>
#include <linux/fuse.h>
#include <sched.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fstream>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "cpu_pickup.h"
#include "idle_rings.h"
#include "log.h"

namespace vssfs::fs {
namespace {

std::atomic<bool> g_want_killpriv_v2{false};
std::atomic<bool> g_kernel_offers_killpriv_v2{false};
std::atomic<uint64_t> g_init_unique{0};
std::atomic<bool> g_init_pending{true};
std::atomic<bool> g_killpriv_v2{false};
thread_local bool t_kill_suidgid = false;

// A WRITE request's payload follows the in-header and fuse_write_in. The
// hook reads everything after those 80 bytes into a page-aligned buffer of
// its own, so a WRITE's payload lands on a page boundary (direct I/O can
// then take it as it is); for every other request it moves the bytes back
// behind the header in libfuse's buffer.
constexpr size_t kWriteHeader = sizeof(fuse_in_header) + sizeof(fuse_write_in);

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};
thread_local std::unique_ptr<char, FreeDeleter> t_scratch;
thread_local size_t t_scratch_size = 0;
thread_local const char* t_payload = nullptr;

// FUSE over io_uring (kernel ABI 7.42, Linux 6.14+; Debian 12's headers
// predate it, so the definitions the kernel fixes are repeated here).
constexpr uint32_t kFuseOverIoUring2 = 1u << (41 - 32);  // FUSE_OVER_IO_URING in flags2
constexpr size_t kUringHeaderArea = 128;
struct UringEntInOut {
  uint64_t flags;
  uint64_t commit_id;
  uint32_t payload_sz;
  uint32_t padding;
  uint64_t reserved;
};
struct UringReqHeader {
  char in_out[kUringHeaderArea];  // fuse_in_header, then fuse_out_header
  char op_in[kUringHeaderArea];   // the operation's own header (in_args[0])
  UringEntInOut ent_in_out;
};
struct UringCmdReq {
  uint64_t flags;
  uint64_t commit_id;
  uint16_t qid;
  uint8_t padding[6];
};
constexpr uint32_t kUringCmdRegister = 1;
constexpr uint32_t kUringCmdCommitAndFetch = 2;
static_assert(sizeof(UringEntInOut) == 32 && sizeof(UringReqHeader) == 288 &&
              sizeof(UringCmdReq) == 24);

std::atomic<bool> g_want_uring{false};
std::atomic<bool> g_kernel_offers_uring{false};
std::atomic<bool> g_uring{false};
fuse_session* g_session = nullptr;
int g_session_fd = -1;
// Set by InstallChannel before the session loop starts, read-only after.
std::unique_ptr<CpuPickup> g_pickup;
std::string g_pickup_note;  // logged once by the first worker
std::once_flag g_pickup_logged;
// The kernel's FUSE protocol minor version, from INIT.
std::atomic<unsigned> g_proto_minor{0};
// FUSE_NOTIFY_PRUNE (protocol 7.45) and its argument, which the system's
// <linux/fuse.h> may predate.
constexpr unsigned kPruneMinor = 45;
constexpr int kFuseNotifyPrune = 9;
struct PruneOut {
  uint32_t count;
  uint32_t padding;
  uint64_t spare;
};
static_assert(sizeof(PruneOut) == 16);
std::atomic<int> g_workers_fd{-1};  // UringWorkers::dev_fd while it is open
unsigned g_uring_threads_per_queue = 2;
bool g_uring_sched_idle = true;

// One registered ring entry: the request the kernel placed in it and, once
// the handler replied, the reply.
struct UringEntry {
  std::unique_ptr<UringReqHeader, FreeDeleter> header;
  std::unique_ptr<char, FreeDeleter> payload;
  size_t payload_size = 0;
  uint64_t unique = 0;
  bool replied = false;
};

// Requests being handled, by unique id: a reply is written into its entry
// (normally by the thread that handles it, see t_entry).
std::mutex g_entries_mutex;
std::condition_variable g_entries_cv;
std::unordered_map<uint64_t, UringEntry*> g_entries;  // guarded by g_entries_mutex
thread_local UringEntry* t_entry = nullptr;

// Stores a reply's header in `e`; its `payload` bytes are already there.
void StoreReply(UringEntry& e, const fuse_out_header& out, size_t payload) {
  std::memcpy(e.header->in_out, &out, sizeof out);
  e.header->ent_in_out.payload_sz = static_cast<uint32_t>(payload);
}

// Ends the request in `e` with `error` (a negative errno).
void StoreError(UringEntry& e, uint64_t unique, int error) {
  StoreReply(e, fuse_out_header{sizeof(fuse_out_header), error, unique}, 0);
}

// Records what the handler on this thread needs to know about the request
// in `buf` (n bytes, the header and the operation's arguments).
void NoteRequest(const char* buf, size_t n) {
  fuse_in_header in;
  std::memcpy(&in, buf, sizeof in);
  const char* arg = buf + sizeof in;
  const size_t arglen = n - sizeof in;
  switch (in.opcode) {
    case FUSE_WRITE:
      if (arglen >= sizeof(fuse_write_in)) {
        fuse_write_in w;
        std::memcpy(&w, arg, sizeof w);
        t_kill_suidgid = (w.write_flags & FUSE_WRITE_KILL_SUIDGID) != 0;
      }
      break;
    case FUSE_OPEN:
      if (arglen >= sizeof(fuse_open_in)) {
        fuse_open_in o;
        std::memcpy(&o, arg, sizeof o);
        t_kill_suidgid = (o.open_flags & FUSE_OPEN_KILL_SUIDGID) != 0;
      }
      break;
    default:
      break;
  }
}

ssize_t ReadHook(int fd, void* buf, size_t len, void*) {
  t_kill_suidgid = false;
  t_payload = nullptr;
  iovec iov[2] = {{buf, len}, {nullptr, 0}};
  int count = 1;
  if (len > kWriteHeader) {
    if (t_scratch_size < len - kWriteHeader) {
      void* p = nullptr;
      if (posix_memalign(&p, 4096, len - kWriteHeader) != 0) {
        errno = ENOMEM;
        return -1;
      }
      t_scratch.reset(static_cast<char*>(p));
      t_scratch_size = len - kWriteHeader;
    }
    iov[0].iov_len = kWriteHeader;
    iov[1] = {t_scratch.get(), len - kWriteHeader};
    count = 2;
  }
  if (!g_pickup_note.empty()) {
    std::call_once(g_pickup_logged, [] { LOG_INFO("%s", g_pickup_note.c_str()); });
  }
  // The session's own descriptor is shared by all workers without clone_fd
  // (and by the single-threaded loop): CpuPickup needs one per worker.
  ssize_t n =
      g_pickup && fd != g_session_fd ? g_pickup->Read(fd, iov, count) : ::readv(fd, iov, count);
  if (n < 0 && errno == ECONNABORTED) {
    // The connection ended while the kernel tore the mount down (seen when
    // the last reference to the superblock was flush-behind's clone of the
    // mount). libfuse treats only ENODEV as the end of the session; any
    // other error makes every worker print it and exit with an error, and a
    // worker cancelled in the middle of printing leaves stderr locked.
    errno = ENODEV;
  }
  if (n < static_cast<ssize_t>(sizeof(fuse_in_header))) return n;
  fuse_in_header in;
  std::memcpy(&in, buf, sizeof in);
  if (static_cast<size_t>(n) > kWriteHeader) {
    if (in.opcode == FUSE_WRITE) {
      t_payload = t_scratch.get();
    } else {
      std::memcpy(static_cast<char*>(buf) + kWriteHeader, t_scratch.get(),
                  static_cast<size_t>(n) - kWriteHeader);
    }
  }
  NoteRequest(static_cast<const char*>(buf), static_cast<size_t>(n));
  if (in.opcode == FUSE_INIT) {
    const char* arg = static_cast<const char*>(buf) + sizeof in;
    const size_t arglen = static_cast<size_t>(n) - sizeof in;
    if (arglen >= offsetof(fuse_init_in, flags) + sizeof(uint32_t)) {
      uint32_t flags;
      std::memcpy(&flags, arg + offsetof(fuse_init_in, flags), sizeof flags);
      g_kernel_offers_killpriv_v2 = (flags & FUSE_HANDLE_KILLPRIV_V2) != 0;
      uint32_t flags2 = 0;
      if ((flags & FUSE_INIT_EXT) && arglen >= offsetof(fuse_init_in, flags2) + sizeof flags2) {
        std::memcpy(&flags2, arg + offsetof(fuse_init_in, flags2), sizeof flags2);
      }
      g_kernel_offers_uring = (flags2 & kFuseOverIoUring2) != 0;
      g_init_unique = in.unique;
    }
  }
  return n;
}

// Stores a reply to a request that came through the ring in its entry.
// Returns false if `unique` is not such a request.
bool ReplyToEntry(uint64_t unique, const iovec* iov, int count, ssize_t* written) {
  UringEntry* e = t_entry;
  std::unique_lock<std::mutex> lock(g_entries_mutex, std::defer_lock);
  if (e == nullptr || e->unique != unique) {
    lock.lock();
    auto it = g_entries.find(unique);
    if (it == g_entries.end()) return false;
    e = it->second;
  }
  size_t total = 0;
  size_t payload = 0;
  for (int i = 0; i < count; ++i) total += iov[i].iov_len;
  fuse_out_header out;
  std::memcpy(&out, iov[0].iov_base, sizeof out);
  // The header goes to its own area, everything after it to the payload.
  size_t skip = sizeof out;
  for (int i = 0; i < count; ++i) {
    const char* base = static_cast<const char*>(iov[i].iov_base);
    size_t len = iov[i].iov_len;
    const size_t cut = skip < len ? skip : len;
    skip -= cut;
    base += cut;
    len -= cut;
    if (len == 0) continue;
    if (payload + len > e->payload_size) {
      out.error = -EIO;  // Cannot happen: the kernel sized the payload for any reply.
      payload = 0;
      break;
    }
    std::memcpy(e->payload.get() + payload, base, len);
    payload += len;
  }
  StoreReply(*e, out, payload);
  e->replied = true;
  if (lock.owns_lock()) g_entries_cv.notify_all();
  *written = static_cast<ssize_t>(total);
  return true;
}

// One queue per possible CPU (the kernel routes a request to the queue of
// the CPU its sender runs on).
struct UringQueue {
  std::atomic<unsigned> workers{0};   // threads whose entry is registered
  std::atomic<unsigned> busy{0};      // of those, handling a request
  std::atomic<unsigned> threads{0};   // threads started and not ended (bounded)
  std::atomic<unsigned> failures{0};  // rings or threads that failed (bounded: no retry loop)
  std::atomic<uint64_t> served{0};    // requests handled so far
  // Watchdog only: whether the queue was stalled at the last tick, and
  // `served` then.
  bool stalled_last_tick = false;
  uint64_t served_last_tick = 0;
};

// A ring with its one entry, set up before it is handed to a thread.
struct UringRing {
  io_uring ring{};
  bool initialised = false;
  UringEntry entry;
  unsigned qid = 0;
  UringRing() = default;
  UringRing(const UringRing&) = delete;
  UringRing& operator=(const UringRing&) = delete;
  ~UringRing() {
    if (initialised) io_uring_queue_exit(&ring);
  }
};

// Sets up a ring and its entry buffers for queue `qid`. Returns nullptr and
// says why in `why` on failure (io_uring disabled or filtered, no memory).
std::unique_ptr<UringRing> MakeRing(unsigned qid, size_t max_payload, std::string* why) {
  auto r = std::make_unique<UringRing>();
  r->qid = qid;
  if (int e = io_uring_queue_init(4, &r->ring, IORING_SETUP_SQE128); e != 0) {
    *why = std::string("cannot set up an io_uring: ") + strerror(-e);
    return nullptr;
  }
  r->initialised = true;
  void* h = nullptr;
  void* p = nullptr;
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  if (posix_memalign(&h, page, sizeof(UringReqHeader)) != 0 ||
      posix_memalign(&p, page, max_payload) != 0) {
    std::free(h);
    std::free(p);
    *why = "out of memory for ring buffers";
    return nullptr;
  }
  r->entry.header.reset(static_cast<UringReqHeader*>(h));
  r->entry.payload.reset(static_cast<char*>(p));
  r->entry.payload_size = max_payload;
  std::memset(r->entry.header.get(), 0, sizeof(UringReqHeader));
  return r;
}

// Handles the request the kernel placed in `entry` and stores the reply in
// it. Returns the request's unique id (the commit id).
uint64_t HandleUringRequest(UringEntry& entry, unsigned qid, std::vector<char>& request,
                            const std::atomic<bool>* stop) {
  // Rebuild the layout a read(2) of /dev/fuse would give: header, the
  // operation's own header, the rest.
  fuse_in_header in;
  std::memcpy(&in, entry.header->in_out, sizeof in);
  const size_t payload_sz = entry.header->ent_in_out.payload_sz;
  const size_t op_sz = in.len >= sizeof in + payload_sz ? in.len - sizeof in - payload_sz : 0;
  entry.unique = in.unique;
  entry.replied = false;
  if (op_sz > kUringHeaderArea || payload_sz > entry.payload_size ||
      in.len != sizeof in + op_sz + payload_sz) {
    LOG_ERROR("io_uring queue %u: malformed request (opcode %u, length %u)", qid, in.opcode,
              in.len);
    StoreError(entry, in.unique, -EIO);
    return in.unique;
  }
  const bool write = in.opcode == FUSE_WRITE;
  request.resize(sizeof in + op_sz + (write ? 0 : payload_sz));
  std::memcpy(request.data(), &in, sizeof in);
  std::memcpy(request.data() + sizeof in, entry.header->op_in, op_sz);
  if (!write && payload_sz != 0) {
    std::memcpy(request.data() + sizeof in + op_sz, entry.payload.get(), payload_sz);
  }
  t_kill_suidgid = false;
  // A WRITE's data stays where the kernel put it, on a page boundary.
  t_payload = write ? entry.payload.get() : nullptr;
  NoteRequest(request.data(), request.size());
  {
    std::lock_guard lock(g_entries_mutex);
    g_entries[in.unique] = &entry;
  }
  t_entry = &entry;
  fuse_buf buf{};
  buf.mem = request.data();
  buf.size = in.len;  // as read(2) would have returned (libfuse checks WRITE sizes)
  fuse_session_process_buf(g_session, &buf);
  {
    // Handlers reply before they return; should one hand its request to
    // another thread, wait for that reply.
    std::unique_lock lock(g_entries_mutex);
    bool warned = false;
    while (!g_entries_cv.wait_for(lock, std::chrono::seconds(5), [&] { return entry.replied; })) {
      if (stop->load()) {  // Shutting down: end the request.
        StoreError(entry, in.unique, -EIO);
        break;
      }
      if (!warned) {
        LOG_WARN("io_uring queue %u: request %llu (opcode %u) has had no reply for 5 s", qid,
                 static_cast<unsigned long long>(in.unique), in.opcode);
        warned = true;
      }
    }
    g_entries.erase(in.unique);
  }
  t_entry = nullptr;
  t_payload = nullptr;
  return in.unique;
}

// What the request in `entry` needs of a SCHED_IDLE ring thread (see
// idle_rings.h): data requests are handled at SCHED_OTHER, so that they do
// not wait behind every normal task of their CPU (with SCHED_IDLE threads
// throughout, 1 GiB sequential writes were about 10% slower); replies that
// nobody waits for change nothing.
IdleRings::Kind KindOf(const UringEntry& entry) {
  fuse_in_header in;
  std::memcpy(&in, entry.header->in_out, sizeof in);
  return IdleRings::KindOf(in.opcode);
}

struct UringWorkers;
thread_local UringWorkers* t_workers = nullptr;  // set on ring threads
thread_local unsigned t_qid = 0;

// The ring threads of all queues, and a watchdog. A handler may wait for
// requests the kernel sends to its own queue (the WRITEs that
// fuse_lowlevel_notify_inval_inode makes it send); EnsureIdleEntry gives
// the queue a free entry first. The kernel hands queued requests only to
// entries that commit or to requests arriving later, so that must happen
// before the wait. The watchdog adds an entry to a queue whose entries have
// all been busy, with none finishing a request, for two ticks (requests
// arriving meanwhile get it), and replaces a thread that ended on an
// unexpected error. A queue whose entries are all busy but keep finishing
// requests (writeback streaming WRITEs of one file, which vssfs serialises)
// gains nothing from more entries: the kernel hands each waiting request to
// the next entry that commits.
struct UringWorkers {
  // Threads a queue may have beyond its -o uring_threads, and failures it
  // may see in its life.
  static constexpr unsigned kMaxPerQueue = 32;
  std::atomic<bool> stop{false};
  std::atomic<bool> ended{false};  // the kernel ended the connection
  std::atomic<bool> first_served{false};
  size_t max_payload = 0;
  unsigned nr_queues = 0;
  int dev_fd = -1;  // owned: the ring commands and late writes use it
  std::unique_ptr<UringQueue[]> queues;
  std::vector<std::unique_ptr<UringRing>> prepared;  // until Start
  std::mutex threads_mutex;
  std::vector<std::thread> threads;  // guarded by threads_mutex
  std::thread watchdog;
  // Ring threads run as SCHED_IDLE (see idle_rings.h); null when off.
  std::unique_ptr<IdleRings> idle_rings;

  ~UringWorkers() {
    if (dev_fd >= 0) close(dev_fd);
  }

  // Starts a thread serving `ring` (or a new ring) on queue `qid`. Returns
  // false when stopping, at the bound, or if no ring could be set up.
  bool Add(unsigned qid, std::unique_ptr<UringRing> ring) {
    UringQueue& queue = queues[qid];
    if (!ring) {
      if (queue.failures.load() >= kMaxPerQueue) return false;
      if (queue.threads.fetch_add(1) >= g_uring_threads_per_queue + kMaxPerQueue) {
        --queue.threads;
        return false;
      }
      std::string why;
      ring = MakeRing(qid, max_payload, &why);
      if (!ring) {
        --queue.threads;
        ++queue.failures;
        LOG_WARN("io_uring queue %u: %s", qid, why.c_str());
        return false;
      }
    } else {
      ++queue.threads;
    }
    std::lock_guard lock(threads_mutex);
    if (stop.load()) {
      --queue.threads;
      return false;
    }
    try {
      threads.emplace_back(&UringWorkers::Serve, this, std::move(ring));
    } catch (const std::exception& e) {  // no thread (EAGAIN under a pids limit), no memory
      --queue.threads;
      ++queue.failures;
      LOG_WARN("io_uring queue %u: cannot start a thread: %s", qid, e.what());
      return false;
    }
    return true;
  }

  void Serve(std::unique_ptr<UringRing> r) {
    const unsigned qid = r->qid;
    UringQueue& queue = queues[qid];
    t_workers = this;
    t_qid = qid;
    cpu_set_t cpus;
    CPU_ZERO(&cpus);
    CPU_SET(qid, &cpus);
    // Requests from a CPU go to that CPU's queue: serving them there makes
    // the hand-over a wake-up on the same CPU (fails harmlessly for an
    // offline CPU).
    sched_setaffinity(0, sizeof cpus, &cpus);
    IdleRings::Slot* idle = idle_rings ? idle_rings->Register() : nullptr;
    UringEntry& entry = r->entry;
    iovec iov[2] = {{entry.header.get(), sizeof(UringReqHeader)},
                    {entry.payload.get(), entry.payload_size}};
    std::vector<char> request;
    // REGISTER hands the entry to the kernel; COMMIT_AND_FETCH returns a
    // reply and hands it back in one step. Either completes with the next
    // request.
    auto submit = [&](uint32_t cmd, uint64_t commit_id) {
      io_uring_sqe* sqe = io_uring_get_sqe(&r->ring);
      if (sqe == nullptr) return -EBUSY;      // cannot happen: one command at a time
      std::memset(sqe, 0, 2 * sizeof(*sqe));  // SQE128: the command is the 2nd half
      sqe->opcode = IORING_OP_URING_CMD;
      sqe->fd = dev_fd;
      sqe->cmd_op = cmd;
      sqe->addr = reinterpret_cast<uint64_t>(iov);
      sqe->len = 2;
      UringCmdReq req{};
      req.commit_id = commit_id;
      req.qid = static_cast<uint16_t>(qid);
      std::memcpy(sqe->cmd, &req, sizeof req);
      int n;
      while ((n = io_uring_submit(&r->ring)) == -EINTR || n == -EAGAIN) {
      }
      return n;
    };
    // `workers` counts this thread while its entry is registered.
    bool counted = false;
    auto count = [&](bool registered) {
      if (registered && !counted) ++queue.workers;
      if (!registered && counted) --queue.workers;
      counted = registered;
    };
    int rc = submit(kUringCmdRegister, 0);
    count(rc >= 0);
    bool failed = false;  // the kernel ended the entry with an error
    while (rc >= 0 && !stop.load()) {
      io_uring_cqe* cqe = nullptr;
      __kernel_timespec ts{0, 200 * 1000 * 1000};  // to notice `stop`
      rc = io_uring_wait_cqe_timeout(&r->ring, &cqe, &ts);
      if (rc == -ETIME || rc == -EINTR) {
        rc = 0;
        continue;
      }
      if (rc < 0) break;
      const int res = cqe->res;
      io_uring_cqe_seen(&r->ring, cqe);
      if (res == -EAGAIN) {  // The kernel has not finished INIT yet.
        count(false);
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
        rc = submit(kUringCmdRegister, 0);
        count(rc >= 0);
        continue;
      }
      if (res < 0) {
        if (res == -ENOTCONN || res == -ECANCELED || res == -ECONNABORTED) {
          ended = true;  // unmounted or aborted
        } else {
          LOG_ERROR("io_uring queue %u: %s", qid, strerror(-res));
          failed = true;
        }
        break;
      }
      if (!first_served.exchange(true)) {
        LOG_INFO("FUSE over io_uring: serving requests (first on queue %u)", qid);
      }
      ++queue.busy;
      const IdleRings::Kind kind = KindOf(entry);
      if (idle != nullptr) idle->Started(kind);
      const uint64_t unique = HandleUringRequest(entry, qid, request, &stop);
      if (idle != nullptr) idle->Finished(kind);
      --queue.busy;
      ++queue.served;
      rc = submit(kUringCmdCommitAndFetch, unique);
    }
    if (idle != nullptr) idle_rings->Unregister(idle);
    if (rc < 0) LOG_ERROR("io_uring queue %u: %s", qid, strerror(-rc));
    if ((rc < 0 || failed) && !stop.load()) ++queue.failures;
    count(false);
    --queue.threads;
  }

  void Watch() {
    // With SCHED_IDLE ring threads, ticks come every kIdleCheckMs while
    // requests are being served or a SCHED_IDLE thread has work (to notice
    // starved threads soon), else every kTickMs; entries are added at
    // kTickMs.
    constexpr int kTickMs = 20;
    constexpr int kIdleCheckMs = 2;
    constexpr int kActiveTicks = 50;  // fast ticks after the last request seen
    uint64_t served_seen = 0;
    int active = 0;  // fast ticks left
    int elapsed_ms = 0;
    while (!stop.load()) {
      const int tick = idle_rings && active > 0 ? kIdleCheckMs : kTickMs;
      std::this_thread::sleep_for(std::chrono::milliseconds(tick));
      if (ended.load()) continue;
      if (idle_rings) {
        uint64_t served_now = 0;
        for (unsigned q = 0; q < nr_queues; ++q) served_now += queues[q].served.load();
        bool watch = false;
        idle_rings->Check(&watch);
        // A starving queue serves nothing: keep the fast ticks while a
        // SCHED_IDLE thread has work.
        active = served_now != served_seen || watch ? kActiveTicks : std::max(active - 1, 0);
        served_seen = served_now;
      }
      elapsed_ms += tick;
      if (elapsed_ms < kTickMs) continue;
      elapsed_ms = 0;
      for (unsigned q = 0; q < nr_queues && !stop.load(); ++q) {
        UringQueue& queue = queues[q];
        const unsigned workers = queue.workers.load();
        const uint64_t served = queue.served.load();
        const bool stalled = queue.busy.load() >= workers && served == queue.served_last_tick;
        queue.served_last_tick = served;
        if (workers == 0 || (stalled && queue.stalled_last_tick)) {
          if (workers != 0) {
            LOG_DEBUG("io_uring queue %u: all %u entries busy and none finished", q, workers);
          }
          Add(q, nullptr);
          queue.stalled_last_tick = false;
        } else {
          queue.stalled_last_tick = stalled;
        }
      }
    }
  }

  void EnsureIdleEntry(unsigned qid) {
    UringQueue& queue = queues[qid];
    const unsigned before = queue.workers.load();
    if (ended.load() || queue.busy.load() < before) return;
    if (!Add(qid, nullptr)) return;
    // The new thread registers its entry at once; wait for it (bounded).
    for (int i = 0; i < 2000 && queue.workers.load() <= before && !stop.load(); ++i) {
      std::this_thread::sleep_for(std::chrono::microseconds(500));
    }
  }
};
std::unique_ptr<UringWorkers> g_workers;

// The number of possible CPUs (the kernel's queue count), 0 if unknown.
unsigned PossibleCpus() {
  std::ifstream in("/sys/devices/system/cpu/possible");
  std::string text;
  unsigned count = 0;
  while (std::getline(in, text, ',')) {
    unsigned lo = 0;
    unsigned hi = 0;
    if (std::sscanf(text.c_str(), "%u-%u", &lo, &hi) == 2 && hi >= lo) {
      count += hi - lo + 1;
    } else if (std::sscanf(text.c_str(), "%u", &lo) == 1) {
      count += 1;
    }
  }
  return count;
}

// Sets up every ring before the INIT reply asks for FUSE over io_uring: once
// it does, the kernel holds all requests back until every queue has an
// entry, so it must not ask unless all of them can be registered.
std::unique_ptr<UringWorkers> PrepareUring(uint32_t max_write, uint16_t max_pages) {
  auto w = std::make_unique<UringWorkers>();
  w->nr_queues = PossibleCpus();
  if (w->nr_queues == 0) {
    LOG_WARN("FUSE over io_uring not used: cannot read /sys/devices/system/cpu/possible");
    return nullptr;
  }
  w->queues = std::make_unique<UringQueue[]>(w->nr_queues);
  // Each entry's payload must hold the largest request or reply the kernel
  // may send: max(8 KiB, max_write, max_pages pages).
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  w->max_payload = std::max({size_t{8192}, size_t{max_write}, size_t{max_pages} * page});
  w->dev_fd = fcntl(g_session_fd, F_DUPFD_CLOEXEC, 0);
  if (w->dev_fd < 0) {
    LOG_WARN("FUSE over io_uring not used: dup /dev/fuse: %s", strerror(errno));
    return nullptr;
  }
  for (unsigned q = 0; q < w->nr_queues; ++q) {
    for (unsigned t = 0; t < g_uring_threads_per_queue; ++t) {
      std::string why;
      std::unique_ptr<UringRing> ring = MakeRing(q, w->max_payload, &why);
      if (!ring) {
        LOG_WARN("FUSE over io_uring not used (requests go through /dev/fuse): %s", why.c_str());
        return nullptr;
      }
      w->prepared.push_back(std::move(ring));
    }
  }
  return w;
}

void StartUring(std::unique_ptr<UringWorkers> w) {
  // Replies are looked up among ring entries from the first registration on
  // (a reply written to /dev/fuse instead would be lost).
  g_uring = true;
  UringWorkers* raw = w.get();
  if (g_uring_sched_idle) {
    std::string why;
    if (IdleRings::Available(&why)) {
      w->idle_rings = std::make_unique<IdleRings>();
    } else {
      LOG_INFO("FUSE over io_uring: ring threads stay SCHED_OTHER: %s", why.c_str());
    }
  }
  std::vector<std::unique_ptr<UringRing>> rings = std::move(w->prepared);
  for (auto& ring : rings) {
    const unsigned qid = ring->qid;
    w->Add(qid, std::move(ring));
  }
  w->watchdog = std::thread([raw] { raw->Watch(); });
  LOG_INFO("FUSE over io_uring: %u queues, %u threads each%s", w->nr_queues,
           g_uring_threads_per_queue, w->idle_rings ? ", SCHED_IDLE" : "");
  g_workers = std::move(w);
}

ssize_t WritevHook(int fd, iovec* iov, int count, void*) {
  // The reply's header; unique 0 for a notification (or a write too short
  // to hold a header).
  fuse_out_header out{};
  if (count >= 1 && iov[0].iov_len >= sizeof out) std::memcpy(&out, iov[0].iov_base, sizeof out);
  if (g_uring.load(std::memory_order_relaxed)) {
    ssize_t written;
    if (out.unique != 0 && ReplyToEntry(out.unique, iov, count, &written)) return written;
    // libfuse closes the session's descriptor at unmount while ring threads
    // may still write (notifications, late replies): use the channel's own.
    if (fd == g_session_fd && g_workers_fd.load() >= 0) fd = g_workers_fd.load();
  }
  if (g_pickup && out.unique != 0) g_pickup->BeforeReply(out.unique);
  std::unique_ptr<UringWorkers> uring;
  if (g_init_pending.load(std::memory_order_relaxed) && count >= 2) {
    if (out.unique == g_init_unique.load() && out.unique != 0) {
      g_init_pending = false;
      char* arg = static_cast<char*>(iov[1].iov_base);
      const size_t len = iov[1].iov_len;
      if (out.error == 0 && len >= offsetof(fuse_init_out, flags) + sizeof(uint32_t)) {
        uint32_t flags;
        std::memcpy(&flags, arg + offsetof(fuse_init_out, flags), sizeof flags);
        if (g_want_killpriv_v2 && g_kernel_offers_killpriv_v2) {
          flags |= FUSE_HANDLE_KILLPRIV_V2;
          g_killpriv_v2 = true;
        }
        if (g_want_uring && g_kernel_offers_uring &&
            len >= offsetof(fuse_init_out, flags2) + sizeof(uint32_t)) {
          uint32_t max_write;
          uint16_t max_pages;
          std::memcpy(&max_write, arg + offsetof(fuse_init_out, max_write), sizeof max_write);
          std::memcpy(&max_pages, arg + offsetof(fuse_init_out, max_pages), sizeof max_pages);
          uring = PrepareUring(max_write, max_pages);
          if (uring) {
            uint32_t flags2;
            std::memcpy(&flags2, arg + offsetof(fuse_init_out, flags2), sizeof flags2);
            flags |= FUSE_INIT_EXT;
            flags2 |= kFuseOverIoUring2;
            std::memcpy(arg + offsetof(fuse_init_out, flags2), &flags2, sizeof flags2);
            g_workers_fd = uring->dev_fd;
          }
        }
        std::memcpy(arg + offsetof(fuse_init_out, flags), &flags, sizeof flags);
      }
    }
  }
  ssize_t n = ::writev(fd, iov, count);
  if (g_pickup) g_pickup->AfterReply();
  // The kernel has processed INIT when the write returns: the entries may
  // be registered now.
  if (uring && n >= 0) StartUring(std::move(uring));
  return n;
}

// Splice hooks are plain splice(2); vssfs turns splice reception off (see
// channel.h), so only replies may use them.
ssize_t SpliceHook(int fdin, off_t* offin, int fdout, off_t* offout, size_t len, unsigned int flags,
                   void*) {
  return ::splice(fdin, offin, fdout, offout, len, flags);
}

}  // namespace

int InstallChannel(fuse_session* se, bool killpriv_v2, bool uring, unsigned uring_threads,
                   bool sched_idle, bool cpu_pickup) {
  if (cpu_pickup) {
    std::string why;
    std::string idle_why;
    g_pickup = CpuPickup::Create(fuse_session_fd(se), sched_idle, &why, &idle_why);
    // Logged by the first worker: the daemon may still go into the
    // background, and mount(8) would print what is logged before.
    if (!g_pickup) {
      g_pickup_note = "/dev/fuse: requests are not taken per CPU: " + why;
    } else {
      g_pickup_note = "/dev/fuse: an idle worker on each of " + std::to_string(g_pickup->cpus()) +
                      " CPUs takes the requests sent there";
      if (g_pickup->sched_idle()) {
        g_pickup_note += " (SCHED_IDLE for metadata)";
      } else if (sched_idle) {
        g_pickup_note += " (not SCHED_IDLE: " + idle_why + ")";
      }
    }
  }
  g_want_killpriv_v2 = killpriv_v2;
  g_uring_sched_idle = sched_idle;
  g_want_uring = uring;
  g_uring_threads_per_queue = uring_threads == 0 ? 1 : uring_threads;
  g_session = se;
  g_session_fd = fuse_session_fd(se);
  static const fuse_custom_io kIo = {WritevHook, ReadHook, SpliceHook, SpliceHook};
  return fuse_session_custom_io(se, &kIo, fuse_session_fd(se));
}

void NoteReadBlocked(bool blocked) {
  if (g_pickup) g_pickup->NoteRead(blocked);
}

void StopCpuPickup() {
  if (!g_pickup) return;
  g_pickup->Stop();
  std::string per_cpu;
  const std::vector<uint64_t> counts = g_pickup->ReadPerCpu();
  for (size_t c = 0; c < counts.size(); ++c) {
    if (counts[c] == 0) continue;
    char item[48];
    std::snprintf(item, sizeof item, "%s%zu:%llu", per_cpu.empty() ? "" : " ", c,
                  static_cast<unsigned long long>(counts[c]));
    per_cpu += item;
  }
  LOG_DEBUG(
      "/dev/fuse: %llu requests read (per CPU %s), %llu spares sent, %llu SCHED_IDLE stalls, "
      "%llu switches between polling and plain reads, %llu rests of pollers (%llu ended early)",
      static_cast<unsigned long long>(g_pickup->taken()), per_cpu.empty() ? "-" : per_cpu.c_str(),
      static_cast<unsigned long long>(g_pickup->spares_sent()),
      static_cast<unsigned long long>(g_pickup->stalls()),
      static_cast<unsigned long long>(g_pickup->switches()),
      static_cast<unsigned long long>(g_pickup->rests()),
      static_cast<unsigned long long>(g_pickup->rest_wakes()));
}

bool KillprivV2Negotiated() { return g_killpriv_v2; }

void NoteProtocol(unsigned minor) { g_proto_minor = minor; }

int NotifyPrune(const std::vector<uint64_t>& ids) {
  if (g_proto_minor.load() < kPruneMinor) return -ENOSYS;
  if (ids.empty()) return 0;
  PruneOut arg{static_cast<uint32_t>(ids.size()), 0, 0};
  fuse_out_header out{};
  out.len = static_cast<uint32_t>(sizeof out + sizeof arg + ids.size() * sizeof(uint64_t));
  out.error = kFuseNotifyPrune;
  out.unique = 0;
  iovec iov[3] = {{&out, sizeof out},
                  {&arg, sizeof arg},
                  {const_cast<uint64_t*>(ids.data()), ids.size() * sizeof(uint64_t)}};
  ssize_t n = WritevHook(g_session_fd, iov, 3, nullptr);
  if (n < 0) return -errno;
  return 0;
}

bool UringOffered() { return g_want_uring && g_kernel_offers_uring; }

void StopUring() {
  std::unique_ptr<UringWorkers> workers = std::move(g_workers);
  if (!workers) return;
  // SCHED_IDLE threads must get their CPU to notice `stop`, and the
  // watchdog that rescues them ends first.
  if (workers->idle_rings) workers->idle_rings->ReleaseAll();
  workers->stop = true;
  workers->watchdog.join();
  // Handlers may still add a thread (EnsureIdleEntry) until `stop` is seen
  // under the lock: join until none is left.
  while (true) {
    std::vector<std::thread> threads;
    {
      std::lock_guard lock(workers->threads_mutex);
      threads.swap(workers->threads);
    }
    if (threads.empty()) break;
    for (std::thread& t : threads) t.join();
  }
  g_workers_fd = -1;
  // ~UringWorkers closes the channel's descriptor: the kernel ends what is
  // still queued once the last one is closed.
}

void EnsureIdleUringEntry() {
  if (t_workers != nullptr) t_workers->EnsureIdleEntry(t_qid);
}

bool RequestKillsSuidgid() { return t_kill_suidgid; }

const char* WritePayload() { return t_payload; }

}  // namespace vssfs::fs
