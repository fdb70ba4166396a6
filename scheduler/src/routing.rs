//! Which replica serves a request: the routing policies shared by the multi-replica simulation
//! (`metrum_sim::cluster`) and the live router (`metrum route`), so that what the simulation measured
//! is what serves. Pure: loads come in as a function, nothing here knows about HTTP or time.
//!
//! Requests belong to eligibility classes (model, adapter, context range, hardware; Venn,
//! spec/metrics.md (e)); a class may run only on its replicas, and classes intersect.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReplicaId(pub usize);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClassId(pub usize);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoutingPolicy {
    RoundRobin,
    LeastLoaded,
    /// The replica a hash of the prompt's first block picks, unless it is overloaded
    /// (SMG cache_aware's balance rule), then least-loaded.
    PrefixAffinity,
    /// Contention-aware (Venn's IRS): a replica that scarcer classes depend on costs its load
    /// times (1 + how many of them), so a flexible request takes it only when the replicas
    /// that only it can use are much busier.
    Irs,
}

impl RoutingPolicy {
    pub const ALL: [RoutingPolicy; 4] = [
        RoutingPolicy::RoundRobin,
        RoutingPolicy::LeastLoaded,
        RoutingPolicy::PrefixAffinity,
        RoutingPolicy::Irs,
    ];

    pub fn name(self) -> &'static str {
        match self {
            RoutingPolicy::RoundRobin => "round-robin",
            RoutingPolicy::LeastLoaded => "least-loaded",
            RoutingPolicy::PrefixAffinity => "prefix-affinity",
            RoutingPolicy::Irs => "irs",
        }
    }

    pub fn parse(s: &str) -> Option<RoutingPolicy> {
        Self::ALL.into_iter().find(|p| p.name() == s)
    }
}

impl fmt::Display for RoutingPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// FNV-1a over the first `PREFIX_ITEMS` items of a prompt (tokens, or bytes where the router
/// has no tokenizer): same prefix, same hash, same replica under prefix affinity.
pub fn prefix_hash(items: impl IntoIterator<Item = u64>) -> u64 {
    items
        .into_iter()
        .take(PREFIX_ITEMS)
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, t| {
            (h ^ t).wrapping_mul(0x0000_0100_0000_01b3)
        })
}

/// One KV block of tokens (16), the unit the prefix cache shares.
pub const PREFIX_ITEMS: usize = 16;

/// A routing policy over a fixed cluster: `classes[c]` are the replicas class `c` may use.
#[derive(Clone, Debug)]
pub struct Router {
    policy: RoutingPolicy,
    classes: Vec<Vec<ReplicaId>>,
    next_round_robin: Vec<usize>,
}

impl Router {
    /// # Panics
    /// If a class has no replica (callers validate their configuration first).
    pub fn new(policy: RoutingPolicy, classes: Vec<Vec<ReplicaId>>) -> Router {
        assert!(
            classes.iter().all(|c| !c.is_empty()),
            "every class needs a replica"
        );
        let next_round_robin = vec![0; classes.len()];
        Router {
            policy,
            classes,
            next_round_robin,
        }
    }

    pub fn policy(&self) -> RoutingPolicy {
        self.policy
    }

    /// How many replicas can serve `class` (fewer = scarcer).
    pub fn scarcity(&self, class: ClassId) -> usize {
        self.classes[class.0].len()
    }

    /// The replica for a request of `class` whose prompt hashes to `prefix`, given each
    /// replica's load (running + waiting requests, what `vllm:num_requests_*` report).
    pub fn route(
        &mut self,
        class: ClassId,
        prefix: u64,
        load: impl Fn(ReplicaId) -> f64,
    ) -> ReplicaId {
        let eligible = &self.classes[class.0];
        let cheapest = |cost: &dyn Fn(ReplicaId) -> f64| {
            *eligible
                .iter()
                .min_by(|a, b| cost(**a).total_cmp(&cost(**b)).then(a.cmp(b)))
                .expect("every class has a replica")
        };
        match self.policy {
            RoutingPolicy::RoundRobin => {
                let next = &mut self.next_round_robin[class.0];
                let r = eligible[*next % eligible.len()];
                *next += 1;
                r
            }
            RoutingPolicy::LeastLoaded => cheapest(&load),
            RoutingPolicy::PrefixAffinity => {
                let sticky = eligible[(prefix % eligible.len() as u64) as usize];
                let least = cheapest(&load);
                if load(sticky) > 1.5 * load(least) + 8.0 {
                    least
                } else {
                    sticky
                }
            }
            RoutingPolicy::Irs => {
                let mine = eligible.len();
                let dependents = |r: ReplicaId| {
                    self.classes
                        .iter()
                        .filter(|k| k.len() < mine && k.contains(&r))
                        .count() as f64
                };
                cheapest(&|r| (load(r) + 1.0) * (1.0 + dependents(r)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(policy: RoutingPolicy) -> Router {
        // scarce: {0}; general: {0, 1}.
        Router::new(
            policy,
            vec![vec![ReplicaId(0)], vec![ReplicaId(0), ReplicaId(1)]],
        )
    }

    #[test]
    fn irs_leaves_the_scarce_replica_to_the_class_that_has_nothing_else() {
        let idle = |_| 0.0;
        assert_eq!(
            router(RoutingPolicy::LeastLoaded).route(ClassId(1), 0, idle),
            ReplicaId(0)
        );
        let mut irs = router(RoutingPolicy::Irs);
        assert_eq!(irs.route(ClassId(1), 0, idle), ReplicaId(1));
        assert_eq!(irs.route(ClassId(0), 0, idle), ReplicaId(0));
        // The flexible class takes the idle scarce replica (cost 1 x 2) once the other's
        // load + 1 reaches 2 (a tie goes to the lower id).
        let loads = |busy: f64| move |r: ReplicaId| if r.0 == 1 { busy } else { 0.0 };
        assert_eq!(irs.route(ClassId(1), 0, loads(0.5)), ReplicaId(1));
        assert_eq!(irs.route(ClassId(1), 0, loads(1.0)), ReplicaId(0));
    }

    #[test]
    fn round_robin_and_prefix_affinity_stay_inside_the_class() {
        let mut rr = router(RoutingPolicy::RoundRobin);
        let picks: Vec<_> = (0..4).map(|_| rr.route(ClassId(1), 0, |_| 0.0).0).collect();
        assert_eq!(picks, [0, 1, 0, 1]);
        let mut pa = router(RoutingPolicy::PrefixAffinity);
        let h = prefix_hash([1, 2, 3]);
        let first = pa.route(ClassId(1), h, |_| 0.0);
        assert_eq!(pa.route(ClassId(1), h, |_| 0.0), first);
        assert_eq!(pa.route(ClassId(0), h, |_| 0.0), ReplicaId(0));
        // Overloaded sticky replica: least-loaded instead.
        let other = ReplicaId(1 - first.0);
        let busy = |r: ReplicaId| if r == first { 20.0 } else { 0.0 };
        assert_eq!(pa.route(ClassId(1), h, busy), other);
        for p in RoutingPolicy::ALL {
            assert_eq!(RoutingPolicy::parse(p.name()), Some(p));
        }
        assert_eq!(RoutingPolicy::parse("nope"), None);
    }
}
