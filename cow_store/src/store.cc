#include "vssfs/cow_store/store.h"

#include <dirent.h>
#include <fcntl.h>
#include <lmdb.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <set>
#include <shared_mutex>

#include "codec.h"
#include "lmdb_util.h"
#include "vssfs/cow_store/unique_fd.h"

namespace vssfs::cow_store {
namespace {

constexpr uint32_t kCatalogVersion = 2;             // 1: before clones; upgraded in place.
constexpr uint64_t kPackLimit = uint64_t{1} << 30;  // Logical size of one pack.
constexpr uint64_t kAlign = 4096;                   // Blocks start on 4 KiB.
constexpr char kCatalogFile[] = "catalog.mdb";
constexpr char kPackDir[] = "packs";

// Data record kinds.
constexpr uint8_t kDataZero = 1;
constexpr uint8_t kDataStored = 2;
// Epoch index kinds.
constexpr char kIdxData = 'd';
constexpr char kIdxInode = 'i';
constexpr char kIdxListing = 'l';
constexpr char kIdxKept = 'k';

uint64_t AlignUp(uint64_t v) { return (v + kAlign - 1) / kAlign * kAlign; }

std::string Be64(uint64_t v) {
  std::string s;
  PutBe64(&s, v);
  return s;
}

std::string DataKey(Ino ino, uint64_t block, SnapId e) {
  std::string k;
  PutBe64(&k, ino);
  PutBe64(&k, block);
  PutBe64(&k, e);
  return k;
}

std::string InodeKey(Ino ino, SnapId e) {
  std::string k;
  PutBe64(&k, ino);
  PutBe64(&k, e);
  return k;
}

std::string DirentKey(Ino dir, SnapId e, std::string_view name) {
  std::string k;
  PutBe64(&k, dir);
  PutBe64(&k, e);
  k.append(name);
  return k;
}

// Clone keys: be64 snapshot, then as above.
std::string CloneKey(SnapId snap, Ino ino) {
  std::string k;
  PutBe64(&k, snap);
  PutBe64(&k, ino);
  return k;
}

std::string CloneDataKey(SnapId snap, Ino ino, uint64_t block) {
  std::string k = CloneKey(snap, ino);
  PutBe64(&k, block);
  return k;
}

std::string CloneDirentKey(SnapId snap, Ino dir, std::string_view name) {
  std::string k = CloneKey(snap, dir);
  k.append(name);
  return k;
}

// Object numbers of clone-born objects count down from here; ino 0 of a
// clone keys its allocator.
constexpr Ino kCloneInoTop = (uint64_t{1} << 40) - 1;

std::string IndexKey(SnapId e, char kind, Ino ino, uint64_t block = 0) {
  std::string k;
  PutBe64(&k, e);
  k.push_back(kind);
  PutBe64(&k, ino);
  if (kind == kIdxData) PutBe64(&k, block);
  return k;
}

std::string BlockKey(const std::array<uint8_t, 16>& hash, uint32_t seq) {
  std::string k(reinterpret_cast<const char*>(hash.data()), hash.size());
  PutBe32(&k, seq);
  return k;
}

struct BlockRecord {
  uint32_t pack = 0;
  uint64_t offset = 0;
  uint32_t length = 0;
  uint64_t refs = 0;
};

std::string EncodeBlock(const BlockRecord& b) {
  Encoder e;
  e.U32(b.pack);
  e.U64(b.offset);
  e.U32(b.length);
  e.U64(b.refs);
  return e.Take();
}

bool DecodeBlock(std::string_view v, BlockRecord* b) {
  Decoder d(v);
  b->pack = d.U32();
  b->offset = d.U64();
  b->length = d.U32();
  b->refs = d.U64();
  return d.done();
}

struct DataRecord {
  uint8_t kind = 0;
  uint32_t length = 0;
  std::string key;  // kDataStored: block key.
};

std::string EncodeData(const DataRecord& r) {
  Encoder e;
  e.U8(r.kind);
  e.U32(r.length);
  if (r.kind == kDataStored) e.Raw(r.key);
  return e.Take();
}

bool DecodeData(std::string_view v, DataRecord* r) {
  Decoder d(v);
  r->kind = d.U8();
  r->length = d.U32();
  if (r->kind == kDataStored) {
    r->key = d.Raw(20);
  } else if (r->kind != kDataZero) {
    return false;
  }
  return d.done();
}

std::string EncodeMeta(const InodeMeta& m) {
  Encoder e;
  e.U8(1);  // Record version.
  e.U32(m.mode);
  e.U32(m.uid);
  e.U32(m.gid);
  e.U64(m.nlink);
  e.U64(m.size);
  e.U64(m.blocks);
  e.U64(m.rdev);
  for (const timespec* t : {&m.atime, &m.mtime, &m.ctime}) {
    e.I64(t->tv_sec);
    e.I64(t->tv_nsec);
  }
  e.U32(static_cast<uint32_t>(m.xattrs.size()));
  for (const auto& [name, value] : m.xattrs) {
    e.Str(name);
    e.Str(value);
  }
  e.Str(m.symlink);
  return e.Take();
}

bool DecodeMeta(std::string_view v, InodeMeta* m) {
  Decoder d(v);
  if (d.U8() != 1) return false;
  m->mode = d.U32();
  m->uid = d.U32();
  m->gid = d.U32();
  m->nlink = d.U64();
  m->size = d.U64();
  m->blocks = d.U64();
  m->rdev = d.U64();
  for (timespec* t : {&m->atime, &m->mtime, &m->ctime}) {
    t->tv_sec = d.I64();
    t->tv_nsec = d.I64();
  }
  uint32_t n = d.U32();
  if (!d.ok() || n > v.size()) return false;
  m->xattrs.clear();
  for (uint32_t i = 0; i < n && d.ok(); ++i) {
    std::string name = d.Str();
    std::string value = d.Str();
    m->xattrs.emplace_back(std::move(name), std::move(value));
  }
  m->symlink = d.Str();
  return d.done();
}

std::string EncodeEntry(const DirEntry& de) {
  Encoder e;
  e.U64(de.ino);
  e.U8(de.type);
  e.Str(de.handle);
  return e.Take();
}

bool DecodeEntry(std::string_view key, std::string_view v, DirEntry* de) {
  Decoder d(v);
  de->name.assign(key.substr(16));
  de->ino = d.U64();
  de->type = d.U8();
  de->handle = d.Str();
  return d.done();
}

std::string EncodeSnapshot(const SnapshotInfo& s) {
  Encoder e;
  e.U8(4);
  e.Raw(std::string_view(reinterpret_cast<const char*>(s.guid.bytes.data()), 16));
  e.I64(s.created_ns);
  e.U8(s.intact ? 1 : 0);
  e.Str(s.name);
  e.Str(s.damage);
  e.Str(s.hold);                        // Record version 2.
  e.U8(static_cast<uint8_t>(s.clone));  // Record version 3.
  e.I64(s.frozen_ns);
  e.U8(s.partial ? 1 : 0);  // Record version 4.
  e.U64(s.covered.size());
  for (Ino ino : s.covered) e.U64(ino);
  return e.Take();
}

bool DecodeSnapshot(SnapId id, std::string_view v, SnapshotInfo* s) {
  Decoder d(v);
  const uint8_t version = d.U8();
  if (version < 1 || version > 4) return false;
  std::string g = d.Raw(16);
  if (!d.ok()) return false;
  std::memcpy(s->guid.bytes.data(), g.data(), 16);
  s->id = id;
  s->created_ns = d.I64();
  s->intact = d.U8() != 0;
  s->name = d.Str();
  s->damage = d.Str();
  s->hold = version >= 2 ? d.Str() : "";
  if (version >= 3) {
    const uint8_t clone = d.U8();
    if (clone > static_cast<uint8_t>(CloneState::kFrozen)) return false;
    s->clone = static_cast<CloneState>(clone);
    s->frozen_ns = d.I64();
  }
  if (version >= 4) {
    s->partial = d.U8() != 0;
    const uint64_t n = d.U64();
    if (!d.ok() || n > v.size() / 8) return false;
    s->covered.resize(n);
    for (uint64_t i = 0; i < n; ++i) s->covered[i] = d.U64();
  }
  return d.done();
}

std::string EncodeCloneInode(const CloneInode& c) {
  Encoder e;
  e.U64(c.base_limit);
  e.Raw(EncodeMeta(c.meta));
  return e.Take();
}

bool DecodeCloneInode(std::string_view v, CloneInode* c) {
  if (v.size() < 8) return false;
  Decoder d(v.substr(0, 8));
  c->base_limit = d.U64();
  return DecodeMeta(v.substr(8), &c->meta);
}

std::string EncodeKept(SnapId epoch, const std::string& handle) {
  Encoder e;
  e.U64(epoch);
  e.Str(handle);
  return e.Take();
}

bool IsZero(std::string_view data) {
  // Compare 8 bytes at a time; blocks are small enough for a plain loop.
  size_t i = 0;
  for (; i + 8 <= data.size(); i += 8) {
    uint64_t w;
    std::memcpy(&w, data.data() + i, 8);
    if (w != 0) return false;
  }
  for (; i < data.size(); ++i) {
    if (data[i] != 0) return false;
  }
  return true;
}

Status Damaged(const std::string& what) { return Status::Error(EIO, "catalogue damaged: " + what); }

// Counters kept in the meta database.
constexpr char kStatStoredBlocks[] = "stat.stored_blocks";
constexpr char kStatStoredBytes[] = "stat.stored_bytes";
constexpr char kStatRefBytes[] = "stat.ref_bytes";
constexpr char kStatZeroBytes[] = "stat.zero_bytes";

}  // namespace

// ---------------------------------------------------------------------------

struct Store::Impl {
  int dir_fd = -1;
  std::string dir_path;
  MDB_env* env = nullptr;
  MDB_dbi meta = 0, snapshots = 0, names = 0, blocks = 0, data = 0, inodes = 0, dirents = 0,
          epochs = 0, kept = 0;
  // Clones (catalogue version 2).
  MDB_dbi cinodes = 0, cdirents = 0, cdata = 0;
  uint32_t block_size = kDefaultBlockSize;
  std::atomic<SnapId> latest{0};
  UniqueFd pack_dir;

  // Pack files. packs_mutex_ guards the descriptor table (a leaf lock).
  mutable std::shared_mutex packs_mutex;
  std::map<uint32_t, std::shared_ptr<UniqueFd>> pack_fds;
  // O_DIRECT descriptors for appends (the data is synced at once, so the
  // page cache would only cost a copy); -1 entries: not supported there.
  std::map<uint32_t, std::shared_ptr<UniqueFd>> direct_fds;
  // Appends: guarded by pack_mutex.
  std::mutex pack_mutex;
  uint32_t current_pack = 0;
  uint64_t current_end = 0;

  // Group commit: guarded by commit_mutex.
  struct Pending {
    SnapId epoch;
    Preservation* batch;
    Status result;
    bool done = false;
  };
  std::mutex commit_mutex;
  std::condition_variable commit_cv;
  std::deque<Pending*> queue;
  bool leader_active = false;
  // Held shared by Preserve() from its first pack append to its commit, and
  // exclusively by Fsck(), which must not mistake in-flight appends for
  // orphans. Taken before commit_mutex.
  std::shared_mutex gate;

  ~Impl() {
    if (env != nullptr) mdb_env_close(env);
  }

  Status OpenEnv(const StoreOptions& options);
  Status OpenPacks();
  Result<std::shared_ptr<UniqueFd>> PackFd(uint32_t pack) const;
  Status NewPack(uint32_t number);
  // Appends `data` (padded to kAlign) to the current pack.
  Status Append(std::string_view data, uint32_t* pack, uint64_t* offset);
  Status Punch(uint32_t pack, uint64_t offset, uint32_t length) const;
  // Appends the items' data back to back (each padded to kAlign) with one
  // reservation and as few writes as possible; sets pack/offset/appended.
  // On failure nothing stays allocated.
  Status AppendMany(const std::vector<Preservation::BlockItem*>& items);
  // The O_DIRECT descriptor of a pack, or null when the filesystem refuses.
  std::shared_ptr<UniqueFd> DirectFd(uint32_t pack);
  Status ReadStored(uint32_t pack, uint64_t offset, uint32_t length, char* buf) const;
  // Whether the stored block `rec` holds exactly `data`.
  Result<bool> SameContent(const BlockRecord& rec, std::string_view data) const;

