// A read-only file read by position from any thread at once (POSIX pread, Windows
// ReadFile with an offset), for the image cache when it stays on disk.
#pragma once
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

#ifdef _WIN32
#define WIN32_LEAN_AND_MEAN
#include <windows.h>
#else
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#endif

namespace maml {

class PixelFile {
 public:
  // Opens path and checks that it holds exactly `expected_bytes`.
  PixelFile(const std::string& path, int64_t expected_bytes) : path_(path) {
#ifdef _WIN32
    handle_ = CreateFileA(path.c_str(), GENERIC_READ, FILE_SHARE_READ, nullptr, OPEN_EXISTING, FILE_ATTRIBUTE_NORMAL, nullptr);
    if (handle_ == INVALID_HANDLE_VALUE) throw std::runtime_error(path + ": cannot open the pixel file (error " + std::to_string(GetLastError()) + ")");
    LARGE_INTEGER size;
    GetFileSizeEx(handle_, &size);
    const int64_t bytes = size.QuadPart;
#else
    fd_ = ::open(path.c_str(), O_RDONLY);
    if (fd_ < 0) throw std::runtime_error(path + ": cannot open the pixel file (" + std::strerror(errno) + ")");
    struct stat st;
    fstat(fd_, &st);
    const int64_t bytes = st.st_size;
#endif
    if (bytes != expected_bytes) {
      close();
      throw std::runtime_error(path + " has " + std::to_string(bytes) + " bytes, expected " + std::to_string(expected_bytes) +
                               " (count x C x H x W): re-run prepare to rebuild the cache");
    }
  }
  ~PixelFile() { close(); }
  PixelFile(const PixelFile&) = delete;
  PixelFile& operator=(const PixelFile&) = delete;

  void read(int64_t offset, uint8_t* out, size_t bytes) const {
    size_t done = 0;
    while (done < bytes) {
#ifdef _WIN32
      OVERLAPPED at = {};
      at.Offset = DWORD(uint64_t(offset + done) & 0xffffffffu);
      at.OffsetHigh = DWORD(uint64_t(offset + done) >> 32);
      DWORD got = 0;
      if (!ReadFile(handle_, out + done, DWORD(bytes - done), &got, &at) || got == 0)
        throw std::runtime_error(path_ + ": read failed at byte " + std::to_string(offset + done));
#else
      const ssize_t got = ::pread(fd_, out + done, bytes - done, off_t(offset + done));
      if (got < 0 && errno == EINTR) continue;
      if (got <= 0)
        throw std::runtime_error(path_ + ": read failed at byte " + std::to_string(offset + done) +
                                 (got < 0 ? std::string(" (") + std::strerror(errno) + ")" : std::string(" (file shorter than expected)")));
#endif
      done += size_t(got);
    }
  }
  const std::string& path() const { return path_; }

 private:
  void close() {
#ifdef _WIN32
    if (handle_ != INVALID_HANDLE_VALUE) CloseHandle(handle_);
    handle_ = INVALID_HANDLE_VALUE;
#else
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
#endif
  }
  std::string path_;
#ifdef _WIN32
  HANDLE handle_ = INVALID_HANDLE_VALUE;
#else
  int fd_ = -1;
#endif
};

}  // namespace maml
