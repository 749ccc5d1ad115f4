#include "vssfs/snapshot_ctl/fsrvp.h"

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <sstream>

namespace vssfs::snapshot_ctl {

using cow_store::Guid;
using cow_store::Result;
using cow_store::Status;

namespace {

FsrvpStatus Ok() { return FsrvpStatus{}; }

FsrvpStatus NoSuchSet(const Guid& id) {
  return FsrvpStatus::Error(FsrvpError::kShadowCopySetIdMismatch,
                            "no shadow copy set " + id.ToString());
}

FsrvpStatus BadState(const ShadowCopySet& s, const char* call, const char* allowed) {
  return FsrvpStatus::Error(FsrvpError::kBadState,
                            std::string(call) + ": shadow copy set " + s.id.ToString() + " is " +
                                SetStateName(s.state) + "; it must be " + allowed);
}

std::string Hex(const std::string& s) {
  static const char* kDigits = "0123456789abcdef";
  std::string out;
  for (unsigned char c : s) {
    out.push_back(kDigits[c >> 4]);
    out.push_back(kDigits[c & 15]);
  }
  return out.empty() ? "-" : out;
}

bool Unhex(const std::string& h, std::string* out) {
  out->clear();
  if (h == "-") return true;
  if (h.size() % 2 != 0) return false;
  for (size_t i = 0; i < h.size(); i += 2) {
    char* end = nullptr;
    const std::string byte = h.substr(i, 2);
    long v = std::strtol(byte.c_str(), &end, 16);
    if (end == nullptr || *end != '\0') return false;
    out->push_back(static_cast<char>(v));
  }
  return true;
}

constexpr int kRetryLimit = 5;  // Same-client SetContext retries (§3.1.4.2).
constexpr char kMagic[] = "vssfs-fsrvp";
constexpr int kVersion = 1;

}  // namespace

const char* FsrvpErrorName(FsrvpError e) {
  switch (e) {
    case FsrvpError::kOk:
      return "S_OK";
    case FsrvpError::kBadState:
      return "FSRVP_E_BAD_STATE";
    case FsrvpError::kBadId:
      return "FSRVP_E_BAD_ID";
    case FsrvpError::kObjectNotFound:
      return "FSRVP_E_OBJECT_NOT_FOUND";
    case FsrvpError::kNotSupported:
      return "FSRVP_E_NOT_SUPPORTED";
    case FsrvpError::kObjectAlreadyExists:
      return "FSRVP_E_OBJECT_ALREADY_EXISTS";
    case FsrvpError::kShadowCopySetInProgress:
      return "FSRVP_E_SHADOW_COPY_SET_IN_PROGRESS";
    case FsrvpError::kUnsupportedContext:
      return "FSRVP_E_UNSUPPORTED_CONTEXT";
    case FsrvpError::kTimeout:
      return "FSSAGENT_E_TIMEOUT";
    case FsrvpError::kShadowCopySetIdMismatch:
      return "FSRVP_E_SHADOWCOPYSET_ID_MISMATCH";
    case FsrvpError::kWaitTimeout:
      return "FSRVP_E_WAIT_TIMEOUT";
    case FsrvpError::kWaitFailed:
      return "FSRVP_E_WAIT_FAILED";
    case FsrvpError::kAccessDenied:
      return "E_ACCESSDENIED";
    case FsrvpError::kInvalidArg:
      return "E_INVALIDARG";
    case FsrvpError::kUnexpected:
      return "E_UNEXPECTED";
  }
  return "E_FAIL";
}

const char* SetStateName(SetState s) {
  switch (s) {
    case SetState::kStarted:
      return "Started";
    case SetState::kAdded:
      return "Added";
    case SetState::kCreationInProgress:
      return "CreationInProgress";
    case SetState::kCommitted:
      return "Committed";
    case SetState::kExposed:
      return "Exposed";
    case SetState::kRecovered:
      return "Recovered";
  }
  return "?";
}

bool ValidContext(uint32_t context) {
  const uint32_t recovery = context & (kAttrAutoRecovery | kAttrNoAutoRecovery);
  if (recovery == (kAttrAutoRecovery | kAttrNoAutoRecovery)) return false;
  const uint32_t base = context & ~(kAttrAutoRecovery | kAttrNoAutoRecovery);
  return base == kCtxBackup || base == kCtxFileShareBackup || base == kCtxNasRollback ||
         base == kCtxAppRollback;
}

std::string ContextName(uint32_t context) {
  const uint32_t base = context & ~(kAttrAutoRecovery | kAttrNoAutoRecovery);
  std::string name;
  switch (base) {
    case kCtxBackup:
      name = "backup";
      break;
    case kCtxFileShareBackup:
      name = "file-share-backup";
      break;
    case kCtxNasRollback:
      name = "nas-rollback";
      break;
    case kCtxAppRollback:
      name = "app-rollback";
      break;
    default: {
      char buf[16];
      std::snprintf(buf, sizeof buf, "0x%x", base);
      name = buf;
    }
  }
  if (context & kAttrAutoRecovery) name += "+auto-recovery";
  if (context & kAttrNoAutoRecovery) name += "+no-auto-recovery";
  return name;
}

std::optional<uint32_t> ParseContext(const std::string& text) {
  uint32_t value = 0;
  std::string base = text;
  for (const auto& [suffix, bit] : {std::pair{"+auto-recovery", kAttrAutoRecovery},
                                    std::pair{"+no-auto-recovery", kAttrNoAutoRecovery}}) {
    const std::string s = suffix;
    if (base.size() > s.size() && base.compare(base.size() - s.size(), s.size(), s) == 0) {
      value |= bit;
      base.resize(base.size() - s.size());
    }
  }
  if (base == "backup") {
    value |= kCtxBackup;
  } else if (base == "file-share-backup") {
    value |= kCtxFileShareBackup;
  } else if (base == "nas-rollback") {
    value |= kCtxNasRollback;
  } else if (base == "app-rollback") {
    value |= kCtxAppRollback;
  } else {
    char* end = nullptr;
    errno = 0;
    unsigned long v = std::strtoul(base.c_str(), &end, 0);
    if (base.empty() || end == nullptr || *end != '\0' || errno != 0 || v > 0xffffffffUL) {
      return std::nullopt;
    }
    value |= static_cast<uint32_t>(v);
  }
  if (!ValidContext(value)) return std::nullopt;
  return value;
}

const ShadowCopy* ShadowCopySet::Find(const Guid& copy) const {
  for (const ShadowCopy& c : copies) {
    if (c.id == copy) return &c;
  }
  return nullptr;
}

const ShadowCopySet* FsrvpMachine::Find(const Guid& id) const {
  for (const ShadowCopySet& s : sets_) {
    if (s.id == id) return &s;
  }
  return nullptr;
}

FsrvpStatus FsrvpMachine::SetFiles(const Guid& id, std::vector<std::string> files) {
  ShadowCopySet* s = FindMutable(id);
  if (s == nullptr) {
    return FsrvpStatus::Error(FsrvpError::kShadowCopySetIdMismatch,
                              "no shadow copy set " + id.ToString());
  }
  if (s->state != SetState::kStarted) {
    return FsrvpStatus::Error(FsrvpError::kBadState, "a file list is set before the first add");
  }
  s->files = std::move(files);
  return FsrvpStatus();
}

ShadowCopySet* FsrvpMachine::FindMutable(const Guid& id) {
  for (ShadowCopySet& s : sets_) {
    if (s.id == id) return &s;
  }
  return nullptr;
}

FsrvpStatus FsrvpMachine::SetContext(uint32_t context, const std::string& client, int64_t now,
                                     std::vector<ShadowCopySet>* dropped) {
  if (!ValidContext(context)) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "context 0x%08x is not a valid FSRVP context", context);
    return FsrvpStatus::Error(FsrvpError::kUnsupportedContext, buf);
  }
  if (context_set_ && client != client_) {
    return FsrvpStatus::Error(FsrvpError::kShadowCopySetInProgress,
                              "another client (" + client_ + ") holds the context");
  }
  if (context_set_) {
    // The same client starts over: pending sets go.
    for (auto it = sets_.begin(); it != sets_.end();) {
      if (it->state != SetState::kRecovered) {
        if (dropped != nullptr) dropped->push_back(*it);
        it = sets_.erase(it);
      } else {
        ++it;
      }
    }
    ReleaseContext();
    if (++retries_ > kRetryLimit) {
      return FsrvpStatus::Error(FsrvpError::kShadowCopySetInProgress,
                                "too many SetContext retries from " + client);
    }
  } else {
    retries_ = 0;
  }
  client_ = client;
  context_ = context;
  context_set_ = true;
  StartTimer(now, timeouts_.short_ns);
  return Ok();
}