  Status CommitGroup(std::vector<Pending*>& group);
  // Makes `packs` durable, then commits `txn` (invariant 4's order).
  Status SyncPacksAndCommit(const std::set<uint32_t>& packs, Txn& txn);
  // Allocated pack space outside `used` (extents per pack, sorted in
  // place); with `repair`, adds it to *punch.
  Status ScanOrphans(std::map<uint32_t, std::vector<std::pair<uint64_t, uint64_t>>>& used,
                     bool repair, uint64_t* orphan_bytes,
                     std::vector<std::pair<uint32_t, std::pair<uint64_t, uint32_t>>>* punch) const;
  struct Deltas {
    int64_t stored_blocks = 0, stored_bytes = 0, ref_bytes = 0, zero_bytes = 0;
  };
  using Punches = std::vector<std::pair<uint32_t, std::pair<uint64_t, uint32_t>>>;
  // Outside any write transaction (under `gate`, shared): zero detection,
  // hashing, verified dedup candidates, and one pack append for new blocks.
  Status PrepareBlocks(const std::vector<Preservation::BlockItem*>& items);
  // In `txn`: one reference to the prepared `item` (an existing identical
  // block, or the appended one); fills *rec.
  Status RefBlock(MDB_txn* txn, Preservation::BlockItem& item, DataRecord* rec, Punches* punch,
                  std::set<uint32_t>* packs_to_sync, Deltas* d);
  // In `txn`: drops the reference `rec` holds, freeing the block at zero.
  Status UnrefData(MDB_txn* txn, const DataRecord& rec, Punches* punch, Deltas* d, GcResult* gc);
  Status AddDeltas(MDB_txn* txn, const Deltas& d) const;
  // Drops every clone record of `snap` (in `txn`).
  Status DropClone(MDB_txn* txn, SnapId snap, Punches* punch, Deltas* d, GcResult* gc);
  Status ApplyBatch(MDB_txn* txn, SnapId epoch, Preservation& batch,
                    std::vector<std::pair<uint32_t, std::pair<uint64_t, uint32_t>>>* punch,
                    std::set<uint32_t>* synced);

