// FsrvpMachine: every transition of MS-FSRVP §3.1.4, every wrong-state call
// with its error, the message sequence timer, and the persistent form.
#include "vssfs/snapshot_ctl/fsrvp.h"

#include <catch2/catch.hpp>
#include <string>
#include <vector>

namespace {

using vssfs::cow_store::Guid;
using namespace vssfs::snapshot_ctl;

constexpr int64_t kSec = 1000000000;

Guid G(int n) {
  Guid g;
  g.bytes[15] = static_cast<uint8_t>(n);
  g.bytes[0] = 0x10;
  return g;
}

// A machine with a committed-and-exposed path available step by step.
struct Flow {
  FsrvpMachine m;
  int64_t now = 1000 * kSec;
  Guid set = G(1);

  void Context(uint32_t ctx = kCtxBackup) { REQUIRE(m.SetContext(ctx, "c1", now, nullptr).ok()); }
  void Started(uint32_t ctx = kCtxBackup) {
    Context(ctx);
    REQUIRE(m.Start(set, now).ok());
  }
  void Added(uint32_t ctx = kCtxBackup) {
    Started(ctx);
    REQUIRE(m.Add(set, G(10), "/v1/share1", "/v1", now).ok());
    REQUIRE(m.Add(set, G(11), "/v2/share2", "/v2", now).ok());
  }
  void Committed(uint32_t ctx = kCtxBackup) {
    Added(ctx);
    REQUIRE(m.BeginCommit(set, now).ok());
    REQUIRE(m.EndCommit(set, true, {"snapA", "snapB"}, now).ok());
  }
  void Exposed(uint32_t ctx = kCtxBackup) {
    Committed(ctx);
    REQUIRE(m.Expose(set, {"/v1/.snapshot/snapA/share1", "/v2/.snapshot/snapB/share2"}, now).ok());
  }
  SetState State() { return m.Find(set)->state; }
};

}  // namespace

TEST_CASE("fsrvp: contexts and names", "[snapshot_ctl][fsrvp]") {
  CHECK(ValidContext(kCtxBackup));
  CHECK(ValidContext(kCtxFileShareBackup | kAttrAutoRecovery));
  CHECK(ValidContext(kCtxNasRollback | kAttrNoAutoRecovery));
  CHECK(ValidContext(kCtxAppRollback));
  CHECK_FALSE(ValidContext(0x7));
  CHECK_FALSE(ValidContext(kCtxBackup | kAttrAutoRecovery | kAttrNoAutoRecovery));
  CHECK(ContextName(kCtxNasRollback | kAttrAutoRecovery) == "nas-rollback+auto-recovery");
  CHECK(ParseContext("app-rollback") == kCtxAppRollback);
  CHECK(ParseContext("backup+auto-recovery") == (kCtxBackup | kAttrAutoRecovery));
  CHECK(ParseContext("0x19") == kCtxNasRollback);
  CHECK(ParseContext("0x400010") == (kCtxFileShareBackup | kAttrAutoRecovery));
  CHECK_FALSE(ParseContext("sideways"));
  CHECK_FALSE(ParseContext("0x7"));
  CHECK(std::string(FsrvpErrorName(FsrvpError::kBadState)) == "FSRVP_E_BAD_STATE");
  CHECK(static_cast<uint32_t>(FsrvpError::kShadowCopySetInProgress) == 0x80042316u);
}

