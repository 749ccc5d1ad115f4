// smb.conf generation for shares on vssfs volumes (vssfs-smb config).
//
// For each NAME=PATH it writes two shares: [NAME] for the backup host's
// Remote VSS (vfs_shell_snap calling vssfs-smb) and [NAME-versions] for users'
// Previous Versions (vfs_shadow_copy2 over the volume's .snapshot): Samba
// gives an exposed shadow copy share the base share's modules, and
// shadow_copy2 stacked on shell_snap breaks writes into the exposed copy
// (docs/SAMBA.md). The globals enable Samba's FSRVP server (registry
// shares). With a state directory, every Samba directory, the password
// database and the logs go under it, so this smbd can run beside a system
// Samba.
//
// Thread-safety: a pure function.
#ifndef VSSFS_SMB_EXPORT_SMB_CONF_H_
#define VSSFS_SMB_EXPORT_SMB_CONF_H_

#include <string>
#include <utility>
#include <vector>

namespace vssfs::smb_export {

struct SmbConfOptions {
  int port = 0;           // 0: Samba's default (445).
  std::string state_dir;  // "": the system's Samba directories.
  std::string vssfs_smb = "vssfs-smb";
  std::string vssctl = "vssctl";
  bool loopback_only = false;  // Listen on 127.0.0.1 only.
};

// The smb.conf text, or "" with *error set: a NAME that is not 1-70
// letters, digits, '-' or '_', a PATH that is not plain (PlainSharePath), or
// one on none of `volumes` (the vssfs mount points).
std::string SmbConf(const SmbConfOptions& options,
                    const std::vector<std::pair<std::string, std::string>>& shares,
                    const std::vector<std::string>& volumes, std::string* error);

}  // namespace vssfs::smb_export

#endif  // VSSFS_SMB_EXPORT_SMB_CONF_H_