  Result<uint64_t> GetCounter(MDB_txn* txn, const char* name) const;
  // The record of snapshot `id` in `txn`. Errors: ENOENT, EIO.
  Result<SnapshotInfo> ReadSnapshot(MDB_txn* txn, SnapId id) const;
  // Reads snapshot `id`'s record, lets `edit` change it (or fail), writes
  // and commits it. Takes commit_mutex.
  Status UpdateSnapshot(SnapId id, const std::function<Status(SnapshotInfo&)>& edit);
  Status AddCounter(MDB_txn* txn, const char* name, int64_t delta) const;
};

Status Store::Impl::OpenEnv(const StoreOptions& options) {
  int rc = mdb_env_create(&env);
  if (rc != 0) {
    env = nullptr;
    return FromLmdb(rc, "create catalogue environment");
  }
  if (Status s = FromLmdb(mdb_env_set_maxdbs(env, 16), "set catalogue databases"); !s.ok()) {
    return s;
  }
  if (Status s = FromLmdb(mdb_env_set_maxreaders(env, 1024), "set catalogue readers"); !s.ok()) {
    return s;
  }
  if (Status s = FromLmdb(mdb_env_set_mapsize(env, options.map_size), "set catalogue size");
      !s.ok()) {
    return s;
  }
  std::string path = dir_path + "/" + kCatalogFile;
  rc = mdb_env_open(env, path.c_str(), MDB_NOSUBDIR | MDB_NOTLS | MDB_NORDAHEAD, 0600);
  if (rc != 0) return FromLmdb(rc, "open catalogue " + path);
  int fd = -1;
  if (mdb_env_get_fd(env, &fd) == 0 && fd >= 0) fcntl(fd, F_SETFD, FD_CLOEXEC);
  int dead = 0;
  (void)mdb_reader_check(env, &dead);  // Reader slots of a crashed daemon.

  Txn txn;
  if (Status s = txn.Begin(env, 0); !s.ok()) return s;
  struct Db {
    const char* name;
    MDB_dbi* dbi;
  } dbs[] = {{"meta", &meta},       {"snapshots", &snapshots}, {"names", &names},
             {"blocks", &blocks},   {"data", &data},           {"inodes", &inodes},
             {"dirents", &dirents}, {"epochs", &epochs},       {"kept", &kept},
             {"cinodes", &cinodes}, {"cdirents", &cdirents},   {"cdata", &cdata}};
  for (const Db& db : dbs) {
    rc = mdb_dbi_open(txn.get(), db.name, MDB_CREATE, db.dbi);
    if (rc != 0) return FromLmdb(rc, std::string("open catalogue database ") + db.name);
  }
  MDB_val k = Val("version"), v;
  auto write_version = [&] {
    Encoder e;
    e.U32(kCatalogVersion);
    std::string ver = e.Take();
    MDB_val vv = Val(ver);
    return FromLmdb(mdb_put(txn.get(), meta, &k, &vv, 0), "write catalogue version");
  };
  rc = mdb_get(txn.get(), meta, &k, &v);
  if (rc == MDB_NOTFOUND) {
    // A new catalogue.
    if (Status s = write_version(); !s.ok()) return s;
    if (options.block_size < kAlign || options.block_size > (16u << 20) ||
        (options.block_size & (options.block_size - 1)) != 0) {
      return Status::Error(EINVAL, "block size must be a power of two from 4 KiB to 16 MiB");
    }
    Encoder b;
    b.U32(options.block_size);
    std::string bs = b.Take();
    MDB_val bk = Val("block_size"), bv = Val(bs);
    if (Status s = FromLmdb(mdb_put(txn.get(), meta, &bk, &bv, 0), "write block size"); !s.ok()) {
      return s;
    }
    block_size = options.block_size;
  } else if (rc != 0) {
    return FromLmdb(rc, "read catalogue version");
  } else {
    Decoder d(View(v));
    uint32_t version = d.U32();
    if (d.done() && version == 1) {
      // Version 1 had no clone databases (just created, empty): only the
      // number changes.
      if (Status s = write_version(); !s.ok()) return s;
      version = kCatalogVersion;
    }
    if (!d.done() || version != kCatalogVersion) {
      return Status::Error(EPROTO, "catalogue " + path + " has version " + std::to_string(version) +
                                       "; this vssfs reads version " +
                                       std::to_string(kCatalogVersion));
    }
    MDB_val bk = Val("block_size"), bv;
    if (mdb_get(txn.get(), meta, &bk, &bv) != 0) return Damaged("no block size");
    Decoder bd(View(bv));
    block_size = bd.U32();
    if (!bd.done() || block_size < kAlign) return Damaged("bad block size");
  }
  // Latest snapshot: the last key of `snapshots`. The cursor is closed
  // before the commit, which would free it (a write transaction's cursors).
  {
    Cursor c;
    if (Status s = c.Open(txn.get(), snapshots); !s.ok()) return s;
    MDB_val ck, cv;
    rc = c.Get(&ck, &cv, MDB_LAST);
    if (rc == 0 && ck.mv_size == 8) latest = GetBe64(View(ck), 0);
  }
  return txn.Commit();
}

Status Store::Impl::OpenPacks() {
  if (mkdirat(dir_fd, kPackDir, 0700) != 0 && errno != EEXIST) {
    return Status::FromErrno(errno, "create " + dir_path + "/" + kPackDir);
  }
  pack_dir.reset(openat(dir_fd, kPackDir, O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!pack_dir) return Status::FromErrno(errno, "open " + dir_path + "/" + kPackDir);
  // The highest-numbered pack is the one appended to.
  UniqueFd dup_fd(dup(pack_dir.get()));
  if (!dup_fd) return Status::FromErrno(errno, "dup pack directory");
  DIR* d = fdopendir(dup_fd.get());
  if (d == nullptr) return Status::FromErrno(errno, "list packs");
  dup_fd.release();
  uint32_t highest = 0;
  while (dirent* de = readdir(d)) {
    unsigned n = 0;
    char extra;
    if (std::sscanf(de->d_name, "pack-%8u%c", &n, &extra) == 1) highest = std::max(highest, n);
  }
  closedir(d);
  if (highest == 0) return NewPack(1);
  Result<std::shared_ptr<UniqueFd>> fd = PackFd(highest);
  if (!fd.ok()) return fd.status();
  struct stat st;
  if (fstat(fd.value()->get(), &st) != 0) return Status::FromErrno(errno, "stat pack");
  current_pack = highest;
  current_end = AlignUp(static_cast<uint64_t>(st.st_size));
  return Status();
}

Status Store::Impl::NewPack(uint32_t number) {
  char name[32];
  std::snprintf(name, sizeof name, "pack-%08u", number);
  UniqueFd fd(openat(pack_dir.get(), name, O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  if (!fd) return Status::FromErrno(errno, std::string("create pack ") + name);
  if (fsync(pack_dir.get()) != 0) return Status::FromErrno(errno, "fsync pack directory");
  {
    std::unique_lock lock(packs_mutex);
    pack_fds[number] = std::make_shared<UniqueFd>(std::move(fd));
  }
  current_pack = number;
  current_end = 0;
  return Status();
}

Result<std::shared_ptr<UniqueFd>> Store::Impl::PackFd(uint32_t pack) const {
  {
    std::shared_lock lock(packs_mutex);
    auto it = pack_fds.find(pack);
    if (it != pack_fds.end()) return it->second;
  }
  char name[32];
  std::snprintf(name, sizeof name, "pack-%08u", pack);
  UniqueFd fd(openat(pack_dir.get(), name, O_RDWR | O_CLOEXEC));
  if (!fd) return Status::FromErrno(errno, std::string("open pack ") + name);
  std::unique_lock lock(packs_mutex);
  auto& slot = const_cast<Impl*>(this)->pack_fds[pack];
  if (!slot) slot = std::make_shared<UniqueFd>(std::move(fd));
  return slot;
}

Status Store::Impl::Append(std::string_view bytes, uint32_t* pack, uint64_t* offset) {
  const uint64_t span = AlignUp(bytes.size());
  {
    std::lock_guard lock(pack_mutex);
    if (current_end + span > kPackLimit && current_end > 0) {
      if (Status s = NewPack(current_pack + 1); !s.ok()) return s;
    }
    *pack = current_pack;
    *offset = current_end;
    current_end += span;
  }
  Result<std::shared_ptr<UniqueFd>> fd = PackFd(*pack);
  if (!fd.ok()) return fd.status();
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = pwrite(fd.value()->get(), bytes.data() + done, bytes.size() - done,
                       static_cast<off_t>(*offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      Status s = Status::FromErrno(errno, "write block to pack");
      (void)Punch(*pack, *offset, static_cast<uint32_t>(bytes.size()));
      return s;
    }
    done += static_cast<size_t>(n);
  }
  return Status();
}

Status Store::Impl::AppendMany(const std::vector<Preservation::BlockItem*>& items) {
  if (items.empty()) return Status();
  uint64_t span = 0;
  for (const auto* item : items) span += AlignUp(item->data.size());
  if (span > kPackLimit / 4) {  // Huge batches: one at a time.
    for (auto* item : items) {
      if (Status s = Append(item->data, &item->pack, &item->offset); !s.ok()) {
        for (auto* other : items) {
          if (other->appended) {
            (void)Punch(other->pack, other->offset, static_cast<uint32_t>(other->data.size()));
            other->appended = false;
          }
        }
        return s;
      }
      item->appended = true;
    }
    return Status();
  }
  uint32_t pack = 0;
  uint64_t offset = 0;
  {
    std::lock_guard lock(pack_mutex);
    if (current_end + span > kPackLimit && current_end > 0) {
      if (Status s = NewPack(current_pack + 1); !s.ok()) return s;
    }
    pack = current_pack;
    offset = current_end;
    current_end += span;
  }
  Result<std::shared_ptr<UniqueFd>> fd = PackFd(pack);
  if (!fd.ok()) return fd.status();
  static const std::string kZeros(kAlign, '\0');
  std::vector<iovec> iov;
  uint64_t pos = offset;
  for (auto* item : items) {
    item->pack = pack;
    item->offset = pos;
    iov.push_back({item->data.data(), item->data.size()});
    const uint64_t pad = AlignUp(item->data.size()) - item->data.size();
    if (pad > 0) iov.push_back({const_cast<char*>(kZeros.data()), pad});
    pos += AlignUp(item->data.size());
  }
  // Direct I/O from one aligned buffer when the filesystem allows it.
  if (std::shared_ptr<UniqueFd> dfd = DirectFd(pack)) {
    void* mem = nullptr;
    if (posix_memalign(&mem, kAlign, span) == 0) {
      std::unique_ptr<char, decltype(&std::free)> buf(static_cast<char*>(mem), std::free);
      char* p = buf.get();
      for (const iovec& v : iov) {
        std::memcpy(p, v.iov_base, v.iov_len);
        p += v.iov_len;
      }
      uint64_t done = 0;
      while (done < span) {
        ssize_t w =
            pwrite(dfd->get(), buf.get() + done, span - done, static_cast<off_t>(offset + done));
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) break;
        done += static_cast<uint64_t>(w);
      }
      if (done == span) {
        for (auto* item : items) item->appended = true;
        return Status();
      }
      // Fall through: retry the whole span buffered (it reports the error).
    }
  }
  // pwritev may write less than asked: continue from where it stopped.
  size_t first = 0;
  uint64_t at = offset;
  while (first < iov.size()) {
    const int n = static_cast<int>(std::min<size_t>(iov.size() - first, IOV_MAX));
    ssize_t w = pwritev(fd.value()->get(), iov.data() + first, n, static_cast<off_t>(at));
    if (w < 0) {
      if (errno == EINTR) continue;
      Status s = Status::FromErrno(errno, "write blocks to pack");
      (void)Punch(pack, offset, static_cast<uint32_t>(span));
      return s;
    }
    at += static_cast<uint64_t>(w);
    while (w > 0 && first < iov.size()) {
      if (static_cast<size_t>(w) >= iov[first].iov_len) {
        w -= static_cast<ssize_t>(iov[first].iov_len);
        ++first;
      } else {
        iov[first].iov_base = static_cast<char*>(iov[first].iov_base) + w;
        iov[first].iov_len -= static_cast<size_t>(w);
        w = 0;
      }
    }
  }
  for (auto* item : items) item->appended = true;
  return Status();
}

std::shared_ptr<UniqueFd> Store::Impl::DirectFd(uint32_t pack) {
  {
    std::shared_lock lock(packs_mutex);
    auto it = direct_fds.find(pack);
    if (it != direct_fds.end()) return it->second->valid() ? it->second : nullptr;
  }
  char name[32];
  std::snprintf(name, sizeof name, "pack-%08u", pack);
  auto fd =
      std::make_shared<UniqueFd>(openat(pack_dir.get(), name, O_WRONLY | O_DIRECT | O_CLOEXEC));
  std::unique_lock lock(packs_mutex);
  auto& slot = direct_fds[pack];
  if (!slot) slot = fd;
  return slot->valid() ? slot : nullptr;
}

Status Store::Impl::Punch(uint32_t pack, uint64_t offset, uint32_t length) const {
  Result<std::shared_ptr<UniqueFd>> fd = PackFd(pack);
  if (!fd.ok()) return fd.status();
  if (fallocate(fd.value()->get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                static_cast<off_t>(offset), static_cast<off_t>(AlignUp(length))) != 0) {
    return Status::FromErrno(errno, "free block space in pack");
  }
  return Status();
}

Status Store::Impl::ReadStored(uint32_t pack, uint64_t offset, uint32_t length, char* buf) const {
  Result<std::shared_ptr<UniqueFd>> fd = PackFd(pack);
  if (!fd.ok()) return fd.status();
  size_t done = 0;
  while (done < length) {
    ssize_t n =
        pread(fd.value()->get(), buf + done, length - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::FromErrno(errno, "read block from pack");
    }
    if (n == 0) return Status::Error(EIO, "block lies beyond the end of its pack");
    done += static_cast<size_t>(n);
  }
  return Status();
}

Result<bool> Store::Impl::SameContent(const BlockRecord& rec, std::string_view bytes) const {
  if (rec.length != bytes.size()) return false;
  std::string buf(rec.length, '\0');
  if (Status s = ReadStored(rec.pack, rec.offset, rec.length, buf.data()); !s.ok()) return s;
  return std::memcmp(buf.data(), bytes.data(), bytes.size()) == 0;
}

Result<SnapshotInfo> Store::Impl::ReadSnapshot(MDB_txn* txn, SnapId id) const {
  std::string key = Be64(id);
  MDB_val k = Val(key), v;
  int rc = mdb_get(txn, snapshots, &k, &v);
  if (rc == MDB_NOTFOUND) return Status::Error(ENOENT, "no snapshot #" + std::to_string(id));
  if (rc != 0) return FromLmdb(rc, "read snapshot");
  SnapshotInfo info;
  if (!DecodeSnapshot(id, View(v), &info)) return Damaged("snapshot record");
  return info;
}

Result<uint64_t> Store::Impl::GetCounter(MDB_txn* txn, const char* name) const {
  MDB_val k = Val(name), v;
  int rc = mdb_get(txn, meta, &k, &v);
  if (rc == MDB_NOTFOUND) return uint64_t{0};
  if (rc != 0) return FromLmdb(rc, "read counter");
  Decoder d(View(v));
  uint64_t n = d.U64();
  if (!d.done()) return Damaged(std::string("counter ") + name);
  return n;
}

Status Store::Impl::AddCounter(MDB_txn* txn, const char* name, int64_t delta) const {
  if (delta == 0) return Status();
  Result<uint64_t> cur = GetCounter(txn, name);
  if (!cur.ok()) return cur.status();
  Encoder e;
  const int64_t next = static_cast<int64_t>(cur.value()) + delta;
  e.U64(next < 0 ? 0 : static_cast<uint64_t>(next));
  std::string s = e.Take();
  MDB_val k = Val(name), v = Val(s);
  return FromLmdb(mdb_put(txn, meta, &k, &v, 0), "write counter");
}

Status Store::Impl::ApplyBatch(
    MDB_txn* txn, SnapId epoch, Preservation& batch,
    std::vector<std::pair<uint32_t, std::pair<uint64_t, uint32_t>>>* punch,
    std::set<uint32_t>* packs_to_sync) {
  auto put_new = [&](MDB_dbi dbi, const std::string& key, const std::string& value,
                     bool* existed) -> Status {
    MDB_val k = Val(key), v = Val(value);
    int rc = mdb_put(txn, dbi, &k, &v, MDB_NOOVERWRITE);
    *existed = rc == MDB_KEYEXIST;
    if (*existed) return Status();
    return FromLmdb(rc, "write catalogue record");
  };
  auto put_index = [&](const std::string& key) -> Status {
    MDB_val k = Val(key), v = Val("");
    return FromLmdb(mdb_put(txn, epochs, &k, &v, 0), "write epoch index");
  };

  for (auto& [ino, meta_rec] : batch.inodes_) {
    bool existed = false;
    if (Status s = put_new(inodes, InodeKey(ino, epoch), EncodeMeta(meta_rec), &existed); !s.ok()) {
      return s;
    }
    if (!existed) {
      if (Status s = put_index(IndexKey(epoch, kIdxInode, ino)); !s.ok()) return s;
    }
  }
  for (auto& [dir, entries] : batch.listings_) {
    bool existed = false;
    if (Status s = put_new(dirents, DirentKey(dir, epoch, ""), "", &existed); !s.ok()) return s;
    if (existed) continue;
    for (const DirEntry& de : entries) {
      if (de.name.empty()) continue;
      std::string key = DirentKey(dir, epoch, de.name);
      std::string value = EncodeEntry(de);
      MDB_val k = Val(key), v = Val(value);
      if (Status s = FromLmdb(mdb_put(txn, dirents, &k, &v, 0), "write listing"); !s.ok()) {
        return s;
      }
    }
    if (Status s = put_index(IndexKey(epoch, kIdxListing, dir)); !s.ok()) return s;
  }
  for (auto& [ino, handle] : batch.kept_) {
    bool existed = false;
    if (Status s = put_new(kept, Be64(ino), EncodeKept(epoch, handle), &existed); !s.ok()) {
      return s;
    }
    if (!existed) {
      if (Status s = put_index(IndexKey(epoch, kIdxKept, ino)); !s.ok()) return s;
    }
  }
  Deltas deltas;
  for (Preservation::BlockItem& item : batch.blocks_) {
    const std::string dkey = DataKey(item.ino, item.block, epoch);
    MDB_val k = Val(dkey), v;
    int rc = mdb_get(txn, data, &k, &v);
    if (rc == 0) {
      // Preserved already (first preservation wins): drop our copy.
      if (item.appended) {
        punch->push_back({item.pack, {item.offset, static_cast<uint32_t>(item.data.size())}});
      }
      continue;
    }
    if (rc != MDB_NOTFOUND) return FromLmdb(rc, "read data record");
    DataRecord rec;
    if (Status s = RefBlock(txn, item, &rec, punch, packs_to_sync, &deltas); !s.ok()) return s;
    std::string enc = EncodeData(rec);
    MDB_val dv = Val(enc);
    if (Status s = FromLmdb(mdb_put(txn, data, &k, &dv, 0), "write data record"); !s.ok()) {
      return s;
    }
    if (Status s = put_index(IndexKey(epoch, kIdxData, item.ino, item.block)); !s.ok()) return s;
  }
  return AddDeltas(txn, deltas);
}

Status Store::Impl::RefBlock(MDB_txn* txn, Preservation::BlockItem& item, DataRecord* rec,
                             Punches* punch, std::set<uint32_t>* packs_to_sync, Deltas* d) {
  rec->length = static_cast<uint32_t>(item.data.size());
  if (item.zero) {
    rec->kind = kDataZero;
    d->zero_bytes += rec->length;
    return Status();
  }
  rec->kind = kDataStored;
  // Find the block: the verified candidate, an identical block committed
  // since, or a free collision slot for ours.
  std::string found;
  if (item.have_candidate) {
    MDB_val bk = Val(item.key), bv;
    if (mdb_get(txn, blocks, &bk, &bv) == 0) found = item.key;
  }
  uint32_t free_seq = UINT32_MAX;
  for (uint32_t seq = 0; found.empty() && free_seq == UINT32_MAX; ++seq) {
    std::string key = BlockKey(item.hash, seq);
    MDB_val bk = Val(key), bv;
    int rc = mdb_get(txn, blocks, &bk, &bv);
    if (rc == MDB_NOTFOUND) {
      free_seq = seq;
      break;
    }
    if (rc != 0) return FromLmdb(rc, "read block record");
    BlockRecord br;
    if (!DecodeBlock(View(bv), &br)) return Damaged("block record");
    Result<bool> same = SameContent(br, item.data);
    if (!same.ok()) return same.status();
    if (same.value()) found = key;
  }
  if (!found.empty()) {
    MDB_val bk = Val(found), bv;
    if (mdb_get(txn, blocks, &bk, &bv) != 0) return Damaged("block vanished");
    BlockRecord br;
    if (!DecodeBlock(View(bv), &br)) return Damaged("block record");
    ++br.refs;
    std::string enc = EncodeBlock(br);
    MDB_val nv = Val(enc);
    if (Status s = FromLmdb(mdb_put(txn, blocks, &bk, &nv, 0), "write block record"); !s.ok()) {
      return s;
    }
    if (item.appended) {
      punch->push_back({item.pack, {item.offset, static_cast<uint32_t>(item.data.size())}});
    }
    rec->key = found;
  } else {
    if (!item.appended) {
      if (Status s = Append(item.data, &item.pack, &item.offset); !s.ok()) return s;
      item.appended = true;
    }
    packs_to_sync->insert(item.pack);
    BlockRecord br{item.pack, item.offset, rec->length, 1};
    rec->key = BlockKey(item.hash, free_seq);
    std::string enc = EncodeBlock(br);
    MDB_val bk = Val(rec->key), bv = Val(enc);
    if (Status s = FromLmdb(mdb_put(txn, blocks, &bk, &bv, 0), "write block record"); !s.ok()) {
      return s;
    }
    ++d->stored_blocks;
    d->stored_bytes += rec->length;
    // Still `appended`: if this commit fails, the space is freed.
  }
  d->ref_bytes += rec->length;
  return Status();
}

Status Store::Impl::UnrefData(MDB_txn* txn, const DataRecord& rec, Punches* punch, Deltas* d,
                              GcResult* gc) {
  if (rec.kind == kDataZero) {
    d->zero_bytes -= rec.length;
    return Status();
  }
  d->ref_bytes -= rec.length;
  MDB_val bk = Val(rec.key), bv;
  if (mdb_get(txn, blocks, &bk, &bv) != 0) return Status();  // fsck reports it.
  BlockRecord br;
  if (!DecodeBlock(View(bv), &br)) return Damaged("block record");
  if (br.refs <= 1) {
    (void)mdb_del(txn, blocks, &bk, nullptr);
    punch->push_back({br.pack, {br.offset, br.length}});
    --d->stored_blocks;
    d->stored_bytes -= br.length;
    if (gc != nullptr) {
      ++gc->blocks_freed;
      gc->bytes_freed += br.length;
    }
    return Status();
  }
  --br.refs;
  std::string enc = EncodeBlock(br);
  MDB_val nv = Val(enc);
  return FromLmdb(mdb_put(txn, blocks, &bk, &nv, 0), "write block record");
}

Status Store::Impl::AddDeltas(MDB_txn* txn, const Deltas& d) const {
  for (auto [name, delta] :
       {std::pair{kStatStoredBlocks, d.stored_blocks}, std::pair{kStatStoredBytes, d.stored_bytes},
        std::pair{kStatRefBytes, d.ref_bytes}, std::pair{kStatZeroBytes, d.zero_bytes}}) {
    if (Status s = AddCounter(txn, name, delta); !s.ok()) return s;
  }
  return Status();
}

Status Store::Impl::PrepareBlocks(const std::vector<Preservation::BlockItem*>& items) {
  Txn rtxn;
  if (Status s = rtxn.Begin(env, MDB_RDONLY); !s.ok()) return s;
  for (Preservation::BlockItem* item : items) {
    item->zero = IsZero(item->data);
    if (item->zero) continue;
    XXH128_hash_t h = XXH3_128bits(item->data.data(), item->data.size());
    XXH128_canonical_t canon;
    XXH128_canonicalFromHash(&canon, h);
    std::memcpy(item->hash.data(), canon.digest, 16);
    for (uint32_t seq = 0;; ++seq) {
      std::string key = BlockKey(item->hash, seq);
      MDB_val k = Val(key), v;
      int rc = mdb_get(rtxn.get(), blocks, &k, &v);
      if (rc == MDB_NOTFOUND) break;
      if (rc != 0) return FromLmdb(rc, "read block record");
      BlockRecord br;
      if (!DecodeBlock(View(v), &br)) return Damaged("block record");
      Result<bool> same = SameContent(br, item->data);
      if (!same.ok()) return same.status();
      if (same.value()) {
        item->have_candidate = true;
        item->key = key;
        break;
      }
    }
  }
  // New blocks go to the pack in one write.
  std::vector<Preservation::BlockItem*> fresh;
  for (Preservation::BlockItem* item : items) {
    if (!item->zero && !item->have_candidate) fresh.push_back(item);
  }
  return AppendMany(fresh);
}

Status Store::Impl::UpdateSnapshot(SnapId id, const std::function<Status(SnapshotInfo&)>& edit) {
  std::lock_guard lock(commit_mutex);
  Txn txn;
  if (Status s = txn.Begin(env, 0); !s.ok()) return s;
  Result<SnapshotInfo> found = ReadSnapshot(txn.get(), id);
  if (!found.ok()) return found.status();
  SnapshotInfo info = std::move(found.value());
  if (Status s = edit(info); !s.ok()) return s;
  std::string key = Be64(id), value = EncodeSnapshot(info);
  MDB_val k = Val(key), v = Val(value);
  if (Status s = FromLmdb(mdb_put(txn.get(), snapshots, &k, &v, 0), "write snapshot"); !s.ok()) {
    return s;
  }
  return txn.Commit();
}

Status Store::Impl::SyncPacksAndCommit(const std::set<uint32_t>& packs, Txn& txn) {
  // Block data first, then the records that name it.
  for (uint32_t pack : packs) {
    Result<std::shared_ptr<UniqueFd>> fd = PackFd(pack);
    if (!fd.ok()) return fd.status();
    if (fdatasync(fd.value()->get()) != 0) return Status::FromErrno(errno, "sync pack");
  }
  return txn.Commit();
}

Status Store::Impl::CommitGroup(std::vector<Pending*>& group) {
  std::vector<std::pair<uint32_t, std::pair<uint64_t, uint32_t>>> punch;
  std::set<uint32_t> packs_to_sync;
  Status result;
  {
    Txn txn;
    result = txn.Begin(env, 0);
    for (Pending* p : group) {
      if (!result.ok()) break;
      for (auto& item : p->batch->blocks_) {
        if (item.appended) packs_to_sync.insert(item.pack);
      }
      result = ApplyBatch(txn.get(), p->epoch, *p->batch, &punch, &packs_to_sync);
    }
    if (result.ok()) result = SyncPacksAndCommit(packs_to_sync, txn);
  }
  if (!result.ok()) {
    // Nothing was recorded: free everything this group appended.
    for (Pending* p : group) {
      for (auto& item : p->batch->blocks_) {
        if (item.appended) {
          (void)Punch(item.pack, item.offset, static_cast<uint32_t>(item.data.size()));
        }
      }
    }
    return result;
  }
  for (const auto& [pack, extent] : punch) (void)Punch(pack, extent.first, extent.second);
  return Status();
}

// ---------------------------------------------------------------------------

struct ReadView::Impl {
  const Store::Impl* store = nullptr;
  Txn txn;
};

ReadView::ReadView(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ReadView::~ReadView() = default;

Result<std::optional<InodeMeta>> ReadView::FindInode(Ino ino, SnapId snap) {
  Cursor c;
  if (Status s = c.Open(impl_->txn.get(), impl_->store->inodes); !s.ok()) return s;
  MDB_val k, v;
  int rc = c.SeekGe(InodeKey(ino, snap), &k, &v);
  if (rc == MDB_NOTFOUND) return std::optional<InodeMeta>();
  if (rc != 0) return FromLmdb(rc, "read inode record");
  std::string_view key = View(k);
  if (key.size() != 16 || GetBe64(key, 0) != ino) return std::optional<InodeMeta>();
  InodeMeta m;
  if (!DecodeMeta(View(v), &m)) return Damaged("inode record of " + std::to_string(ino));
  return std::optional<InodeMeta>(std::move(m));
}

Result<std::optional<SnapId>> ReadView::FindListing(Ino dir, SnapId snap) {
  Cursor c;
  if (Status s = c.Open(impl_->txn.get(), impl_->store->dirents); !s.ok()) return s;
  MDB_val k, v;
  int rc = c.SeekGe(DirentKey(dir, snap, ""), &k, &v);
  if (rc == MDB_NOTFOUND) return std::optional<SnapId>();
  if (rc != 0) return FromLmdb(rc, "read listing");
  std::string_view key = View(k);
  if (key.size() < 16 || GetBe64(key, 0) != dir) return std::optional<SnapId>();
  return std::optional<SnapId>(GetBe64(key, 8));
}

namespace {

// The entries under a 16-byte listing key `prefix` in `dbi`, after `after`.
Status ListUnder(MDB_txn* txn, MDB_dbi dbi, const std::string& prefix, const std::string& after,
                 const std::function<bool(const DirEntry&)>& fn) {
  Cursor c;
  if (Status s = c.Open(txn, dbi); !s.ok()) return s;
  MDB_val k, v;
  int rc = c.SeekGe(prefix + after, &k, &v);
  while (rc == 0) {
    std::string_view key = View(k);
    if (key.size() < 16 || key.substr(0, 16) != prefix) break;
    if (key.size() > 16 && key.substr(16) != after) {
      DirEntry de;
      if (!DecodeEntry(key, View(v), &de)) return Damaged("listing entry");
      if (!fn(de)) return Status();
    }
    rc = c.Get(&k, &v, MDB_NEXT);
  }
  if (rc != 0 && rc != MDB_NOTFOUND) return FromLmdb(rc, "read listing");
  return Status();
}

// The entry `key` (a listing key with a non-empty name) of `dbi`, or nullopt.
Result<std::optional<DirEntry>> LookupUnder(MDB_txn* txn, MDB_dbi dbi, const std::string& key) {
  if (key.size() <= 16) return std::optional<DirEntry>();  // The listing's marker key.
  MDB_val k = Val(key), v;
  int rc = mdb_get(txn, dbi, &k, &v);
  if (rc == MDB_NOTFOUND) return std::optional<DirEntry>();
  if (rc != 0) return FromLmdb(rc, "read listing entry");
  DirEntry de;
  if (!DecodeEntry(key, View(v), &de)) return Damaged("listing entry");
  return std::optional<DirEntry>(std::move(de));
}

}  // namespace

Status ReadView::ListEntries(Ino dir, SnapId listing_epoch, const std::string& after,
                             const std::function<bool(const DirEntry&)>& fn) {
  return ListUnder(impl_->txn.get(), impl_->store->dirents, DirentKey(dir, listing_epoch, ""),
                   after, fn);
}

Result<std::optional<DirEntry>> ReadView::LookupEntry(Ino dir, SnapId listing_epoch,
                                                      const std::string& name) {
  return LookupUnder(impl_->txn.get(), impl_->store->dirents, DirentKey(dir, listing_epoch, name));
}

Result<BlockLocation> ReadView::FindBlock(Ino ino, uint64_t block, SnapId snap) {
  Cursor c;
  if (Status s = c.Open(impl_->txn.get(), impl_->store->data); !s.ok()) return s;
  MDB_val k, v;
  int rc = c.SeekGe(DataKey(ino, block, snap), &k, &v);
  BlockLocation loc;
  if (rc == MDB_NOTFOUND) return loc;
  if (rc != 0) return FromLmdb(rc, "read data record");
  std::string_view key = View(k);
  if (key.size() != 24 || GetBe64(key, 0) != ino || GetBe64(key, 8) != block) return loc;
  DataRecord rec;
  if (!DecodeData(View(v), &rec)) return Damaged("data record");
  loc.length = rec.length;
  if (rec.kind == kDataZero) {
    loc.kind = BlockLocation::Kind::kZero;
    return loc;
  }
  MDB_val bk = Val(rec.key), bv;
  rc = mdb_get(impl_->txn.get(), impl_->store->blocks, &bk, &bv);
  if (rc == MDB_NOTFOUND) {
    return Status::Error(EIO,
                         "block of inode " + std::to_string(ino) + " is missing from the store");
  }
  if (rc != 0) return FromLmdb(rc, "read block record");
  BlockRecord br;
  if (!DecodeBlock(View(bv), &br)) return Damaged("block record");
  loc.kind = BlockLocation::Kind::kStored;
  loc.pack = br.pack;
  loc.offset = br.offset;
  return loc;
}

// ---- clone reads ----

Result<std::optional<CloneInode>> ReadView::FindCloneInode(SnapId snap, Ino ino) {
  std::string key = CloneKey(snap, ino);
  MDB_val k = Val(key), v;
  int rc = mdb_get(impl_->txn.get(), impl_->store->cinodes, &k, &v);
  if (rc == MDB_NOTFOUND) return std::optional<CloneInode>();
  if (rc != 0) return FromLmdb(rc, "read clone inode");
  CloneInode c;
  if (!DecodeCloneInode(View(v), &c)) return Damaged("clone inode of " + std::to_string(ino));
  return std::optional<CloneInode>(std::move(c));
}

Result<bool> ReadView::HasCloneListing(SnapId snap, Ino dir) {
  std::string key = CloneDirentKey(snap, dir, "");
  MDB_val k = Val(key), v;
  int rc = mdb_get(impl_->txn.get(), impl_->store->cdirents, &k, &v);
  if (rc == MDB_NOTFOUND) return false;
  if (rc != 0) return FromLmdb(rc, "read clone listing");
  return true;
}

Status ReadView::ListCloneEntries(SnapId snap, Ino dir, const std::string& after,
                                  const std::function<bool(const DirEntry&)>& fn) {
  return ListUnder(impl_->txn.get(), impl_->store->cdirents, CloneDirentKey(snap, dir, ""), after,
                   fn);
}

Result<std::optional<DirEntry>> ReadView::LookupCloneEntry(SnapId snap, Ino dir,
                                                           const std::string& name) {
  return LookupUnder(impl_->txn.get(), impl_->store->cdirents, CloneDirentKey(snap, dir, name));
}

Result<std::optional<BlockLocation>> ReadView::FindCloneBlock(SnapId snap, Ino ino,
                                                              uint64_t block) {
  std::string key = CloneDataKey(snap, ino, block);
  MDB_val k = Val(key), v;
  int rc = mdb_get(impl_->txn.get(), impl_->store->cdata, &k, &v);
  if (rc == MDB_NOTFOUND) return std::optional<BlockLocation>();
  if (rc != 0) return FromLmdb(rc, "read clone data record");
  DataRecord rec;
  if (!DecodeData(View(v), &rec)) return Damaged("clone data record");
  BlockLocation loc;
  loc.length = rec.length;
  if (rec.kind == kDataZero) {
    loc.kind = BlockLocation::Kind::kZero;
    return std::optional<BlockLocation>(loc);
  }
  MDB_val bk = Val(rec.key), bv;
  rc = mdb_get(impl_->txn.get(), impl_->store->blocks, &bk, &bv);
  if (rc == MDB_NOTFOUND) {
    return Status::Error(
        EIO, "clone block of object " + std::to_string(ino) + " is missing from the store");
  }
  if (rc != 0) return FromLmdb(rc, "read block record");
  BlockRecord br;
  if (!DecodeBlock(View(bv), &br)) return Damaged("block record");
  loc.kind = BlockLocation::Kind::kStored;
  loc.pack = br.pack;
  loc.offset = br.offset;
  return std::optional<BlockLocation>(loc);
}

// ---------------------------------------------------------------------------

Guid Guid::Random() {
  Guid g;
  size_t got = 0;
  while (got < g.bytes.size()) {
    ssize_t n = getrandom(g.bytes.data() + got, g.bytes.size() - got, 0);
    if (n > 0) got += static_cast<size_t>(n);
  }
  g.bytes[6] = static_cast<uint8_t>((g.bytes[6] & 0x0f) | 0x40);
  g.bytes[8] = static_cast<uint8_t>((g.bytes[8] & 0x3f) | 0x80);
  return g;
}

std::optional<Guid> Guid::Parse(std::string_view text) {
  if (text.size() == 38 && text.front() == '{' && text.back() == '}') {
    text = text.substr(1, 36);
  }
  if (text.size() != 36) return std::nullopt;
  Guid g;
  size_t j = 0;
  for (size_t i = 0; i < 36; ++i) {
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (text[i] != '-') return std::nullopt;
      continue;
    }
    auto hex = [](char c) -> int {
      if (c >= '0' && c <= '9') return c - '0';
      if (c >= 'a' && c <= 'f') return c - 'a' + 10;
      if (c >= 'A' && c <= 'F') return c - 'A' + 10;
      return -1;
    };
    int hi = hex(text[i]), lo = hex(text[i + 1]);
    if (hi < 0 || lo < 0) return std::nullopt;
    g.bytes[j++] = static_cast<uint8_t>(hi * 16 + lo);
    ++i;
  }
  return g;
}

std::string Guid::ToString() const {
  char buf[37];
  std::snprintf(buf, sizeof buf,
                "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", bytes[0],
                bytes[1], bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7], bytes[8],
                bytes[9], bytes[10], bytes[11], bytes[12], bytes[13], bytes[14], bytes[15]);
  return buf;
}

bool ValidSnapshotName(std::string_view name) {
  if (name.empty() || name.size() > 255 || name == "." || name == "..") return false;
  return name.find('/') == std::string_view::npos && name.find('\0') == std::string_view::npos;
}

std::string DefaultSnapshotName(int64_t created_ns) {
  time_t t = static_cast<time_t>(created_ns / 1000000000);
  struct tm tm;
  gmtime_r(&t, &tm);
  char buf[64];
  std::strftime(buf, sizeof buf, "@GMT-%Y.%m.%d-%H.%M.%S", &tm);
  return buf;
}

Store::Store(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {
  block_size_ = impl_->block_size;
}
Store::~Store() = default;

Result<std::unique_ptr<Store>> Store::Open(int dir_fd, const std::string& dir_path,
                                           const StoreOptions& options) {
  auto impl = std::make_unique<Impl>();
  impl->dir_fd = dir_fd;
  impl->dir_path = dir_path;
  if (Status s = impl->OpenEnv(options); !s.ok()) return s;
  if (Status s = impl->OpenPacks(); !s.ok()) return s;
  return std::unique_ptr<Store>(new Store(std::move(impl)));
}

SnapId Store::LatestSnapshot() const { return impl_->latest.load(std::memory_order_acquire); }

Result<SnapshotInfo> Store::CreateSnapshot(const std::string& name, std::optional<Guid> guid,
                                           int64_t created_ns, const std::vector<Ino>* covered) {
  if (!ValidSnapshotName(name)) {
    return Status::Error(
        EINVAL, "invalid snapshot name '" + name + "' (1-255 bytes, no '/', not '.' or '..')");
  }
  std::lock_guard lock(impl_->commit_mutex);  // Orders with group commits.
  Txn txn;
  if (Status s = txn.Begin(impl_->env, 0); !s.ok()) return s;
  MDB_val nk = Val(name), nv;
  if (mdb_get(txn.get(), impl_->names, &nk, &nv) == 0) {
    return Status::Error(EEXIST, "a snapshot named '" + name + "' exists");
  }
  Result<uint64_t> next = impl_->GetCounter(txn.get(), "next_snapshot");
  if (!next.ok()) return next.status();
  SnapshotInfo info;
  info.id = std::max<uint64_t>(next.value(), impl_->latest + 1);
  info.guid = guid ? *guid : Guid::Random();
  info.name = name;
  info.created_ns = created_ns;
  if (covered != nullptr) {
    info.partial = true;
    info.covered = *covered;
    std::sort(info.covered.begin(), info.covered.end());
    info.covered.erase(std::unique(info.covered.begin(), info.covered.end()), info.covered.end());
  }
  std::string key = Be64(info.id), value = EncodeSnapshot(info), idv = Be64(info.id);
  MDB_val k = Val(key), v = Val(value), iv = Val(idv);
  if (Status s = FromLmdb(mdb_put(txn.get(), impl_->snapshots, &k, &v, 0), "write snapshot");
      !s.ok()) {
    return s;
  }
  if (Status s = FromLmdb(mdb_put(txn.get(), impl_->names, &nk, &iv, 0), "write snapshot name");
      !s.ok()) {
    return s;
  }
  Encoder e;
  e.U64(info.id + 1);
  std::string nextv = e.Take();
  MDB_val ck = Val("next_snapshot"), cv = Val(nextv);
  if (Status s = FromLmdb(mdb_put(txn.get(), impl_->meta, &ck, &cv, 0), "write counter"); !s.ok()) {
    return s;
  }
  if (Status s = txn.Commit(); !s.ok()) return s;
  impl_->latest.store(info.id, std::memory_order_release);
  return info;
}

Result<std::vector<SnapshotInfo>> Store::ListSnapshots() const {
  Txn txn;
  if (Status s = txn.Begin(impl_->env, MDB_RDONLY); !s.ok()) return s;
  Cursor c;
  if (Status s = c.Open(txn.get(), impl_->snapshots); !s.ok()) return s;
  std::vector<SnapshotInfo> out;
  MDB_val k, v;
  int rc = c.Get(&k, &v, MDB_FIRST);
  while (rc == 0) {
    SnapshotInfo info;
    if (k.mv_size != 8 || !DecodeSnapshot(GetBe64(View(k), 0), View(v), &info)) {
      return Damaged("snapshot record");
    }
    out.push_back(std::move(info));
    rc = c.Get(&k, &v, MDB_NEXT);
  }
  if (rc != MDB_NOTFOUND) return FromLmdb(rc, "list snapshots");
  return out;
}

Result<SnapshotInfo> Store::GetSnapshot(SnapId id) const {
  Txn txn;
  if (Status s = txn.Begin(impl_->env, MDB_RDONLY); !s.ok()) return s;
  return impl_->ReadSnapshot(txn.get(), id);
}

Result<SnapshotInfo> Store::FindSnapshot(const std::string& key) const {
  Result<std::vector<SnapshotInfo>> all = ListSnapshots();
  if (!all.ok()) return all.status();
  std::optional<Guid> guid = Guid::Parse(key);
  for (const SnapshotInfo& s : all.value()) {
    if (s.name == key || (guid && s.guid == *guid)) return s;
  }
  std::string digits = key.size() > 1 && key[0] == '#' ? key.substr(1) : key;
  if (!digits.empty() && digits.find_first_not_of("0123456789") == std::string::npos &&
      digits.size() < 20) {
    SnapId id = std::stoull(digits);
    for (const SnapshotInfo& s : all.value()) {
      if (s.id == id) return s;
    }
  }
  return Status::Error(ENOENT, "no snapshot '" + key + "'");
}

Status Store::Preserve(SnapId epoch, Preservation& batch) {
  if (batch.empty()) return Status();
  if (epoch == 0) return Status::Error(EINVAL, "preserve: no snapshot epoch");
  // Checked before any append, so that a rejected batch leaves no pack space
  // behind.
  for (const Preservation::BlockItem& item : batch.blocks_) {
    if (item.data.size() > block_size_) {
      return Status::Error(EINVAL, "block larger than block size");
    }
  }
  std::shared_lock gate(impl_->gate);
  // The expensive part runs on the caller's thread, in parallel with other
  // callers: zero detection, hashing, dedup candidates, pack appends.
  std::vector<Preservation::BlockItem*> items;
  for (Preservation::BlockItem& item : batch.blocks_) items.push_back(&item);
  if (Status s = impl_->PrepareBlocks(items); !s.ok()) return s;

  // Group commit: the first waiter commits everything queued.
  Impl::Pending me{epoch, &batch, Status(), false};
  std::unique_lock lock(impl_->commit_mutex);
  impl_->queue.push_back(&me);
  while (!me.done) {
    if (!impl_->leader_active) {
      impl_->leader_active = true;
      std::vector<Impl::Pending*> group(impl_->queue.begin(), impl_->queue.end());
      impl_->queue.clear();
      lock.unlock();
      Status s = impl_->CommitGroup(group);
      lock.lock();
      for (Impl::Pending* p : group) {
        p->result = s;
        p->done = true;
      }
      impl_->leader_active = false;
      impl_->commit_cv.notify_all();
    } else {
      impl_->commit_cv.wait(lock);
    }
  }
  return me.result;
}

Result<PreservedState> Store::GetPreservedState(Ino ino, SnapId epoch) const {
  Result<std::unique_ptr<ReadView>> view = BeginRead();
  if (!view.ok()) return view.status();
  PreservedState st;
  Result<std::optional<InodeMeta>> meta = view.value()->FindInode(ino, epoch);
  if (!meta.ok()) return meta.status();
  if (meta.value()) {
    st.inode = true;
    st.size = meta.value()->size;
  }
  Result<std::optional<SnapId>> listing = view.value()->FindListing(ino, epoch);
  if (!listing.ok()) return listing.status();
  st.listing = listing.value().has_value();
  MDB_txn* t = view.value()->impl_->txn.get();
  std::string kk = Be64(ino);
  MDB_val k = Val(kk), v;
  st.kept = mdb_get(t, impl_->kept, &k, &v) == 0;
  // Blocks with a record at `epoch` or later (the primary order is ino,
  // block, epoch).
  Cursor c;
  if (Status s = c.Open(t, impl_->data); !s.ok()) return s;
  int rc = c.SeekGe(kk, &k, &v);
  while (rc == 0) {
    std::string_view key = View(k);
    if (key.size() != 24 || GetBe64(key, 0) != ino) break;
    const uint64_t block = GetBe64(key, 8);
    if (GetBe64(key, 16) >= epoch && (st.blocks.empty() || st.blocks.back() != block)) {
      st.blocks.push_back(block);
    }
    rc = c.Get(&k, &v, MDB_NEXT);
  }
  if (rc != 0 && rc != MDB_NOTFOUND) return FromLmdb(rc, "read data records");
  return st;
}

Result<std::vector<std::pair<Ino, std::string>>> Store::ListKept() const {
  Txn txn;
  if (Status s = txn.Begin(impl_->env, MDB_RDONLY); !s.ok()) return s;
  Cursor c;
  if (Status s = c.Open(txn.get(), impl_->kept); !s.ok()) return s;
  std::vector<std::pair<Ino, std::string>> out;
  MDB_val k, v;
  int rc = c.Get(&k, &v, MDB_FIRST);
  while (rc == 0) {
    Decoder d(View(v));
    d.U64();
    std::string handle = d.Str();
    if (k.mv_size != 8 || !d.done()) return Damaged("kept record");
    out.emplace_back(GetBe64(View(k), 0), std::move(handle));
    rc = c.Get(&k, &v, MDB_NEXT);
  }
  return out;
}

Result<std::unique_ptr<ReadView>> Store::BeginRead() const {
  auto impl = std::make_unique<ReadView::Impl>();
  impl->store = impl_.get();
  if (Status s = impl->txn.Begin(impl_->env, MDB_RDONLY); !s.ok()) return s;
  return std::unique_ptr<ReadView>(new ReadView(std::move(impl)));
}

void Store::Prefetch(const BlockLocation& loc) const {
  Result<std::shared_ptr<UniqueFd>> fd = impl_->PackFd(loc.pack);
  if (fd.ok()) {
    (void)posix_fadvise(fd.value()->get(), static_cast<off_t>(loc.offset),
                        static_cast<off_t>(loc.length), POSIX_FADV_WILLNEED);
  }
}

Status Store::ReadBlock(const BlockLocation& loc, char* buf) const {
  return impl_->ReadStored(loc.pack, loc.offset, loc.length, buf);
}

Result<GcResult> Store::DeleteSnapshot(SnapId id) {
  GcResult gc;
  Impl::Punches punch;
  {
    std::lock_guard lock(impl_->commit_mutex);
    Txn txn;
    if (Status s = txn.Begin(impl_->env, 0); !s.ok()) return s;
    MDB_txn* t = txn.get();
    Result<SnapshotInfo> found = impl_->ReadSnapshot(t, id);
    if (!found.ok()) return found.status();
    const SnapshotInfo info = std::move(found.value());
    std::string key = Be64(id);
    MDB_val k = Val(key);
    int rc = 0;
    if (!info.hold.empty()) {
      return Status::Error(
          EBUSY, "snapshot '" + info.name + "' is held (" + info.hold + "); release it first");
    }
    // Neighbours among the remaining snapshots.
    SnapId prev = 0, next = UINT64_MAX;
    {
      Cursor c;
      if (Status s = c.Open(t, impl_->snapshots); !s.ok()) return s;
      MDB_val ck, cv;
      if (c.SeekGe(key, &ck, &cv) == 0) {
        if (c.Get(&ck, &cv, MDB_NEXT) == 0) next = GetBe64(View(ck), 0);
      }
      if (c.SeekGe(key, &ck, &cv) == 0 && c.Get(&ck, &cv, MDB_PREV) == 0) {
        prev = GetBe64(View(ck), 0);
      }
    }
    if (Status s = FromLmdb(mdb_del(t, impl_->snapshots, &k, nullptr), "delete snapshot");
        !s.ok()) {
      return s;
    }
    MDB_val nk = Val(info.name);
    (void)mdb_del(t, impl_->names, &nk, nullptr);

    // Records with epochs in [id, next) were resolved to by `id` (and by
    // earlier-deleted snapshots in that range). One stays if `prev` still
    // resolves to it: prev > the object's previous record epoch.
    std::vector<std::string> index_keys;
    {
      Cursor c;
      if (Status s = c.Open(t, impl_->epochs); !s.ok()) return s;
      MDB_val ck, cv;
      rc = c.SeekGe(Be64(id), &ck, &cv);
      while (rc == 0) {
        std::string_view ik = View(ck);
        if (ik.size() < 17 || GetBe64(ik, 0) >= next) break;
        index_keys.emplace_back(ik);
        rc = c.Get(&ck, &cv, MDB_NEXT);
      }
    }
    Impl::Deltas deltas;
    if (info.clone != CloneState::kNone) {
      if (Status s = impl_->DropClone(t, id, &punch, &deltas, &gc); !s.ok()) return s;
    }
    // Epoch of the record before `rec_key` for the same object in `dbi`, or 0.
    auto previous_epoch = [&](MDB_dbi dbi, const std::string& rec_key, size_t obj_len,
                              SnapId* out) -> Status {
      Cursor c;
      if (Status s = c.Open(t, dbi); !s.ok()) return s;
      MDB_val ck, cv;
      *out = 0;
      int r = c.SeekGe(rec_key, &ck, &cv);
      if (r == MDB_NOTFOUND) {
        r = c.Get(&ck, &cv, MDB_LAST);
      } else if (r == 0) {
        r = c.Get(&ck, &cv, MDB_PREV);
      }
      if (r == MDB_NOTFOUND) return Status();
      if (r != 0) return FromLmdb(r, "read catalogue");
      std::string_view pk = View(ck);
      if (pk.size() >= obj_len + 8 && pk.substr(0, obj_len) == rec_key.substr(0, obj_len)) {
        *out = GetBe64(pk, obj_len);
      }
      return Status();
    };
    for (const std::string& ik : index_keys) {
      const SnapId epoch = GetBe64(ik, 0);
      const char kind = ik[8];
      const Ino ino = GetBe64(ik, 9);
      bool drop = false;
      if (kind == kIdxKept) {
        drop = prev == 0;
        if (drop) {
          std::string kk = Be64(ino);
          MDB_val kv = Val(kk);
          (void)mdb_del(t, impl_->kept, &kv, nullptr);
          gc.released.push_back(ino);
        }
      } else if (kind == kIdxInode) {
        std::string rk = InodeKey(ino, epoch);
        SnapId pe = 0;
        if (Status s = previous_epoch(impl_->inodes, rk, 8, &pe); !s.ok()) return s;
        drop = !(prev > pe);
        if (drop) {
          MDB_val rv = Val(rk);
          (void)mdb_del(t, impl_->inodes, &rv, nullptr);
        }
      } else if (kind == kIdxListing) {
        std::string rk = DirentKey(ino, epoch, "");
        SnapId pe = 0;
        if (Status s = previous_epoch(impl_->dirents, rk, 8, &pe); !s.ok()) return s;
        drop = !(prev > pe);
        if (drop) {
          std::vector<std::string> keys;
          Cursor c;
          if (Status s = c.Open(t, impl_->dirents); !s.ok()) return s;
          MDB_val ck, cv;
          int r = c.SeekGe(rk, &ck, &cv);
          while (r == 0 && View(ck).substr(0, 16) == rk) {
            keys.emplace_back(View(ck));
            r = c.Get(&ck, &cv, MDB_NEXT);
          }
          for (const std::string& dk : keys) {
            MDB_val dv = Val(dk);
            (void)mdb_del(t, impl_->dirents, &dv, nullptr);
          }
        }
      } else if (kind == kIdxData && ik.size() == 25) {
        const uint64_t block = GetBe64(ik, 17);
        std::string rk = DataKey(ino, block, epoch);
        SnapId pe = 0;
        if (Status s = previous_epoch(impl_->data, rk, 16, &pe); !s.ok()) return s;
        drop = !(prev > pe);
        if (drop) {
          MDB_val rv = Val(rk), dv;
          if (mdb_get(t, impl_->data, &rv, &dv) == 0) {
            DataRecord rec;
            if (!DecodeData(View(dv), &rec)) return Damaged("data record");
            if (Status s = impl_->UnrefData(t, rec, &punch, &deltas, &gc); !s.ok()) return s;
            (void)mdb_del(t, impl_->data, &rv, nullptr);
          }
        }
      }
      if (drop) {
        ++gc.records_dropped;
        MDB_val iv = Val(ik);
        (void)mdb_del(t, impl_->epochs, &iv, nullptr);
      }
    }
    if (Status s = impl_->AddDeltas(t, deltas); !s.ok()) return s;
    if (Status s = txn.Commit(); !s.ok()) return s;
    // The latest snapshot may have gone.
    Result<std::vector<SnapshotInfo>> all = ListSnapshots();
    impl_->latest = all.ok() && !all.value().empty() ? all.value().back().id : 0;
  }
  for (const auto& [pack, extent] : punch) (void)impl_->Punch(pack, extent.first, extent.second);
  return gc;
}

// ---- clones ----

Status Store::Impl::DropClone(MDB_txn* txn, SnapId snap, Punches* punch, Deltas* d, GcResult* gc) {
  const std::string prefix = Be64(snap);
  for (MDB_dbi dbi : {cinodes, cdirents, cdata}) {
    std::vector<std::string> keys;
    {
      Cursor c;
      if (Status s = c.Open(txn, dbi); !s.ok()) return s;
      MDB_val k, v;
      for (int rc = c.SeekGe(prefix, &k, &v); rc == 0 && View(k).substr(0, 8) == prefix;
           rc = c.Get(&k, &v, MDB_NEXT)) {
        if (dbi == cdata) {
          DataRecord rec;
          if (!DecodeData(View(v), &rec)) return Damaged("clone data record");
          if (Status s = UnrefData(txn, rec, punch, d, gc); !s.ok()) return s;
        }
        keys.emplace_back(View(k));
      }
    }
    for (const std::string& key : keys) {
      MDB_val k = Val(key);
      (void)mdb_del(txn, dbi, &k, nullptr);
    }
    if (gc != nullptr) gc->records_dropped += keys.size();
  }
  return Status();
}

Status Store::CreateClone(SnapId snap) {
  return impl_->UpdateSnapshot(snap, [](SnapshotInfo& info) {
    if (info.clone != CloneState::kNone) {
      return Status::Error(EEXIST, "snapshot '" + info.name + "' already has a clone" +
                                       (info.clone == CloneState::kFrozen ? " (frozen)" : ""));
    }
    info.clone = CloneState::kWritable;
    return Status();
  });
}

Status Store::FreezeClone(SnapId snap, int64_t now_ns) {
  return impl_->UpdateSnapshot(snap, [now_ns](SnapshotInfo& info) {
    if (info.clone == CloneState::kNone) {
      return Status::Error(EINVAL, "snapshot '" + info.name + "' has no clone to freeze");
    }
    if (info.clone == CloneState::kWritable) {
      info.clone = CloneState::kFrozen;
      info.frozen_ns = now_ns;
    }
    return Status();
  });
}

Result<Ino> Store::AllocCloneIno(SnapId snap) {
  std::lock_guard lock(impl_->commit_mutex);
  Txn txn;
  if (Status s = txn.Begin(impl_->env, 0); !s.ok()) return s;
  Result<SnapshotInfo> found = impl_->ReadSnapshot(txn.get(), snap);
  if (!found.ok()) return found.status();
  if (found.value().clone != CloneState::kWritable) {
    return Status::Error(EROFS, "snapshot '" + found.value().name + "' has no writable clone");
  }
  std::string key = CloneKey(snap, 0);
  MDB_val k = Val(key), v;
  Ino next = kCloneInoTop;
  int rc = mdb_get(txn.get(), impl_->cinodes, &k, &v);
  if (rc == 0) {
    Decoder d(View(v));
    next = d.U64();
    if (!d.done()) return Damaged("clone object allocator");
  } else if (rc != MDB_NOTFOUND) {
    return FromLmdb(rc, "read clone object allocator");
  }
  if (next <= (uint64_t{1} << 32)) return Status::Error(ENOSPC, "clone object numbers exhausted");
  Encoder e;
  e.U64(next - 1);
  std::string value = e.Take();
  MDB_val nv = Val(value);
  if (Status s = FromLmdb(mdb_put(txn.get(), impl_->cinodes, &k, &nv, 0), "write clone allocator");
      !s.ok()) {
    return s;
  }
  if (Status s = txn.Commit(); !s.ok()) return s;
  return next;
}

Status Store::ApplyClone(SnapId snap, CloneChange& change) {
  if (change.empty()) return Status();
  // Blocks are prepared (hashed, deduplicated, appended) before the
  // transaction, as for Preserve().
  std::vector<Preservation::BlockItem> items;
  for (const CloneChange::Op& op : change.ops_) {
    if (op.kind != CloneChange::Op::kPutBlock) continue;
    if (op.data.size() > block_size_) return Status::Error(EINVAL, "block larger than block size");
    Preservation::BlockItem item;
    item.ino = op.ino;
    item.block = op.block;
    item.data = op.data;
    items.push_back(std::move(item));
  }
  std::shared_lock gate(impl_->gate);
  std::vector<Preservation::BlockItem*> ptrs;
  for (Preservation::BlockItem& item : items) ptrs.push_back(&item);
  if (Status s = impl_->PrepareBlocks(ptrs); !s.ok()) return s;
  auto free_appended = [&] {
    for (Preservation::BlockItem& item : items) {
      if (item.appended) {
        (void)impl_->Punch(item.pack, item.offset, static_cast<uint32_t>(item.data.size()));
      }
    }
  };

  Impl::Punches punch;
  std::set<uint32_t> packs_to_sync;
  Status result;
  {
    std::lock_guard lock(impl_->commit_mutex);
    Txn txn;
    result = txn.Begin(impl_->env, 0);
    MDB_txn* t = txn.get();
    Impl::Deltas deltas;
    if (result.ok()) {
      Result<SnapshotInfo> found = impl_->ReadSnapshot(t, snap);
      if (!found.ok()) {
        result = found.status();
      } else if (found.value().clone != CloneState::kWritable) {
        result = Status::Error(EROFS, "snapshot '" + found.value().name + "' is read-only" +
                                          (found.value().clone == CloneState::kFrozen
                                               ? " (its clone is frozen)"
                                               : " (it has no writable clone)"));
      }
    }
    // Drops the clone's data record `key` if there is one.
    auto drop_data = [&](const std::string& key) -> Status {
      MDB_val k = Val(key), v;
      int rc = mdb_get(t, impl_->cdata, &k, &v);
      if (rc == MDB_NOTFOUND) return Status();
      if (rc != 0) return FromLmdb(rc, "read clone data record");
      DataRecord rec;
      if (!DecodeData(View(v), &rec)) return Damaged("clone data record");
      if (Status s = impl_->UnrefData(t, rec, &punch, &deltas, nullptr); !s.ok()) return s;
      return FromLmdb(mdb_del(t, impl_->cdata, &k, nullptr), "delete clone data record");
    };
    auto drop_data_from = [&](Ino ino, uint64_t first) -> Status {
      std::vector<std::string> keys;
      {
        Cursor c;
        if (Status s = c.Open(t, impl_->cdata); !s.ok()) return s;
        const std::string prefix = CloneKey(snap, ino);
        MDB_val k, v;
        for (int rc = c.SeekGe(CloneDataKey(snap, ino, first), &k, &v);
             rc == 0 && View(k).substr(0, 16) == prefix; rc = c.Get(&k, &v, MDB_NEXT)) {
          keys.emplace_back(View(k));
        }
      }
      for (const std::string& key : keys) {
        if (Status s = drop_data(key); !s.ok()) return s;
      }
      return Status();
    };
    auto drop_listing = [&](Ino dir) -> Status {
      std::vector<std::string> keys;
      {
        Cursor c;
        if (Status s = c.Open(t, impl_->cdirents); !s.ok()) return s;
        const std::string prefix = CloneDirentKey(snap, dir, "");
        MDB_val k, v;
        for (int rc = c.SeekGe(prefix, &k, &v); rc == 0 && View(k).substr(0, 16) == prefix;
             rc = c.Get(&k, &v, MDB_NEXT)) {
          keys.emplace_back(View(k));
        }
      }
      for (const std::string& key : keys) {
        MDB_val k = Val(key);
        (void)mdb_del(t, impl_->cdirents, &k, nullptr);
      }
      return Status();
    };
    auto put = [&](MDB_dbi dbi, const std::string& key, const std::string& value) {
      MDB_val k = Val(key), v = Val(value);
      return FromLmdb(mdb_put(t, dbi, &k, &v, 0), "write clone record");
    };
    size_t next_item = 0;
    for (const CloneChange::Op& op : change.ops_) {
      if (!result.ok()) break;
      switch (op.kind) {
        case CloneChange::Op::kPutInode:
          result = put(impl_->cinodes, CloneKey(snap, op.ino), EncodeCloneInode(op.inode));
          break;
        case CloneChange::Op::kDeleteInode: {
          std::string key = CloneKey(snap, op.ino);
          MDB_val k = Val(key);
          int rc = mdb_del(t, impl_->cinodes, &k, nullptr);
          result = rc == MDB_NOTFOUND ? Status() : FromLmdb(rc, "delete clone inode");
          if (result.ok()) result = drop_data_from(op.ino, 0);
          if (result.ok()) result = drop_listing(op.ino);
          break;
        }
        case CloneChange::Op::kPutListing: {
          result = drop_listing(op.ino);
          if (result.ok()) result = put(impl_->cdirents, CloneDirentKey(snap, op.ino, ""), "");
          for (const DirEntry& de : op.entries) {
            if (!result.ok() || de.name.empty()) continue;
            result = put(impl_->cdirents, CloneDirentKey(snap, op.ino, de.name), EncodeEntry(de));
          }
          break;
        }
        case CloneChange::Op::kPutEntry:
          if (!op.entries.empty() && !op.entries.front().name.empty()) {
            result = put(impl_->cdirents, CloneDirentKey(snap, op.ino, op.entries.front().name),
                         EncodeEntry(op.entries.front()));
          }
          break;
        case CloneChange::Op::kDeleteEntry: {
          if (op.name.empty()) break;
          std::string key = CloneDirentKey(snap, op.ino, op.name);
          MDB_val k = Val(key);
          int rc = mdb_del(t, impl_->cdirents, &k, nullptr);
          result = rc == MDB_NOTFOUND ? Status() : FromLmdb(rc, "delete clone listing entry");
          break;
        }
        case CloneChange::Op::kPutBlock: {
          Preservation::BlockItem& item = items[next_item++];
          const std::string key = CloneDataKey(snap, op.ino, op.block);
          // The new reference first: the old record may name the same block.
          DataRecord rec;
          result = impl_->RefBlock(t, item, &rec, &punch, &packs_to_sync, &deltas);
          if (result.ok()) result = drop_data(key);
          if (result.ok()) result = put(impl_->cdata, key, EncodeData(rec));
          break;
        }
        case CloneChange::Op::kDropBlocks:
          result = drop_data_from(op.ino, op.block);
          break;
      }
    }
    if (result.ok()) result = impl_->AddDeltas(t, deltas);
    for (Preservation::BlockItem& item : items) {
      if (item.appended) packs_to_sync.insert(item.pack);
    }
    if (result.ok()) result = impl_->SyncPacksAndCommit(packs_to_sync, txn);
  }
  if (!result.ok()) {
    free_appended();
    return result;
  }
  for (const auto& [pack, extent] : punch) (void)impl_->Punch(pack, extent.first, extent.second);
  return Status();
}

Status Store::SetHold(SnapId id, const std::string& reason) {
  return impl_->UpdateSnapshot(id, [&reason](SnapshotInfo& info) {
    info.hold = reason;
    return Status();
  });
}

Result<RetentionPolicy> Store::GetRetention() const {
  Txn txn;
  if (Status s = txn.Begin(impl_->env, MDB_RDONLY); !s.ok()) return s;
  RetentionPolicy p;
  Result<uint64_t> keep = impl_->GetCounter(txn.get(), "retention.keep_last");
  if (!keep.ok()) return keep.status();
  Result<uint64_t> age = impl_->GetCounter(txn.get(), "retention.max_age_s");
  if (!age.ok()) return age.status();
  p.keep_last = keep.value();
  p.max_age_s = age.value();
  return p;
}

Status Store::SetRetention(const RetentionPolicy& policy) {
  std::lock_guard lock(impl_->commit_mutex);
  Txn txn;
  if (Status s = txn.Begin(impl_->env, 0); !s.ok()) return s;
  for (const auto& [name, value] : {std::pair{"retention.keep_last", policy.keep_last},
                                    std::pair{"retention.max_age_s", policy.max_age_s}}) {
    Encoder e;
    e.U64(value);
    std::string enc = e.Take();
    MDB_val k = Val(name), v = Val(enc);
    if (Status s = FromLmdb(mdb_put(txn.get(), impl_->meta, &k, &v, 0), "write retention");
        !s.ok()) {
      return s;
    }
  }
  return txn.Commit();
}

Result<std::vector<SnapshotInfo>> Store::RetentionCandidates(int64_t now_ns, SnapId keep) const {
  Result<RetentionPolicy> policy = GetRetention();
  if (!policy.ok()) return policy.status();
  Result<std::vector<SnapshotInfo>> all = ListSnapshots();
  if (!all.ok()) return all.status();
  std::vector<SnapshotInfo> out;
  const RetentionPolicy& p = policy.value();
  if (!p.active()) return out;
  // Held snapshots are kept and do not count against keep_last.
  size_t unheld = 0;
  for (const SnapshotInfo& s : all.value()) unheld += s.hold.empty() ? 1 : 0;
  size_t seen = 0;  // Unheld snapshots so far, oldest first.
  for (const SnapshotInfo& s : all.value()) {
    if (!s.hold.empty()) continue;
    const size_t newer = unheld - ++seen;  // Unheld snapshots newer than s.
    if (s.id == keep) continue;
    const bool too_many = p.keep_last != 0 && newer >= p.keep_last;
    const bool too_old =
        p.max_age_s != 0 && now_ns - s.created_ns > static_cast<int64_t>(p.max_age_s) * 1000000000;
    if (too_many || too_old) out.push_back(s);
  }
  return out;
}

Result<SpaceUsage> Store::Usage() const {
  SpaceUsage u;
  u.block_size = block_size_;
  Txn txn;
  if (Status s = txn.Begin(impl_->env, MDB_RDONLY); !s.ok()) return s;
  MDB_stat st;
  if (mdb_stat(txn.get(), impl_->snapshots, &st) == 0) u.snapshots = st.ms_entries;
  if (mdb_stat(txn.get(), impl_->kept, &st) == 0) u.kept_files = st.ms_entries;
  struct {
    const char* name;
    uint64_t* out;
  } counters[] = {{kStatStoredBlocks, &u.stored_blocks},
                  {kStatStoredBytes, &u.stored_bytes},
                  {kStatRefBytes, &u.referenced_bytes},
                  {kStatZeroBytes, &u.zero_bytes}};
  for (auto& c : counters) {
    Result<uint64_t> v = impl_->GetCounter(txn.get(), c.name);
    if (!v.ok()) return v.status();
    *c.out = v.value();
  }
  // Pages in use by the catalogue's databases (the file itself keeps freed
  // pages for reuse).
  for (MDB_dbi dbi : {impl_->meta, impl_->snapshots, impl_->names, impl_->blocks, impl_->data,
                      impl_->inodes, impl_->dirents, impl_->epochs, impl_->kept}) {
    MDB_stat ds;
    if (mdb_stat(txn.get(), dbi, &ds) == 0) {
      u.catalog_bytes +=
          static_cast<uint64_t>(ds.ms_branch_pages + ds.ms_leaf_pages + ds.ms_overflow_pages) *
          ds.ms_psize;
    }
  }
  struct stat fst;
  std::vector<uint32_t> packs;
  {
    std::shared_lock lock(impl_->packs_mutex);
    for (const auto& [n, fd] : impl_->pack_fds) packs.push_back(n);
  }
  // A new open file description: a dup() would share the directory offset,
  // which OpenPacks() left at the end of the directory.
  UniqueFd dup_fd(openat(impl_->pack_dir.get(), ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (DIR* d = dup_fd ? fdopendir(dup_fd.get()) : nullptr) {
    dup_fd.release();
    while (dirent* de = readdir(d)) {
      if (std::strncmp(de->d_name, "pack-", 5) != 0) continue;
      if (fstatat(impl_->pack_dir.get(), de->d_name, &fst, 0) == 0) {
        u.pack_bytes += static_cast<uint64_t>(fst.st_blocks) * 512;
      }
    }
    closedir(d);
  }
  return u;
}

Status Store::Impl::ScanOrphans(
    std::map<uint32_t, std::vector<std::pair<uint64_t, uint64_t>>>& used, bool repair,
    uint64_t* orphan_bytes,
    std::vector<std::pair<uint32_t, std::pair<uint64_t, uint32_t>>>* punch) const {
  *orphan_bytes = 0;
  // Not dup(): see Usage().
  UniqueFd dup_fd(openat(pack_dir.get(), ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  DIR* d = dup_fd ? fdopendir(dup_fd.get()) : nullptr;
  if (d == nullptr) return Status::FromErrno(errno, "list packs");
  dup_fd.release();
  std::vector<uint32_t> packs;
  while (dirent* de = readdir(d)) {
    unsigned n = 0;
    char extra;
    if (std::sscanf(de->d_name, "pack-%8u%c", &n, &extra) == 1) packs.push_back(n);
  }
  closedir(d);
  for (uint32_t pack : packs) {
    Result<std::shared_ptr<UniqueFd>> fd = PackFd(pack);
    if (!fd.ok()) return fd.status();
    auto& extents = used[pack];
    std::sort(extents.begin(), extents.end());
    off_t pos = 0;
    while (true) {
      off_t data = lseek(fd.value()->get(), pos, SEEK_DATA);
      if (data < 0) break;
      off_t hole = lseek(fd.value()->get(), data, SEEK_HOLE);
      if (hole < 0) break;
      // Subtract used extents from [data, hole).
      uint64_t cur = static_cast<uint64_t>(data);
      const uint64_t end = static_cast<uint64_t>(hole);
      auto it =
          std::lower_bound(extents.begin(), extents.end(), std::pair<uint64_t, uint64_t>{0, 0},
                           [&](const auto& a, const auto&) { return a.first + a.second <= cur; });
      for (; cur < end; ++it) {
        uint64_t next_used = it == extents.end() ? end : std::min(end, it->first);
        if (next_used > cur) {
          uint64_t lo = AlignUp(cur), hi = next_used / kAlign * kAlign;
          if (hi > lo) {
            *orphan_bytes += hi - lo;
            if (repair) punch->push_back({pack, {lo, static_cast<uint32_t>(hi - lo)}});
          }
        }
        if (it == extents.end()) break;
        cur = std::max(cur, it->first + it->second);
      }
      pos = hole;
    }
  }
  return Status();
}

Result<uint64_t> Store::ReclaimOrphans() {
  std::unique_lock gate(impl_->gate);  // No appends in flight.
  std::lock_guard lock(impl_->commit_mutex);
  std::map<uint32_t, std::vector<std::pair<uint64_t, uint64_t>>> used;
  {
    Txn txn;
    if (Status s = txn.Begin(impl_->env, MDB_RDONLY); !s.ok()) return s;
    Cursor c;
    if (Status s = c.Open(txn.get(), impl_->blocks); !s.ok()) return s;
    MDB_val k, v;
    for (int rc = c.Get(&k, &v, MDB_FIRST); rc == 0; rc = c.Get(&k, &v, MDB_NEXT)) {
      BlockRecord br;
      if (!DecodeBlock(View(v), &br)) return Damaged("block record");
      used[br.pack].push_back({br.offset, AlignUp(br.length)});
    }
  }
  uint64_t orphan_bytes = 0;
  std::vector<std::pair<uint32_t, std::pair<uint64_t, uint32_t>>> punch;
  if (Status s = impl_->ScanOrphans(used, true, &orphan_bytes, &punch); !s.ok()) return s;
  for (const auto& [pack, extent] : punch) {
    if (Status s = impl_->Punch(pack, extent.first, extent.second); !s.ok()) return s;
  }
  return orphan_bytes;
}

Result<FsckReport> Store::Fsck(bool repair,
                               const std::function<void(const std::string&)>& progress) {
  FsckReport report;
  auto say = [&](const std::string& line) {
    if (progress) progress(line);
  };
  std::unique_lock gate(impl_->gate);  // No appends in flight.
  std::lock_guard lock(impl_->commit_mutex);
  Txn txn;
  if (Status s = txn.Begin(impl_->env, repair ? 0 : MDB_RDONLY); !s.ok()) return s;
  MDB_txn* t = txn.get();
  auto problem = [&](std::string line) { report.problems.push_back(std::move(line)); };

  // 1. Every stored block: where it is and whether its content still hashes
  //    to its key.
  std::map<std::string, BlockRecord> blocks;
  std::set<std::string> bad_blocks;                                     // Corrupt or unreadable.
  std::map<uint32_t, std::vector<std::pair<uint64_t, uint64_t>>> used;  // pack -> extents
  {
    Cursor c;
    if (Status s = c.Open(t, impl_->blocks); !s.ok()) return s;
    MDB_val k, v;
    int rc = c.Get(&k, &v, MDB_FIRST);
    std::string buf;
    while (rc == 0) {
      std::string key(View(k));
      BlockRecord br;
      if (key.size() != 20 || !DecodeBlock(View(v), &br)) {
        problem("block record " + std::to_string(report.blocks_checked) + " is malformed");
        bad_blocks.insert(key);
      } else {
        blocks[key] = br;
        used[br.pack].push_back({br.offset, AlignUp(br.length)});
        buf.resize(br.length);
        Status rs = impl_->ReadStored(br.pack, br.offset, br.length, buf.data());
        if (!rs.ok()) {
          problem("block in pack " + std::to_string(br.pack) + " at " + std::to_string(br.offset) +
                  " cannot be read: " + rs.message());
          bad_blocks.insert(key);
        } else {
          XXH128_canonical_t canon;
          XXH128_canonicalFromHash(&canon, XXH3_128bits(buf.data(), buf.size()));
          if (std::memcmp(canon.digest, key.data(), 16) != 0) {
            problem("block in pack " + std::to_string(br.pack) + " at " +
                    std::to_string(br.offset) + " does not match its hash (corrupt)");
            bad_blocks.insert(key);
          }
        }
      }
      if (++report.blocks_checked % 10000 == 0) {
        say("checked " + std::to_string(report.blocks_checked) + " blocks");
      }
      rc = c.Get(&k, &v, MDB_NEXT);
    }
  }

  // 2. Data records: references per block, missing blocks, index entries.
  std::map<std::string, uint64_t> refs;
  std::vector<std::pair<SnapId, SnapId>> damaged_ranges;  // (prev, epoch]
  std::set<std::string> index_seen;
  int64_t stored_blocks = 0, stored_bytes = 0, ref_bytes = 0, zero_bytes = 0;
  auto check_index = [&](const std::string& ik) -> Status {
    index_seen.insert(ik);
    MDB_val k = Val(ik), v;
    int rc = mdb_get(t, impl_->epochs, &k, &v);
    if (rc == 0) return Status();
    if (rc != MDB_NOTFOUND) return FromLmdb(rc, "read epoch index");
    problem("epoch index lacks an entry for a record");
    if (repair) {
      MDB_val ev = Val("");
      if (Status s = FromLmdb(mdb_put(t, impl_->epochs, &k, &ev, 0), "repair epoch index");
          !s.ok()) {
        return s;
      }
      report.repairs.push_back("added a missing epoch index entry");
    }
    return Status();
  };
  {
    Cursor c;
    if (Status s = c.Open(t, impl_->data); !s.ok()) return s;
    MDB_val k, v;
    int rc = c.Get(&k, &v, MDB_FIRST);
    std::string last_obj;
    SnapId last_epoch = 0;
    while (rc == 0) {
      std::string_view key = View(k);
      DataRecord rec;
      if (key.size() != 24 || !DecodeData(View(v), &rec)) {
        problem("malformed data record");
      } else {
        const Ino ino = GetBe64(key, 0);
        const uint64_t block = GetBe64(key, 8);
        const SnapId epoch = GetBe64(key, 16);
        std::string obj(key.substr(0, 16));
        const SnapId prev = obj == last_obj ? last_epoch : 0;
        last_obj = obj;
        last_epoch = epoch;
        if (rec.kind == kDataZero) {
          zero_bytes += rec.length;
        } else {
          ref_bytes += rec.length;
          auto it = blocks.find(rec.key);
          if (it == blocks.end() || bad_blocks.count(rec.key)) {
            if (it == blocks.end()) {
              problem("block " + std::to_string(block) + " of inode " + std::to_string(ino) +
                      " (epoch " + std::to_string(epoch) + ") is missing from the store");
            }
            damaged_ranges.push_back({prev, epoch});
          }
          // A corrupt block is still named: counting it keeps repair from
          // freeing it and handing its key to new content that the damaged
          // record would then share.
          if (it != blocks.end()) ++refs[rec.key];
        }
        if (Status s = check_index(IndexKey(epoch, kIdxData, ino, block)); !s.ok()) return s;
      }
      if (++report.records_checked % 100000 == 0) {
        say("checked " + std::to_string(report.records_checked) + " records");
      }
      rc = c.Get(&k, &v, MDB_NEXT);
    }
  }
  // Clone records: block references, well-formed, of an existing clone.
  {
    std::set<SnapId> clones;
    {
      Cursor c;
      if (Status s = c.Open(t, impl_->snapshots); !s.ok()) return s;
      MDB_val k, v;
      for (int rc = c.Get(&k, &v, MDB_FIRST); rc == 0; rc = c.Get(&k, &v, MDB_NEXT)) {
        SnapshotInfo info;
        if (k.mv_size == 8 && DecodeSnapshot(GetBe64(View(k), 0), View(v), &info) &&
            info.clone != CloneState::kNone) {
          clones.insert(info.id);
        }
      }
    }
    for (MDB_dbi dbi : {impl_->cdata, impl_->cinodes, impl_->cdirents}) {
      std::vector<std::string> stray;
      Cursor c;
      if (Status s = c.Open(t, dbi); !s.ok()) return s;
      MDB_val k, v;
      for (int rc = c.Get(&k, &v, MDB_FIRST); rc == 0; rc = c.Get(&k, &v, MDB_NEXT)) {
        ++report.records_checked;
        std::string_view key = View(k);
        if (key.size() < 16) {
          problem("malformed clone record key");
          continue;
        }
        const SnapId snap = GetBe64(key, 0);
        const Ino ino = GetBe64(key, 8);
        if (!clones.count(snap)) {
          stray.emplace_back(key);
          continue;
        }
        if (dbi == impl_->cdata) {
          DataRecord rec;
          if (key.size() != 24 || !DecodeData(View(v), &rec)) {
            problem("malformed clone data record");
            continue;
          }
          if (rec.kind == kDataZero) {
            zero_bytes += rec.length;
            continue;
          }
          ref_bytes += rec.length;
          auto it = blocks.find(rec.key);
          if (it == blocks.end()) {
            problem("block " + std::to_string(GetBe64(key, 16)) + " of object " +
                    std::to_string(ino) + " in the clone of snapshot #" + std::to_string(snap) +
                    " is missing from the store");
          } else {
            ++refs[rec.key];
          }
        } else if (dbi == impl_->cinodes) {
          CloneInode ci;
          if (ino != 0 && !DecodeCloneInode(View(v), &ci)) problem("malformed clone inode record");
        } else if (key.size() > 16) {
          DirEntry de;
          if (!DecodeEntry(key, View(v), &de)) problem("malformed clone listing entry");
        }
      }
      if (!stray.empty()) {
        problem(std::to_string(stray.size()) + " clone records belong to no clone");
        if (repair) {
          for (const std::string& key : stray) {
            MDB_val sk = Val(key);
            (void)mdb_del(t, dbi, &sk, nullptr);
          }
          report.repairs.push_back("removed " + std::to_string(stray.size()) +
                                   " stray clone records");
        }
      }
    }
  }
  // Inode records, listings, kept files: well-formed and indexed.
  {
    Cursor c;
    if (Status s = c.Open(t, impl_->inodes); !s.ok()) return s;
    MDB_val k, v;
    for (int rc = c.Get(&k, &v, MDB_FIRST); rc == 0; rc = c.Get(&k, &v, MDB_NEXT)) {
      ++report.records_checked;
      InodeMeta m;
      std::string_view key = View(k);
      if (key.size() != 16 || !DecodeMeta(View(v), &m)) {
        problem("malformed inode record");
        continue;
      }
      if (Status s = check_index(IndexKey(GetBe64(key, 8), kIdxInode, GetBe64(key, 0))); !s.ok()) {
        return s;
      }
    }
  }
  {
    Cursor c;
    if (Status s = c.Open(t, impl_->dirents); !s.ok()) return s;
    MDB_val k, v;
    for (int rc = c.Get(&k, &v, MDB_FIRST); rc == 0; rc = c.Get(&k, &v, MDB_NEXT)) {
      ++report.records_checked;
      std::string_view key = View(k);
      if (key.size() < 16) {
        problem("malformed listing key");
        continue;
      }
      if (key.size() == 16) {
        if (Status s = check_index(IndexKey(GetBe64(key, 8), kIdxListing, GetBe64(key, 0)));
            !s.ok()) {
          return s;
        }
        continue;
      }
      DirEntry de;
      if (!DecodeEntry(key, View(v), &de)) problem("malformed listing entry");
    }
  }
  {
    Cursor c;
    if (Status s = c.Open(t, impl_->kept); !s.ok()) return s;
    MDB_val k, v;
    for (int rc = c.Get(&k, &v, MDB_FIRST); rc == 0; rc = c.Get(&k, &v, MDB_NEXT)) {
      ++report.records_checked;
      Decoder d(View(v));
      SnapId epoch = d.U64();
      d.Str();
      if (k.mv_size != 8 || !d.done()) {
        problem("malformed kept record");
        continue;
      }
      if (Status s = check_index(IndexKey(epoch, kIdxKept, GetBe64(View(k), 0))); !s.ok()) {
        return s;
      }
    }
  }
  // Index entries that name no record.
  {
    std::vector<std::string> stale;
    Cursor c;
    if (Status s = c.Open(t, impl_->epochs); !s.ok()) return s;
    MDB_val k, v;
    for (int rc = c.Get(&k, &v, MDB_FIRST); rc == 0; rc = c.Get(&k, &v, MDB_NEXT)) {
      if (!index_seen.count(std::string(View(k)))) stale.emplace_back(View(k));
    }
    if (!stale.empty()) {
      problem(std::to_string(stale.size()) + " epoch index entries name no record");
      if (repair) {
        for (const std::string& key : stale) {
          MDB_val sk = Val(key);
          (void)mdb_del(t, impl_->epochs, &sk, nullptr);
        }
        report.repairs.push_back("removed " + std::to_string(stale.size()) +
                                 " stale epoch index entries");
      }
    }
  }

  // 3. Reference counts.
  std::vector<std::pair<uint32_t, std::pair<uint64_t, uint32_t>>> punch;
  for (auto& [key, br] : blocks) {
    const uint64_t counted = refs.count(key) ? refs[key] : 0;
    if (br.refs != counted) {
      problem("block in pack " + std::to_string(br.pack) + " at " + std::to_string(br.offset) +
              " has reference count " + std::to_string(br.refs) + ", " + std::to_string(counted) +
              " records name it");
      if (repair) {
        MDB_val bk = Val(key);
        if (counted == 0) {
          (void)mdb_del(t, impl_->blocks, &bk, nullptr);
          punch.push_back({br.pack, {br.offset, br.length}});
          report.repairs.push_back("freed an unreferenced block");
          continue;
        }
        br.refs = counted;
        std::string enc = EncodeBlock(br);
        MDB_val bv = Val(enc);
        if (Status s = FromLmdb(mdb_put(t, impl_->blocks, &bk, &bv, 0), "repair block record");
            !s.ok()) {
          return s;
        }
        report.repairs.push_back("set a block's reference count to " + std::to_string(counted));
      }
    }
    if (counted > 0 || !repair) {
      ++stored_blocks;
      stored_bytes += br.length;
    }
  }

  // 4. Orphan space: allocated pack regions no block record covers.
  uint64_t orphan_bytes = 0;
  if (Status s = impl_->ScanOrphans(used, repair, &orphan_bytes, &punch); !s.ok()) return s;
  if (orphan_bytes > 0) {
    problem(std::to_string(orphan_bytes) + " bytes of pack space belong to no block (orphans)");
    if (repair) report.repairs.push_back("freed " + std::to_string(orphan_bytes) + " orphan bytes");
  }

  // 5. Snapshots that resolve to missing or corrupt blocks are damaged.
  if (!damaged_ranges.empty()) {
    Cursor c;
    if (Status s = c.Open(t, impl_->snapshots); !s.ok()) return s;
    MDB_val k, v;
    std::vector<SnapshotInfo> hit;
    for (int rc = c.Get(&k, &v, MDB_FIRST); rc == 0; rc = c.Get(&k, &v, MDB_NEXT)) {
      SnapshotInfo info;
      if (k.mv_size != 8 || !DecodeSnapshot(GetBe64(View(k), 0), View(v), &info)) continue;
      for (const auto& [lo, hi] : damaged_ranges) {
        if (info.id > lo && info.id <= hi) {
          hit.push_back(info);
          break;
        }
      }
    }
    for (SnapshotInfo& info : hit) {
      problem("snapshot '" + info.name + "' has lost data (missing or corrupt blocks)");
      if (repair && info.intact) {
        info.intact = false;
        info.damage = "fsck found missing or corrupt blocks; damaged files read EIO";
        std::string key = Be64(info.id), value = EncodeSnapshot(info);
        MDB_val sk = Val(key), sv = Val(value);
        if (Status s = FromLmdb(mdb_put(t, impl_->snapshots, &sk, &sv, 0), "mark snapshot");
            !s.ok()) {
          return s;
        }
        report.repairs.push_back("marked snapshot '" + info.name + "' damaged");
      }
    }
  }

  // 6. Space counters.
  struct {
    const char* name;
    int64_t value;
  } counters[] = {{kStatStoredBlocks, stored_blocks},
                  {kStatStoredBytes, stored_bytes},
                  {kStatRefBytes, ref_bytes},
                  {kStatZeroBytes, zero_bytes}};
  for (const auto& c : counters) {
    Result<uint64_t> cur = impl_->GetCounter(t, c.name);
    if (!cur.ok()) return cur.status();
    if (cur.value() != static_cast<uint64_t>(c.value) && repair) {
      if (Status s = impl_->AddCounter(t, c.name, c.value - static_cast<int64_t>(cur.value()));
          !s.ok()) {
        return s;
      }
    }
  }
  if (repair) {
    if (Status s = txn.Commit(); !s.ok()) return s;
    for (const auto& [pack, extent] : punch) {
      (void)impl_->Punch(pack, extent.first, extent.second);
    }
  }
  say("checked " + std::to_string(report.blocks_checked) + " blocks and " +
      std::to_string(report.records_checked) + " records");
  return report;
}

}  // namespace vssfs::cow_store
