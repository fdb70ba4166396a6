//! The KV cache manager: one block table per request on top of the [`BlockPool`]. This is the
//! only KV API the scheduler uses (vLLM's `KVCacheManager`).
//!
//! A request's table covers every token whose KV the engine has written or will write this
//! step. Prefix caching adds two things: [`KvCacheManager::get_computed_blocks`] finds the
//! longest cached prefix of a new request, and [`KvCacheManager::cache_full_blocks`] registers
//! blocks once every token in them has been computed (after the step ran, so no request can
//! share a block whose KV is still being written).

use crate::block_pool::BlockPool;
use crate::prefix_cache::{BlockKey, PrefixId};
use metrum_core::{BlockId, RequestId};
use std::collections::HashMap;

/// Whether an allocation can be served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllocStatus {
    /// The blocks were allocated.
    Ok,
    /// Not enough free blocks now; retry after some are freed (or preempt).
    Later,
    /// More blocks than the whole pool: it can never be served.
    Impossible,
}

/// The longest cached prefix of a request's tokens, from
/// [`KvCacheManager::get_computed_blocks`]. Valid until the pool changes: pass it to
/// [`KvCacheManager::allocate_slots`] right away.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ComputedBlocks {
    blocks: Vec<BlockId>,
    prefixes: Vec<PrefixId>,
    num_computed_tokens: usize,
    num_queried_tokens: usize,
}

impl ComputedBlocks {
    /// No cache hit (prefix caching off, or a request resuming with its own blocks).
    pub fn none() -> Self {
        ComputedBlocks::default()
    }

    /// Tokens whose KV is already cached: the start position of the first chunk.
    pub fn num_computed_tokens(&self) -> usize {
        self.num_computed_tokens
    }

    pub fn blocks(&self) -> &[BlockId] {
        &self.blocks
    }
}

#[derive(Debug, Default)]
struct RequestBlocks {
    blocks: Vec<BlockId>,
    /// Prefix ids of the leading blocks known to be computed and registered (or duplicates of
    /// registered ones). Always a prefix of `blocks`.
    prefixes: Vec<PrefixId>,
}

#[derive(Debug)]
pub struct KvCacheManager {
    pool: BlockPool,
    block_size: usize,
    enable_prefix_caching: bool,
    tables: HashMap<RequestId, RequestBlocks>,
    prefix_queries: u64,
    prefix_hits: u64,
}

