// FsrvpMachine: the abstract data model and sequencing rules of a Remote VSS
// provider (MS-FSRVP §3.1), without any I/O.
//
// It holds the global context, the table of shadow copy sets and the single
// message sequence timer, and decides for every operation whether it is
// allowed in the current state, which FSRVP error it fails with, the state
// change and the timer change. Side effects (taking snapshots, exposing,
// freezing, deleting) are the caller's: an operation that needs one is split
// in a Begin/End pair or returns what to clean up (Expire, Abort).
//
// Deviations from the specification are deliberate: shares, not volumes,
// are the unit of AddToShadowCopySet (see Add); a set holds at most
// kMaxShares shadow copies.
//
// The whole machine serialises to a versioned text form (Serialize/Parse)
// so that sets survive daemon restarts and reboots.
//
// Thread-safety: a value type; callers serialise access (the registry holds
// a file lock while it loads, changes and saves a machine).
#ifndef VSSFS_SNAPSHOT_CTL_FSRVP_H_
#define VSSFS_SNAPSHOT_CTL_FSRVP_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "vssfs/cow_store/status.h"
#include "vssfs/cow_store/store.h"

namespace vssfs::snapshot_ctl {

// SHADOW_COPY_ATTRIBUTES (§2.2.2.1).
inline constexpr uint32_t kAttrPersistent = 0x00000001;
inline constexpr uint32_t kAttrNoAutoRecovery = 0x00000002;
inline constexpr uint32_t kAttrNoAutoRelease = 0x00000008;
inline constexpr uint32_t kAttrNoWriters = 0x00000010;
inline constexpr uint32_t kAttrAutoRecovery = 0x00400000;
// CONTEXT_VALUES (§2.2.2.2).
inline constexpr uint32_t kCtxBackup = 0x00000000;
inline constexpr uint32_t kCtxFileShareBackup = 0x00000010;
inline constexpr uint32_t kCtxNasRollback = 0x00000019;
inline constexpr uint32_t kCtxAppRollback = 0x00000009;

// The FSRVP result codes (§2.2.4 and the per-method tables).
enum class FsrvpError : uint32_t {
  kOk = 0,
  kBadState = 0x80042301,
  kBadId = 0x80042302,
  kObjectNotFound = 0x80042308,
  kNotSupported = 0x8004230C,
  kObjectAlreadyExists = 0x8004230D,
  kShadowCopySetInProgress = 0x80042316,
  kUnsupportedContext = 0x8004231B,
  kTimeout = 0x80042500,  // FSSAGENT_E_TIMEOUT (Commit)
  kShadowCopySetIdMismatch = 0x80042501,
  kWaitTimeout = 0x00000102,
  kWaitFailed = 0xFFFFFFFF,
  kAccessDenied = 0x80070005,
  kInvalidArg = 0x80070057,
  kUnexpected = 0x8000FFFF,  // E_UNEXPECTED: a provider failure (e.g. a freeze).
};
// "FSRVP_E_BAD_STATE" etc.
const char* FsrvpErrorName(FsrvpError e);

// An FSRVP outcome: the code and a sentence saying why.
struct FsrvpStatus {
  FsrvpError code = FsrvpError::kOk;
  std::string message;
  bool ok() const { return code == FsrvpError::kOk; }
  static FsrvpStatus Error(FsrvpError code, std::string message) {
    return FsrvpStatus{code, std::move(message)};
  }
};

enum class SetState { kStarted, kAdded, kCreationInProgress, kCommitted, kExposed, kRecovered };
const char* SetStateName(SetState s);  // "Started", ...

// Whether `context` is a valid SetContext value: one of the four contexts,
// optionally with ATTR_AUTO_RECOVERY or ATTR_NO_AUTO_RECOVERY (not both).
bool ValidContext(uint32_t context);
// "backup", "file-share-backup", "nas-rollback", "app-rollback", plus
// "+auto-recovery" / "+no-auto-recovery".
std::string ContextName(uint32_t context);
// Parses a context name as printed by ContextName, or a number (0x19).
std::optional<uint32_t> ParseContext(const std::string& text);
// Whether shadow copies of a set with this context are writable between
// Expose and RecoveryComplete.
inline bool AutoRecovery(uint32_t context) { return (context & kAttrAutoRecovery) != 0; }

struct ShadowCopy {
  cow_store::Guid id;
  std::string share;       // The share's directory (absolute, canonical).
  std::string volume;      // Mount point of the vssfs volume holding it.
  int64_t created_ns = 0;  // Time of AddToShadowCopySet.
  std::string snapshot;    // Snapshot name on the volume, once committed.
  bool exposed = false;
  std::string exposed_path;  // Where the shadow copy of the share is reachable.
};

struct ShadowCopySet {
  cow_store::Guid id;
  SetState state = SetState::kStarted;
  uint32_t context = kCtxBackup;
  int64_t created_ns = 0;
  std::vector<ShadowCopy> copies;
  // Target file list (absolute paths; empty: whole shares): the shadow
  // copies protect and show only these files and their directories.
  std::vector<std::string> files;
  const ShadowCopy* Find(const cow_store::Guid& copy) const;
};

struct Timeouts {
  int64_t short_ns = int64_t{180} * 1000000000;  // Between most messages.
  int64_t long_ns = int64_t{1800} * 1000000000;  // After Add, Prepare, GetShareMapping.
};

class FsrvpMachine {
 public:
  static constexpr size_t kMaxShares = 64;

