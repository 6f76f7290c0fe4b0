//! How compiled code leaves a block at its end: into the compiled code of the block
//! chained there (`jit::chain`: a chain fixed for a RIP known when
//! compiling, the block's two chains, then the jump cache), back to its own second
//! pass when it loops, or back to the run loop.

use super::*;

/// How compiled code leaves a block at its end.
#[derive(Clone, Copy)]
pub(super) enum Leave {
    /// At a RIP known when compiling.
    At(u64),
    /// At the RIP in rax, computed as the block ran: looked up in the block's chains,
    /// then in the jump cache ([`super::chain::JumpCache`]). `ret`: popped by a RET
    /// that moved RSP by the amount given, the RIP is checked on the way back to the
    /// run loop alone (no chain names a non-canonical RIP), where a non-canonical one
    /// is #GP(0) with the stack as it was (`ret64`), so RSP moves back and the RET
    /// bails to the interpreter, which raises it.
    Computed { ret: Option<(i32, DynamicLabel)> },
}

/// The RIPs a block's code may leave at: known when compiling (at most two, a Jcc's),
/// each given a chain of its own that holds that RIP for the block's life
/// ([`super::chain`]'s fixed chains); or not all known (a RET's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exits {
    Fixed([Option<u64>; 2]),
    Computed,
}

impl Exits {
    /// The block's exits from its covered prefix `kinds` of `ops`.
    pub(super) fn of(ops: &[Op], kinds: &[Kind]) -> Exits {
        let last = ops[kinds.len() - 1].next;
        match kinds.last() {
            Some(Kind::Jcc { target, .. }) if *target == last => Exits::Fixed([Some(last), None]),
            Some(Kind::Jcc { target, .. }) => Exits::Fixed([Some(last), Some(*target)]),
            Some(Kind::Jmp { target } | Kind::Near { target }) => {
                Exits::Fixed([Some(*target), None])
            }
            Some(Kind::Ret { .. } | Kind::Branch) => Exits::Computed,
            _ if kinds.len() == ops.len() => Exits::Fixed([Some(last), None]),
            // The interpreter goes on at the first instruction not covered.
            _ => Exits::Computed,
        }
    }

    /// The chain fixed for `rip`, if any.
    fn chain_of(&self, rip: u64) -> Option<usize> {
        match self {
            Exits::Fixed(t) => t.iter().position(|&x| x == Some(rip)),
            Exits::Computed => None,
        }
    }
}

/// To `miss` unless the chain at rcx was made under the frame's stamp and its block
/// still has the serial it had then (rdx = the block after it); to `check` when that
/// block's bytes were last compared in an older epoch than the frame's.
fn alive(a: &mut Assembler, miss: DynamicLabel, check: DynamicLabel) {
    dynasm!(a ; .arch x64
        ; mov rdx, QWORD [r14 + FR_STAMP] ; cmp QWORD [rcx + chain::STAMP], rdx ; jne =>miss
        ; mov rdx, QWORD [rcx + chain::BLOCK] ; mov r8, QWORD [rcx + chain::SERIAL]
        ; cmp QWORD [rdx + chain::BLOCK_SERIAL], r8 ; jne =>miss
        ; mov r8, QWORD [r14 + FR_EPOCH] ; cmp QWORD [rdx + chain::BLOCK_CHECKED], r8
        ; jne =>check
    );
}