TEST_CASE("fsrvp: the whole sequence and its timer", "[snapshot_ctl][fsrvp]") {
  Flow f;
  const Timeouts t;
  f.Context(kCtxAppRollback | kAttrAutoRecovery);
  CHECK(f.m.context_set());
  CHECK(f.m.timer_deadline() == f.now + t.short_ns);
  REQUIRE(f.m.Start(f.set, f.now).ok());
  CHECK(f.State() == SetState::kStarted);
  CHECK(f.m.Find(f.set)->context == (kCtxAppRollback | kAttrAutoRecovery));
  CHECK(f.m.timer_deadline() == f.now + t.short_ns);
  REQUIRE(f.m.Add(f.set, G(10), "/v1/a", "/v1", f.now).ok());
  CHECK(f.State() == SetState::kAdded);
  CHECK(f.m.timer_deadline() == f.now + t.long_ns);
  REQUIRE(f.m.Prepare(f.set, f.now).ok());
  CHECK(f.m.timer_deadline() == f.now + t.long_ns);
  REQUIRE(f.m.BeginCommit(f.set, f.now).ok());
  CHECK(f.State() == SetState::kCreationInProgress);
  CHECK(f.m.timer_deadline() == 0);
  REQUIRE(f.m.EndCommit(f.set, true, {"s1"}, f.now).ok());
  CHECK(f.State() == SetState::kCommitted);
  CHECK(f.m.Find(f.set)->copies[0].snapshot == "s1");
  CHECK(f.m.timer_deadline() == f.now + t.short_ns);
  REQUIRE(f.m.Expose(f.set, {"/v1/.snapshot/s1/a"}, f.now).ok());
  CHECK(f.State() == SetState::kExposed);
  ShadowCopy mapped;
  REQUIRE(f.m.GetShareMapping(f.set, G(10), "/v1/a", f.now, &mapped).ok());
  CHECK(mapped.exposed_path == "/v1/.snapshot/s1/a");
  CHECK(f.m.timer_deadline() == f.now + t.long_ns);
  REQUIRE(f.m.RecoveryComplete(f.set, f.now).ok());
  CHECK(f.State() == SetState::kRecovered);
  CHECK(f.m.timer_deadline() == 0);
  CHECK_FALSE(f.m.context_set());
  // The context is free again: a new sequence may start.
  REQUIRE(f.m.SetContext(kCtxBackup, "c2", f.now, nullptr).ok());
  REQUIRE(f.m.Start(G(2), f.now).ok());
  // Deleting the mappings removes the set with its last copy.
  ShadowCopy removed;
  REQUIRE(f.m.DeleteShareMapping(f.set, G(10), "/v1/a", &removed).ok());
  CHECK(removed.snapshot == "s1");
  CHECK(f.m.Find(f.set) == nullptr);
}

