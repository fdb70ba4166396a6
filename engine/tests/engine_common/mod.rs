//! What the engine-thread tests (engine_loop.rs, speculative.rs) share: starting an engine and
//! waiting until its model is loaded, and waiting until it is idle with every block back.

use metrum_engine::{EngineConfig, EngineHandle, EngineStatus};
use std::time::{Duration, Instant};

/// Spawns the engine for `config` and waits (up to 60 s) until it is ready.
pub fn spawn_ready(config: EngineConfig) -> EngineHandle {
    let handle = metrum_engine::spawn(config).expect("engine starts");
    let deadline = Instant::now() + Duration::from_secs(60);
    while handle.status() == EngineStatus::Loading {
        assert!(Instant::now() < deadline, "model did not load");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(handle.status(), EngineStatus::Ready);
    handle
}

/// Waits until nothing runs or waits and every KV block is free, failing after `within`.
pub fn wait_idle(handle: &EngineHandle, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let s = handle.stats();
        if s.running == 0 && s.waiting == 0 && s.free_blocks == s.total_blocks {
            return;
        }
        assert!(Instant::now() < deadline, "engine did not go idle: {s:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}
