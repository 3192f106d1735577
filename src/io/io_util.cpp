#include "io/io_util.hpp"

#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <vector>

namespace lowbit::io {

int64_t first_invalid_utf8(std::string_view s) {
  const auto* p = reinterpret_cast<const uint8_t*>(s.data());
  const int64_t n = static_cast<int64_t>(s.size());
  int64_t i = 0;
  while (i < n) {
    const uint8_t c = p[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    int len = 0;
    uint32_t cp = 0;
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
      cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      cp = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      cp = c & 0x07;
    } else {
      return i;  // continuation byte, overlong lead (C0, C1) or F5..FF
    }
    if (n - i < len) return i;
    for (int k = 1; k < len; ++k) {
      if ((p[i + k] & 0xC0) != 0x80) return i;
      cp = (cp << 6) | (p[i + k] & 0x3F);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
        (cp >= 0xD800 && cp <= 0xDFFF))
      return i;
    i += len;
  }
  return -1;
}

std::string quote_name(std::string_view name) {
  std::string out = "'";
  const size_t limit = 200;
  for (size_t i = 0; i < name.size() && i < limit; ++i) {
    const auto c = static_cast<unsigned char>(name[i]);
    if (c < 0x20 || c == 0x7F || c == '\'' || c == '\\')
      out += fmt::format("\\x{:02x}", c);
    else
      out += static_cast<char>(c);
  }
  if (name.size() > limit)
    out += fmt::format("...' ({} bytes)", name.size());
  else
    out += "'";
  return out;
}

/// A JSON string as serde_json (the reference) writes it: UTF-8 kept, `"` and `\` escaped,
/// control characters as \b \f \n \r \t or \u00xx.
void append_json_string(std::string& out, std::string_view s) {
  out += '"';
  for (const char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (c < 0x20)
          out += fmt::format("\\u{:04x}", c);
        else
          out += ch;
    }
  }
  out += '"';
}

namespace {

bool exists(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0;
}

std::string dir_of(const std::string& path) {
  const size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

void fsync_dir(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;  // best effort: some filesystems do not allow it
  ::fsync(fd);
  ::close(fd);
}

}  // namespace

void check_can_create(const std::string& path, bool overwrite) {
  if (path.empty()) throw_error(ErrorCode::invalid_argument, "output path is empty");
  if (!overwrite && exists(path))
    throw_error(ErrorCode::io_error,
                fmt::format("{}: exists; refusing to overwrite it (pass --force)", path));
}

void AtomicFile::create(const std::string& path, bool overwrite) {
  check_can_create(path, overwrite);
  path_ = path;
  overwrite_ = overwrite;
  const size_t slash = path.rfind('/');
  const std::string base = slash == std::string::npos ? path : path.substr(slash + 1);
  const std::string dir = dir_of(path);
  std::string tmpl =
      (slash == std::string::npos ? std::string() : dir + "/") + "." + base + ".tmp-XXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  fd_ = ::mkostemp(buf.data(), O_CLOEXEC);
  if (fd_ < 0) throw_errno(path, "cannot create a temporary file next to it");
  tmp_path_ = buf.data();
  // mkstemp makes the file 0600; give it the permissions a plain create would.
  const mode_t mask = ::umask(0);
  ::umask(mask);
  ::fchmod(fd_, 0666 & ~mask);
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_ && !tmp_path_.empty()) ::unlink(tmp_path_.c_str());
}

void AtomicFile::truncate(int64_t size) {
  if (::ftruncate(fd_, size) != 0) throw_errno(tmp_path_, "cannot size the temporary file");
}

void AtomicFile::pwrite_all(const void* data, int64_t size, int64_t offset) {
  const auto* p = static_cast<const uint8_t*>(data);
  while (size > 0) {
    const size_t chunk = static_cast<size_t>(std::min<int64_t>(size, int64_t{1} << 30));
    const ssize_t n = ::pwrite(fd_, p, chunk, offset);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw_errno(tmp_path_, "write failed");
    }
    if (n == 0) {
      errno = EIO;
      throw_errno(tmp_path_, "write made no progress");
    }
    p += n;
    size -= n;
    offset += n;
  }
}

void AtomicFile::commit() {
  if (::fsync(fd_) != 0) throw_errno(tmp_path_, "fsync failed");
  if (::close(fd_) != 0) {
    fd_ = -1;
    throw_errno(tmp_path_, "close failed");
  }
  fd_ = -1;
  if (overwrite_) {
    if (::rename(tmp_path_.c_str(), path_.c_str()) != 0)
      throw_errno(path_, "cannot rename into place");
  } else {
    // link() fails with EEXIST instead of replacing a file created meanwhile.
    if (::link(tmp_path_.c_str(), path_.c_str()) == 0) {
      ::unlink(tmp_path_.c_str());
    } else if (errno == EEXIST) {
      throw_error(ErrorCode::io_error,
                  fmt::format("{}: exists; refusing to overwrite it (pass --force)", path_));
    } else {
      // Filesystems without hard links: check, then rename (a small race remains).
      if (exists(path_))
        throw_error(ErrorCode::io_error,
                    fmt::format("{}: exists; refusing to overwrite it (pass --force)", path_));
      if (::rename(tmp_path_.c_str(), path_.c_str()) != 0)
        throw_errno(path_, "cannot rename into place");
    }
  }
  committed_ = true;
  fsync_dir(dir_of(path_));
}

}  // namespace lowbit::io