  explicit FsrvpMachine(Timeouts timeouts = {}) : timeouts_(timeouts) {}

  // ---- the protocol's operations; `now` is CLOCK_REALTIME in ns ----
  // SetContext (§3.1.4.2). `client` identifies the caller (the spec's
  // client address): another client while a context is set gets
  // FSRVP_E_SHADOW_COPY_SET_IN_PROGRESS; the same client resets it.
  FsrvpStatus SetContext(uint32_t context, const std::string& client, int64_t now,
                         std::vector<ShadowCopySet>* dropped);
  // StartShadowCopySet (§3.1.4.3): a new set in the current context.
  FsrvpStatus Start(const cow_store::Guid& new_id, int64_t now);
  // AddToShadowCopySet (§3.1.4.4). `volume` is the mount point holding the
  // share. The spec's VolumeName is the share itself here (as in Samba's
  // shell_snap): several shares of one vssfs volume may join a set, and
  // commit captures them with one snapshot. Adding a share twice is
  // FSRVP_E_OBJECT_ALREADY_EXISTS.
  FsrvpStatus Add(const cow_store::Guid& set, const cow_store::Guid& new_copy,
                  const std::string& share, const std::string& volume, int64_t now);
  // PrepareShadowCopySet (§3.1.4.13).
  FsrvpStatus Prepare(const cow_store::Guid& set, int64_t now);
  // CommitShadowCopySet (§3.1.4.5) in two steps around taking the
  // snapshots: BeginCommit moves the set to CreationInProgress; EndCommit
  // records the snapshot of every copy (on success) and moves it to
  // Committed, or back to Added on failure.
  FsrvpStatus BeginCommit(const cow_store::Guid& set, int64_t now);
  FsrvpStatus EndCommit(const cow_store::Guid& set, bool ok,
                        const std::vector<std::string>& snapshots, int64_t now);
  // ExposeShadowCopySet (§3.1.4.6): `paths` gives each copy's exposed path.
  FsrvpStatus Expose(const cow_store::Guid& set, const std::vector<std::string>& paths,
                     int64_t now);
  // GetShareMapping (§3.1.4.11): the copy of `share` in the set.
  FsrvpStatus GetShareMapping(const cow_store::Guid& set, const cow_store::Guid& copy,
                              const std::string& share, int64_t now, ShadowCopy* out);
  // RecoveryCompleteShadowCopySet (§3.1.4.7). The caller freezes the
  // copies (unless the context has ATTR_NO_AUTO_RECOVERY) before calling.
  FsrvpStatus RecoveryComplete(const cow_store::Guid& set, int64_t now);
  // AbortShadowCopySet (§3.1.4.8): removes the set; *removed is what the
  // caller must clean up (snapshots already taken).
  FsrvpStatus Abort(const cow_store::Guid& set, int64_t now, ShadowCopySet* removed);
  // DeleteShareMapping (§3.1.4.12) for one copy; the set goes with its last
  // copy. *removed is the copy (the caller removes the exposure and, per
  // retention, the snapshot).
  FsrvpStatus DeleteShareMapping(const cow_store::Guid& set, const cow_store::Guid& copy,
                                 const std::string& share, ShadowCopy* removed);

  // The message sequence timer (§3.1.2, §3.1.5): when it has expired at
  // `now`, every set not yet Recovered is removed (and returned, for clean
  // up) and the context is released. Returns whether it fired.
  bool Expire(int64_t now, std::vector<ShadowCopySet>* removed);

  const std::vector<ShadowCopySet>& sets() const { return sets_; }
  const ShadowCopySet* Find(const cow_store::Guid& id) const;
  // Gives a Started set its target file list (vssfs extension). Errors:
  // FSRVP_E_BAD_STATE after the first add, unknown set.
  FsrvpStatus SetFiles(const cow_store::Guid& id, std::vector<std::string> files);
  bool context_set() const { return context_set_; }
  uint32_t context() const { return context_; }
  int64_t timer_deadline() const { return deadline_; }  // 0: stopped.
  const Timeouts& timeouts() const { return timeouts_; }
  void set_timeouts(const Timeouts& t) { timeouts_ = t; }

  // Versioned text form; Parse fails with EPROTO on another version and
  // EIO on damage.
  std::string Serialize() const;
  static cow_store::Result<FsrvpMachine> Parse(const std::string& text, Timeouts timeouts = {});

 private:
  ShadowCopySet* FindMutable(const cow_store::Guid& id);
  void StartTimer(int64_t now, int64_t length) { deadline_ = now + length; }
  void StopTimer() { deadline_ = 0; }
  void ReleaseContext() {
    context_set_ = false;
    client_.clear();
  }

  Timeouts timeouts_;
  bool context_set_ = false;
  uint32_t context_ = kCtxBackup;
  std::string client_;
  int retries_ = 0;  // Same-client SetContext retries.
  int64_t deadline_ = 0;
  std::vector<ShadowCopySet> sets_;
};

}  // namespace vssfs::snapshot_ctl

#endif  // VSSFS_SNAPSHOT_CTL_FSRVP_H_