FsrvpStatus FsrvpMachine::Start(const Guid& new_id, int64_t now) {
  if (!context_set_) {
    return FsrvpStatus::Error(FsrvpError::kBadState, "StartShadowCopySet: no context is set");
  }
  for (const ShadowCopySet& s : sets_) {
    if (s.state != SetState::kRecovered) {
      return FsrvpStatus::Error(FsrvpError::kShadowCopySetInProgress,
                                "shadow copy set " + s.id.ToString() + " is " +
                                    SetStateName(s.state) + "; one set at a time");
    }
  }
  StopTimer();
  ShadowCopySet set;
  set.id = new_id;
  set.state = SetState::kStarted;
  set.context = context_;
  set.created_ns = now;
  sets_.push_back(std::move(set));
  StartTimer(now, timeouts_.short_ns);
  return Ok();
}

FsrvpStatus FsrvpMachine::Add(const Guid& set_id, const Guid& new_copy, const std::string& share,
                              const std::string& volume, int64_t now) {
  ShadowCopySet* s = FindMutable(set_id);
  if (s == nullptr) return NoSuchSet(set_id);
  if (s->state != SetState::kStarted && s->state != SetState::kAdded) {
    return BadState(*s, "AddToShadowCopySet", "Started or Added");
  }
  StopTimer();
  for (const ShadowCopy& c : s->copies) {
    if (c.share == share) {
      StartTimer(now, timeouts_.short_ns);
      return FsrvpStatus::Error(FsrvpError::kObjectAlreadyExists,
                                "the set already has a shadow copy of " + share);
    }
  }
  if (s->copies.size() >= kMaxShares) {
    StartTimer(now, timeouts_.short_ns);
    return FsrvpStatus::Error(FsrvpError::kNotSupported,
                              "a set holds at most " + std::to_string(kMaxShares) + " shares");
  }
  ShadowCopy c;
  c.id = new_copy;
  c.share = share;
  c.volume = volume;
  c.created_ns = now;
  s->copies.push_back(std::move(c));
  s->state = SetState::kAdded;
  StartTimer(now, timeouts_.long_ns);
  return Ok();
}

