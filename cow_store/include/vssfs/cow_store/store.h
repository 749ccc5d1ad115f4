// Store: the copy-on-write block store and snapshot catalogue of one volume.
//
// A snapshot is an epoch number. Taking one writes a single catalogue record
// (O(1)); nothing is copied. Afterwards, the live-path code preserves the
// state an object had at the latest snapshot before it first changes it:
//
//   * a data block of a file   -> a *data record* (ino, block, epoch) naming
//                                 a content-addressed block (or "zero");
//   * an inode's attributes    -> an *inode record* (ino, epoch): stat fields,
//                                 every xattr, a symlink's target;
//   * a directory's entries    -> a *listing* (dir ino, epoch): name, inode
//                                 number, type and file handle per entry;
//   * a file losing its last   -> a *kept record* (ino): the file stays alive
//     name                        under the store's keep directory.
//
// A record keyed with epoch E holds what every snapshot S with
// prev < S <= E saw, where prev is the epoch of the object's previous record
// (or 0). So snapshot S reads an object from the first record with epoch
// >= S, and from the live tree when there is none. Deleting a snapshot drops
// the records no remaining snapshot resolves to and frees blocks whose
// reference count falls to zero (docs/FORMAT.md has the details).
//
// Blocks are identified by XXH3-128 of their content plus a collision
// sequence number, and a hash match is always verified byte for byte before
// a block is shared, so two different blocks are never merged. All-zero
// blocks are not stored.
//
// Durability: Preserve() returns only when the blocks and records are on
// stable storage (pack fdatasync, then a synchronous LMDB commit); callers
// overwrite the live object only after it returns (invariant 4). Concurrent
// Preserve() calls share one commit (group commit).
//
// Thread-safety: every method may be called from any thread concurrently.
// Internal lock order: gate -> commit_mutex -> pack_mutex; packs_mutex is a
// leaf.
#ifndef VSSFS_COW_STORE_STORE_H_
#define VSSFS_COW_STORE_STORE_H_

#include <sys/types.h>
#include <time.h>

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "vssfs/cow_store/status.h"

namespace vssfs::cow_store {

using Ino = uint64_t;
using SnapId = uint64_t;  // Epoch of a snapshot; 1, 2, 3, ... never reused.

// Default data block size: chosen by measurement (docs/FORMAT.md).
inline constexpr uint32_t kDefaultBlockSize = 64 * 1024;

struct Guid {
  std::array<uint8_t, 16> bytes{};
  // Random (version 4) GUID.
  static Guid Random();
  // Accepts "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx", optionally in braces.
  static std::optional<Guid> Parse(std::string_view text);
  // Lower-case, without braces.
  std::string ToString() const;
  bool operator==(const Guid&) const = default;
};

// Whether a snapshot has a writable clone (see CloneChange): none, writable
// (auto-recovery in progress), or frozen (recovery complete; read-only for
// good).
enum class CloneState : uint8_t { kNone = 0, kWritable = 1, kFrozen = 2 };

struct SnapshotInfo {
  SnapId id = 0;
  Guid guid;
  std::string name;
  int64_t created_ns = 0;  // CLOCK_REALTIME.
  // False when fsck found data this snapshot needs missing or corrupt; the
  // message says what. Reads of the damaged parts fail with EIO.
  bool intact = true;
  std::string damage;
  // Why the snapshot is held ("" when it is not): a held snapshot cannot be
  // deleted, by retention or by hand, until released.
  std::string hold;
  CloneState clone = CloneState::kNone;
  int64_t frozen_ns = 0;  // When the clone was frozen (CLOCK_REALTIME).
  // A target-file-list snapshot protects and shows only the objects in
  // `covered` (backing inode numbers of the listed files and of their
  // directories, up to the root); otherwise it covers the whole volume.
  bool partial = false;
  std::vector<Ino> covered;  // Sorted, when partial.
};

// How many snapshots to keep: the newest `keep_last` that are not held (0:
// no limit), and only those younger than `max_age_s` seconds (0: no
// limit). Held snapshots are always kept and do not count.
struct RetentionPolicy {
  uint64_t keep_last = 0;
  uint64_t max_age_s = 0;
  bool active() const { return keep_last != 0 || max_age_s != 0; }
};

using XattrList = std::vector<std::pair<std::string, std::string>>;

// An inode's attributes as a snapshot shows them.
struct InodeMeta {
  uint32_t mode = 0;
  uint32_t uid = 0;
  uint32_t gid = 0;
  uint64_t nlink = 0;
  uint64_t size = 0;
  uint64_t blocks = 0;  // st_blocks (512-byte units).
  uint64_t rdev = 0;
  struct timespec atime {};
  struct timespec mtime {};
  struct timespec ctime {};
  XattrList xattrs;     // Every xattr, in backing order.
  std::string symlink;  // Target, for symlinks.
};

struct DirEntry {
  std::string name;
  Ino ino = 0;
  uint8_t type = 0;    // DT_* value.
  std::string handle;  // Opaque backing file handle (name_to_handle_at).
};

// Where a snapshot's block of a file comes from.
struct BlockLocation {
  enum class Kind { kLive, kZero, kStored };
  Kind kind = Kind::kLive;
  uint32_t length = 0;  // kZero/kStored: bytes of file data in the block.
  uint32_t pack = 0;    // kStored: pack file number and offset.
  uint64_t offset = 0;
};

// What is preserved for one object as of one epoch: records at that epoch or
// later. An object with such a record must not be preserved again for that
// epoch (the record already holds what the snapshot shows).
struct PreservedState {
  bool inode = false;
  uint64_t size = 0;  // Preserved size, when `inode`.
  bool listing = false;
  bool kept = false;
  std::vector<uint64_t> blocks;  // Sorted block numbers with data records.
};

// A batch of records to preserve for one epoch. Build it, then pass it to
// Store::Preserve(). Data is copied in.
class Preservation {
 public:
  void AddInode(Ino ino, InodeMeta meta) { inodes_.emplace_back(ino, std::move(meta)); }
  void AddListing(Ino dir, std::vector<DirEntry> entries) {
    listings_.emplace_back(dir, std::move(entries));
  }
  // `data` is the block's content at the epoch (block_size() bytes, fewer
  // for the block holding end of file).
  void AddBlock(Ino ino, uint64_t block, std::string_view data) {
    BlockItem item;
    item.ino = ino;
    item.block = block;
    item.data.assign(data);
    blocks_.push_back(std::move(item));
  }
  void AddKept(Ino ino, std::string handle) { kept_.emplace_back(ino, std::move(handle)); }
  bool empty() const {
    return inodes_.empty() && listings_.empty() && blocks_.empty() && kept_.empty();
  }

