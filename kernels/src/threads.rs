//! A fork-join pool for the CPU forward pass, tuned for many tiny parallel sections.
//!
//! A decode step of a small model runs a few hundred matmuls of tens of microseconds each, so the
//! cost of waking workers matters as much as the kernels: a general-purpose pool (rayon) parks its
//! threads and pays a futex wake-up per section. Here workers spin on an epoch counter for a short
//! while after each job, so back-to-back sections start in well under a microsecond, and park only
//! when the engine goes idle. The caller takes part as thread 0, so `threads = 1` never switches
//! threads at all.
//!
//! Work is split statically: [`ThreadPool::run`] calls `job(i, n)` once on each of the `n` threads,
//! and the job picks its own share (see [`split_range`]). Matmul rows are uniform in cost, so a
//! static split loses nothing to a work-stealing one and needs no shared counter.

use std::cell::UnsafeCell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle, Thread};
use std::time::{Duration, Instant};

/// How long an idle worker spins before it parks. Long enough to bridge the gaps between the
/// matmuls of one step (a norm, a RoPE, an attention call), short enough that an idle server
/// does not burn a core.
const SPIN_BEFORE_PARK: Duration = Duration::from_micros(300);

type Job = dyn Fn(usize, usize) + Sync;

struct Shared {
    threads: usize,
    /// Bumped once per job; workers run the job when they see a new value.
    epoch: AtomicU64,
    /// The current job, valid while `remaining > 0` (see `run`).
    job: UnsafeCell<Option<&'static Job>>,
    /// Workers that have not finished the current job.
    remaining: AtomicUsize,
    /// Set by a worker whose job panicked; `run` re-raises it on the caller.
    panicked: AtomicBool,
    shutdown: AtomicBool,
    /// Workers that may be parked, so `run` knows whom to unpark.
    parked: Vec<AtomicBool>,
}

// SAFETY: `job` is written only by `run` while no worker reads it (all workers finished the
// previous epoch), and read by workers only between the epoch bump and their `remaining` decrement.
unsafe impl Sync for Shared {}

/// A fixed set of worker threads; see the module docs.
pub struct ThreadPool {
    shared: Arc<Shared>,
    handles: Vec<Thread>,
    joins: Vec<JoinHandle<()>>,
    /// Serialises `run` calls from different threads.
    running: Mutex<()>,
}

impl std::fmt::Debug for ThreadPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadPool")
            .field("threads", &self.threads())
            .finish()
    }
}

impl ThreadPool {
    /// A pool of `threads` (at least 1) threads, the caller of [`ThreadPool::run`] included.
    pub fn new(threads: usize) -> ThreadPool {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            threads,
            epoch: AtomicU64::new(0),
            job: UnsafeCell::new(None),
            remaining: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            parked: (0..threads).map(|_| AtomicBool::new(false)).collect(),
        });
        let mut joins = Vec::with_capacity(threads - 1);
        for index in 1..threads {
            let shared = shared.clone();
            let join = thread::Builder::new()
                .name(format!("metrum-cpu-{index}"))
                .spawn(move || worker(&shared, index))
                .expect("spawning a CPU worker thread");
            joins.push(join);
        }
        let handles = joins.iter().map(|j| j.thread().clone()).collect();
        ThreadPool {
            shared,
            handles,
            joins,
            running: Mutex::new(()),
        }
    }

    pub fn threads(&self) -> usize {
        self.shared.threads
    }

    /// Calls `job(i, n)` for every thread index `i in 0..n` (`n` = [`ThreadPool::threads`]), the
    /// caller running `i = 0`, and returns when all have finished. A panic in any call is
    /// re-raised here after the others finish.
    pub fn run(&self, job: &(dyn Fn(usize, usize) + Sync)) {
        let n = self.shared.threads;
        if n == 1 {
            job(0, 1);
            return;
        }
        let _serial = self.running.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: the `'static` lifetime is a lie that `run` makes true: it does not return
        // before every worker has decremented `remaining`, after which none reads `job`.
        let job_static: &'static Job = unsafe { std::mem::transmute(job) };
        unsafe { *self.shared.job.get() = Some(job_static) };
        self.shared.remaining.store(n - 1, Ordering::Relaxed);
        self.shared.epoch.fetch_add(1, Ordering::Release);
        for (index, handle) in self.handles.iter().enumerate() {
            if self.shared.parked[index + 1].load(Ordering::Acquire) {
                handle.unpark();
            }
        }
        let own = catch_unwind(AssertUnwindSafe(|| job(0, n)));
        let mut spins = 0u32;
        while self.shared.remaining.load(Ordering::Acquire) != 0 {
            spins += 1;
            if spins < 1 << 16 {
                std::hint::spin_loop();
            } else {
                thread::yield_now();
            }
        }
        unsafe { *self.shared.job.get() = None };
        if let Err(payload) = own {
            std::panic::resume_unwind(payload);
        }
        if self.shared.panicked.swap(false, Ordering::AcqRel) {
            panic!("a metrum CPU worker thread panicked");
        }
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        self.shared.epoch.fetch_add(1, Ordering::Release);
        for handle in &self.handles {
            handle.unpark();
        }
        for join in self.joins.drain(..) {
            let _ = join.join();
        }
    }
}

