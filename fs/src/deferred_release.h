// DeferredRelease: drops references on a thread of its own, for objects
// whose destruction may block.
//
// The last descriptor of a deleted file is the one whose close makes the
// backing filesystem free the file's blocks and inode (ext4: a journal
// transaction, tens of microseconds for a small file). A FORGET that drops
// the daemon's last reference to such a file would do that on the worker
// that took it, before the next request that worker reads: with the CPU
// pickup (cpu_pickup.h) that next request is usually its sender's next one,
// which then waits for the close. Handed to DeferredRelease, the close runs
// on its thread instead, in parallel with both.
//
// The thread runs on every CPU of the process's main thread and as
// SCHED_OTHER, whatever the thread that starts it (a worker pinned to one CPU
// as SCHED_IDLE, cpu_pickup.h) runs as.
//
// Objects handed over are dropped in the order given, within about kTickMs;
// all of them by the time the destructor returns. While references come, the
// thread looks for them every kTickMs rather than being woken for each (a
// wake-up of an idle CPU costs the waker, on a VM, more than a close); after
// kIdleTicks without any it sleeps until the next one wakes it.
//
// Thread-safety: every member function may be called from any thread. Lock
// order: mutex_ is a leaf lock (never held while references are dropped).
#ifndef VSSFS_FS_SRC_DEFERRED_RELEASE_H_
#define VSSFS_FS_SRC_DEFERRED_RELEASE_H_

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace vssfs::fs {

class DeferredRelease {
 public:
  static constexpr int kTickMs = 1;
  static constexpr int kIdleTicks = 100;

  DeferredRelease() = default;
  // Drops everything still queued (on the calling thread if the thread
  // could not be started), then ends the thread.
  ~DeferredRelease();
  DeferredRelease(const DeferredRelease&) = delete;
  DeferredRelease& operator=(const DeferredRelease&) = delete;

  // Takes over `ref` and drops it on the release thread, which is started
  // on the first call (not before: the daemon may fork into the background
  // after construction). If the thread cannot be started or memory runs out,
  // `ref` is dropped here, on the caller's thread. Never throws.
  void Add(std::shared_ptr<void> ref) noexcept;

  // Drops everything queued now, on the calling thread (a caller out of
  // descriptors needs them closed before it tries again). Returns how many.
  size_t Flush() noexcept;

  // References dropped so far (by the thread or Flush()).
  uint64_t released() const;
  // Whether the thread waits for the next reference without a timeout.
  bool asleep() const;

 private:
  void Run();
  // Makes the calling thread as described above.
  static void Unpin();

  mutable std::mutex mutex_;
  std::condition_variable cv_;
  std::vector<std::shared_ptr<void>> queue_;  // guarded by mutex_
  bool stop_ = false;                         // guarded by mutex_
  bool started_ = false;                      // guarded by mutex_
  bool asleep_ = false;                       // guarded by mutex_: waits without a timeout
  uint64_t released_ = 0;                     // guarded by mutex_
  std::thread thread_;
};

}  // namespace vssfs::fs

#endif  // VSSFS_FS_SRC_DEFERRED_RELEASE_H_