 private:
  friend class Store;
  struct BlockItem {
    Ino ino = 0;
    uint64_t block = 0;
    std::string data;
    // Filled by Store::Preserve.
    bool zero = false;
    std::array<uint8_t, 16> hash{};
    bool have_candidate = false;  // `key` names a verified identical block.
    std::string key;
    bool appended = false;  // Written to pack/offset by this batch.
    uint32_t pack = 0;
    uint64_t offset = 0;
  };
  std::vector<std::pair<Ino, InodeMeta>> inodes_;
  std::vector<std::pair<Ino, std::vector<DirEntry>>> listings_;
  std::vector<BlockItem> blocks_;
  std::vector<std::pair<Ino, std::string>> kept_;
};

// An object of a snapshot's clone as the clone stores it: the attributes,
// and `base_limit`, the byte offset from which the clone's file reads zeros
// where it has no block of its own (the snapshot's data below it shows
// through; a truncation lowers it, an object born in the clone has 0).
struct CloneInode {
  InodeMeta meta;
  uint64_t base_limit = 0;
};

// A batch of changes to the writable clone of one snapshot, applied in order
// and atomically by Store::ApplyClone(). A clone overlays its snapshot: an
// object, listing or block the clone has overrides the snapshot's; anything
// else reads as the snapshot shows it. Data is copied in.
class CloneChange {
 public:
  void PutInode(Ino ino, CloneInode inode) { Add(Op::kPutInode, ino).inode = std::move(inode); }
  // Drops the object's record and every block (and, for a directory, the
  // listing) the clone has for it.
  void DeleteInode(Ino ino) { Add(Op::kDeleteInode, ino); }
  // Replaces directory `dir`'s listing in the clone with `entries`.
  void PutListing(Ino dir, std::vector<DirEntry> entries) {
    Add(Op::kPutListing, dir).entries = std::move(entries);
  }
  // Adds or replaces one entry of a listing the clone has.
  void PutEntry(Ino dir, DirEntry entry) {
    Add(Op::kPutEntry, dir).entries.push_back(std::move(entry));
  }
  void DeleteEntry(Ino dir, std::string name) { Add(Op::kDeleteEntry, dir).name = std::move(name); }
  // `data`: the block's new content (block_size() bytes, fewer at the end
  // of the file).
  void PutBlock(Ino ino, uint64_t block, std::string_view data) {
    Add(Op::kPutBlock, ino, block).data.assign(data);
  }
  // Drops the clone's blocks of `ino` numbered `first_block` and up.
  void DropBlocks(Ino ino, uint64_t first_block) { Add(Op::kDropBlocks, ino, first_block); }
  bool empty() const { return ops_.empty(); }

