#include "inode_pruner.h"

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "log.h"

namespace vssfs::fs {

namespace {

// The kernel copies a prune notification in batches of 512 ids; one
// notification of that size keeps each write small.
constexpr size_t kIdsPerNotification = 512;
// How long a round waits for the kernel's FORGETs to come back, and for
// more once they stopped coming.
constexpr auto kForgetWait = std::chrono::milliseconds(100);
constexpr auto kForgetQuiet = std::chrono::milliseconds(5);
// After a round that freed nothing (every inode in use), the pause before
// the next, and the interval of the warning about it.
constexpr auto kStuckPause = std::chrono::seconds(1);
constexpr auto kStuckWarningInterval = std::chrono::minutes(1);
// Rounds in a row that freed nothing before that pause.
constexpr int kFruitlessRounds = 3;
// Entries, evicted ones included, per inode of the budget before the kernel
// is asked to forget evicted entries too: the kernel keeps the inodes of
// evicted files, and the table one entry (about half a KiB) each.
constexpr size_t kEntriesPerBudget = 4;

}  // namespace

size_t DefaultInodeBudget(uint64_t descriptor_limit) {
  const uint64_t budget = descriptor_limit - descriptor_limit / 4;
  return static_cast<size_t>(std::max<uint64_t>(budget, 16));
}

InodePruner::InodePruner(InodeTable* table, size_t budget, Sender send)
    : table_(table),
      budget_(std::max<size_t>(budget, 16)),
      low_(budget_ - budget_ / 10),
      send_(std::move(send)),
      thread_([this] { Run(); }) {}

InodePruner::~InodePruner() { Stop(); }

void InodePruner::Stop() {
  {
    std::lock_guard lock(mutex_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void InodePruner::Poke() {
  if (pending_.exchange(true, std::memory_order_acq_rel)) return;
  {
    std::lock_guard lock(mutex_);
    poked_ = true;
  }
  cv_.notify_all();
}

bool InodePruner::Relieve(std::chrono::milliseconds wait) {
  if (!supported() && !table_->eviction_enabled()) return false;
  if (relieving_.fetch_add(1) >= kMaxRelieving) {
    relieving_.fetch_sub(1);
    return false;
  }
  const uint64_t before = table_->released();
  {
    std::lock_guard lock(mutex_);
    if (stop_) {
      relieving_.fetch_sub(1);
      return false;
    }
    poked_ = true;
    relieve_ = std::max(relieve_, std::max<size_t>(budget_ / 10, 16));
  }
  cv_.notify_all();
  const auto deadline = std::chrono::steady_clock::now() + wait;
  bool freed = false;
  while (!(freed = table_->released() != before) && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  relieving_.fetch_sub(1);
  return freed;
}

void InodePruner::Run() {
  std::unique_lock lock(mutex_);
  while (true) {
    cv_.wait(lock, [&] { return stop_ || poked_; });
    if (stop_) return;
    poked_ = false;
    const size_t extra = relieve_;
    relieve_ = 0;
    lock.unlock();
    pending_.store(false, std::memory_order_release);

    const size_t held = table_->descriptors();
    const bool over = held > budget_ || extra > 0;
    const size_t target = held > budget_ ? low_ : held;
    const size_t want = target > extra ? target - extra : 0;
    // Eviction goes further down, to half the budget: each round scans the
    // whole table, and a reopen costs little (tools/bench --walk: open and
    // read 10,000 files past a budget of 1,000 took 0.67 s going down to
    // three quarters, 0.55 s to half, 0.39 s with nothing evicted).
    const size_t evict_to = held > budget_ ? std::min(want, budget_ / 2) : want;
    const size_t evicted = over ? EvictTo(held, evict_to) : 0;
    // Entries added since `held` was read (lookups go on during the round)
    // are left to the next round, poked for them: it may evict them, where
    // this one would have the kernel drop idle files it never looked at.
    // (EvictTo closes at most held - evict_to.)
    const size_t size = std::min(table_->descriptors(), held - evicted);
    bool again = false;
    bool stuck = false;
    if (over && !supported() && size > budget_) {
      WarnUnsupported(size);
      // Little or nothing could be closed (directories, files in use hold
      // the rest): pause as after fruitless rounds, rather than scan the
      // table again for every new entry.
      stuck = evicted < std::max<size_t>(budget_ / 10, 1);
    }
    // After an eviction round, pruning is for what keeps the count over the
    // budget (directories, files in use): waiting for FORGETs to take the
    // last few down to the target would hold up the next round.
    const size_t prune_above = evicted > 0 && extra == 0 ? budget_ : want;
    if (over && supported() && size > prune_above) {
      const uint64_t forgotten = table_->forgotten();
      std::vector<uint64_t> named;
      const size_t n = PruneTo(size, want, &named);
      // The kernel sends FORGET for what it dropped at once: wait until all
      // came back, or they stop coming (some were in use), or the deadline.
      const auto start = std::chrono::steady_clock::now();
      auto last_progress = start;
      uint64_t freed = 0;
      while (n > 0 && freed < n) {
        std::this_thread::sleep_for(std::chrono::microseconds(500));
        const auto now = std::chrono::steady_clock::now();
        const uint64_t f = table_->forgotten() - forgotten;
        if (f != freed) {
          freed = f;
          last_progress = now;
        } else if ((freed > 0 && now - last_progress >= kForgetQuiet) ||
                   now - start >= kForgetWait) {
          break;
        }
      }
      // What the kernel kept is in use: let the next rounds name others.
      if (freed < n) table_->MarkUsed(named);
      fruitless_ = n > 0 && freed == 0 ? fruitless_ + 1 : 0;
      // Others are named next (MarkUsed above): try again at once.
      again = fruitless_ > 0 && fruitless_ < kFruitlessRounds;
      if (fruitless_ >= kFruitlessRounds) {
        fruitless_ = 0;
        stuck = true;
        const size_t after = table_->descriptors();
        const auto now = std::chrono::steady_clock::now();
        if (now - last_stuck_warning_ >= kStuckWarningInterval) {
          last_stuck_warning_ = now;
          LOG_WARN(
              "%zu inodes are cached by the kernel, over the budget of %zu, and it dropped none "
              "of the %zu least recently used within 100 ms (in use?); lookups may fail with "
              "EMFILE (see max_inodes and the descriptor limit in the README)",
              after, budget_, n);
        }
      }
    }
    if (supported()) PruneEvicted();
    lock.lock();
    if (again) poked_ = true;
    // After a round that freed nothing, pause before the next, unless a
    // request runs out of descriptors or the pruner stops.
    if (stuck) cv_.wait_for(lock, kStuckPause, [&] { return stop_ || relieve_ > 0; });
  }
}

void InodePruner::WarnUnsupported(size_t size) {
  if (warned_unsupported_) return;
  warned_unsupported_ = true;
  LOG_WARN(
      "%zu inodes cached by the kernel hold descriptors (budget %zu), and the kernel is not "
      "asked to forget any (%s)%s: lookups may fail with EMFILE until it reclaims memory (see "
      "max_inodes and the descriptor limit in the README)",
      size, budget_, why_unsupported_.load(),
      table_->eviction_enabled() ? "; the rest are not idle files"
                                 : "; idle files cannot be reopened by handle either");
}

size_t InodePruner::EvictTo(size_t held, size_t target) {
  if (held <= target || !table_->eviction_enabled()) return 0;
  const size_t evicted = table_->EvictDescriptors(held - target);
  if (evicted > 0 && !announced_eviction_) {
    announced_eviction_ = true;
    LOG_INFO(
        "%zu inodes cached by the kernel hold descriptors (budget %zu, max_inodes): closing "
        "those of idle files, to be reopened by handle",
        held, budget_);
  }
  LOG_DEBUG("closed the descriptors of %zu idle files of %zu (budget %zu)", evicted, held, budget_);
  return evicted;
}

size_t InodePruner::PruneTo(size_t size, size_t target, std::vector<uint64_t>* named) {
  if (size <= target) return 0;
  std::vector<uint64_t>& ids = *named;
  // Evicted entries older than those named go too: their dentries would
  // keep the directories among them in the kernel's cache.
  ids = table_->OldestHolding(size - target);
  if (ids.empty()) return 0;
  if (!announced_) {
    announced_ = true;
    LOG_INFO(
        "%zu inodes are cached by the kernel (budget %zu, max_inodes)%s: asking it to forget "
        "the least recently used",
        size, budget_, size > budget_ ? "" : " and descriptors ran short");
  }
  const size_t sent = Send(ids, size);
  LOG_DEBUG("asked the kernel to forget %zu of %zu inodes (budget %zu)", sent, size, budget_);
  return sent;
}

void InodePruner::PruneEvicted() {
  const size_t size = table_->size();
  const size_t most = kEntriesPerBudget * budget_;
  if (size <= most) return;
  const std::vector<uint64_t> ids = table_->LeastRecentlyUsed(size - (most - most / 10), true);
  if (ids.empty()) return;
  const size_t sent = Send(ids, size);
  // Those the kernel keeps (in use) are not named first next time; those
  // it drops are gone from the table by then.
  table_->MarkUsed(ids);
  LOG_DEBUG("asked the kernel to forget %zu of %zu inodes with closed descriptors", sent, size);
}

size_t InodePruner::Send(const std::vector<uint64_t>& ids, size_t size) {
  size_t sent = 0;
  for (size_t i = 0; i < ids.size(); i += kIdsPerNotification) {
    const size_t end = std::min(ids.size(), i + kIdsPerNotification);
    std::vector<uint64_t> batch(ids.begin() + static_cast<std::ptrdiff_t>(i),
                                ids.begin() + static_cast<std::ptrdiff_t>(end));
    int r = send_(batch);
    if (r == -ENOSYS || r == -EINVAL) {
      supported_ = false;
      WarnUnsupported(size);
      break;
    }
    if (r != 0) {
      if (r != -ENODEV && r != -ENOENT) {
        LOG_WARN("could not ask the kernel to forget inodes: %s", std::strerror(-r));
      }
      break;
    }
    sent += batch.size();
  }
  sent_ += sent;
  return sent;
}

}  // namespace vssfs::fs
