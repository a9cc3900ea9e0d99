//! Which shapes the bf16 tensor-core kernels take: the shape rules alone, built without the `cuda`
//! feature, so that what the dispatch in `cuda::attention` and `cuda::head_ce` decides and what the
//! trainer's device-memory count (`model::memory`) assumes cannot drift apart.

/// Whether bf16 attention of head dimension `c` can run on attention_bf16.cu (instantiated for 32, 64
/// and 128); on a device it also needs 16-byte-aligned buffers and shared memory for its tiles.
pub fn attention_takes(c: usize) -> bool {
    [32, 64, 128].contains(&c)
}

/// Whether the bf16 head + bitwise CE runs on head_ce_bf16.cu for width `c` and `d` bits: d of 8, 16,
/// 32 or 64 and C a multiple of 64.
pub fn head_takes(c: usize, d: usize) -> bool {
    [8, 16, 32, 64].contains(&d) && c.is_multiple_of(64)
}
