// The vfs_shell_snap commands for Samba's FSRVP server (vssfs-smb).
//
// Samba's `vfs_shell_snap` runs three configured commands with the share
// path appended (through /bin/sh, unquoted: see docs/SAMBA.md for why share
// paths must then be plain):
//
//   check-path SHARE_PATH        0 when the share lives on a vssfs volume;
//                                also remembers it as being added to a set
//   create SHARE_PATH            prints the path of the share's shadow copy
//   delete BASE_PATH SNAP_PATH   the exposure is gone
//
// One instant per set: Samba calls create once per share, one after the
// other. The first create on a volume takes one snapshot (with a writable
// clone, for auto-recovery) of the whole volume for every share that
// check-path announced on it since the last one; the following creates of
// those shares answer from that snapshot. The snapshot is held while any of
// its exposures exists; when the last one is deleted it is frozen, released
// and left to the volume's retention policy.
//
// Everything goes through `vssctl` (run directly, never through a shell),
// so these commands need what vssctl needs (root, or the control group).
// State: STATE_DIR/smb.state, changed under an exclusive flock of
// STATE_DIR/smb.lock and replaced atomically.
//
// Thread-safety: one call per process; concurrent processes serialise on the
// lock.
#ifndef VSSFS_SMB_EXPORT_SHELL_SNAP_H_
#define VSSFS_SMB_EXPORT_SHELL_SNAP_H_

#include <cstdint>
#include <ostream>
#include <set>
#include <string>
#include <vector>

namespace vssfs::smb_export {

struct ShellSnapOptions {
  std::string vssctl = "vssctl";  // The vssctl binary.
  std::string state_dir = "/var/lib/vssfs";
  bool strict = false;            // check-path refuses a share failing vssctl check.
  int64_t batch_window_s = 1800;  // How long an announced share waits for its create.
};

// Runs one command: args = {"check-path", PATH} | {"create", PATH} |
// {"delete", BASE, SNAP}. Output for Samba goes to `out`, messages to `err`.
// Returns the exit status (0 success, 1 failure, 2 usage).
int RunShellSnap(const ShellSnapOptions& options, const std::vector<std::string>& args,
                 std::ostream& out, std::ostream& err);

// The mount points of the vssfs volumes mounted now (vssctl mounts);
// false with *error when vssctl fails.
bool VssfsVolumes(const std::string& vssctl, std::vector<std::string>* out, std::string* error);

// Splits a shadow copy path VOLUME/.snapshot/NAME[/...] into VOLUME and
// NAME; false when it has no "/.snapshot/".
bool SplitShadowCopyPath(const std::string& path, std::string* volume, std::string* snapshot);

// Freezes the snapshot behind a shadow copy path
// (VOLUME/.snapshot/NAME[/...]); a snapshot without a clone is fine.
// Returns 0, or 1 with a message on `err`.
int FreezeShadowCopy(const ShellSnapOptions& options, const std::string& snap_path,
                     std::ostream& err);

// Samba's FSRVP server forgets a set whose message sequence timer expires
// before it is exposed (MS-FSRVP 3.1.5), without calling the delete
// command. This retires every snapshot vssfs-smb took more than
// `sequence_timeout_s` (plus a few seconds) ago that Samba does not keep
// exposed, i.e. whose path VOLUME/.snapshot/NAME is not in `samba_keeps`:
// one some shadow copy was made of is frozen, released and left to the
// volume's retention policy; one taken for a share whose create never came
// is deleted. Messages go to `log`. Returns 0, or 1 if one could not be
// retired (it is tried again next time).
int ReapAbandoned(const ShellSnapOptions& options, const std::set<std::string>& samba_keeps,
                  int64_t sequence_timeout_s, std::ostream& log);

// vssfs-smb watch: every `interval_ms`, reads Samba's FSRVP state
// (LOCK_DIR/srv_fss.tdb, read-only) and freezes the shadow copies of every
// set Samba records as Recovered (MS-FSRVP RecoveryComplete, which Samba
// itself never turns into read-only copies); once a second it also retires
// the snapshots of sets Samba dropped unexposed (ReapAbandoned), with
// `sequence_timeout_s` Samba's "fss:sequence timeout" (180 by default; 0
// disables Samba's timer, and this). Runs until SIGTERM or SIGINT; what it
// does goes to `log`. Returns 0.
int WatchSamba(const ShellSnapOptions& options, const std::string& lock_dir, int interval_ms,
               int64_t sequence_timeout_s, std::ostream& log);

// Whether Samba can pass `path` to a shell_snap command intact: an absolute
// path of letters, digits and "/._-+@,:=" only (the command line is built
// unquoted and run by /bin/sh).
bool PlainSharePath(const std::string& path);

}  // namespace vssfs::smb_export

#endif  // VSSFS_SMB_EXPORT_SHELL_SNAP_H_