impl Emitter<'_> {
    /// The block's end at RIP `rip`.
    pub(super) fn finish(&mut self, rip: u64) {
        self.put_kept();
        self.leave(Leave::At(rip));
    }

    /// The block's end at the RIP in rax, all its instructions done: into the compiled
    /// code of the block a chain names for that RIP ([`super::chain`]), if its stamp is
    /// the frame's and the frame's budget covers that block's instructions (the frame
    /// then describes that block, the cached registers written back); else back to the
    /// run loop with RIP set.
    ///
    /// A RIP known when compiling has its chain fixed ([`Exits`]): no RIP is compared.
    pub(super) fn leave(&mut self, to: Leave) {
        let n = self.ops.len() as i32;
        let exit = self.exit;
        let (ret, rip) = match to {
            Leave::At(rip) => (None, Some(rip)),
            Leave::Computed { ret } => (ret, None),
        };
        let mut cold = None;
        if let Some(chains) = self.cx.chains {
            let (found, jump, go, undo, out) = (
                self.a.new_dynamic_label(),
                self.a.new_dynamic_label(),
                self.a.new_dynamic_label(),
                self.a.new_dynamic_label(),
                self.a.new_dynamic_label(),
            );
            match (rip, rip.and_then(|r| self.exits.chain_of(r))) {
                (_, Some(k)) => {
                    let at = chains as i64 + k as i64 * chain::SIZE as i64;
                    dynasm!(self.a ; .arch x64 ; mov rcx, QWORD at);
                }
                // A known RIP has a fixed chain (`Exits::of` names every RIP `finish`
                // is given); were one without, the jump cache alone is looked at.
                (Some(_), None) => dynasm!(self.a ; .arch x64 ; jmp =>jump),
                (None, _) => {
                    let chains = chains as i64;
                    dynasm!(self.a ; .arch x64
                        ; mov rcx, QWORD chains
                        ; cmp QWORD [rcx + chain::IP], rax ; je =>found
                        ; add rcx, chain::SIZE
                        ; cmp QWORD [rcx + chain::IP], rax ; jne =>jump
                    );
                }
            }
            // The chain, if its stamp is the frame's and its block still has its serial;
            // else the jump cache's chain for the RIP (emitted after the way out), under
            // the same checks: a chain made under an older stamp or not made yet (the
            // run loop fills the jump cache with each block it enters, and links blocks
            // more slowly).
            let (check, check_jump) = (self.a.new_dynamic_label(), self.a.new_dynamic_label());
            dynasm!(self.a ; .arch x64 ; =>found);
            alive(&mut self.a, jump, check);
            dynasm!(self.a ; .arch x64
                ; =>go
                ; sub r15, QWORD [rcx + chain::LEN] ; jb =>undo
                ; mov QWORD [r14 + FR_BLOCK], rdx
            );
            self.sync(false);
            dynasm!(self.a ; .arch x64
                ; jmp QWORD [rcx + chain::ENTRY]
                ; =>undo
                ; add r15, QWORD [rcx + chain::LEN]
                ; =>out
            );
            cold = Some((jump, go, out, check, check_jump));
        }
        if let Some(r) = rip {
            let r = r as i64;
            dynasm!(self.a ; .arch x64 ; mov rax, QWORD r);
        }
        if let Some((by, bail)) = ret {
            let bits = (64 - crate::paging::LINEAR_BITS) as i8;
            let canonical = self.a.new_dynamic_label();
            dynasm!(self.a ; .arch x64
                ; mov rdx, rax ; shl rdx, bits ; sar rdx, bits ; cmp rdx, rax ; je =>canonical
            );
            self.move_rsp(-by);
            dynasm!(self.a ; .arch x64 ; jmp =>bail ; =>canonical);
        }
        dynasm!(self.a ; .arch x64 ; mov QWORD [r12 + RIP], rax ; mov eax, n ; jmp =>exit);
        if let Some((jump, go, out, check, check_jump)) = cold {
            if let Some(r) = rip {
                let r = r as i64;
                dynasm!(self.a ; .arch x64 ; =>jump ; mov rax, QWORD r);
            } else {
                dynasm!(self.a ; .arch x64 ; =>jump);
            }
            // The jump cache's slot (`chain::jump_slot`).
            let mask = (chain::JUMP_ENTRIES - 1) as i32;
            dynasm!(self.a ; .arch x64
                ; mov ecx, eax ; mov edx, eax ; shr edx, 12 ; add ecx, edx
                ; and ecx, mask ; imul ecx, ecx, chain::SIZE
                ; add rcx, QWORD [r14 + FR_JUMPS]
                ; cmp QWORD [rcx + chain::IP], rax ; jne =>out
            );
            alive(&mut self.a, out, check_jump);
            dynasm!(self.a ; .arch x64 ; jmp =>go);
            for (at, miss) in [(check, jump), (check_jump, out)] {
                let routine = self.cx.check_routine as i64;
                dynasm!(self.a ; .arch x64
                    ; =>at ; mov r8, QWORD routine ; call r8 ; test r8d, r8d ; jnz =>miss
                    ; jmp =>go
                );
            }
        }
    }

    /// A branch taken to `target`: [`Emitter::back`] when it is this block, else the
    /// block's end.
    pub(super) fn taken(&mut self, target: u64) {
        if target == self.cx.block_ip {
            let back = self.back();
            dynasm!(self.a ; .arch x64 ; jmp =>back);
        } else {
            self.finish(target);
        }
    }

    /// Where a branch back to the block's top goes: the second pass of the block's code,
    /// emitted after the first, which begins with the run loop's check between linked
    /// blocks (`run::Processor::run`: the frame's budget allows another pass), its way
    /// out the block's end. Where the top may look at the record
    /// kept at the branch before the block replaces it ([`Plan::loop_reads`]), the
    /// second pass knows it is in host registers on entering it (its bails write it);
    /// the first pass is entered with it in the processor's state.
    pub(super) fn back(&mut self) -> DynamicLabel {
        if let Some(again) = &self.again {
            return again.label;
        }
        let label = self.a.new_dynamic_label();
        self.again = Some(Again {
            label,
            kept: self.kept.filter(|_| self.plan.loop_reads),
            leaving: self.kept,
        });
        label
    }
}

/// The routine compiled code calls where [`alive`] found a chain's block compared in an
/// older epoch (rdx the block, r14 the frame): `helper` (`super::super::check_bytes`)
/// compares its bytes for this one; r8d is 0 when they are the same. Every other
/// register is kept (the cached guest registers and the chain's rax, rcx and rdx among
/// them), so that compiled code goes on as if the block had been checked. Eight pushes
/// and eight bytes more keep the stack 16-byte aligned at the call (System V).
pub fn check_routine(helper: usize) -> Result<Vec<u8>, TranslateError> {
    let mut a = assembler();
    let helper = helper as i64;
    dynasm!(a ; .arch x64
        ; push rax ; push rcx ; push rdx ; push rsi ; push rdi ; push r9 ; push r10 ; push r11
        ; sub rsp, 8
        ; mov rdi, r14 ; mov rsi, rdx ; mov rax, QWORD helper ; call rax ; mov r8d, eax
        ; add rsp, 8
        ; pop r11 ; pop r10 ; pop r9 ; pop rdi ; pop rsi ; pop rdx ; pop rcx ; pop rax
        ; ret
    );
    finish(a)
}
