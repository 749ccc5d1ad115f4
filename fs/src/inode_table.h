// InodeTable: the daemon's record of every inode the kernel knows about.
//
// Each live-tree inode the kernel has looked up is held open with an O_PATH
// descriptor, so the backing inode (and with it its inode number) cannot be
// freed and reused while the kernel may still name it (an evicted entry
// keeps only a file handle: see below for what holds then). FUSE node ids
// are the backing inode numbers, so they are stable across remounts and the
// same file reached by two hard links is one node. Two ids are swapped: the
// root of the volume is FUSE_ROOT_ID (1), and a backing inode numbered 1 (if
// the backing filesystem has one below the root) takes the root's backing
// number. Node ids with the top bit set are reserved for the .snapshot tree.
//
// A node id is reused when the backing filesystem reuses an inode number,
// which it can only do once the kernel has forgotten the node (the O_PATH
// descriptor is closed then). Each entry gets a new FUSE generation, so
// that a file handle (node id and generation) taken of the old file does
// not open the new one (short of 2^32 entries in between: the counter is
// 32 bits, as the kernel's). Generations count up per mount; the root's is
// 0. A file the kernel forgot and looks up again has a new one too.
//
// Every entry not evicted (below) holds a descriptor, so the number of
// entries holding one is bounded by the process's descriptor limit. The table keeps a use order
// (Find and Acquire stamp an entry with the count of lookups so far) and
// calls a pressure hook when an entry with a descriptor takes it past a set
// count. InodePruner (inode_pruner.h) then brings the count down in two
// ways, the entries used longest ago first:
//
//   * Eviction (EvictDescriptors): an idle regular file's descriptor is
//     closed and its backing file handle kept instead; Find reopens it by
//     handle on the next use. The kernel keeps its inode; nothing is looked
//     up again. Closing the descriptor lets the backing filesystem reuse the
//     inode number once the file is deleted, so only files with a link are
//     evicted, a request deleting a file's last name holds its entry (Find
//     reopens it) until the deletion is done, and Acquire compares handles:
//     a different file under an evicted entry's number (deleted and reused
//     behind the mount's back) gets a new entry and generation, which makes
//     the kernel drop the old inode. Needs CAP_DAC_READ_SEARCH
//     (EnableEviction).
//   * Pruning: the pruner asks the kernel to forget entries, which closes
//     their descriptors when the FORGETs come (directories, symlinks).
//
// Thread-safety: all methods are safe to call concurrently. Lock order: the
// table's mutex_ is a leaf lock (nothing else is taken while holding it).
#ifndef VSSFS_FS_SRC_INODE_TABLE_H_
#define VSSFS_FS_SRC_INODE_TABLE_H_

#include <sys/stat.h>
#include <sys/types.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "deferred_release.h"
#include "vssfs/cow_store/unique_fd.h"

namespace vssfs::fs {

// First node id of the range reserved for virtual and snapshot inodes.
inline constexpr uint64_t kReservedNodeIdBase = uint64_t{1} << 63;
// The MOUNT/.snapshot directory.
inline constexpr uint64_t kSnapshotDirNodeId = kReservedNodeIdBase | 1;

struct Inode {
  uint64_t nodeid = 0;
  ino_t backing_ino = 0;
  mode_t type = 0;          // S_IFMT bits; never changes for an inode.
  uint32_t generation = 0;  // FUSE generation of this entry; never changes.
  // O_PATH descriptor of the backing inode. Invalid only while the entry is
  // evicted (`handle` set); both change only under InodeTable::mutex_, and
  // only while no request holds the entry (see InodeTable::Find).
  cow_store::UniqueFd fd;
  std::string handle;  // Backing file handle while evicted, else empty.
  // InodeTable's lookup count when the entry was last used (relaxed).
  std::atomic<uint64_t> last_use{0};
  // Kernel lookup count; guarded by InodeTable::mutex_.
  uint64_t nlookup = 0;
  // Whether the inode has a "security.capability" xattr: the kernel asks
  // before every write, so a known absence is answered from memory.
  enum class Caps : int { kUnknown, kAbsent, kPresent };
  std::atomic<Caps> caps{Caps::kUnknown};
  // Open file handles that may write. With the writeback cache, data of such
  // a file may still be dirty in the kernel, not yet in the backing file.
  std::atomic<int> open_writers{0};
  // Open file handles of any kind (regular files only): the kernel cannot
  // forget the inode while one is open.
  std::atomic<int> open_files{0};
  // Serialises WRITE requests to this inode (see OpWriteBuf). A leaf lock.
  std::mutex write_mutex;
  // Large writes (OpWriteBuf's UncachedWrite), guarded by write_mutex.
  // dontcache_unsupported: the kernel or backing filesystem refused
  // RWF_DONTCACHE. direct_fd: O_DIRECT descriptor for large aligned writes
  // when it did, opened on first use; direct_unsupported: the backing
  // filesystem refused O_DIRECT for this file too.
  bool dontcache_unsupported = false;
  cow_store::UniqueFd direct_fd;
  bool direct_unsupported = false;
  // O_DIRECT descriptor for large aligned reads, opened on first use under
  // read_mutex (a leaf lock); -1 after the filesystem refused O_DIRECT.
  std::mutex read_mutex;
  std::atomic<int> direct_read_fd{-2};
  ~Inode() {
    int fd = direct_read_fd.load();
    if (fd >= 0) ::close(fd);
  }

