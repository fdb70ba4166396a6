//! Shared fixtures for the simulator tests: times in milliseconds and a fully checked run.
#![allow(dead_code)] // each test binary uses a different subset

use metrum_core::Nanos;
use metrum_scheduler::{Scheduler, SchedulerConfig};
use metrum_sim::{FakeExecutor, SimReport, Simulation, StepCostModel};
use metrum_workload::Workload;

pub fn ms(v: u64) -> Nanos {
    Nanos::from_millis(v)
}

/// The scheduler's leak check ([`Scheduler::check_drained`]) as an assertion.
pub fn assert_scheduler_empty(s: &Scheduler) {
    if let Err(e) = s.check_drained() {
        panic!("scheduler not drained: {e}");
    }
}

/// Runs a workload with every per-step check on, then leak-checks the scheduler.
pub fn run_checked(workload: &Workload, config: SchedulerConfig, cost: StepCostModel) -> SimReport {
    let mut sim = Simulation::new(workload, config, FakeExecutor::new(cost))
        .expect("valid config")
        .with_checks();
    while sim.step().expect("simulation step") {}
    assert_scheduler_empty(sim.scheduler());
    sim.report().expect("every request finished once")
}
