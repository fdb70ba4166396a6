//! Content addressing of full KV blocks for prefix caching.
//!
//! A full block is cached under a [`BlockKey`]: the identity of the prefix it extends (its
//! parent) plus its own token ids. The map hashes that key, as vLLM hashes
//! `(parent_hash, token_ids)`, but compares keys exactly, so two different prefixes can never
//! share KV through a hash collision. The parent is a [`PrefixId`], a number handed out when a
//! prefix is first cached and never reused: once a block's entry is evicted, nothing can chain
//! onto its id again, so a stale child entry can only go unused until it is evicted itself.

use metrum_core::BlockId;
use std::collections::HashMap;

/// Identity of a cached prefix that ends at a full-block boundary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PrefixId(u64);

/// What a full block is cached under: the prefix before it and its own tokens.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BlockKey {
    /// `None` for the first block of a sequence.
    parent: Option<PrefixId>,
    tokens: Box<[u32]>,
}

impl BlockKey {
    pub fn new(parent: Option<PrefixId>, tokens: &[u32]) -> Self {
        BlockKey {
            parent,
            tokens: tokens.into(),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct CachedBlock {
    prefix: PrefixId,
    block: BlockId,
}

/// The key → block map behind [`crate::block_pool::BlockPool`]. One block per key: a second
/// block with the same content (two requests prefilled the same prompt in the same steps) stays
/// uncached and reuses the first block's [`PrefixId`] for its children.
#[derive(Debug, Default)]
pub(crate) struct PrefixCache {
    entries: HashMap<BlockKey, CachedBlock>,
    next_id: u64,
}

impl PrefixCache {
    pub(crate) fn lookup(&self, key: &BlockKey) -> Option<(PrefixId, BlockId)> {
        self.entries.get(key).map(|c| (c.prefix, c.block))
    }

    /// Registers `block` under `key`, which must not be cached yet. Returns its new prefix id.
    pub(crate) fn insert(&mut self, key: BlockKey, block: BlockId) -> PrefixId {
        let prefix = PrefixId(self.next_id);
        self.next_id += 1;
        let previous = self.entries.insert(key, CachedBlock { prefix, block });
        debug_assert!(previous.is_none(), "a key is cached at most once");
        prefix
    }

    /// Drops the entry of `key` if it belongs to `block`.
    pub(crate) fn remove(&mut self, key: &BlockKey, block: BlockId) {
        if self.entries.get(key).is_some_and(|c| c.block == block) {
            self.entries.remove(key);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The block cached under `key`, for audits.
    pub(crate) fn block_of(&self, key: &BlockKey) -> Option<BlockId> {
        self.entries.get(key).map(|c| c.block)
    }
}