 private:
  friend class Store;
  struct Op {
    enum Kind {
      kPutInode,
      kDeleteInode,
      kPutListing,
      kPutEntry,
      kDeleteEntry,
      kPutBlock,
      kDropBlocks
    };
    Kind kind = kPutInode;
    Ino ino = 0;
    uint64_t block = 0;
    CloneInode inode;
    std::vector<DirEntry> entries;
    std::string name;
    std::string data;
  };
  Op& Add(Op::Kind kind, Ino ino, uint64_t block = 0) {
    Op& op = ops_.emplace_back();
    op.kind = kind;
    op.ino = ino;
    op.block = block;
    return op;
  }
  std::vector<Op> ops_;
};

struct GcResult {
  uint64_t records_dropped = 0;
  uint64_t blocks_freed = 0;
  uint64_t bytes_freed = 0;
  std::vector<Ino> released;  // Kept files no snapshot needs any more.
};

struct SpaceUsage {
  uint64_t snapshots = 0;
  uint64_t stored_blocks = 0;
  uint64_t stored_bytes = 0;      // Data bytes in stored blocks (once each).
  uint64_t referenced_bytes = 0;  // Data bytes of all data records naming a stored block.
  uint64_t zero_bytes = 0;        // Data bytes of zero blocks (not stored).
  uint64_t pack_bytes = 0;        // Disk space of pack files (st_blocks).
  uint64_t catalog_bytes = 0;     // Disk space of the LMDB catalogue.
  uint64_t kept_files = 0;
  uint32_t block_size = 0;
};

struct FsckReport {
  uint64_t blocks_checked = 0;
  uint64_t records_checked = 0;
  std::vector<std::string> problems;  // One line each.
  std::vector<std::string> repairs;   // What repair did.
  bool clean() const { return problems.empty(); }
};

// A consistent read-only view of the catalogue (an LMDB read transaction).
// Use one per request; do not keep it across long waits. Not thread-safe
// (one thread at a time); destroy before the Store.
class ReadView {
 public:
  ~ReadView();
  ReadView(const ReadView&) = delete;
  ReadView& operator=(const ReadView&) = delete;

  // The inode record snapshot `snap` resolves to, or nullopt (the live
  // inode shows the snapshot's state). Errors: EIO on catalogue damage.
  Result<std::optional<InodeMeta>> FindInode(Ino ino, SnapId snap);
  // The epoch of the listing snapshot `snap` resolves to for directory
  // `dir`, or nullopt (the live directory shows it).
  Result<std::optional<SnapId>> FindListing(Ino dir, SnapId snap);
  // Entries of a listing, in name order, starting after `after` ("" for the
  // first). `fn` returns false to stop.
  Status ListEntries(Ino dir, SnapId listing_epoch, const std::string& after,
                     const std::function<bool(const DirEntry&)>& fn);
  // One entry of a listing, or nullopt.
  Result<std::optional<DirEntry>> LookupEntry(Ino dir, SnapId listing_epoch,
                                              const std::string& name);
  // Where block `block` of file `ino` comes from in snapshot `snap`.
  Result<BlockLocation> FindBlock(Ino ino, uint64_t block, SnapId snap);

  // ---- the clone of snapshot `snap` (see CloneChange) ----
  // The clone's own record of object `ino`, or nullopt.
  Result<std::optional<CloneInode>> FindCloneInode(SnapId snap, Ino ino);
  // Whether the clone has its own listing of directory `dir`.
  Result<bool> HasCloneListing(SnapId snap, Ino dir);
  // The clone's entries of `dir`, in name order, after `after`.
  Status ListCloneEntries(SnapId snap, Ino dir, const std::string& after,
                          const std::function<bool(const DirEntry&)>& fn);
  Result<std::optional<DirEntry>> LookupCloneEntry(SnapId snap, Ino dir, const std::string& name);
  // The clone's own block, or nullopt (kZero or kStored otherwise).
  Result<std::optional<BlockLocation>> FindCloneBlock(SnapId snap, Ino ino, uint64_t block);

