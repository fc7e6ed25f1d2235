// The cache of the ops' large CPU buffers (buffers.h says why).
#include "buffers.h"

#include <ATen/EmptyTensor.h>
#include <ATen/ops/empty.h>
#include <c10/core/CPUAllocator.h>
#include <pthread.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <mutex>
#include <new>
#include <unordered_map>
#include <vector>

#include "torch_ext/buffer_cache.h"

namespace torch_ext {
namespace {

// Smaller buffers come from malloc's heap, already mapped, as they are.
constexpr size_t kMinCachedBytes = size_t{128} << 10;
constexpr int64_t kDefaultLimitMiB = 256;

// One block of memory from the CPU allocator torch has installed (its
// DataPtr frees it the way that allocator wants), and its size.
struct Block {
  c10::DataPtr memory;
  size_t bytes;
};

class BufferCache final : public c10::Allocator {
 public:
  // (Never throws for the limit: torch also allocates through a buffer's
  // allocator, to grow it or to copy a copy-on-write clone, and not every
  // such place survives an exception. The op's own calls read the variable
  // first, in update_limit.)
  c10::DataPtr allocate(size_t n) override {
    const size_t limit = limit_.load(std::memory_order_relaxed);
    if (n < kMinCachedBytes || limit == 0) return c10::GetCPUAllocator()->allocate(n);
    Block* block = take(n);
    if (block == nullptr) {
      block = new Block{c10::GetCPUAllocator()->allocate(n), n};
      allocated_.fetch_add(1, std::memory_order_relaxed);
    } else {
      reused_.fetch_add(1, std::memory_order_relaxed);
      if (poison_.load(std::memory_order_relaxed)) std::memset(block->memory.get(), 0xff, n);
    }
    // A "simple" data pointer (context = data), as the CPU allocator's are,
    // so that what torch does only with those (copy-on-write clones) works on
    // these buffers too: the block is found again from its address.
    void* data = block->memory.get();
    {
      std::lock_guard<std::mutex> lock(mutex_);
      in_use_.emplace(data, block);
    }
    return {data, data, &BufferCache::give_back, c10::Device(c10::kCPU)};
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  BufferCacheInfo info() {
    std::lock_guard<std::mutex> lock(mutex_);
    return {static_cast<int64_t>(cached_bytes_), static_cast<int64_t>(free_.size()),
            reused_.load(), allocated_.load(), static_cast<int64_t>(limit_.load())};
  }

  void release() { drop_beyond(0); }

  // Reads TORCH_EXT_BUFFER_CACHE_MB (a bad value raises, naming it) and
  // drops what the cache holds beyond it.
  void update_limit() {
    const size_t limit = read_limit();
    limit_.store(limit, std::memory_order_relaxed);
    drop_beyond(limit);
  }

  void set_poison(bool poison) { poison_.store(poison); }

  // A child of fork() gets the cache as the forking thread saw it; another
  // thread may have held the lock then, so the child starts with a fresh one
  // and forgets the cached blocks (their memory stays the parent's pages).
  // The same holds for the map of buffers in use, which the fork may have
  // caught mid-update: the child starts with an empty one (and leaks the old
  // one's nodes), and its copies of the parent's buffers, unknown to it, are
  // left alone when it frees them (keep).
  void after_fork_in_child() {
    new (&mutex_) std::mutex();
    new (&free_) std::vector<Block*>();
    new (&in_use_) std::unordered_map<void*, Block*>();
    cached_bytes_ = 0;
  }

  static BufferCache& instance() {
    // Never destroyed: buffers may outlive static destruction (Python frees
    // its tensors at exit) and must find the cache to come back to.
    static BufferCache* cache = [] {
      auto* c = new BufferCache();
      pthread_atfork(nullptr, nullptr, [] { instance().after_fork_in_child(); });
      return c;
    }();
    return *cache;
  }

 private:
  static size_t read_limit() {
    const char* env = std::getenv("TORCH_EXT_BUFFER_CACHE_MB");
    if (env == nullptr || *env == '\0') return static_cast<size_t>(kDefaultLimitMiB) << 20;
    // Digits only (no sign, space or exponent), and few enough MiB that the
    // bytes fit an int64.
    constexpr uint64_t kMaxMiB = static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) >> 20;
    uint64_t mib = 0;
    bool valid = true;
    for (const char* c = env; *c != '\0' && valid; ++c) {
      valid = *c >= '0' && *c <= '9' && mib <= (kMaxMiB - (*c - '0')) / 10;
      if (valid) mib = mib * 10 + static_cast<uint64_t>(*c - '0');
    }
    TORCH_CHECK_VALUE(valid,
                      "TORCH_EXT_BUFFER_CACHE_MB must be a whole number of MiB from 0 to ",
                      kMaxMiB, ", got '", env, "'");
    return static_cast<size_t>(mib) << 20;
  }

