#include "log.h"

#include <syslog.h>

#include <atomic>
#include <cstdarg>
#include <cstdio>

namespace vssfs::fs {
namespace {

std::atomic<int> g_level{static_cast<int>(LogLevel::kInfo)};
std::atomic<bool> g_syslog{false};

const char* LevelName(LogLevel level) {
  switch (level) {
    case LogLevel::kError:
      return "error";
    case LogLevel::kWarn:
      return "warning";
    case LogLevel::kInfo:
      return "info";
    case LogLevel::kDebug:
      return "debug";
  }
  return "?";
}

int SyslogPriority(LogLevel level) {
  switch (level) {
    case LogLevel::kError:
      return LOG_ERR;
    case LogLevel::kWarn:
      return LOG_WARNING;
    case LogLevel::kInfo:
      return LOG_INFO;
    case LogLevel::kDebug:
      return LOG_DEBUG;
  }
  return LOG_INFO;
}

}  // namespace

bool ParseLogLevel(const std::string& text, LogLevel* level) {
  static constexpr struct {
    const char* name;
    LogLevel level;
  } kNames[] = {{"error", LogLevel::kError},
                {"warn", LogLevel::kWarn},
                {"warning", LogLevel::kWarn},
                {"info", LogLevel::kInfo},
                {"debug", LogLevel::kDebug}};
  for (const auto& n : kNames) {
    if (text == n.name) {
      *level = n.level;
      return true;
    }
  }
  return false;
}

void SetLogLevel(LogLevel level) { g_level = static_cast<int>(level); }
LogLevel GetLogLevel() { return static_cast<LogLevel>(g_level.load()); }

void LogDropSyslogConnection() {
  if (g_syslog) closelog();
}

void LogToSyslog() {
  openlog("vssfs", LOG_PID, LOG_DAEMON);
  g_syslog = true;
}

void Log(LogLevel level, const char* format, ...) {
  char message[1024];
  va_list args;
  va_start(args, format);
  vsnprintf(message, sizeof message, format, args);
  va_end(args);
  if (g_syslog) {
    syslog(SyslogPriority(level), "%s", message);
  } else {
    std::fprintf(stderr, "vssfs: %s: %s\n", LevelName(level), message);
  }
}

}  // namespace vssfs::fs
