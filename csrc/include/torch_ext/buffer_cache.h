// The cache of the ops' large CPU buffers (part of torch_ext.h).
#pragma once

#include <cstdint>

namespace torch_ext {

// The ops take their large CPU buffers (outputs, the backward's gradient
// buffers) from a cache of freed blocks, so that a call does not fault fresh
// memory in at every step of a training loop (README "Speed and memory"). It
// holds at most TORCH_EXT_BUFFER_CACHE_MB MiB of freed blocks (default 256, 0
// turns it off; read at each of the ops' allocations, which also drop what it
// holds beyond it; a value that is not a whole number of MiB raises there).
struct BufferCacheInfo {
  int64_t cached_bytes;   // freed bytes held for the next calls
  int64_t cached_blocks;
  int64_t reused;         // allocations served from the cache so far
  int64_t allocated;      // allocations of fresh memory so far
  int64_t limit_bytes;    // the limit, as last read
};
BufferCacheInfo buffer_cache_info();
// Hands every cached block back to the system (buffers in use are untouched).
void release_buffer_cache();

}  // namespace torch_ext