FsrvpStatus FsrvpMachine::Prepare(const Guid& set_id, int64_t now) {
  ShadowCopySet* s = FindMutable(set_id);
  if (s == nullptr) return NoSuchSet(set_id);
  if (s->state != SetState::kAdded) return BadState(*s, "PrepareShadowCopySet", "Added");
  StopTimer();
  StartTimer(now, timeouts_.long_ns);
  return Ok();
}

FsrvpStatus FsrvpMachine::BeginCommit(const Guid& set_id, int64_t now) {
  (void)now;
  ShadowCopySet* s = FindMutable(set_id);
  if (s == nullptr) return NoSuchSet(set_id);
  if (s->state != SetState::kAdded && s->state != SetState::kCreationInProgress) {
    return BadState(*s, "CommitShadowCopySet", "Added or CreationInProgress");
  }
  StopTimer();
  s->state = SetState::kCreationInProgress;
  return Ok();
}

FsrvpStatus FsrvpMachine::EndCommit(const Guid& set_id, bool ok,
                                    const std::vector<std::string>& snapshots, int64_t now) {
  ShadowCopySet* s = FindMutable(set_id);
  if (s == nullptr) return NoSuchSet(set_id);
  if (s->state != SetState::kCreationInProgress) {
    return BadState(*s, "CommitShadowCopySet", "CreationInProgress");
  }
  StartTimer(now, timeouts_.short_ns);
  if (!ok || snapshots.size() != s->copies.size()) {
    s->state = SetState::kAdded;
    return FsrvpStatus::Error(FsrvpError::kWaitFailed, "taking the shadow copies failed");
  }
  for (size_t i = 0; i < snapshots.size(); ++i) s->copies[i].snapshot = snapshots[i];
  s->state = SetState::kCommitted;
  return Ok();
}

