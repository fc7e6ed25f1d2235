// The op's large CPU buffers (its [T, B, N] outputs, the backward's gradient
// buffers, the blocks of x its products round) come from a small cache of
// freed blocks instead of fresh memory at every call.
//
// Why: glibc's malloc hands blocks of this size back to the system as soon
// as they are freed (mmap, or trimming the top of the heap), so every call
// faults its whole working set in again: measured at T=300, B=32, N=128,
// 3500-3800 page faults per forward + backward, a third of the call. A block
// freed by one call (the caller dropping its outputs, or the backward's own
// scratch) is kept here and handed to the next call that asks for about as
// much, already mapped. Results do not change (the memory is uninitialised
// either way). What it keeps is bounded: TORCH_EXT_BUFFER_CACHE_MB (read at
// each of the op's allocations, which drops what is held beyond it; default
// 256, 0 turns the cache off) caps the freed bytes held, oldest dropped
// first; release_buffer_cache() hands them all back.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace torch_ext {

// at::empty(sizes, options), its storage from the cache where options are a
// CPU strided tensor's and the buffer is large (else at::empty itself). Such
// a tensor is an ordinary tensor: resizable, shareable, freed when its last
// user drops it (its block then goes back to the cache).
at::Tensor empty_buffer(at::IntArrayRef sizes, const at::TensorOptions& options);
// empty_buffer, zero-filled.
at::Tensor zeros_buffer(at::IntArrayRef sizes, const at::TensorOptions& options);

// Test hook: fill every reused block with NaN bytes (0xff) before handing it
// out, so that code reading a buffer before writing it shows up.
void set_buffer_cache_poison(bool poison);

}  // namespace torch_ext
