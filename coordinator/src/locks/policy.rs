//! The lock service's decisions, pure: given a lock's row and its queue as
//! read under the row's lock, what to write. The service does the I/O
//! ([`super::service`]); the store knows no policy.

use tandem_wire::LockOwner;

/// A lock's row as read under its lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockState {
    /// The holder, if any (even with an ended lease).
    pub owner: Option<LockOwner>,
    /// Its holds.
    pub holds: u32,
    /// Whether the lease is still running (the database's clock).
    pub live: bool,
    /// Whether the holder's acquire has answered it (false: handed over,
    /// not yet claimed).
    pub claimed: bool,
    /// Milliseconds left of the lease (0 when ended).
    pub left_ms: u64,
}

impl LockState {
    /// Whether `owner` holds it with a running lease.
    pub fn held_by(&self, owner: &LockOwner) -> bool {
        self.live && self.owner.as_ref() == Some(owner)
    }

    /// Whether nobody holds it with a running lease.
    pub fn is_free(&self) -> bool {
        self.owner.is_none() || !self.live
    }
}

/// A waiter as read under the lock's row lock, in queue order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiter {
    /// Its row.
    pub id: i64,
    /// Who waits.
    pub owner: LockOwner,
    /// The lease it asked for.
    pub ttl_ms: u64,
    /// Whether its place is still kept (it asked again in time).
    pub alive: bool,
}

/// What settling a lock does: the vanished waiters go, and a free lock
/// goes to the first waiter still there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settle {
    /// Rows of waiters that vanished (their place was not kept).
    pub dead: Vec<i64>,
    /// The waiter the free lock is handed to (its row is deleted too).
    pub hand_to: Option<Waiter>,
}

impl Settle {
    /// Whether settling changes nothing.
    pub fn is_noop(&self) -> bool {
        self.dead.is_empty() && self.hand_to.is_none()
    }
}

/// Settles `lock` with `queue`: deletes vanished waiters, and hands a free
/// lock (released, or its lease ended) to the first live waiter, FIFO.
pub fn settle(lock: &LockState, queue: &[Waiter]) -> Settle {
    let dead = queue.iter().filter(|w| !w.alive).map(|w| w.id).collect();
    let hand_to = if lock.is_free() { queue.iter().find(|w| w.alive).cloned() } else { None };
    Settle { dead, hand_to }
}

/// What an acquire by `me` does once the lock is settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcquireStep {
    /// `me` holds it and knows: one more hold, the lease extended.
    ReEnter,
    /// It was handed to `me` while it waited: answer the grant.
    Claim,
    /// Free with nobody waiting: grant it to `me`.
    Grant,
    /// Held by another (or waited for by others first): queue `me`, or
    /// keep its place, at `position` (1: next).
    Queue {
        /// 1-based place once queued.
        position: u32,
    },
    /// Held by another and `me` does not wait.
    Busy,
}

/// Whether the acquirer waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiting {
    /// It waits (and joins or keeps its place in the queue).
    Yes,
    /// It does not (wait 0, or its wait has ended).
    No,
}

/// The step of an acquire by `me`, on a lock already settled: `lock` after
/// the hand-off of [`settle`] (if any), `queue` without the settled rows.
pub fn acquire(lock: &LockState, queue: &[Waiter], me: &LockOwner, waiting: Waiting) -> AcquireStep {
    if lock.held_by(me) {
        return if lock.claimed { AcquireStep::ReEnter } else { AcquireStep::Claim };
    }
    let ahead = queue.iter().take_while(|w| &w.owner != me).filter(|w| w.alive).count();
    if lock.is_free() && ahead == 0 {
        return AcquireStep::Grant;
    }
    match waiting {
        Waiting::Yes => AcquireStep::Queue { position: u32::try_from(ahead + 1).unwrap_or(u32::MAX) },
        Waiting::No => AcquireStep::Busy,
    }
}

/// What a release by `me` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseStep {
    /// `me` does not hold it (never did, released it, or its lease ended).
    NotHeld,
    /// One hold less; `left` remain.
    Decrement {
        /// Holds left.
        left: u32,
    },
    /// The last hold: the lock is free (and settled: handed to the next waiter).
    Free,
}

/// The step of a release by `me`.
pub fn release(lock: &LockState, me: &LockOwner) -> ReleaseStep {
    if !lock.held_by(me) || !lock.claimed {
        return ReleaseStep::NotHeld;
    }
    if lock.holds > 1 {
        ReleaseStep::Decrement { left: lock.holds - 1 }
    } else {
        ReleaseStep::Free
    }
}