  // Copy-on-write state (cow.h): what is already preserved for the latest
  // snapshot `cow_epoch` (0: nothing loaded). Guarded by cow_mutex, which is
  // taken after write_mutex.
  std::mutex cow_mutex;
  uint64_t cow_epoch = 0;
  bool cow_inode = false;            // Attributes preserved (a record at >= cow_epoch).
  bool cow_listing = false;          // Directory entries preserved.
  uint64_t cow_size = 0;             // Size at the snapshot's instant, once cow_inode.
  std::vector<uint64_t> cow_blocks;  // Bitset of blocks with a record.
  // Blocks being preserved by some request right now (bitset); cow_cv is
  // signalled when a preservation ends. Concurrent WRITEs of one file
  // preserve disjoint blocks in parallel and share group commits.
  std::vector<uint64_t> cow_busy;
  std::condition_variable cow_cv;
  // The latest snapshot when vssfs created this inode: no snapshot up to it
  // contains the inode, so nothing of it needs preserving while that is
  // still the latest. kNoEpoch when unknown.
  static constexpr uint64_t kNoEpoch = UINT64_MAX;
  std::atomic<uint64_t> born{kNoEpoch};
  // The inode lost its last name but lives on as a kept file for snapshots:
  // its backing link count is one more than the live tree's.
  std::atomic<bool> kept{false};

  // Symlinks only: where the kernel last looked the link up. A symlink's own
  // xattrs can only be reached through a path (backing_xattr.h).
  mutable std::mutex location_mutex;
  std::weak_ptr<Inode> location_parent;  // Guarded by location_mutex.
  std::string location_name;             // Guarded by location_mutex.
};

// A backing path naming symlink `inode` now, checked against its descriptor:
// where the kernel last looked it up, else where its descriptor's own name
// is (which is gone when that name was unlinked and another link remains).
// Empty for other types. Returns 0 or -ESTALE if no path is found.
int LiveSymlinkPath(const Inode& inode, std::string* path);

class InodeTable {
 public:
  // `root_fd`: O_PATH descriptor of the backing root; `root` its stat.
  InodeTable(cow_store::UniqueFd root_fd, const struct stat& root);

  // Node id for a backing inode number; 0 if the number falls in the
  // reserved range (the caller reports EOVERFLOW).
  uint64_t NodeIdFor(ino_t backing_ino) const;

  // Records one kernel lookup of the inode `st` describes, reached through
  // `fd` (consumed: kept for a new entry, closed if the inode is known).
  // Returns the inode; nullptr only if st's number is reserved.
  std::shared_ptr<Inode> Acquire(cow_store::UniqueFd fd, const struct stat& st);

  // The inode for `nodeid`, or nullptr with errno ESTALE if the kernel holds
  // no reference. Marks it used. An evicted entry is reopened by handle
  // first; nullptr with errno set if that fails (ESTALE: the file is gone;
  // EMFILE: out of descriptors, the caller may have some freed and retry).
  // The returned entry's `fd` stays valid while the caller holds it.
  std::shared_ptr<Inode> Find(uint64_t nodeid) const;

  // Allows eviction: `mount_fd` (borrowed; not O_PATH) is a descriptor on
  // the backing filesystem to open handles on. Returns 0, or a negative
  // errno if a handle of it cannot be opened (EPERM without
  // CAP_DAC_READ_SEARCH; EOPNOTSUPP: no file handles). Call once, before
  // the table is shared.
  int EnableEviction(int mount_fd);
  bool eviction_enabled() const { return handle_mount_.load(std::memory_order_relaxed) >= 0; }

  // Closes the descriptors of up to `count` regular files used longest ago
  // that no request holds, are not open and have a link, keeping their
  // handles instead. Returns how many it closed.
  size_t EvictDescriptors(size_t count);

  // Drops `n` kernel references; forgets the inode at zero. The entry's
  // descriptors are closed on a thread of the table's (deferred_release.h)
  // if nothing else holds it.
  void Forget(uint64_t nodeid, uint64_t n);

