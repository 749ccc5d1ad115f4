// vssfs-smb watch: freezes a set's shadow copies when Samba's FSRVP server
// records it Recovered (see shell_snap.h, docs/SAMBA.md).
//
// Samba keeps its FSRVP state in LOCK_DIR/srv_fss.tdb (NDR records of
// source3/rpc_server/fss/srv_fss_private.idl): "sc_set/<set id>" holds the
// set's id string (NUL-terminated), padding to 4 bytes, then a little-endian
// u32 state (5 = Recovered); "sc_set/<set id>/sc/<copy id>" holds the copy's
// id, base path and shadow copy path as NUL-terminated strings.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <tdb.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "vssfs/smb_export/shell_snap.h"

namespace vssfs::smb_export {
namespace {

constexpr uint32_t kExposed = 4;
constexpr uint32_t kRecovered = 5;

std::atomic<bool> g_stop{false};

void OnSignal(int) { g_stop = true; }

struct FssState {
  std::map<std::string, uint32_t> set_state;                 // By set id.
  std::map<std::string, std::vector<std::string>> sc_paths;  // Set id -> shadow copy paths.
};

int Collect(TDB_CONTEXT*, TDB_DATA key, TDB_DATA value, void* arg) {
  auto* st = static_cast<FssState*>(arg);
  const std::string k(reinterpret_cast<const char*>(key.dptr),
                      strnlen(reinterpret_cast<const char*>(key.dptr), key.dsize));
  const std::string prefix = "sc_set/";
  if (k.rfind(prefix, 0) != 0) return 0;
  const std::string rest = k.substr(prefix.size());
  const size_t slash = rest.find('/');
  const char* v = reinterpret_cast<const char*>(value.dptr);
  if (slash == std::string::npos) {
    const size_t id_len = strnlen(v, value.dsize);
    const size_t at = (id_len + 1 + 3) / 4 * 4;  // NDR alignment of the u32.
    if (at + 4 <= value.dsize) {
      uint32_t state = 0;
      for (int i = 3; i >= 0; --i)
        state = state << 8 | static_cast<uint8_t>(v[at + static_cast<size_t>(i)]);
      st->set_state[rest] = state;
    }
    return 0;
  }
  if (rest.compare(slash, 4, "/sc/") != 0 || rest.find('/', slash + 4) != std::string::npos) {
    return 0;  // A share mapping ("/smap/") or something newer.
  }
  std::vector<std::string> strings;
  for (size_t pos = 0; pos < value.dsize && strings.size() < 3;) {
    const size_t len = strnlen(v + pos, value.dsize - pos);
    strings.emplace_back(v + pos, len);
    pos += len + 1;
  }
  if (strings.size() == 3 && !strings[2].empty()) {
    st->sc_paths[rest.substr(0, slash)].push_back(strings[2]);
  }
  return 0;
}

}  // namespace

int WatchSamba(const ShellSnapOptions& options, const std::string& lock_dir, int interval_ms,
               int64_t sequence_timeout_s, std::ostream& log) {
  struct sigaction sa {};
  sa.sa_handler = OnSignal;
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  const std::string path = lock_dir + "/srv_fss.tdb";
  std::set<std::string> frozen;  // Sets already frozen.
  log << "vssfs-smb: watching " << path << " every " << interval_ms << " ms" << std::endl;
  auto last_reap = std::chrono::steady_clock::now();
  bool warned = false;
  while (!g_stop) {
    struct stat st;
    const bool present = stat(path.c_str(), &st) == 0;
    if (!present && errno != ENOENT && !warned) {
      log << "vssfs-smb: " << path << ": " << std::strerror(errno) << std::endl;
      warned = true;
    }
    if (present) {
      TDB_CONTEXT* tdb = tdb_open(path.c_str(), 0, TDB_DEFAULT, O_RDONLY, 0);
      if (tdb == nullptr && !warned) {
        log << "vssfs-smb: cannot open " << path << ": " << std::strerror(errno) << std::endl;
        warned = true;
      }
      if (tdb != nullptr) {
        FssState s;
        tdb_traverse_read(tdb, Collect, &s);
        tdb_close(tdb);
        for (const auto& [set, state] : s.set_state) {
          if (state != kRecovered || frozen.count(set)) continue;
          bool all = true;
          for (const std::string& sc : s.sc_paths[set]) {
            std::ostringstream out, err;
            if (FreezeShadowCopy(options, sc, err) != 0) {
              log << err.str();
              all = false;
            }
          }
          if (all) {
            frozen.insert(set);
            log << "vssfs-smb: shadow copy set " << set << " is Recovered: froze "
                << s.sc_paths[set].size() << " shadow copies" << std::endl;
          }
        }
        // Sets Samba forgot need no memory.
        for (auto it = frozen.begin(); it != frozen.end();) {
          it = s.set_state.count(*it) ? std::next(it) : frozen.erase(it);
        }
        // Snapshots of sets Samba dropped unexposed (its timer expired).
        // Only with Samba's state read: a missing file says nothing.
        const auto now = std::chrono::steady_clock::now();
        if (sequence_timeout_s > 0 && now - last_reap >= std::chrono::seconds(1)) {
          last_reap = now;
          std::set<std::string> keeps;
          for (const auto& [set, state] : s.set_state) {
            if (state != kExposed && state != kRecovered) continue;
            for (const std::string& sc : s.sc_paths[set]) {
              std::string volume, snap;
              if (SplitShadowCopyPath(sc, &volume, &snap)) {
                keeps.insert(volume + "/.snapshot/" + snap);
              }
            }
          }
          (void)ReapAbandoned(options, keeps, sequence_timeout_s, log);
        }
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(interval_ms));
  }
  return 0;
}

}  // namespace vssfs::smb_export