impl KvCacheManager {
    /// `block_size` must be at least 1 (config validation checks).
    pub fn new(num_blocks: usize, block_size: usize, enable_prefix_caching: bool) -> Self {
        KvCacheManager {
            pool: BlockPool::new(num_blocks),
            block_size: block_size.max(1),
            enable_prefix_caching,
            tables: HashMap::new(),
            prefix_queries: 0,
            prefix_hits: 0,
        }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn num_blocks(&self) -> usize {
        self.pool.num_blocks()
    }

    pub fn num_free_blocks(&self) -> usize {
        self.pool.num_free_blocks()
    }

    pub fn num_cached_blocks(&self) -> usize {
        self.pool.num_cached_blocks()
    }

    /// Fraction of blocks in use by some request (cached free blocks count as free).
    pub fn usage(&self) -> f64 {
        self.pool.usage()
    }

    pub fn ref_count(&self, block: BlockId) -> Option<u32> {
        self.pool.ref_count(block)
    }

    pub fn pool(&self) -> &BlockPool {
        &self.pool
    }

    /// Prompt tokens looked up in the prefix cache (on admission of requests with no KV).
    pub fn prefix_cache_queries(&self) -> u64 {
        self.prefix_queries
    }

    /// Of those, tokens found cached.
    pub fn prefix_cache_hits(&self) -> u64 {
        self.prefix_hits
    }

    /// Requests holding a block table.
    pub fn num_tables(&self) -> usize {
        self.tables.len()
    }

    /// Blocks that hold `num_tokens` tokens.
    pub fn blocks_for(&self, num_tokens: usize) -> usize {
        num_tokens.div_ceil(self.block_size)
    }

    /// Whether a sequence of `num_tokens` tokens fits in the pool when it has it all to itself.
    pub fn can_ever_fit(&self, num_tokens: usize) -> bool {
        self.blocks_for(num_tokens) <= self.num_blocks()
    }

    /// The longest cached prefix of `tokens`, in whole blocks. At least the last token is
    /// never a hit: the engine must compute it to get the logits of the next token.
    pub fn get_computed_blocks(&self, tokens: &[u32]) -> ComputedBlocks {
        if !self.enable_prefix_caching {
            return ComputedBlocks::none();
        }
        let max_blocks = tokens.len().saturating_sub(1) / self.block_size;
        let mut hit = ComputedBlocks {
            num_queried_tokens: tokens.len(),
            ..ComputedBlocks::default()
        };
        for chunk in tokens.chunks_exact(self.block_size).take(max_blocks) {
            let key = BlockKey::new(hit.prefixes.last().copied(), chunk);
            let Some((prefix, block)) = self.pool.lookup(&key) else {
                break;
            };
            hit.prefixes.push(prefix);
            hit.blocks.push(block);
        }
        hit.num_computed_tokens = hit.blocks.len() * self.block_size;
        hit
    }

    /// Makes `id`'s block table cover `num_tokens` tokens, sharing `computed` (a cache hit for
    /// a request that holds no blocks yet; pass [`ComputedBlocks::none`] otherwise).
    pub fn allocate_slots(
        &mut self,
        id: RequestId,
        computed: &ComputedBlocks,
        num_tokens: usize,
    ) -> AllocStatus {
        let needed = self.blocks_for(num_tokens);
        if needed > self.num_blocks() {
            return AllocStatus::Impossible;
        }
        let held = self.tables.get(&id).map_or(0, |t| t.blocks.len());
        debug_assert!(
            held == 0 || computed.blocks.is_empty(),
            "cache hits are only for requests without blocks"
        );
        let shared: &[BlockId] = if held == 0 { &computed.blocks } else { &[] };
        let new_blocks = needed.saturating_sub(held.max(shared.len()));
        // Free cached blocks revived by the hit leave the free queue too.
        let revived = shared
            .iter()
            .filter(|&&b| self.pool.ref_count(b) == Some(0))
            .count();
        if new_blocks + revived > self.pool.num_free_blocks() {
            return AllocStatus::Later;
        }
        self.pool.touch(shared);
        let Some(fresh) = self.pool.allocate(new_blocks) else {
            // Unreachable after the check above; undo the touch rather than leak.
            self.pool.free(shared);
            return AllocStatus::Later;
        };
        if held == 0 && self.enable_prefix_caching && computed.num_queried_tokens > 0 {
            self.prefix_queries += computed.num_queried_tokens as u64;
            self.prefix_hits += computed.num_computed_tokens as u64;
        }
        let table = self.tables.entry(id).or_default();
        if held == 0 {
            table.blocks.extend_from_slice(shared);
            table
                .prefixes
                .extend_from_slice(&computed.prefixes[..shared.len()]);
        }
        table.blocks.extend(fresh);
        AllocStatus::Ok
    }

    /// `id`'s block table: block `i` holds positions `i·block_size ..`.
    pub fn block_table(&self, id: RequestId) -> Option<&[BlockId]> {
        self.tables.get(&id).map(|t| t.blocks.as_slice())
    }

    /// Registers `id`'s full blocks among its first `num_computed_tokens` tokens in the prefix
    /// cache. `tokens` are the request's known tokens (prompt, then outputs).
    pub fn cache_full_blocks(&mut self, id: RequestId, tokens: &[u32], num_computed_tokens: usize) {
        if !self.enable_prefix_caching {
            return;
        }
        let Some(table) = self.tables.get_mut(&id) else {
            return;
        };
        let full =
            (num_computed_tokens.min(tokens.len()) / self.block_size).min(table.blocks.len());
        for i in table.prefixes.len()..full {
            let chunk = &tokens[i * self.block_size..(i + 1) * self.block_size];
            let key = BlockKey::new(table.prefixes.last().copied(), chunk);
            let prefix = self.pool.cache_block(table.blocks[i], key);
            table.prefixes.push(prefix);
        }
    }

    /// Shrinks `id`'s block table to what `num_tokens` tokens need, freeing the blocks past it:
    /// speculative decoding allocated them for draft tokens that were rejected. Their KV was
    /// never valid, so none of them may stay registered in the prefix cache (none is: only
    /// blocks within the computed tokens are ever cached, and the count is rolled back first).
    pub fn truncate(&mut self, id: RequestId, num_tokens: usize) {
        let keep = self.blocks_for(num_tokens);
        let Some(table) = self.tables.get_mut(&id) else {
            return;
        };
        if table.blocks.len() <= keep {
            return;
        }
        debug_assert!(
            table.prefixes.len() <= keep,
            "a rejected draft block was cached"
        );
        table.prefixes.truncate(keep);
        let dropped = table.blocks.split_off(keep);
        self.pool.free(&dropped);
    }

    /// Releases `id`'s blocks (cached ones stay cached until evicted). No-op if it holds none.
    pub fn free(&mut self, id: RequestId) {
        if let Some(table) = self.tables.remove(&id) {
            self.pool.free(&table.blocks);
        }
    }

    /// Pool invariants, plus: every block's reference count equals the number of tables that
    /// hold it.
    pub fn audit(&self) -> Result<(), String> {
        self.pool.audit()?;
        let mut refs = vec![0u32; self.num_blocks()];
        for (id, table) in &self.tables {
            if table.prefixes.len() > table.blocks.len() {
                return Err(format!("{id} has more prefix ids than blocks"));
            }
            for b in &table.blocks {
                match refs.get_mut(b.index()) {
                    Some(r) => *r += 1,
                    None => return Err(format!("{id} holds {b}, outside the pool")),
                }
            }
        }
        for (i, &expected) in refs.iter().enumerate() {
            let actual = self.pool.ref_count(BlockId(i as u32)).unwrap_or(0);
            if actual != expected {
                return Err(format!(
                    "blk-{i} has {actual} refs but {expected} tables hold it"
                ));
            }
        }
        Ok(())
    }
}