TEST_CASE("fsrvp: every call in a wrong state fails with its error", "[snapshot_ctl][fsrvp]") {
  Flow f;
  SECTION("no context") { CHECK(f.m.Start(f.set, f.now).code == FsrvpError::kBadState); }
  SECTION("unknown set ids") {
    f.Started();
    const Guid other = G(99);
    CHECK(f.m.Add(other, G(10), "/v1/a", "/v1", f.now).code ==
          FsrvpError::kShadowCopySetIdMismatch);
    CHECK(f.m.Prepare(other, f.now).code == FsrvpError::kShadowCopySetIdMismatch);
    CHECK(f.m.BeginCommit(other, f.now).code == FsrvpError::kShadowCopySetIdMismatch);
    CHECK(f.m.Expose(other, {}, f.now).code == FsrvpError::kShadowCopySetIdMismatch);
    CHECK(f.m.RecoveryComplete(other, f.now).code == FsrvpError::kShadowCopySetIdMismatch);
    CHECK(f.m.Abort(other, f.now, nullptr).code == FsrvpError::kShadowCopySetIdMismatch);
    CHECK(f.m.DeleteShareMapping(other, G(10), "/v1/a", nullptr).code ==
          FsrvpError::kObjectNotFound);
  }
  SECTION("Started") {
    f.Started();
    CHECK(f.m.Prepare(f.set, f.now).code == FsrvpError::kBadState);
    CHECK(f.m.BeginCommit(f.set, f.now).code == FsrvpError::kBadState);
    CHECK(f.m.Expose(f.set, {}, f.now).code == FsrvpError::kBadState);
    CHECK(f.m.RecoveryComplete(f.set, f.now).code == FsrvpError::kBadState);
    CHECK(f.m.DeleteShareMapping(f.set, G(10), "/v1/a", nullptr).code == FsrvpError::kBadState);
    CHECK(f.m.Start(G(2), f.now).code == FsrvpError::kShadowCopySetInProgress);
  }
  SECTION("Added") {
    f.Added();
    CHECK(f.m.Add(f.set, G(12), "/v1/share1", "/v1", f.now).code ==
          FsrvpError::kObjectAlreadyExists);
    // Another share of the same volume may join (one snapshot covers both).
    CHECK(f.m.Add(f.set, G(13), "/v1/other", "/v1", f.now).ok());
    CHECK(f.m.Expose(f.set, {}, f.now).code == FsrvpError::kBadState);
    CHECK(f.m.RecoveryComplete(f.set, f.now).code == FsrvpError::kBadState);
    ShadowCopy c;
    CHECK(f.m.GetShareMapping(f.set, G(10), "/v1/share1", f.now, &c).code == FsrvpError::kBadState);
    CHECK(f.m.Start(G(2), f.now).code == FsrvpError::kShadowCopySetInProgress);
  }
  SECTION("commit failure returns to Added") {
    f.Added();
    REQUIRE(f.m.BeginCommit(f.set, f.now).ok());
    CHECK(f.m.Add(f.set, G(12), "/v3/x", "/v3", f.now).code == FsrvpError::kBadState);
    CHECK(f.m.EndCommit(f.set, false, {}, f.now).code == FsrvpError::kWaitFailed);
    CHECK(f.State() == SetState::kAdded);
    // A retried commit is allowed from CreationInProgress too.
    REQUIRE(f.m.BeginCommit(f.set, f.now).ok());
    REQUIRE(f.m.BeginCommit(f.set, f.now).ok());
    REQUIRE(f.m.EndCommit(f.set, true, {"a", "b"}, f.now).ok());
  }
  SECTION("Committed") {
    f.Committed();
    CHECK(f.m.Add(f.set, G(12), "/v3/x", "/v3", f.now).code == FsrvpError::kBadState);
    CHECK(f.m.Prepare(f.set, f.now).code == FsrvpError::kBadState);
    CHECK(f.m.BeginCommit(f.set, f.now).code == FsrvpError::kBadState);
    CHECK(f.m.RecoveryComplete(f.set, f.now).code == FsrvpError::kBadState);
    CHECK(f.m.DeleteShareMapping(f.set, G(10), "/v1/share1", nullptr).code ==
          FsrvpError::kBadState);
  }
  SECTION("Exposed") {
    f.Exposed();
    CHECK(f.m.Expose(f.set, {"a", "b"}, f.now).code == FsrvpError::kBadState);
    CHECK(f.m.BeginCommit(f.set, f.now).code == FsrvpError::kBadState);
    ShadowCopy c;
    CHECK(f.m.GetShareMapping(f.set, G(10), "/v2/share2", f.now, &c).code ==
          FsrvpError::kInvalidArg);
    CHECK(f.m.DeleteShareMapping(f.set, G(10), "/v2/share2", nullptr).code ==
          FsrvpError::kObjectNotFound);
  }
  SECTION("Recovered") {
    f.Exposed();
    REQUIRE(f.m.RecoveryComplete(f.set, f.now).ok());
    CHECK(f.m.RecoveryComplete(f.set, f.now).code == FsrvpError::kBadState);
    CHECK(f.m.Abort(f.set, f.now, nullptr).code == FsrvpError::kBadState);
    ShadowCopy c;
    CHECK(f.m.GetShareMapping(f.set, G(10), "/v1/share1", f.now, &c).code == FsrvpError::kBadState);
  }
  SECTION("another client while a context is set") {
    f.Context();
    CHECK(f.m.SetContext(kCtxBackup, "intruder", f.now, nullptr).code ==
          FsrvpError::kShadowCopySetInProgress);
    CHECK(f.m.SetContext(0x7, "c1", f.now, nullptr).code == FsrvpError::kUnsupportedContext);
  }
}

