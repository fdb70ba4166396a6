//! The block pool: every physical KV block, its reference count, the free queue and the prefix
//! cache map. It knows nothing about requests (that is [`crate::kv_cache_manager`]).
//!
//! The free queue is an index-linked list over the block array (vLLM's
//! `FreeKVCacheBlockQueue`): O(1) pop from the front, push at either end, and unlink from the
//! middle when a cache hit revives a free block. Its order is the eviction order:
//! - the front holds uncached blocks (nothing lost by reusing them) and then the least recently
//!   freed cached blocks;
//! - a cached block freed now goes to the back (most recently used);
//! - a request's blocks are freed last-block-first, so its tail blocks are evicted before the
//!   prefix blocks that other requests are more likely to share.

use crate::prefix_cache::{BlockKey, PrefixCache, PrefixId};
use metrum_core::BlockId;

const NO_LINK: u32 = u32::MAX;

#[derive(Debug)]
struct BlockMeta {
    ref_count: u32,
    /// The key this block is cached under, if it holds a registered full block.
    cached_as: Option<BlockKey>,
    /// Free-queue links (`NO_LINK` at the ends, and while the block is in use).
    prev: u32,
    next: u32,
}

/// Owner of all KV blocks. Allocation pops free blocks from the front of the free queue and
/// evicts their cached content.
#[derive(Debug)]
pub struct BlockPool {
    blocks: Vec<BlockMeta>,
    head: u32,
    tail: u32,
    num_free: usize,
    cache: PrefixCache,
}

impl BlockPool {
    /// A pool of `num_blocks` free, uncached blocks. `num_blocks` must fit in a `u32`
    /// ([`crate::SchedulerConfig::validate`] checks); larger values are truncated to it.
    pub fn new(num_blocks: usize) -> Self {
        let n = num_blocks.min(NO_LINK as usize - 1) as u32;
        let blocks = (0..n)
            .map(|i| BlockMeta {
                ref_count: 0,
                cached_as: None,
                prev: if i == 0 { NO_LINK } else { i - 1 },
                next: if i + 1 == n { NO_LINK } else { i + 1 },
            })
            .collect();
        BlockPool {
            blocks,
            head: if n == 0 { NO_LINK } else { 0 },
            tail: if n == 0 { NO_LINK } else { n - 1 },
            num_free: n as usize,
            cache: PrefixCache::default(),
        }
    }

    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Blocks with no reference, cached (evictable) ones included.
    pub fn num_free_blocks(&self) -> usize {
        self.num_free
    }

    /// Blocks registered in the prefix cache, in use or not.
    pub fn num_cached_blocks(&self) -> usize {
        self.cache.len()
    }

    /// Fraction of blocks referenced by some request.
    pub fn usage(&self) -> f64 {
        if self.blocks.is_empty() {
            return 0.0;
        }
        1.0 - self.num_free as f64 / self.blocks.len() as f64
    }

    /// References to `block`, or `None` for an id outside the pool.
    pub fn ref_count(&self, block: BlockId) -> Option<u32> {
        self.blocks.get(block.index()).map(|b| b.ref_count)
    }

