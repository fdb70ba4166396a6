//! The waiting queue: requests not holding KV (new, or preempted), in policy order.

use crate::policy::PolicyKey;
use metrum_core::RequestId;
use std::collections::BTreeSet;

/// Ordered by [`PolicyKey`]. Keys of waiting requests do not change while they wait (see
/// [`crate::policy::policy_key`]), so an ordered set is enough; removal from the middle (abort)
/// needs the key, which the request keeps.
#[derive(Debug, Default)]
pub(crate) struct WaitingQueue {
    set: BTreeSet<(PolicyKey, RequestId)>,
}

impl WaitingQueue {
    pub fn push(&mut self, key: PolicyKey, id: RequestId) {
        self.set.insert((key, id));
    }

    /// The request to admit next.
    pub fn first(&self) -> Option<RequestId> {
        self.set.first().map(|&(_, id)| id)
    }

    pub fn remove(&mut self, key: PolicyKey, id: RequestId) -> bool {
        self.set.remove(&(key, id))
    }

    pub fn len(&self) -> usize {
        self.set.len()
    }

    /// In order, with keys (admission control sums the work ranked ahead of a newcomer).
    pub fn iter_keyed(&self) -> impl Iterator<Item = (PolicyKey, RequestId)> + '_ {
        self.set.iter().copied()
    }

    pub fn iter(&self) -> impl Iterator<Item = RequestId> + '_ {
        self.set.iter().map(|&(_, id)| id)
    }
}