/// What giving up a wait does for `me`: a grant handed to it that it never
/// claimed is released (and the lock settled again); its queue row goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUp {
    /// It was handed the lock and its acquire is still there to answer: claim.
    Claim,
    /// Leave the queue (nothing was granted).
    Leave,
    /// It was handed the lock but nobody will answer it: free and settle.
    ReleaseUnclaimed,
}

/// The end of `me`'s wait: `answering` says whether its acquire request is
/// still there to take a grant.
pub fn give_up(lock: &LockState, me: &LockOwner, answering: Answering) -> GiveUp {
    match (lock.held_by(me) && !lock.claimed, answering) {
        (true, Answering::Yes) => GiveUp::Claim,
        (true, Answering::No) => GiveUp::ReleaseUnclaimed,
        (false, _) => GiveUp::Leave,
    }
}

/// Whether a request is still there to be answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answering {
    /// Its wait ended; it answers now.
    Yes,
    /// Its client went away (the request was dropped).
    No,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(s: &str) -> LockOwner {
        LockOwner::parse(s).expect("a valid owner")
    }

    fn held(by: &str) -> LockState {
        LockState { owner: Some(owner(by)), holds: 1, live: true, claimed: true, left_ms: 1000 }
    }

    fn free() -> LockState {
        LockState { owner: None, holds: 0, live: false, claimed: true, left_ms: 0 }
    }

    fn waiter(id: i64, by: &str, alive: bool) -> Waiter {
        Waiter { id, owner: owner(by), ttl_ms: 1000, alive }
    }

    #[test]
    fn a_free_lock_goes_to_the_first_live_waiter() {
        let q = [waiter(1, "a", false), waiter(2, "b", true), waiter(3, "c", true)];
        let s = settle(&free(), &q);
        assert_eq!(s.dead, vec![1]);
        assert_eq!(s.hand_to.map(|w| w.owner), Some(owner("b")));
        // An ended lease is free too.
        let expired = LockState { live: false, ..held("x") };
        assert_eq!(settle(&expired, &q).hand_to.map(|w| w.id), Some(2));
        // A held lock is not handed over; vanished waiters still go.
        let s = settle(&held("x"), &q);
        assert_eq!((s.dead, s.hand_to), (vec![1], None));
    }

    #[test]
    fn acquire_steps() {
        let me = owner("me");
        assert_eq!(acquire(&held("me"), &[], &me, Waiting::No), AcquireStep::ReEnter);
        let handed = LockState { claimed: false, ..held("me") };
        assert_eq!(acquire(&handed, &[], &me, Waiting::No), AcquireStep::Claim);
        assert_eq!(acquire(&free(), &[], &me, Waiting::No), AcquireStep::Grant);
        // Someone alive ahead: queue behind them, even though the lock is free.
        let q = [waiter(1, "a", true), waiter(2, "me", true), waiter(3, "c", true)];
        assert_eq!(acquire(&free(), &q, &me, Waiting::Yes), AcquireStep::Queue { position: 2 });
        assert_eq!(acquire(&held("x"), &q, &me, Waiting::No), AcquireStep::Busy);
        // A newcomer goes to the back.
        let me2 = owner("new");
        assert_eq!(acquire(&held("x"), &q, &me2, Waiting::Yes), AcquireStep::Queue { position: 4 });
        // Vanished waiters ahead do not count.
        let q = [waiter(1, "a", false), waiter(2, "me", true)];
        assert_eq!(acquire(&free(), &q, &me, Waiting::Yes), AcquireStep::Grant);
        // An ended lease of my own is a new grant, not a re-entry.
        let mine_expired = LockState { live: false, ..held("me") };
        assert_eq!(acquire(&mine_expired, &[], &me, Waiting::No), AcquireStep::Grant);
    }

    #[test]
    fn release_steps() {
        let me = owner("me");
        assert_eq!(release(&held("x"), &me), ReleaseStep::NotHeld);
        assert_eq!(release(&free(), &me), ReleaseStep::NotHeld);
        assert_eq!(release(&LockState { live: false, ..held("me") }, &me), ReleaseStep::NotHeld);
        assert_eq!(release(&LockState { claimed: false, ..held("me") }, &me), ReleaseStep::NotHeld);
        assert_eq!(release(&LockState { holds: 3, ..held("me") }, &me), ReleaseStep::Decrement { left: 2 });
        assert_eq!(release(&held("me"), &me), ReleaseStep::Free);
    }

    #[test]
    fn giving_up_releases_an_unclaimed_grant_only_when_nobody_answers() {
        let me = owner("me");
        let handed = LockState { claimed: false, ..held("me") };
        assert_eq!(give_up(&handed, &me, Answering::Yes), GiveUp::Claim);
        assert_eq!(give_up(&handed, &me, Answering::No), GiveUp::ReleaseUnclaimed);
        assert_eq!(give_up(&held("x"), &me, Answering::Yes), GiveUp::Leave);
    }
}
