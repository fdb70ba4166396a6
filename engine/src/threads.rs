//! The CPU thread pools a forward pass runs on: Metrum's kernel pool (quantized matmul,
//! attention; `metrum_kernels::threads`) and rayon's global pool (candle's CPU ops). Each is
//! sized once per process, before its first use; the engine offers the knobs here so callers
//! (`--threads` of `serve`, `profile-step`) need not reach into the kernels. The engine also
//! samples a step's rows on the kernels' pool ([`cpu_pool`]), after the forward has let go of it.

/// Sizes both pools to `threads` (at least 1). Returns false when the kernel pool already runs
/// with another size (a second engine in one process); rayon's pool keeps its first size too.
pub fn size_cpu_pools(threads: usize) -> bool {
    // An error only means the global pool exists already.
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .build_global();
    set_kernel_threads(threads)
}

/// Sizes the kernel pool alone. Returns false when it already runs with another size.
pub fn set_kernel_threads(threads: usize) -> bool {
    metrum_kernels::threads::set_global_threads(threads)
}

/// The kernel pool's size (creating the pool if nothing used it yet).
pub fn kernel_threads() -> usize {
    metrum_kernels::threads::global().threads()
}

pub use metrum_kernels::threads::ThreadPool;

/// The kernels' pool itself, for CPU work that runs between forwards and would otherwise leave
/// its threads idle (a step's sampling, `step_sampling`).
pub fn cpu_pool() -> &'static ThreadPool {
    metrum_kernels::threads::global()
}
