//! A fork-join pool for the CPU forward pass, tuned for many tiny parallel sections.
//!
//! A decode step of a small model runs a few hundred matmuls of tens of microseconds each, so the
//! cost of waking workers matters as much as the kernels: a general-purpose pool (rayon) parks its
//! threads and pays a futex wake-up per section. Here workers spin on an epoch counter for a short
//! while after each job, so back-to-back sections start in well under a microsecond, and park only
//! when the engine goes idle. The caller takes part, so `threads = 1` never switches threads.
//!
//! A job is `n` chunks claimed one at a time from a shared counter. That matters on a busy
//! machine: if a worker is descheduled (another process, the HTTP threads, a load generator on
//! the same cores), the caller simply claims its chunks too, instead of waiting a whole
//! scheduler time slice for a static share. Measured with a static split and one other busy
//! process on 2 cores: decode fell from 40 to 9 tok/s; with claiming it degrades to one core.

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

/// How long `run`'s caller spins for the workers' last chunks before it sleeps.
const CALLER_SPIN: Duration = Duration::from_micros(30);

type Job = dyn Fn(usize) + Sync;

struct Shared {
    threads: usize,
    /// Bumped once per job, so workers know to look for one.
    epoch: AtomicU64,
    /// The current job while chunks may be claimed; `None` otherwise. Written only by `run`.
    job: UnsafeCell<Option<&'static Job>>,
    /// Guards `job`: set (SeqCst) after `job` is written, cleared before it is invalidated.
    job_live: AtomicBool,
    chunks: AtomicUsize,
    next_chunk: AtomicUsize,
    done_chunks: AtomicUsize,
    /// Workers between "saw a live job" and "stopped touching it"; `run` waits for zero before
    /// its job (a borrow of the caller's stack) goes out of scope.
    active: AtomicUsize,
    panicked: AtomicBool,
    shutdown: AtomicBool,
    /// The thread inside `run`, and whether it sleeps waiting for workers (see `wait_for`).
    caller: Mutex<Option<Thread>>,
    caller_parked: AtomicBool,
    /// Workers that may be parked, so `run` knows whom to unpark.
    parked: Vec<AtomicBool>,
}

// SAFETY: `job` is written by `run` only while `job_live` is false and `active` is zero, and read
// by workers only after they raised `active` and saw `job_live` true (all SeqCst).
unsafe impl Sync for Shared {}

impl Shared {
    fn wake_caller(&self) {
        if self.caller_parked.load(Ordering::SeqCst)
            && let Some(caller) = &*self.caller.lock().unwrap_or_else(|e| e.into_inner())
        {
            caller.unpark();
        }
    }

    /// Claims and runs chunks of the current job until none are left.
    fn work(&self, job: &Job) {
        let total = self.chunks.load(Ordering::Acquire);
        loop {
            let chunk = self.next_chunk.fetch_add(1, Ordering::AcqRel);
            if chunk >= total {
                return;
            }
            if catch_unwind(AssertUnwindSafe(|| job(chunk))).is_err() {
                self.panicked.store(true, Ordering::Release);
            }
            if self.done_chunks.fetch_add(1, Ordering::AcqRel) + 1 == total {
                self.wake_caller();
            }
        }
    }
}

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
            job_live: AtomicBool::new(false),
            chunks: AtomicUsize::new(0),
            next_chunk: AtomicUsize::new(0),
            done_chunks: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            caller: Mutex::new(None),
            caller_parked: AtomicBool::new(false),
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

    /// Calls `job(c)` once for every chunk `c in 0..chunks`, spread over the pool's threads
    /// (the caller included), and returns when all are done. A panic in any chunk is re-raised
    /// here after the others finish.
    pub fn run(&self, chunks: usize, job: &(dyn Fn(usize) + Sync)) {
        if self.shared.threads == 1 || chunks <= 1 {
            (0..chunks).for_each(job);
            return;
        }
        let s = &*self.shared;
        let _serial = self.running.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: the `'static` lifetime is a lie that `run` makes true: it clears `job_live`
        // and waits for `active == 0` before returning, after which no worker reads `job`.
        let job_static: &'static Job = unsafe { std::mem::transmute(job) };
        unsafe { *s.job.get() = Some(job_static) };
        s.chunks.store(chunks, Ordering::Release);
        s.next_chunk.store(0, Ordering::Release);
        s.done_chunks.store(0, Ordering::Release);
        s.job_live.store(true, Ordering::SeqCst);
        s.epoch.fetch_add(1, Ordering::SeqCst);
        for (index, handle) in self.handles.iter().enumerate() {
            if s.parked[index + 1].load(Ordering::SeqCst) {
                handle.unpark();
            }
        }
        {
            let mut caller = s.caller.lock().unwrap_or_else(|e| e.into_inner());
            if caller
                .as_ref()
                .is_none_or(|t| t.id() != thread::current().id())
            {
                *caller = Some(thread::current());
            }
        }
        s.work(job_static);
        self.wait_for(|| s.done_chunks.load(Ordering::Acquire) >= chunks);
        s.job_live.store(false, Ordering::SeqCst);
        self.wait_for(|| s.active.load(Ordering::SeqCst) == 0);
        unsafe { *s.job.get() = None };
        if s.panicked.swap(false, Ordering::AcqRel) {
            panic!("a metrum CPU kernel chunk panicked");
        }
    }
}