 private:
  friend class Store;
  struct Impl;
  explicit ReadView(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

struct StoreOptions {
  uint32_t block_size = kDefaultBlockSize;  // Used when the store is new.
  uint64_t map_size = uint64_t{1} << 40;    // LMDB address-space reservation.
};

class Store {
 public:
  // Opens (creating if new) the catalogue and packs inside the store
  // directory `dir_fd` (an open directory; borrowed, must outlive the
  // Store). Errors: EPROTO for an unknown catalogue version, ENOSPC, EIO,
  // errno from the filesystem.
  static Result<std::unique_ptr<Store>> Open(int dir_fd, const std::string& dir_path,
                                             const StoreOptions& options);
  ~Store();
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  uint32_t block_size() const { return block_size_; }

  // ---- snapshots ----
  // The newest snapshot's id, 0 if none (cached; cheap).
  SnapId LatestSnapshot() const;
  // Records a new snapshot (durable on return). `name` must be unique
  // (EEXIST) and a valid name (EINVAL). The caller makes the cut (no
  // mutation in flight). `guid` nullopt: a random one.
  // `covered` non-null: a partial snapshot of those objects (see
  // SnapshotInfo::covered).
  Result<SnapshotInfo> CreateSnapshot(const std::string& name, std::optional<Guid> guid,
                                      int64_t created_ns,
                                      const std::vector<Ino>* covered = nullptr);
  Result<std::vector<SnapshotInfo>> ListSnapshots() const;
  // Finds by name, id ("#<n>" or digits) or GUID. ENOENT when absent.
  Result<SnapshotInfo> FindSnapshot(const std::string& key) const;
  Result<SnapshotInfo> GetSnapshot(SnapId id) const;
  // Deletes a snapshot and frees what no other snapshot needs. The caller
  // ensures no reader of that snapshot is in flight. Errors: ENOENT, EBUSY
  // when the snapshot is held.
  Result<GcResult> DeleteSnapshot(SnapId id);
  // Holds (reason non-empty) or releases (reason "") a snapshot.
  Status SetHold(SnapId id, const std::string& reason);
  Result<RetentionPolicy> GetRetention() const;
  Status SetRetention(const RetentionPolicy& policy);
  // The snapshots `policy` would delete at `now_ns` (never held ones, never
  // `keep` itself), oldest first.
  Result<std::vector<SnapshotInfo>> RetentionCandidates(int64_t now_ns, SnapId keep) const;

  // ---- clones ----
  // Gives snapshot `snap` a writable clone (durable on return). Errors:
  // ENOENT, EEXIST when it has one (writable or frozen).
  Status CreateClone(SnapId snap);
  // Makes the clone read-only for good (idempotent). Errors: ENOENT, EINVAL
  // when the snapshot has no clone.
  Status FreezeClone(SnapId snap, int64_t now_ns);
  // A new object number for the clone of `snap`: counted down from 2^40-1,
  // so never a backing inode number (ext4's are 32-bit). Durable.
  Result<Ino> AllocCloneIno(SnapId snap);
  // Applies `change` to the writable clone of `snap`: all of it or nothing,
  // durable on return. Errors: ENOENT, EROFS when the clone is frozen or
  // absent, ENOSPC, EIO.
  Status ApplyClone(SnapId snap, CloneChange& change);

  // ---- preservation (write side) ----
  // Makes `batch` durable for epoch `epoch` (normally LatestSnapshot()).
  // Records that already exist are left as they are (first preservation
  // wins). Errors: ENOSPC when the store's filesystem or catalogue is full
  // (nothing of the batch is recorded), EIO.
  Status Preserve(SnapId epoch, Preservation& batch);
  // What is recorded for `ino` at `epoch` or later (see PreservedState).
  Result<PreservedState> GetPreservedState(Ino ino, SnapId epoch) const;
  // Every kept file: (ino, handle).
  Result<std::vector<std::pair<Ino, std::string>>> ListKept() const;

  // ---- read side ----
  Result<std::unique_ptr<ReadView>> BeginRead() const;
  // Reads a stored block into `buf` (loc.length bytes).
  Status ReadBlock(const BlockLocation& loc, char* buf) const;
  // Starts reading a stored block from disk in the background (a hint).
  void Prefetch(const BlockLocation& loc) const;

  // ---- accounting and checking ----
  Result<SpaceUsage> Usage() const;
  // Checks the catalogue against the packs: reference counts, missing,
  // corrupt (hash mismatch) and orphan blocks, index consistency. With
  // `repair`, fixes counts and indexes, frees orphan space and marks
  // snapshots that lost data as damaged. `progress` (may be empty) is called
  // now and then with a line of text.
  Result<FsckReport> Fsck(bool repair, const std::function<void(const std::string&)>& progress);
  // Frees pack space that no block record covers: blocks appended by
  // preservations a crash interrupted before their commit. Run at mount.
  // Returns the bytes freed.
  Result<uint64_t> ReclaimOrphans();

 private:
  friend class ReadView;
  struct Impl;
  explicit Store(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
  uint32_t block_size_ = kDefaultBlockSize;
};

// Whether `name` may name a snapshot: 1..255 bytes, no '/', no NUL, not
// "." or "..". Default names are "@GMT-YYYY.MM.DD-HH.MM.SS" (UTC).
bool ValidSnapshotName(std::string_view name);
std::string DefaultSnapshotName(int64_t created_ns);

}  // namespace vssfs::cow_store

#endif  // VSSFS_COW_STORE_STORE_H_
