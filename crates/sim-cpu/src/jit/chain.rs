//! Chaining compiled blocks: a compiled block that ends at a known RIP goes on into the
//! compiled code of the block found there, without returning to the run loop, as QEMU's
//! TCG chains translation blocks (`goto_tb`) and its `lookup_and_goto_ptr` follows a
//! computed target.
//!
//! Each block holds two [`Chain`]s, the run loop's links (`cache::Block::links`) in the
//! form compiled code reads: a successor's RIP, its chain entry (past the prologue,
//! where its cached registers are loaded), the block, its instruction count,
//! and the stamp and the block's serial they were made under. Compiled code at a
//! block's end compares the RIP it leaves at with both and follows one whose stamp is
//! the frame's and whose block still has that serial (it was not evicted by another
//! since: `cache::Link`), while the frame's budget covers the successor's instructions:
//! the run loop's check between linked blocks (`run::Processor::run`), but for its
//! look at pending events, which compiled code leaves to the end of its budget (see
//! `super`). The run loop fills them as it goes from one compiled block to another
//! ([`link`]).
//!
//! A block whose code leaves only at RIPs known when it was compiled (a Jcc's two, a
//! JMP's or CALL's one: `emit::Exits`) has each of them in a chain of its own for its
//! life ([`fix`]): its code names the chain, not the RIP, as TCG's `goto_tb` names its
//! jump slot, and compares no RIP; [`link`] then fills only those chains.
//!
//! A RET (or a CALL or JMP through a register or memory) leaves at a RIP computed as
//! it runs: after its block's two chains, its code looks the RIP up in the processor's
//! jump cache ([`JumpCache`], QEMU's `tb_jmp_cache` behind `lookup_and_goto_ptr`),
//! a chain per hashed RIP, which the run loop fills with each compiled block it enters
//! ([`remember`]): a function called from many places returns into its callers' code
//! without the run loop.
//!
//! A stamp ([`stamp`]) stands for the link key (the cache's generation and the mode:
//! no block dropped since, so the successor is alive and is what a lookup finds) and
//! the code area's generation (its code is still there); a new one is taken whenever
//! either changes, and a stamp once left is never current again. The cache's epoch is
//! not in it: it moves at every run of the processor (JavaScript may have written the
//! code between runs), and in one Linux boot its 47 K moves made chains stale far more
//! often than the key's 20 K. A successor's bytes must have been compared in the
//! current epoch, as the run loop's links require (`cache::revalidate`): compiled code
//! tests the block's `checked` against the frame's epoch, and where it is older it
//! calls `jit::check_bytes` to compare them and goes on, without the run loop.

use super::Code;
use crate::cache::Block;
use crate::exec::Exec;
use std::cell::Cell;

/// A successor compiled code may go on to: `repr(C)`, read by compiled code at the
/// offsets [`layout`] gives.
#[repr(C)]
pub struct Chain {
    ip: Cell<u64>,
    /// The stamp it was made under; 0, no stamp, when never made.
    stamp: Cell<u64>,
    /// The successor's chain entry (an address in the code area).
    entry: Cell<usize>,
    block: Cell<*const Block>,
    /// The block's serial when the chain was made: while it is the block's, the block is
    /// in its slot (`cache::Link`).
    serial: Cell<u64>,
    len: Cell<u64>,
}

impl Default for Chain {
    fn default() -> Self {
        Chain {
            ip: Cell::new(u64::MAX),
            stamp: Cell::new(0),
            entry: Cell::new(0),
            block: Cell::new(std::ptr::null()),
            serial: Cell::new(0),
            len: Cell::new(0),
        }
    }
}

/// Where compiled code finds a chain's fields.
pub mod layout {
    use super::Chain;
    use std::mem::offset_of;
    pub const IP: i32 = offset_of!(Chain, ip) as i32;
    pub const STAMP: i32 = offset_of!(Chain, stamp) as i32;
    pub const ENTRY: i32 = offset_of!(Chain, entry) as i32;
    pub const BLOCK: i32 = offset_of!(Chain, block) as i32;
    pub const SERIAL: i32 = offset_of!(Chain, serial) as i32;
    /// A block's serial, in the block.
    pub const BLOCK_SERIAL: i32 = offset_of!(crate::cache::Block, serial) as i32;
    /// The epoch a block's bytes were last compared in, in the block.
    pub const BLOCK_CHECKED: i32 = offset_of!(crate::cache::Block, checked) as i32;
    pub const LEN: i32 = offset_of!(Chain, len) as i32;
    /// The jump cache's entries.
    pub const JUMP_ENTRIES: usize = super::JumpCache::ENTRIES;
    pub const SIZE: i32 = std::mem::size_of::<Chain>() as i32;
}

/// The jump cache: chains by RIP, for exits at computed RIPs (see the module).
pub struct JumpCache {
    chains: Box<[Chain]>,
}

// SAFETY: the chains point at blocks of the owning processor's code cache and into its
// code area, and are read only by that processor's compiled code (under the stamp
// they were made with); the cache moves between threads with its processor and is
// never shared between them (its cells make it `!Sync`).
unsafe impl Send for JumpCache {}

