//! Exact counting of the proc connector messages the kernel dropped for this socket.
//!
//! `ENOBUFS` only says that *some* messages were lost. The count comes from the sequence
//! numbers: the kernel numbers the messages it sends from each CPU consecutively
//! (`cn_msg.seq`, a per-CPU counter incremented under a lock that also orders the send, since
//! Linux 4.7), so a jump in one CPU's sequence is exactly the number of messages this socket
//! never received. Those include messages lpcmon would have filtered out (thread events, gid
//! changes), so the count is of kernel messages, an upper bound on lost lpcmon events.

/// CPUs beyond this index are not tracked (their messages are counted in `untracked`), which
/// bounds the tracker's memory.
pub const MAX_TRACKED_CPUS: usize = 8192;

/// Remembers the last sequence number seen from each CPU.
#[derive(Debug, Default)]
pub struct LossTracker {
    last: Vec<Option<u32>>,
    lost: u64,
    reordered: u64,
    untracked: u64,
}

impl LossTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a message and returns how many messages from its CPU were skipped before it.
    /// The first message seen from a CPU only sets the baseline.
    pub fn observe(&mut self, cpu: u32, seq: u32) -> u64 {
        let idx = cpu as usize;
        if idx >= MAX_TRACKED_CPUS {
            // Also covers `cpu == u32::MAX`, which older kernels use for out-of-band acks
            // that carry the requester's seq instead of a per-CPU one.
            self.untracked += 1;
            return 0;
        }
        if self.last.len() <= idx {
            self.last.resize(idx + 1, None);
        }
        let slot = &mut self.last[idx];
        let Some(prev) = *slot else {
            *slot = Some(seq);
            return 0;
        };
        let gap = seq.wrapping_sub(prev.wrapping_add(1));
        if gap >= 1 << 31 {
            // Behind the last one seen: a duplicate or a message delivered out of order. It
            // cannot be a loss, and the baseline stays where it is.
            self.reordered += 1;
            return 0;
        }
        *slot = Some(seq);
        self.lost += u64::from(gap);
        u64::from(gap)
    }

    /// Messages lost in total.
    pub fn lost(&self) -> u64 {
        self.lost
    }

    /// Messages that arrived behind their CPU's newest sequence number.
    pub fn reordered(&self) -> u64 {
        self.reordered
    }

    /// Messages from CPUs outside the tracked range.
    pub fn untracked(&self) -> u64 {
        self.untracked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_sequences_lose_nothing() {
        let mut t = LossTracker::new();
        for seq in 10..20 {
            assert_eq!(t.observe(0, seq), 0);
            assert_eq!(t.observe(3, seq + 100), 0);
        }
        assert_eq!(t.lost(), 0);
    }

    #[test]
    fn a_gap_is_counted_exactly_per_cpu() {
        let mut t = LossTracker::new();
        t.observe(0, 5);
        t.observe(1, 50);
        assert_eq!(t.observe(0, 9), 3);
        assert_eq!(t.observe(1, 51), 0);
        assert_eq!(t.observe(1, 60), 8);
        assert_eq!(t.lost(), 11);
    }

    #[test]
    fn the_counter_may_wrap() {
        let mut t = LossTracker::new();
        t.observe(2, u32::MAX - 1);
        assert_eq!(t.observe(2, 1), 2);
    }

    #[test]
    fn late_and_out_of_band_messages_are_not_losses() {
        let mut t = LossTracker::new();
        t.observe(0, 10);
        assert_eq!(t.observe(0, 9), 0);
        assert_eq!(t.reordered(), 1);
        assert_eq!(t.observe(0, 11), 0);
        assert_eq!(t.observe(u32::MAX, 12345), 0);
        assert_eq!(t.untracked(), 1);
        assert_eq!(t.lost(), 0);
    }
}
