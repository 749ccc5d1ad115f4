// InodePruner: keeps the kernel's inode cache, and with it the daemon's
// descriptors, within a budget.
//
// Every inode the kernel has looked up holds an O_PATH descriptor in the
// InodeTable, and the kernel forgets an inode only under memory pressure.
// Without a bound, walking a tree larger than the descriptor limit (a
// backup, a search, `ls -lR`) would make every later lookup, create and
// open fail with EMFILE. When the table's descriptors pass the budget, a
// round of the pruner brings them down to nine tenths of it, the entries
// used longest ago first (docs/LIVE_PATH.md, "Descriptor budget"):
//
//   1. Eviction: idle regular files' descriptors are closed, their handles
//      kept (InodeTable::EvictDescriptors), down to half the budget; the
//      kernel keeps its inodes.
//   2. Pruning, for what is left over the target (directories, symlinks,
//      files eviction cannot close): the kernel is asked to drop inodes
//      (FUSE_NOTIFY_PRUNE, FUSE protocol 7.45, Linux 6.18). It drops those
//      it holds no reference to (no open file, no working directory, no
//      cached child) and sends FORGET for them, which closes their
//      descriptors. A later access looks the name up again, under the same
//      node id.
//
// Either may be off: eviction needs CAP_DAC_READ_SEARCH, pruning a recent
// kernel, and `-o inode_release` can choose one.
//
// Thread-safety: Poke() and Relieve() may be called from any thread; the
// pruning runs on the pruner's own thread. Lock order: mutex_ is a leaf
// lock; the table's lock is never held while it is.
#ifndef VSSFS_FS_SRC_INODE_PRUNER_H_
#define VSSFS_FS_SRC_INODE_PRUNER_H_

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "inode_table.h"

namespace vssfs::fs {

// The default inode budget for a descriptor limit: three quarters of it,
// the rest being left for open files, the store and the helpers.
size_t DefaultInodeBudget(uint64_t descriptor_limit);

class InodePruner {
 public:
  // Sends one prune notification naming `ids` to the kernel; returns 0 or a
  // negative errno (-ENOSYS or -EINVAL: the kernel cannot prune).
  using Sender = std::function<int(const std::vector<uint64_t>& ids)>;

  // Starts the pruner's thread. `table` must outlive the pruner; `budget`
  // is the number of entries (root included) the table should not exceed,
  // at least 16.
  InodePruner(InodeTable* table, size_t budget, Sender send);
  // Stops the pruner (Stop()).
  ~InodePruner();
  InodePruner(const InodePruner&) = delete;
  InodePruner& operator=(const InodePruner&) = delete;

  // Stops and joins the thread; Poke() and Relieve() do nothing after. Call
  // before the session's /dev/fuse descriptor is closed.
  void Stop();
  // Never ask the kernel to prune (FUSE protocol older than 7.45, or
  // `-o inode_release=handles`); warn once if descriptors pass the budget
  // and nothing can bring them down.
  // `why` (static storage) is for the warning.
  void MarkUnsupported(const char* why = kKernelCannotPrune) {
    why_unsupported_ = why;
    supported_ = false;
  }
  static constexpr const char* kKernelCannotPrune = "FUSE_NOTIFY_PRUNE needs Linux 6.18";

  // The table grew past the budget: prune soon. Cheap.
  void Poke();
  // For a request that ran out of descriptors (EMFILE/ENFILE): releases a
  // tenth of the budget more than usual and waits up to `wait` for some
  // descriptors to be closed (evicted, or forgotten by the kernel). At most
  // kMaxRelieving requests wait at once (the others return false at once),
  // so that threads remain to take the kernel's FORGETs. Returns whether
  // descriptors were released meanwhile.
  bool Relieve(std::chrono::milliseconds wait);
  static constexpr int kMaxRelieving = 2;

  size_t budget() const { return budget_; }
  // False once the kernel refused a prune notification.
  bool supported() const { return supported_.load(); }
  // Node ids sent to the kernel so far.
  uint64_t sent() const { return sent_.load(); }

 private:
  void Run();
  // Warns, once, that nothing can bring `size` descriptors down.
  void WarnUnsupported(size_t size);
  // Evicts descriptors from `held` (as the round counted them) down to
  // `target`; returns how many it closed.
  size_t EvictTo(size_t held, size_t target);
  // Past four entries per inode of the budget, evicted ones included, asks
  // the kernel to forget the evicted entries used longest ago, so that the
  // table (and the kernel's cache) stays bounded too. No waiting.
  void PruneEvicted();
  // Sends `ids` in notifications of at most 512; `size` is for the log.
  // Returns how many were sent; marks the kernel unsupported if it refuses.
  size_t Send(const std::vector<uint64_t>& ids, size_t size);
  // One round: asks the kernel to forget enough entries to bring the table
  // from `size` descriptors (as the round counted them) to `target`, naming
  // them in *named. Returns the number of ids sent.
  size_t PruneTo(size_t size, size_t target, std::vector<uint64_t>* named);

  InodeTable* const table_;
  const size_t budget_;
  const size_t low_;  // Target of a round: nine tenths of the budget.
  const Sender send_;

  std::mutex mutex_;
  std::condition_variable cv_;
  bool stop_ = false;                 // Guarded by mutex_.
  std::atomic<int> relieving_{0};     // Requests waiting in Relieve().
  bool warned_unsupported_ = false;   // Pruner thread only.
  bool poked_ = false;                // Guarded by mutex_.
  size_t relieve_ = 0;                // Extra entries to drop in the next round; guarded by mutex_.
  std::atomic<bool> pending_{false};  // A Poke() not yet taken up.
  std::atomic<bool> supported_{true};
  // Why supported_ is false; set before it is.
  std::atomic<const char*> why_unsupported_{kKernelCannotPrune};
  std::atomic<uint64_t> sent_{0};
  bool announced_ = false;           // Pruner thread only.
  bool announced_eviction_ = false;  // Pruner thread only.
  int fruitless_ = 0;                // Rounds in a row that freed nothing; pruner thread only.
  std::chrono::steady_clock::time_point last_stuck_warning_{};  // Pruner thread only.
  std::thread thread_;
};

}  // namespace vssfs::fs

#endif  // VSSFS_FS_SRC_INODE_PRUNER_H_