fn worker(shared: &Shared, index: usize) {
    let mut seen = 0u64;
    loop {
        let epoch = wait_for_epoch(shared, index, seen);
        seen = epoch;
        if shared.shutdown.load(Ordering::Acquire) {
            return;
        }
        // SAFETY: set before the epoch bump we just observed (Acquire pairs with Release).
        if let Some(job) = unsafe { *shared.job.get() } {
            if catch_unwind(AssertUnwindSafe(|| job(index, shared.threads))).is_err() {
                shared.panicked.store(true, Ordering::Release);
            }
        }
        shared.remaining.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Spins, then parks, until the epoch moves past `seen`; returns the new epoch.
fn wait_for_epoch(shared: &Shared, index: usize, seen: u64) -> u64 {
    let started = Instant::now();
    let mut spins = 0u32;
    loop {
        let epoch = shared.epoch.load(Ordering::Acquire);
        if epoch != seen {
            return epoch;
        }
        spins = spins.wrapping_add(1);
        if spins % 256 != 0 || started.elapsed() < SPIN_BEFORE_PARK {
            std::hint::spin_loop();
            continue;
        }
        shared.parked[index].store(true, Ordering::Release);
        // Re-check after announcing: a `run` that bumped the epoch before seeing our flag
        // would not unpark us.
        if shared.epoch.load(Ordering::Acquire) == seen {
            thread::park_timeout(Duration::from_millis(50));
        }
        shared.parked[index].store(false, Ordering::Release);
    }
}

/// The `i`-th of `n` near-equal contiguous shares of `0..len`, in units of `align` (the last
/// share takes the remainder).
pub fn split_range(len: usize, i: usize, n: usize, align: usize) -> std::ops::Range<usize> {
    let align = align.max(1);
    let units = len.div_ceil(align);
    let start = (units * i / n * align).min(len);
    let end = (units * (i + 1) / n * align).min(len);
    start..end
}

static GLOBAL: OnceLock<Arc<ThreadPool>> = OnceLock::new();
static REQUESTED: AtomicUsize = AtomicUsize::new(0);

/// Sets the size of the [`global`] pool (`--threads`). Takes effect only before its first use;
/// returns false if the pool already exists with another size.
pub fn set_global_threads(threads: usize) -> bool {
    REQUESTED.store(threads.max(1), Ordering::Relaxed);
    GLOBAL
        .get()
        .is_none_or(|pool| pool.threads() == threads.max(1))
}

/// The process-wide pool the CPU kernels use: [`set_global_threads`]'s size, or one thread per
/// available core.
pub fn global() -> &'static Arc<ThreadPool> {
    GLOBAL.get_or_init(|| {
        let requested = REQUESTED.load(Ordering::Relaxed);
        let threads = if requested > 0 {
            requested
        } else {
            thread::available_parallelism().map_or(1, |n| n.get())
        };
        Arc::new(ThreadPool::new(threads))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_thread_runs_each_job_once() {
        let pool = ThreadPool::new(3);
        for _ in 0..1000 {
            let hits: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
            pool.run(&|i, n| {
                assert_eq!(n, 3);
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
        }
    }

    #[test]
    fn jobs_after_parking_still_run() {
        let pool = ThreadPool::new(2);
        let total = AtomicUsize::new(0);
        for _ in 0..3 {
            thread::sleep(Duration::from_millis(5));
            pool.run(&|i, _| {
                total.fetch_add(i + 1, Ordering::Relaxed);
            });
        }
        assert_eq!(total.load(Ordering::Relaxed), 9);
    }

    #[test]
    fn worker_panic_reaches_the_caller_and_the_pool_survives() {
        let pool = ThreadPool::new(2);
        let caught = catch_unwind(AssertUnwindSafe(|| {
            pool.run(&|i, _| {
                if i == 1 {
                    panic!("boom");
                }
            })
        }));
        assert!(caught.is_err());
        let ran = AtomicUsize::new(0);
        pool.run(&|_, _| {
            ran.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(ran.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn split_range_covers_everything_once() {
        for len in [0, 1, 7, 64, 1000] {
            for n in 1..5 {
                for align in [1, 4, 16] {
                    let mut next = 0;
                    for i in 0..n {
                        let r = split_range(len, i, n, align);
                        assert_eq!(r.start, next);
                        assert!(r.start % align == 0 || r.start == len);
                        next = r.end;
                    }
                    assert_eq!(next, len);
                }
            }
        }
    }
}
