// RAII wrappers for LMDB transactions and cursors, and the one function that
// maps LMDB result codes to errno values.
//
// A Txn aborts on destruction unless Commit() succeeded; a Cursor closes on
// destruction (before its transaction, by declaration order).
//
// Thread-safety: a Txn or Cursor belongs to one thread at a time (the
// environment is opened with MDB_NOTLS, so a read Txn may move between
// threads but is never used by two at once).
#ifndef VSSFS_COW_STORE_SRC_LMDB_UTIL_H_
#define VSSFS_COW_STORE_SRC_LMDB_UTIL_H_

#include <lmdb.h>

#include <string>
#include <string_view>
#include <utility>

#include "vssfs/cow_store/status.h"

namespace vssfs::cow_store {

// OK for MDB_SUCCESS; otherwise an error whose errno is ENOENT
// (MDB_NOTFOUND), EEXIST (MDB_KEYEXIST), ENOSPC (MDB_MAP_FULL,
// MDB_TXN_FULL), EPROTO (MDB_VERSION_MISMATCH, MDB_INVALID), EIO (other
// LMDB codes, e.g. MDB_CORRUPTED) or the system errno LMDB returned.
Status FromLmdb(int rc, const std::string& what);

inline MDB_val Val(std::string_view s) { return MDB_val{s.size(), const_cast<char*>(s.data())}; }
inline std::string_view View(const MDB_val& v) {
  return std::string_view(static_cast<const char*>(v.mv_data), v.mv_size);
}

class Txn {
 public:
  Txn() = default;
  Txn(const Txn&) = delete;
  Txn& operator=(const Txn&) = delete;
  Txn(Txn&& o) noexcept : txn_(std::exchange(o.txn_, nullptr)) {}
  ~Txn() {
    if (txn_ != nullptr) mdb_txn_abort(txn_);
  }
  Status Begin(MDB_env* env, unsigned flags) {
    int rc = mdb_txn_begin(env, nullptr, flags, &txn_);
    if (rc != 0) txn_ = nullptr;
    return FromLmdb(rc, "begin catalogue transaction");
  }
  Status Commit() {
    int rc = mdb_txn_commit(std::exchange(txn_, nullptr));
    return FromLmdb(rc, "commit catalogue transaction");
  }
  MDB_txn* get() const { return txn_; }

 private:
  MDB_txn* txn_ = nullptr;
};

class Cursor {
 public:
  Cursor() = default;
  Cursor(const Cursor&) = delete;
  Cursor& operator=(const Cursor&) = delete;
  ~Cursor() {
    if (cur_ != nullptr) mdb_cursor_close(cur_);
  }
  Status Open(MDB_txn* txn, MDB_dbi dbi) {
    return FromLmdb(mdb_cursor_open(txn, dbi, &cur_), "open catalogue cursor");
  }
  // Positions at the first key >= `key`; false at the end.
  int SeekGe(std::string_view key, MDB_val* k, MDB_val* v) {
    *k = Val(key);
    return mdb_cursor_get(cur_, k, v, MDB_SET_RANGE);
  }
  int Get(MDB_val* k, MDB_val* v, MDB_cursor_op op) { return mdb_cursor_get(cur_, k, v, op); }
  MDB_cursor* get() const { return cur_; }

 private:
  MDB_cursor* cur_ = nullptr;
};

}  // namespace vssfs::cow_store

#endif  // VSSFS_COW_STORE_SRC_LMDB_UTIL_H_