    /// Takes `n` free blocks (reference count 1 each), evicting cached content; `None` and no
    /// change if fewer than `n` are free.
    pub fn allocate(&mut self, n: usize) -> Option<Vec<BlockId>> {
        if n > self.num_free {
            return None;
        }
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let id = self.head;
            self.unlink(id);
            let meta = &mut self.blocks[id as usize];
            meta.ref_count = 1;
            if let Some(key) = meta.cached_as.take() {
                self.cache.remove(&key, BlockId(id));
            }
            out.push(BlockId(id));
        }
        Some(out)
    }

    /// Adds a reference to each block (a prefix-cache hit), reviving free ones.
    pub fn touch(&mut self, blocks: &[BlockId]) {
        for &b in blocks {
            if self.blocks[b.index()].ref_count == 0 {
                self.unlink(b.0);
            }
            self.blocks[b.index()].ref_count += 1;
        }
    }

    /// Drops one reference from each block, last block first. Blocks reaching zero go to the
    /// free queue: cached ones at the back (most recently used), others at the front.
    pub fn free(&mut self, blocks: &[BlockId]) {
        for &b in blocks.iter().rev() {
            let meta = &mut self.blocks[b.index()];
            debug_assert!(meta.ref_count > 0, "{b} freed more often than referenced");
            if meta.ref_count == 0 {
                continue;
            }
            meta.ref_count -= 1;
            if meta.ref_count == 0 {
                if meta.cached_as.is_some() {
                    self.push_back(b.0);
                } else {
                    self.push_front(b.0);
                }
            }
        }
    }

    /// The block cached under `key`, if any.
    pub fn lookup(&self, key: &BlockKey) -> Option<(PrefixId, BlockId)> {
        self.cache.lookup(key)
    }

    /// Registers the full, computed `block` under `key` and returns the prefix id its children
    /// chain from. If another block already holds this content, that block's id is returned
    /// and `block` stays uncached.
    pub fn cache_block(&mut self, block: BlockId, key: BlockKey) -> PrefixId {
        if let Some((prefix, _)) = self.cache.lookup(&key) {
            return prefix;
        }
        debug_assert!(self.blocks[block.index()].cached_as.is_none());
        let prefix = self.cache.insert(key.clone(), block);
        self.blocks[block.index()].cached_as = Some(key);
        prefix
    }

    fn unlink(&mut self, id: u32) {
        let (prev, next) = {
            let m = &self.blocks[id as usize];
            (m.prev, m.next)
        };
        match prev {
            NO_LINK => self.head = next,
            p => self.blocks[p as usize].next = next,
        }
        match next {
            NO_LINK => self.tail = prev,
            n => self.blocks[n as usize].prev = prev,
        }
        let m = &mut self.blocks[id as usize];
        m.prev = NO_LINK;
        m.next = NO_LINK;
        self.num_free -= 1;
    }

    fn push_back(&mut self, id: u32) {
        self.blocks[id as usize].prev = self.tail;
        self.blocks[id as usize].next = NO_LINK;
        match self.tail {
            NO_LINK => self.head = id,
            t => self.blocks[t as usize].next = id,
        }
        self.tail = id;
        self.num_free += 1;
    }

    fn push_front(&mut self, id: u32) {
        self.blocks[id as usize].next = self.head;
        self.blocks[id as usize].prev = NO_LINK;
        match self.head {
            NO_LINK => self.tail = id,
            h => self.blocks[h as usize].prev = id,
        }
        self.head = id;
        self.num_free += 1;
    }

    /// The free queue front to back (eviction order).
    pub fn free_queue(&self) -> Vec<BlockId> {
        let mut out = Vec::with_capacity(self.num_free);
        let mut cur = self.head;
        while cur != NO_LINK && out.len() <= self.blocks.len() {
            out.push(BlockId(cur));
            cur = self.blocks[cur as usize].next;
        }
        out
    }

    /// Checks the pool's own invariants: the free queue is well linked and holds exactly the
    /// unreferenced blocks, and cached blocks and cache entries match one to one.
    pub fn audit(&self) -> Result<(), String> {
        let queue = self.free_queue();
        if queue.len() != self.num_free {
            return Err(format!(
                "free queue has {} blocks, counter says {}",
                queue.len(),
                self.num_free
            ));
        }
        let mut prev = NO_LINK;
        for &b in &queue {
            let m = &self.blocks[b.index()];
            if m.ref_count != 0 {
                return Err(format!(
                    "{b} is in the free queue with {} refs",
                    m.ref_count
                ));
            }
            if m.prev != prev {
                return Err(format!("{b} has a broken back link"));
            }
            prev = b.0;
        }
        if self.tail != prev {
            return Err("free queue tail is not its last block".into());
        }
        let unreferenced = self.blocks.iter().filter(|m| m.ref_count == 0).count();
        if unreferenced != self.num_free {
            return Err(format!(
                "{unreferenced} unreferenced blocks but {} in the free queue",
                self.num_free
            ));
        }
        let mut cached = 0;
        for (i, m) in self.blocks.iter().enumerate() {
            if let Some(key) = &m.cached_as {
                cached += 1;
                if self.cache.block_of(key) != Some(BlockId(i as u32)) {
                    return Err(format!(
                        "blk-{i} is marked cached but its entry points elsewhere"
                    ));
                }
            }
        }
        if cached != self.cache.len() {
            return Err(format!(
                "{cached} blocks marked cached, {} cache entries",
                self.cache.len()
            ));
        }
        Ok(())
    }
}