  // (Under the lock.) Moves the oldest cached blocks to `dropped` until at
  // most `limit` bytes are held.
  void evict_locked(size_t limit, std::vector<Block*>& dropped) {
    size_t oldest = 0;
    while (cached_bytes_ > limit) {
      cached_bytes_ -= free_[oldest]->bytes;
      dropped.push_back(free_[oldest++]);
    }
    free_.erase(free_.begin(), free_.begin() + static_cast<std::ptrdiff_t>(oldest));
  }

  void drop_beyond(size_t limit) {
    std::vector<Block*> dropped;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      evict_locked(limit, dropped);
    }
    for (Block* b : dropped) delete b;  // (freed outside the lock)
  }

  // The smallest cached block of n to 2n bytes (a larger one would hold
  // memory the buffer does not use), taken out of the cache.
  Block* take(size_t n) {
    std::lock_guard<std::mutex> lock(mutex_);
    size_t best = free_.size();
    for (size_t i = 0; i < free_.size(); ++i) {
      const size_t bytes = free_[i]->bytes;
      if (bytes >= n && bytes / 2 <= n && (best == free_.size() || bytes < free_[best]->bytes)) {
        best = i;
      }
    }
    if (best == free_.size()) return nullptr;
    Block* block = free_[best];
    free_.erase(free_.begin() + static_cast<std::ptrdiff_t>(best));
    cached_bytes_ -= block->bytes;
    return block;
  }

  static void give_back(void* data) { instance().keep(data); }

  // Keeps a freed block, dropping the oldest ones beyond the limit.
  void keep(void* data) {
    const size_t limit = limit_.load(std::memory_order_relaxed);
    std::vector<Block*> dropped;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      const auto found = in_use_.find(data);
      if (found == in_use_.end()) return;  // a forked child's copy of its parent's buffer
      Block* block = found->second;
      in_use_.erase(found);
      if (block->bytes > limit) {  // (not kept: it would push out everything else)
        dropped.push_back(block);
      } else {
        free_.push_back(block);
        cached_bytes_ += block->bytes;
        evict_locked(limit, dropped);
      }
    }
    for (Block* b : dropped) delete b;
  }

  std::mutex mutex_;
  std::vector<Block*> free_;  // oldest first
  std::unordered_map<void*, Block*> in_use_;  // handed out, by address
  size_t cached_bytes_ = 0;
  std::atomic<size_t> limit_{static_cast<size_t>(kDefaultLimitMiB) << 20};
  std::atomic<int64_t> reused_{0}, allocated_{0};
  std::atomic<bool> poison_{false};
};

}  // namespace

at::Tensor empty_buffer(at::IntArrayRef sizes, const at::TensorOptions& options) {
  if (options.device().is_cpu() && options.layout() == at::kStrided &&
      !options.pinned_memory()) {
    BufferCache& cache = BufferCache::instance();
    cache.update_limit();
    constexpr c10::DispatchKeySet cpu(c10::DispatchKey::CPU);
    return at::detail::empty_generic(sizes, &cache, cpu,
                                     c10::typeMetaToScalarType(options.dtype()), std::nullopt);
  }
  return at::empty(sizes, options);
}

at::Tensor zeros_buffer(at::IntArrayRef sizes, const at::TensorOptions& options) {
  return empty_buffer(sizes, options).zero_();
}

void set_buffer_cache_poison(bool poison) { BufferCache::instance().set_poison(poison); }

BufferCacheInfo buffer_cache_info() { return BufferCache::instance().info(); }

void release_buffer_cache() { BufferCache::instance().release(); }

}  // namespace torch_ext