TEST_CASE("fsrvp: abort, retries and the 64-share limit", "[snapshot_ctl][fsrvp]") {
  Flow f;
  f.Committed();
  ShadowCopySet removed;
  REQUIRE(f.m.Abort(f.set, f.now, &removed).ok());
  CHECK(removed.copies.size() == 2);
  CHECK(removed.copies[1].snapshot == "snapB");
  CHECK(f.m.Find(f.set) == nullptr);
  CHECK_FALSE(f.m.context_set());

  // The same client setting the context again drops its pending sets.
  REQUIRE(f.m.SetContext(kCtxBackup, "c1", f.now, nullptr).ok());
  REQUIRE(f.m.Start(G(3), f.now).ok());
  std::vector<ShadowCopySet> dropped;
  REQUIRE(f.m.SetContext(kCtxBackup, "c1", f.now, &dropped).ok());
  CHECK(dropped.size() == 1);
  for (int i = 0; i < 4; ++i) REQUIRE(f.m.SetContext(kCtxBackup, "c1", f.now, nullptr).ok());
  CHECK(f.m.SetContext(kCtxBackup, "c1", f.now, nullptr).code ==
        FsrvpError::kShadowCopySetInProgress);

  FsrvpMachine m;
  REQUIRE(m.SetContext(kCtxBackup, "c", 0, nullptr).ok());
  REQUIRE(m.Start(G(1), 0).ok());
  for (size_t i = 0; i < FsrvpMachine::kMaxShares; ++i) {
    const std::string vol = "/v" + std::to_string(i);
    Guid c = G(100);
    c.bytes[1] = static_cast<uint8_t>(i);
    REQUIRE(m.Add(G(1), c, vol + "/share", vol, 0).ok());
  }
  CHECK(m.Add(G(1), G(2), "/w/share", "/w", 0).code == FsrvpError::kNotSupported);
}

TEST_CASE("fsrvp: the message sequence timer aborts stalled sets", "[snapshot_ctl][fsrvp]") {
  Timeouts t;
  t.short_ns = 2 * kSec;
  t.long_ns = 5 * kSec;
  Flow f;
  f.m.set_timeouts(t);
  f.Added();
  std::vector<ShadowCopySet> removed;
  CHECK_FALSE(f.m.Expire(f.now + 4 * kSec, &removed));
  CHECK(f.m.Expire(f.now + 5 * kSec, &removed));
  REQUIRE(removed.size() == 1);
  CHECK(removed[0].id == f.set);
  CHECK(f.m.sets().empty());
  CHECK_FALSE(f.m.context_set());

  // A Recovered set survives expiry; an Exposed one does not (§3.1.5).
  Flow g;
  g.m.set_timeouts(t);
  g.Exposed();
  removed.clear();
  CHECK(g.m.Expire(g.now + 3 * kSec, &removed));
  CHECK(removed.size() == 1);
  Flow h;
  h.m.set_timeouts(t);
  h.Exposed();
  REQUIRE(h.m.RecoveryComplete(h.set, h.now).ok());
  removed.clear();
  CHECK_FALSE(h.m.Expire(h.now + 100 * kSec, &removed));
  CHECK(h.m.sets().size() == 1);
}

TEST_CASE("fsrvp: state survives serialisation", "[snapshot_ctl][fsrvp]") {
  Flow f;
  f.Exposed(kCtxNasRollback | kAttrAutoRecovery);
  const std::string text = f.m.Serialize();
  auto parsed = FsrvpMachine::Parse(text);
  REQUIRE(parsed.ok());
  const FsrvpMachine& m = parsed.value();
  CHECK(m.Serialize() == text);
  CHECK(m.context_set());
  CHECK(m.context() == (kCtxNasRollback | kAttrAutoRecovery));
  CHECK(m.timer_deadline() == f.m.timer_deadline());
  const ShadowCopySet* s = m.Find(f.set);
  REQUIRE(s != nullptr);
  CHECK(s->state == SetState::kExposed);
  REQUIRE(s->copies.size() == 2);
  CHECK(s->copies[1].share == "/v2/share2");
  CHECK(s->copies[1].exposed_path == "/v2/.snapshot/snapB/share2");
  // Damage and other versions are refused.
  CHECK(FsrvpMachine::Parse("vssfs-fsrvp 2\nend\n").status().error() == EPROTO);
  CHECK(FsrvpMachine::Parse(text.substr(0, text.size() - 4)).status().error() == EIO);
  CHECK(FsrvpMachine::Parse("hello").status().error() == EIO);
}