FsrvpStatus FsrvpMachine::Expose(const Guid& set_id, const std::vector<std::string>& paths,
                                 int64_t now) {
  ShadowCopySet* s = FindMutable(set_id);
  if (s == nullptr) return NoSuchSet(set_id);
  if (s->state != SetState::kCommitted) return BadState(*s, "ExposeShadowCopySet", "Committed");
  StopTimer();
  StartTimer(now, timeouts_.short_ns);
  if (paths.size() != s->copies.size()) {
    return FsrvpStatus::Error(FsrvpError::kInvalidArg, "one exposed path per shadow copy needed");
  }
  for (size_t i = 0; i < paths.size(); ++i) {
    s->copies[i].exposed = true;
    s->copies[i].exposed_path = paths[i];
  }
  s->state = SetState::kExposed;
  return Ok();
}

FsrvpStatus FsrvpMachine::GetShareMapping(const Guid& set_id, const Guid& copy,
                                          const std::string& share, int64_t now, ShadowCopy* out) {
  ShadowCopySet* s = FindMutable(set_id);
  if (s == nullptr) return NoSuchSet(set_id);
  if (s->state != SetState::kExposed) return BadState(*s, "GetShareMapping", "Exposed");
  StopTimer();
  const ShadowCopy* c = s->Find(copy);
  if (c == nullptr || c->share != share) {
    return FsrvpStatus::Error(FsrvpError::kInvalidArg,
                              "no shadow copy " + copy.ToString() + " of " + share + " in the set");
  }
  *out = *c;
  StartTimer(now, timeouts_.long_ns);
  return Ok();
}

FsrvpStatus FsrvpMachine::RecoveryComplete(const Guid& set_id, int64_t now) {
  (void)now;
  ShadowCopySet* s = FindMutable(set_id);
  if (s == nullptr) return NoSuchSet(set_id);
  if (s->state != SetState::kExposed) {
    return BadState(*s, "RecoveryCompleteShadowCopySet", "Exposed");
  }
  StopTimer();
  s->state = SetState::kRecovered;
  ReleaseContext();
  return Ok();
}

FsrvpStatus FsrvpMachine::Abort(const Guid& set_id, int64_t now, ShadowCopySet* removed) {
  (void)now;
  for (auto it = sets_.begin(); it != sets_.end(); ++it) {
    if (it->id == set_id) {
      if (it->state == SetState::kRecovered) {
        return BadState(*it, "AbortShadowCopySet", "not yet Recovered (delete it instead)");
      }
      if (removed != nullptr) *removed = *it;
      sets_.erase(it);
      StopTimer();
      ReleaseContext();
      return Ok();
    }
  }
  return NoSuchSet(set_id);
}

FsrvpStatus FsrvpMachine::DeleteShareMapping(const Guid& set_id, const Guid& copy,
                                             const std::string& share, ShadowCopy* removed) {
  for (auto it = sets_.begin(); it != sets_.end(); ++it) {
    if (it->id != set_id) continue;
    if (it->state != SetState::kExposed && it->state != SetState::kRecovered) {
      return BadState(*it, "DeleteShareMapping", "Exposed or Recovered");
    }
    for (auto c = it->copies.begin(); c != it->copies.end(); ++c) {
      if (c->id == copy && c->share == share) {
        if (removed != nullptr) *removed = *c;
        it->copies.erase(c);
        if (it->copies.empty()) sets_.erase(it);
        return Ok();
      }
    }
    return FsrvpStatus::Error(FsrvpError::kObjectNotFound,
                              "no shadow copy " + copy.ToString() + " of " + share + " in the set");
  }
  return FsrvpStatus::Error(FsrvpError::kObjectNotFound, "no shadow copy set " + set_id.ToString());
}

