#include "lmdb_util.h"

#include <cerrno>

namespace vssfs::cow_store {

Status FromLmdb(int rc, const std::string& what) {
  switch (rc) {
    case MDB_SUCCESS:
      return Status();
    case MDB_NOTFOUND:
      return Status::Error(ENOENT, what + ": not found");
    case MDB_KEYEXIST:
      return Status::Error(EEXIST, what + ": already exists");
    case MDB_MAP_FULL:
      return Status::Error(ENOSPC, what + ": catalogue map is full (raise map size)");
    case MDB_TXN_FULL:
      return Status::Error(ENOSPC, what + ": transaction too large");
    case MDB_VERSION_MISMATCH:
    case MDB_INVALID:
      return Status::Error(EPROTO, what + ": " + mdb_strerror(rc));
    default:
      if (rc > 0 && rc < MDB_KEYEXIST) return Status::FromErrno(rc, what);
      return Status::Error(EIO, what + ": " + mdb_strerror(rc));
  }
}

}  // namespace vssfs::cow_store