impl ThreadPool {
    /// Waits for workers still inside the job: spins briefly, then sleeps until the last one
    /// wakes us. Sleeping matters on a busy machine: a worker preempted mid-chunk by another
    /// process is runnable but has no core; the core this caller frees is where the kernel
    /// moves it, instead of the caller spinning a whole time slice for it (measured: decode at
    /// 35 tok/s with 2 threads vs 91 with 1, spinning, under one competing build).
    fn wait_for(&self, ready: impl Fn() -> bool) {
        let s = &*self.shared;
        let started = Instant::now();
        while !ready() {
            if started.elapsed() < CALLER_SPIN {
                std::hint::spin_loop();
                continue;
            }
            s.caller_parked.store(true, Ordering::SeqCst);
            if !ready() {
                thread::park_timeout(Duration::from_micros(500));
            }
            s.caller_parked.store(false, Ordering::SeqCst);
        }
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        self.shared.epoch.fetch_add(1, Ordering::SeqCst);
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
        seen = wait_for_epoch(shared, index, seen);
        if shared.shutdown.load(Ordering::SeqCst) {
            return;
        }
        shared.active.fetch_add(1, Ordering::SeqCst);
        if shared.job_live.load(Ordering::SeqCst) {
            // SAFETY: `job_live` was true after we raised `active`, so `run` has not yet
            // passed its wait for `active == 0`: the job is alive until we lower `active`.
            if let Some(job) = unsafe { *shared.job.get() } {
                shared.work(job);
            }
        }
        if shared.active.fetch_sub(1, Ordering::SeqCst) == 1 {
            shared.wake_caller();
        }
    }
}

/// Spins, then parks, until the epoch moves past `seen`; returns the new epoch.
fn wait_for_epoch(shared: &Shared, index: usize, seen: u64) -> u64 {
    let started = Instant::now();
    let mut spins = 0u32;
    loop {
        let epoch = shared.epoch.load(Ordering::SeqCst);
        if epoch != seen {
            return epoch;
        }
        spins = spins.wrapping_add(1);
        if !spins.is_multiple_of(256) || started.elapsed() < SPIN_BEFORE_PARK {
            std::hint::spin_loop();
            continue;
        }
        shared.parked[index].store(true, Ordering::SeqCst);
        // Re-check after announcing: a `run` that bumped the epoch before seeing our flag
        // would not unpark us.
        if shared.epoch.load(Ordering::SeqCst) == seen {
            thread::park_timeout(Duration::from_millis(50));
        }
        shared.parked[index].store(false, Ordering::SeqCst);
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
    fn every_chunk_runs_exactly_once() {
        let pool = ThreadPool::new(3);
        for chunks in [0, 1, 2, 7, 100] {
            for _ in 0..200 {
                let hits: Vec<AtomicUsize> = (0..chunks).map(|_| AtomicUsize::new(0)).collect();
                pool.run(chunks, &|c| {
                    hits[c].fetch_add(1, Ordering::Relaxed);
                });
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
            }
        }
    }

    #[test]
    fn jobs_after_parking_still_run() {
        let pool = ThreadPool::new(2);
        let total = AtomicUsize::new(0);
        for _ in 0..3 {
            thread::sleep(Duration::from_millis(5));
            pool.run(4, &|c| {
                total.fetch_add(c + 1, Ordering::Relaxed);
            });
        }
        assert_eq!(total.load(Ordering::Relaxed), 30);
    }

    #[test]
    fn a_panicking_chunk_reaches_the_caller_and_the_pool_survives() {
        let pool = ThreadPool::new(2);
        let caught = catch_unwind(AssertUnwindSafe(|| {
            pool.run(8, &|c| {
                if c == 5 {
                    panic!("boom");
                }
            })
        }));
        assert!(caught.is_err());
        let ran = AtomicUsize::new(0);
        pool.run(8, &|_| {
            ran.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(ran.load(Ordering::Relaxed), 8);
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
                        assert!(r.start.is_multiple_of(align) || r.start == len);
                        next = r.end;
                    }
                    assert_eq!(next, len);
                }
            }
        }
    }
}
