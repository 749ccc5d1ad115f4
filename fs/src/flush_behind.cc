#include "flush_behind.h"

#include <fcntl.h>
#include <linux/capability.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <iterator>
#include <system_error>
#include <unordered_map>
#include <utility>
#include <vector>

#include "access_time.h"
#include "backing_xattr.h"
#include "creds.h"
#include "helper_process.h"
#include "log.h"

namespace vssfs::fs {

using cow_store::Result;
using cow_store::Status;
using cow_store::UniqueFd;

namespace {

// System call numbers and flags newer than this system's headers may be
// (the kernel ABI's values; one table for all architectures since 5.1).
#ifndef SYS_open_tree
constexpr long kSysOpenTree = 428;
#else
constexpr long kSysOpenTree = SYS_open_tree;
#endif
#ifndef SYS_cachestat
constexpr long kSysCachestat = 451;
#else
constexpr long kSysCachestat = SYS_cachestat;
#endif
constexpr unsigned kOpenTreeClone = 1;

struct CachestatRange {
  uint64_t off;
  uint64_t len;  // 0: to the end of the file.
};
struct Cachestat {
  uint64_t nr_cache;
  uint64_t nr_dirty;
  uint64_t nr_writeback;
  uint64_t nr_evicted;
  uint64_t nr_recently_evicted;
};

constexpr uint32_t kWatch = 1;
constexpr uint32_t kUnwatch = 2;

constexpr uint64_t kPage = 4096;
constexpr uint64_t kChunk = 4 << 20;        // Unit of the decision and of writeback.
constexpr uint64_t kSuperChunk = 16 << 20;  // Looked at first; unchanged ones are skipped.
constexpr uint64_t kMinDirty = 8 << 20;     // Files with less dirty data are left alone.
constexpr int kTickMs = 20;
constexpr int kBatchMs = 10;           // The forwarder collects messages this long.
constexpr int64_t kFreshMs = 1000;     // Clean to all dirty within this: a stream.
constexpr size_t kChunkBudget = 1024;  // Chunks looked at per file and tick.
// More chunks than this seen partly dirty in one look: the file is being
// written at random, and those chunks are no stream's (until seen clean).
// A stream leaves one or two partly written chunks behind its end, a few
// more if its writes arrive out of order (Samba with several in flight).
constexpr size_t kMaxPartial = 8;
// A super-chunk that cannot hold a stream's chunk right now (no dirty page,
// or every chunk dirtied too long after it was last seen clean) is looked at
// this often instead of every tick: cachestat(2) walks every page of its
// range, and looking at a whole large file every tick cost more CPU than the
// copies of a 1 GiB write. A stream that starts there is seen within this
// time, well inside kFreshMs.
constexpr int64_t kQuietMs = 200;
// A file with little dirty data is looked at less and less often, down to
// this interval. A stream that starts meanwhile fills chunks that were clean
// at the previous look, which is recent enough for kFreshMs.
constexpr int64_t kMaxIdleMs = 320;

int64_t NowMs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

int DoCachestat(int fd, uint64_t off, uint64_t len, Cachestat* cs) {
  CachestatRange range{off, len};
  return static_cast<int>(syscall(kSysCachestat, fd, &range, cs, 0U));
}

// One file with a handle open for writing.
struct Watched {
  uint32_t generation = 0;        // The file's FUSE generation.
  UniqueFd fd;                    // Read-only descriptor through the clone; opened lazily.
  bool dead = false;              // The file cannot be watched (gone from the kernel's cache).
  int64_t since_ms = 0;           // Start of the watch.
  int64_t last_ms = 0;            // Time of the previous look (or of the watch's start).
  uint64_t last_size = 0;         // Size at the previous look.
  int64_t next_ms = 0;            // No look before this.
  int64_t idle_ms = 0;            // Interval between looks while the file has little dirty data.
  std::vector<int64_t> clean_ms;  // Per chunk: last time seen without dirty pages.
  // Per chunk: when it was judged a stream's (0: not since it was last seen
  // clean). FUSE ignores a request to start writeback while the connection
  // has many WRITEs in flight, so such a chunk is written back again at
  // every look while all its pages are dirty and none in writeback, for
  // kFreshMs. (Not while partly dirty: seen clean late, after a quiet
  // spell, a chunk written back long ago may be partly dirty again by
  // random writes.)
  std::vector<int64_t> streamed_ms;
  struct Super {
    uint64_t dirty = kUnknown;  // Dirty pages when every chunk was last looked at.
    int64_t next_ms = 0;        // Quiet: no look before this.
    static constexpr uint64_t kUnknown = UINT64_MAX;
  };
  std::vector<Super> supers;
};

// The helper's state: what is watched, and the clone of the mount.
class Helper {
 public:
  explicit Helper(const char* mountpoint) : mountpoint_(mountpoint) {}