bool FsrvpMachine::Expire(int64_t now, std::vector<ShadowCopySet>* removed) {
  if (deadline_ == 0 || now < deadline_) return false;
  for (auto it = sets_.begin(); it != sets_.end();) {
    if (it->state != SetState::kRecovered) {
      if (removed != nullptr) removed->push_back(*it);
      it = sets_.erase(it);
    } else {
      ++it;
    }
  }
  StopTimer();
  ReleaseContext();
  return true;
}

std::string FsrvpMachine::Serialize() const {
  std::ostringstream out;
  out << kMagic << ' ' << kVersion << '\n';
  out << "context " << (context_set_ ? 1 : 0) << ' ' << context_ << ' ' << Hex(client_) << ' '
      << retries_ << ' ' << deadline_ << '\n';
  for (const ShadowCopySet& s : sets_) {
    out << "set " << s.id.ToString() << ' ' << static_cast<int>(s.state) << ' ' << s.context << ' '
        << s.created_ns << '\n';
    for (const ShadowCopy& c : s.copies) {
      out << "copy " << c.id.ToString() << ' ' << c.created_ns << ' ' << Hex(c.share) << ' '
          << Hex(c.volume) << ' ' << Hex(c.snapshot) << ' ' << (c.exposed ? 1 : 0) << ' '
          << Hex(c.exposed_path) << '\n';
    }
    for (const std::string& f : s.files) out << "file " << Hex(f) << '\n';
  }
  out << "end\n";
  return out.str();
}

Result<FsrvpMachine> FsrvpMachine::Parse(const std::string& text, Timeouts timeouts) {
  FsrvpMachine m(timeouts);
  std::istringstream in(text);
  std::string magic;
  int version = 0;
  if (!(in >> magic >> version) || magic != kMagic) {
    return Status::Error(EIO, "not a vssfs FSRVP state file");
  }
  if (version != kVersion) {
    return Status::Error(EPROTO, "FSRVP state version " + std::to_string(version) +
                                     "; this vssfs reads version " + std::to_string(kVersion));
  }
  auto damaged = [](const std::string& what) {
    return Status::Error(EIO, "FSRVP state damaged: " + what);
  };
  std::string word;
  bool ended = false;
  while (in >> word) {
    if (word == "end") {
      ended = true;
      break;
    }
    if (word == "context") {
      int set = 0;
      std::string client;
      if (!(in >> set >> m.context_ >> client >> m.retries_ >> m.deadline_) ||
          !Unhex(client, &m.client_)) {
        return damaged("context line");
      }
      m.context_set_ = set != 0;
    } else if (word == "set") {
      std::string id;
      int state = 0;
      ShadowCopySet s;
      if (!(in >> id >> state >> s.context >> s.created_ns) || state < 0 ||
          state > static_cast<int>(SetState::kRecovered)) {
        return damaged("set line");
      }
      std::optional<Guid> g = Guid::Parse(id);
      if (!g) return damaged("set id " + id);
      s.id = *g;
      s.state = static_cast<SetState>(state);
      m.sets_.push_back(std::move(s));
    } else if (word == "copy") {
      if (m.sets_.empty()) return damaged("copy before any set");
      std::string id, share, volume, snapshot, exposed_path;
      int exposed = 0;
      ShadowCopy c;
      if (!(in >> id >> c.created_ns >> share >> volume >> snapshot >> exposed >> exposed_path) ||
          !Unhex(share, &c.share) || !Unhex(volume, &c.volume) || !Unhex(snapshot, &c.snapshot) ||
          !Unhex(exposed_path, &c.exposed_path)) {
        return damaged("copy line");
      }
      std::optional<Guid> g = Guid::Parse(id);
      if (!g) return damaged("copy id " + id);
      c.id = *g;
      c.exposed = exposed != 0;
      m.sets_.back().copies.push_back(std::move(c));
    } else if (word == "file") {
      std::string hex, path;
      if (m.sets_.empty() || !(in >> hex) || !Unhex(hex, &path)) return damaged("file line");
      m.sets_.back().files.push_back(std::move(path));
    } else {
      return damaged("unknown line '" + word + "'");
    }
  }
  if (!ended) return damaged("truncated");
  return m;
}

}  // namespace vssfs::snapshot_ctl
