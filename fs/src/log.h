// Logging for the vssfs daemon: levels error < warn < info < debug, to stderr
// while in the foreground and to syslog (daemon facility) once daemonised.
//
// Thread-safety: all functions may be called from any thread; the level and
// sink are set once at start-up before worker threads exist.
#ifndef VSSFS_FS_SRC_LOG_H_
#define VSSFS_FS_SRC_LOG_H_

#include <string>

namespace vssfs::fs {

enum class LogLevel { kError = 0, kWarn = 1, kInfo = 2, kDebug = 3 };

// Parses "error", "warn", "info", "debug"; false if unknown.
bool ParseLogLevel(const std::string& text, LogLevel* level);
void SetLogLevel(LogLevel level);
LogLevel GetLogLevel();
// Switches output to syslog (used after daemonising).
void LogToSyslog();
// In a forked child that is about to close inherited descriptors: drops the
// syslog connection, so that the next message opens a new one instead of
// writing to (and closing) whatever reuses its descriptor number.
void LogDropSyslogConnection();

void Log(LogLevel level, const char* format, ...) __attribute__((format(printf, 2, 3)));

}  // namespace vssfs::fs

#define VSSFS_LOG(level, ...)                                                      \
  do {                                                                             \
    if (static_cast<int>(level) <= static_cast<int>(::vssfs::fs::GetLogLevel())) { \
      ::vssfs::fs::Log(level, __VA_ARGS__);                                        \
    }                                                                              \
  } while (0)
#define LOG_ERROR(...) VSSFS_LOG(::vssfs::fs::LogLevel::kError, __VA_ARGS__)
#define LOG_WARN(...) VSSFS_LOG(::vssfs::fs::LogLevel::kWarn, __VA_ARGS__)
#define LOG_INFO(...) VSSFS_LOG(::vssfs::fs::LogLevel::kInfo, __VA_ARGS__)
#define LOG_DEBUG(...) VSSFS_LOG(::vssfs::fs::LogLevel::kDebug, __VA_ARGS__)

#endif  // VSSFS_FS_SRC_LOG_H_