impl std::fmt::Debug for JumpCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JumpCache({} entries)", self.chains.len())
    }
}

impl JumpCache {
    /// Entries (a power of two): [`jump_slot`]'s hash masked to it.
    pub const ENTRIES: usize = 4096;

    pub fn new() -> JumpCache {
        JumpCache {
            chains: (0..Self::ENTRIES).map(|_| Chain::default()).collect(),
        }
    }

    /// Where compiled code finds the chains.
    pub fn as_ptr(&self) -> *const Chain {
        self.chains.as_ptr()
    }
}

/// The jump cache's slot of RIP `ip`: its low 32 bits plus those bits shifted right by
/// 12, so that code at the same offset of different pages does not share a slot.
/// Compiled code computes the same (`emit`'s `leave`).
#[inline]
pub fn jump_slot(ip: u64) -> usize {
    let ip = ip as u32;
    (ip.wrapping_add(ip >> 12) as usize) & (JumpCache::ENTRIES - 1)
}

/// Puts compiled `block` (its chain entry at `entry`) in the jump cache under `stamp`,
/// as the run loop enters it (its bytes checked in this epoch, alive under the key
/// `stamp` stands for).
pub fn remember(jumps: &JumpCache, block: &Block, entry: usize, stamp: u64) {
    let c = &jumps.chains[jump_slot(block.ip)];
    if c.ip.get() == block.ip && c.stamp.get() == stamp && c.serial.get() == block.serial {
        return;
    }
    c.ip.set(block.ip);
    c.stamp.set(stamp);
    c.entry.set(entry);
    c.block.set(block);
    c.serial.set(block.serial);
    c.len.set(block.ops.len() as u64);
}

/// The stamp chains are made and followed under now, for link key `key`: a new one
/// whenever the key, the code area's generation or the privilege (CPL 3 or not)
/// changes.
pub fn stamp(x: &mut Exec, key: u64) -> u64 {
    // The privilege too: code compiled for one is followed only at it (`Code::At`).
    let now = (
        key,
        super::generation_of(x).unwrap_or(u32::MAX),
        x.cpu.cpl() == 3,
    );
    let tr = &mut x.cache.translator;
    if tr.chained_under != Some(now) {
        tr.chain_stamp += 1;
        tr.chained_under = Some(now);
    }
    tr.chain_stamp
}

/// Makes `block`'s chains those its newly compiled code expects: for fixed exits, chain
/// k holds the k-th RIP, not yet linked (stamp 0); otherwise as they were.
pub fn fix(block: &Block, exits: super::emit::Exits) {
    let slot = &block.jit;
    match exits {
        super::emit::Exits::Fixed(rips) => {
            for (c, rip) in slot.chains.iter().zip(rips) {
                c.ip.set(rip.unwrap_or(u64::MAX));
                c.stamp.set(0);
            }
            slot.fixed.set(true);
        }
        super::emit::Exits::Computed => slot.fixed.set(false),
    }
}

/// Lets `from`'s compiled code go on into `to`'s, which the run loop found linked after
/// it under link key `key` (both alive under it, `to`'s bytes checked in this epoch),
/// when both are compiled into the code area as it is and `to`'s code is not being
/// passed over. The chain for `to`'s RIP is updated, else the older one replaced.
pub fn link(x: &mut Exec, from: &Block, to: &Block, key: u64) {
    let generation = super::generation_of(x);
    let user = x.cpu.cpl() == 3;
    let compiled = |b: &Block| match b.jit.code.get() {
        Code::At {
            offset,
            generation: g,
            chain,
            user: u,
        } if Some(g) == generation && u == user => Some(offset + chain as u32),
        _ => None,
    };
    if compiled(from).is_none() {
        return;
    }
    // `to` compiled, or never to be: a chain to it that no budget covers (its length
    // the most there is) sends compiled code back to the run loop at once, without a
    // look at the jump cache (a block that goes on to one whose first instruction is
    // not covered: a MOV to a control register, CLI, STI).
    let entry = match (compiled(to), to.jit.code.get()) {
        (Some(_), _) if to.jit.rest.get() > 0 => return,
        (Some(entry), _) => Some(entry),
        (None, Code::Never) => None,
        (None, _) => return,
    };
    let stamp = stamp(x, key);
    let chains = &from.jit.chains;
    let i = match chains.iter().position(|c| c.ip.get() == to.ip) {
        Some(i) => i,
        // Fixed chains hold their RIPs for the block's life. The run loop links a block
        // only to the block at the RIP it ran to its end at, one of them; were it
        // ever another, it is not linked.
        None if from.jit.fixed.get() => return,
        None => {
            let i = from.jit.next_chain.get();
            from.jit.next_chain.set(i ^ 1);
            i as usize
        }
    };
    let c = &chains[i];
    if c.ip.get() == to.ip && c.stamp.get() == stamp && c.serial.get() == to.serial {
        return;
    }
    c.ip.set(to.ip);
    c.stamp.set(stamp);
    c.entry.set(entry.map_or(0, |e| super::code_address(x, e)));
    c.block.set(to);
    c.serial.set(to.serial);
    c.len.set(entry.map_or(u64::MAX, |_| to.ops.len() as u64));
}