  void Watch(uint64_t nodeid, uint32_t generation) {
    if (disabled_) return;
    Watched& w = files_[nodeid] = Watched{};  // Nothing of an earlier file.
    w.generation = generation;
    w.since_ms = w.last_ms = NowMs();
  }
  void Unwatch(uint64_t nodeid) {
    files_.erase(nodeid);  // Closing may write back what is still dirty.
    if (files_.empty()) tree_.reset();
  }
  bool idle() const { return files_.empty(); }

  void Tick() {
    if (files_.empty()) return;
    if (!tree_) {
      // open_tree gives an O_PATH descriptor, which open_by_handle_at does
      // not take: open the clone's root directory through it.
      UniqueFd clone(static_cast<int>(
          syscall(kSysOpenTree, AT_FDCWD, mountpoint_, kOpenTreeClone | O_CLOEXEC)));
      if (clone) tree_.reset(openat(clone.get(), ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
      if (!tree_) {
        Disable("cannot clone the mount", errno);
        return;
      }
    }
    const int64_t now = NowMs();
    for (auto& [nodeid, w] : files_) {
      if (w.dead || now < w.next_ms) continue;
      const bool busy = Look(nodeid, w);
      if (disabled_) return;
      w.idle_ms = busy ? 0 : std::clamp<int64_t>(w.idle_ms * 2, kTickMs, kMaxIdleMs);
      w.next_ms = now + w.idle_ms;
    }
  }

 private:
  // Turns flush-behind off for the rest of the mount's life.
  void Disable(const char* what, int err) {
    LOG_WARN("flush-behind off: %s: %s", what, strerror(err));
    disabled_ = true;
    files_.clear();
    tree_.reset();
  }

  // Looks at one file's page cache and starts writeback of the chunks it
  // just streamed. Returns whether the file has much dirty data.
  bool Look(uint64_t nodeid, Watched& w) {
    const int64_t now = NowMs();
    if (!w.fd) {
      if (int r = OpenRegularByHandle(tree_.get(), nodeid, w.generation, &w.fd); r != 0) {
        if (r == -ESTALE) {
          // Not in the kernel's inode cache: a new file whose CREATE reply
          // is still on its way (try again), or one whose writer is gone
          // and whose release is on the way (its node id may already be
          // another file's, of another generation).
          if (now - w.since_ms > kFreshMs) w.dead = true;
        } else {
          Disable("cannot open files through the mount by handle", -r);
        }
        return false;
      }
    }
    const int64_t before = w.last_ms;
    w.last_ms = now;
    // The kernel's own size, without asking vssfs (which a plain fstat may
    // do when the cached attributes are stale).
    struct statx stx;
    if (statx(w.fd.get(), "", AT_EMPTY_PATH | AT_STATX_DONT_SYNC, STATX_TYPE | STATX_SIZE, &stx) !=
            0 ||
        !S_ISREG(stx.stx_mode)) {
      return false;
    }
    const uint64_t size = stx.stx_size;
    const bool growing = size != w.last_size;
    w.last_size = size;
    const size_t chunks = static_cast<size_t>((size + kChunk - 1) / kChunk);
    const size_t supers = static_cast<size_t>((size + kSuperChunk - 1) / kSuperChunk);
    // Chunks beyond the old end of file were clean at the previous look (a
    // truncated file forgets what it knew of the part cut off).
    w.clean_ms.resize(chunks, before);
    w.streamed_ms.resize(chunks, 0);
    w.supers.resize(supers);
    // The chunks of super-chunk `s`: [first, last).
    auto chunks_of = [&](size_t s) {
      const size_t first = s * (kSuperChunk / kChunk);
      return std::pair(first, std::min(chunks, first + kSuperChunk / kChunk));
    };
    // Chunk `c` was judged a stream's within kFreshMs (see streamed_ms).
    auto streamed = [&](size_t c) {
      return w.streamed_ms[c] != 0 && now - w.streamed_ms[c] <= kFreshMs;
    };

    // First the super-chunks that are due, for their dirty counts.
    std::vector<std::pair<size_t, uint64_t>> changed;  // (super-chunk, dirty pages)
    uint64_t dirty = 0;
    for (size_t s = 0; s < supers; ++s) {
      Watched::Super& sup = w.supers[s];
      if (now < sup.next_ms) {
        if (sup.dirty != Watched::Super::kUnknown) dirty += sup.dirty;
        continue;
      }
      const uint64_t s_off = s * kSuperChunk;
      const uint64_t s_len = std::min(kSuperChunk, size - s_off);
      Cachestat cs{};
      if (DoCachestat(w.fd.get(), s_off, s_len, &cs) != 0) {
        Disable("cachestat", errno);
        return false;
      }
      dirty += cs.nr_dirty;
      if (cs.nr_dirty == 0) {
        const auto [first, last] = chunks_of(s);
        std::fill(w.clean_ms.begin() + first, w.clean_ms.begin() + last, now);
        std::fill(w.streamed_ms.begin() + first, w.streamed_ms.begin() + last, 0);
        sup.dirty = 0;
        sup.next_ms = now + kQuietMs;
      } else if (cs.nr_dirty != sup.dirty) {
        changed.emplace_back(s, cs.nr_dirty);  // Something changed: look at each chunk.
      }
    }
    if (dirty * kPage < kMinDirty) return false;

    // Every chunk due for a look, first.
    struct Seen {
      size_t chunk;
      uint64_t pages;  // In the chunk.
      Cachestat cs;
    };
    std::vector<Seen> seen;
    size_t partial = 0;  // Chunks seen partly dirty, none in writeback.
    size_t budget = kChunkBudget;
    for (const auto& [s, s_dirty] : changed) {
      if (budget == 0) break;
      const auto [first, last] = chunks_of(s);
      size_t c = first;
      for (; c < last && budget > 0; ++c, --budget) {
        const uint64_t c_off = c * kChunk;
        const uint64_t c_len = std::min(kChunk, size - c_off);
        // The chunk at the end of a file still being extended is not done.
        if (c_len < kChunk && growing) break;
        Cachestat cc{};
        if (DoCachestat(w.fd.get(), c_off, c_len, &cc) != 0) break;
        const uint64_t pages = (c_len + kPage - 1) / kPage;
        if (cc.nr_writeback == 0 && cc.nr_dirty > 0 && cc.nr_dirty < pages) ++partial;
        seen.push_back(Seen{c, pages, cc});
      }
      // Remember the count only if every chunk was looked at (and, below,
      // none is to be written back: the request may be ignored, see
      // streamed_ms, and the count then stays the same).
      w.supers[s].dirty = c == last ? s_dirty : Watched::Super::kUnknown;
    }
    // Fast random writes fill whole chunks within kFreshMs, but are seen
    // partly dirty all over the file: none of this look's dirty chunks is a
    // stream's then.
    const bool at_random = partial > kMaxPartial;

    uint64_t run_start = 0, run_end = 0;  // Chunks to write back, [start, end).
    auto flush_run = [&] {
      if (run_end > run_start) {
        LOG_DEBUG("flush-behind: writing back node %llu, %llu MiB at %llu MiB",
                  static_cast<unsigned long long>(nodeid),
                  static_cast<unsigned long long>((run_end - run_start) >> 20),
                  static_cast<unsigned long long>(run_start >> 20));
        sync_file_range(w.fd.get(), static_cast<off64_t>(run_start),
                        static_cast<off64_t>(run_end - run_start), SYNC_FILE_RANGE_WRITE);
      }
      run_start = run_end = 0;
    };
    for (const Seen& x : seen) {
      const size_t c = x.chunk;
      const uint64_t c_off = c * kChunk;
      const bool was_streamed = streamed(c);
      if (x.cs.nr_dirty == 0) {
        w.clean_ms[c] = now;
        w.streamed_ms[c] = 0;
      } else if (at_random && !was_streamed) {
        w.clean_ms[c] = now - kFreshMs - 1;
      } else if (x.cs.nr_writeback == 0 && x.cs.nr_dirty == x.pages &&
                 (was_streamed || now - w.clean_ms[c] <= kFreshMs)) {
        if (!was_streamed) w.streamed_ms[c] = now;
        w.supers[c * kChunk / kSuperChunk].dirty = Watched::Super::kUnknown;
        if (run_end != c_off) flush_run();
        if (run_end == run_start) run_start = c_off;
        run_end = c_off + x.pages * kPage;
        continue;
      }
      flush_run();
    }
    flush_run();
    // Super-chunks none of whose chunks was seen clean within kFreshMs (a
    // file written at random) cannot hold a stream's chunk until they are
    // clean again: quiet.
    for (size_t s = 0; s < supers; ++s) {
      Watched::Super& sup = w.supers[s];
      if (now < sup.next_ms) continue;
      const auto [first, last] = chunks_of(s);
      bool fresh = false;
      for (size_t c = first; c < last && !fresh; ++c) {
        fresh = now - w.clean_ms[c] <= kFreshMs || streamed(c);
      }
      if (!fresh) sup.next_ms = now + kQuietMs;
    }
    return true;
  }

  const char* mountpoint_;
  UniqueFd tree_;  // Root of a detached clone of the mount, while files_ is not empty.
  std::unordered_map<uint64_t, Watched> files_;
  bool disabled_ = false;
};

// The helper's main loop: messages on descriptor 0 until end of file;
// descriptor 2 stays for log messages.
void HelperMain(const char* mountpoint) {
  prctl(PR_SET_NAME, "vssfs-flush");
  Helper helper(mountpoint);
  char buf[4096];
  size_t have = 0;
  int64_t next_tick = 0;
  while (true) {
    int timeout = -1;
    if (!helper.idle()) {
      const int64_t now = NowMs();
      if (now >= next_tick) {
        helper.Tick();
        next_tick = now + kTickMs;
      }
      timeout = static_cast<int>(std::max<int64_t>(0, next_tick - NowMs()));
    }
    pollfd p{0, POLLIN, 0};
    const int r = poll(&p, 1, timeout);
    if (r < 0 && errno != EINTR) return;
    if (r <= 0) continue;
    const ssize_t n = read(0, buf + have, sizeof buf - have);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    have += static_cast<size_t>(n);
    size_t used = 0;
    for (; have - used >= sizeof(FlushBehind::Message); used += sizeof(FlushBehind::Message)) {
      FlushBehind::Message m;
      std::memcpy(&m, buf + used, sizeof m);
      const bool was_idle = helper.idle();
      if (m.op == kWatch) {
        helper.Watch(m.nodeid, m.generation);
      } else if (m.op == kUnwatch) {
        helper.Unwatch(m.nodeid);
      }
      if (was_idle && !helper.idle()) next_tick = NowMs() + kTickMs;
    }
    std::memmove(buf, buf + used, have - used);
    have -= used;
  }
}

}  // namespace

int OpenRegularByHandle(int tree, uint64_t nodeid, uint32_t generation, UniqueFd* out) {
  struct {
    file_handle h;
    uint32_t words[3];
  } fh{};
  fh.h.handle_bytes = sizeof fh.words;
  fh.h.handle_type = 0x81;  // FILEID_INO64_GEN: node id (high, low word), generation.
  fh.words[0] = static_cast<uint32_t>(nodeid >> 32);
  fh.words[1] = static_cast<uint32_t>(nodeid);
  fh.words[2] = generation;
  // O_PATH runs no open code of the file's type, so nothing happens to a
  // FIFO or device until the type is known.
  UniqueFd path(open_by_handle_at(tree, &fh.h, O_PATH | O_CLOEXEC));
  if (!path) return -errno;
  struct statx stx;
  if (statx(path.get(), "", AT_EMPTY_PATH | AT_STATX_DONT_SYNC, STATX_TYPE, &stx) != 0) {
    return -errno;
  }
  if (!S_ISREG(stx.stx_mode)) return -ESTALE;
  // O_NOATIME: the helper's look must not count as an access of the file
  // (vssfs would update its access time).
  UniqueFd fd(OpenNoAtime(O_RDONLY | O_CLOEXEC | O_NOCTTY,
                          [&](int flags) { return open(ProcPath(path.get()).path, flags); }));
  if (!fd) return -errno;
  *out = std::move(fd);
  return 0;
}

bool FlushBehind::Supported(std::string* why) {
  Cachestat cs{};
  if (DoCachestat(-1, 0, 0, &cs) != 0 && errno == ENOSYS) {
    *why = "the kernel has no cachestat(2) (Linux 6.5+)";
    return false;
  }
  if (syscall(kSysOpenTree, -1, "", 0U) != 0 && errno == ENOSYS) {
    *why = "the kernel has no open_tree(2) (Linux 5.2+)";
    return false;
  }
  if (!HasCapability(CAP_SYS_ADMIN) || !HasCapability(CAP_DAC_READ_SEARCH)) {
    *why = "it needs CAP_SYS_ADMIN and CAP_DAC_READ_SEARCH (run vssfs as root)";
    return false;
  }
  return true;
}

Result<std::unique_ptr<FlushBehind>> FlushBehind::Start(const std::string& mountpoint) {
  int p[2];
  if (pipe2(p, O_CLOEXEC) != 0) return Status::FromErrno(errno, "pipe");
  UniqueFd read_end(p[0]), write_end(p[1]);
  std::unique_ptr<FlushBehind> fb(new FlushBehind());
  const char* path = mountpoint.c_str();
  Result<pid_t> pid =
      ForkHelper(read_end.get(), -1, /*keep_stderr=*/true, [path] { HelperMain(path); });
  if (!pid.ok()) return Status::FromErrno(pid.status().error(), "fork the flush-behind helper");
  fb->pid_ = pid.value();
  fb->to_helper_ = std::move(write_end);
  try {
    fb->forwarder_ = std::thread([raw = fb.get()] { raw->Forward(); });
  } catch (const std::system_error& e) {
    return Status::Error(e.code().value(), "start the flush-behind thread");
  }
  return fb;
}

FlushBehind::~FlushBehind() {
  {
    std::lock_guard lock(mutex_);
    stop_ = true;
  }
  cv_.notify_all();
  // The helper goes first, so that a forwarder blocked on a full pipe gets
  // EPIPE (it blocks SIGPIPE) instead of waiting for it.
  if (pid_ > 0) kill(pid_, SIGKILL);
  if (forwarder_.joinable()) forwarder_.join();
  to_helper_.reset();
  if (pid_ > 0) ReapHelper(pid_);
}

void FlushBehind::Push(uint32_t op, const Inode& inode) {
  const uint64_t nodeid = inode.nodeid;
  if (op == kUnwatch) {
    // A file opened and closed again before the forwarder sent its watch
    // (most short-lived files): the helper need not hear of it at all.
    for (auto it = queue_.rbegin(); it != queue_.rend(); ++it) {
      if (it->nodeid == nodeid) {
        if (it->op == kWatch) {
          queue_.erase(std::next(it).base());
          return;
        }
        break;
      }
    }
  }
  queue_.push_back(Message{op, inode.generation, nodeid});
  // Only a forwarder waiting for work needs a wake-up: one collecting a
  // batch sends the queue when its time is up. (Waking it for every message
  // cost a cross-CPU wake-up per file created.)
  if (forwarder_idle_) {
    forwarder_idle_ = false;
    cv_.notify_one();
  }
}

void FlushBehind::WriterOpened(Inode& inode) {
  std::lock_guard lock(mutex_);
  if (inode.open_writers.fetch_add(1) == 0 && S_ISREG(inode.type)) Push(kWatch, inode);
}

void FlushBehind::WriterClosed(Inode& inode) {
  std::lock_guard lock(mutex_);
  if (inode.open_writers.fetch_sub(1) == 1 && S_ISREG(inode.type)) Push(kUnwatch, inode);
}

void FlushBehind::Forward() {
  sigset_t pipe_signal;
  sigemptyset(&pipe_signal);
  sigaddset(&pipe_signal, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &pipe_signal, nullptr);
  std::unique_lock lock(mutex_);
  while (true) {
    // Idle again after every wake-up that found nothing: a message can be
    // pushed and cancelled again between the notification and the wake-up.
    while (!stop_ && queue_.empty()) {
      forwarder_idle_ = true;
      cv_.wait(lock);
    }
    forwarder_idle_ = false;
    // Collect for a while: one write and one wake-up of the helper per
    // batch, and files closed meanwhile cancel out (Push).
    cv_.wait_for(lock, std::chrono::milliseconds(kBatchMs), [&] { return stop_; });
    if (queue_.empty()) {
      if (stop_) return;
      continue;
    }
    std::vector<Message> batch(queue_.begin(), queue_.end());
    queue_.clear();
    lock.unlock();
    // Blocking writes: the helper reads between its looks at the files.
    const char* p = reinterpret_cast<const char*>(batch.data());
    size_t left = batch.size() * sizeof(Message);
    while (left > 0) {
      const ssize_t n = write(to_helper_.get(), p, left);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;  // The helper is gone: nothing more to do.
      p += n;
      left -= static_cast<size_t>(n);
    }
    lock.lock();
  }
}

}  // namespace vssfs::fs