  // Node ids of at most `count` entries with a descriptor (with `evicted`:
  // evicted entries) used longest ago, oldest first: not the root, nor an
  // open file (the kernel cannot drop an inode in use).
  std::vector<uint64_t> LeastRecentlyUsed(size_t count, bool evicted = false) const;
  // Node ids of the entries used longest ago, oldest first, evicted or
  // not, up to and including the `count`th that holds a descriptor: not the
  // root, nor an open file. An evicted file's dentry keeps its directory
  // cached in the kernel, so pruning a directory takes its evicted files.
  std::vector<uint64_t> OldestHolding(size_t count) const;

  // Moves the entries among `ids` that are still in the table to the end
  // of the use order (the kernel kept them: they are in use).
  void MarkUsed(const std::vector<uint64_t>& ids);

  // Calls `hook` (outside the table's lock, on the thread that called
  // Acquire or Find) whenever a new or reopened entry makes descriptors()
  // larger than `limit`. Set once, before the table is shared; `hook` must
  // stay callable while the table is.
  void SetPressureHook(size_t limit, std::function<void()> hook);

  // Inode::born outlives the entry: an entry forgotten with a birth epoch
  // leaves it behind for the next entry of its node id (the same file: a
  // backing inode number is reused only after the file is deleted, which
  // the kernel does through a lookup of it). A snapshot cut makes every
  // recorded birth stale; ClearBirths() drops them.
  void ClearBirths();

  // Closes now, on the calling thread, the descriptors of forgotten entries
  // still queued for release. Returns how many entries it dropped.
  size_t FlushReleases() { return release_.Flush(); }
  // Closes `fd` on the table's release thread (an open file's descriptor at
  // RELEASE: its close may do the backing filesystem's work).
  void CloseLater(cow_store::UniqueFd fd);

  // Entries dropped by Forget so far.
  uint64_t forgotten() const { return forgotten_.load(std::memory_order_relaxed); }
  // Descriptors released so far, by Forget (closed within a millisecond,
  // or by FlushReleases()) or by eviction.
  uint64_t released() const { return forgotten() + evictions_.load(std::memory_order_relaxed); }
  // Entries now evicted, and entries holding a descriptor.
  size_t evicted() const { return evicted_.load(std::memory_order_relaxed); }
  size_t descriptors() const;

  const std::shared_ptr<Inode>& root() const { return root_; }
  dev_t dev() const { return dev_; }
  size_t size() const;

 private:
  mutable std::shared_mutex mutex_;
  DeferredRelease release_;  // Forgotten entries' last references, released descriptors.
  std::unordered_map<uint64_t, std::shared_ptr<Inode>> inodes_;
  std::shared_ptr<Inode> root_;
  uint32_t last_generation_ = 0;  // Guarded by mutex_.
  // Lookups so far: the clock of Inode::last_use.
  mutable std::atomic<uint64_t> lookups_{0};
  std::atomic<uint64_t> forgotten_{0};
  // Entries evicted now (changed under mutex_), and evictions so far.
  mutable std::atomic<size_t> evicted_{0};
  mutable std::atomic<uint64_t> evictions_{0};
  std::atomic<int> handle_mount_{-1};  // Set once by EnableEviction.
  // Birth epochs of forgotten entries (see ClearBirths); guarded by mutex_.
  std::unordered_map<uint64_t, uint64_t> births_;
  size_t pressure_limit_ = SIZE_MAX;
  std::function<void()> pressure_hook_;
  ino_t root_backing_ino_;
  dev_t dev_;

  // Evicts `inode` if nothing holds it but the table (its map slot is
  // `slot`). Returns whether it did. Caller holds mutex_ exclusively.
  bool EvictLocked(const std::shared_ptr<Inode>& slot) const;
  // An entry's place in the use order, and whether it holds a descriptor.
  struct Use {
    uint64_t last_use;
    uint64_t id;
    bool held;
    // Ties (entries stamped by one MarkUsed) in node id order.
    bool operator<(const Use& o) const {
      return last_use != o.last_use ? last_use < o.last_use : id < o.id;
    }
  };
  // The entries for which `eligible(const Inode&)` holds, unsorted: never
  // the root, nor an open file. `eligible` runs under the shared lock.
  template <typename Pred>
  std::vector<Use> Uses(Pred eligible) const;
  // Node ids of up to `count` of those, used longest ago first.
  template <typename Pred>
  std::vector<uint64_t> Oldest(size_t count, Pred eligible) const;
  // Gives evicted `inode` its descriptor back. Caller holds mutex_
  // exclusively.
  void ReviveLocked(Inode& inode, cow_store::UniqueFd fd) const;
  // Whether a new or reopened entry takes descriptors() past the limit.
  bool PressedLocked() const { return inodes_.size() - evicted_ > pressure_limit_; }
};

}  // namespace vssfs::fs

#endif  // VSSFS_FS_SRC_INODE_TABLE_H_
