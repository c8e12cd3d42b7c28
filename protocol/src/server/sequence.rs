//! Per-producer-instance sequence tracking: puts events back in order, turns gaps into counted
//! loss, and matches the producer's own loss reports against gaps so nothing is counted twice.
//!
//! Every sequence number a producer assigns is *resolved* exactly once: delivered as an event,
//! or declared lost (by the producer's report, by reassembly failure, or as an unexplained gap).
//! Anything arriving for a number already resolved is stale and only counted. That is what makes
//! `produced = stored + losses` exact.

use alloc::collections::BTreeMap;

use crate::message::LossStage;

/// What the tracker hands back, in sequence order.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Delivery<T> {
    Event(T),
    Lost {
        stage: LossStage,
        first: u64,
        last: u64,
    },
    /// A sequence number that was already resolved arrived again.
    Stale {
        seq: u64,
        duplicate: bool,
    },
}

#[derive(Debug)]
enum Pending<T> {
    Event(T),
    Lost { last: u64, stage: LossStage },
}

/// How many resolved-as-lost ranges are remembered to tell a late event from a duplicate.
const RECENT_LOST: usize = 32;

#[derive(Debug)]
pub(crate) struct SequenceTracker<T> {
    /// The lowest unresolved sequence number.
    next: u64,
    /// Out-of-order items beyond `next`, keyed by their first sequence number.
    pending: BTreeMap<u64, Pending<T>>,
    /// The highest number the producer says it has sent; a gap up to it is a loss once it ages.
    high_water: u64,
    /// When the current gap at `next` was first seen, if there is one.
    gap_since: Option<u64>,
    /// Recently declared lost ranges, to classify stale arrivals.
    recent_lost: [(u64, u64); RECENT_LOST],
    recent_lost_pos: usize,
}

impl<T> SequenceTracker<T> {
    pub(crate) fn new(next: u64) -> Self {
        SequenceTracker {
            next,
            pending: BTreeMap::new(),
            high_water: next - 1,
            gap_since: None,
            recent_lost: [(0, 0); RECENT_LOST],
            recent_lost_pos: 0,
        }
    }

    pub(crate) fn next(&self) -> u64 {
        self.next
    }

    pub(crate) fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Whether `seq` has already been delivered or declared lost.
    pub(crate) fn is_resolved(&self, seq: u64) -> bool {
        seq < self.next
    }

    fn has_gap(&self) -> bool {
        !self.pending.is_empty() || self.high_water >= self.next
    }

    fn note_gap(&mut self, now: u64) {
        if self.has_gap() {
            self.gap_since.get_or_insert(now);
        } else {
            self.gap_since = None;
        }
    }

    fn stale(&self, seq: u64) -> Delivery<T> {
        let lost = self
            .recent_lost
            .iter()
            .any(|&(a, b)| a != 0 && (a..=b).contains(&seq));
        Delivery::Stale {
            seq,
            duplicate: !lost,
        }
    }

    fn declare_lost(&mut self, stage: LossStage, first: u64, last: u64, out: &mut impl Extend<Delivery<T>>) {
        self.recent_lost[self.recent_lost_pos] = (first, last);
        self.recent_lost_pos = (self.recent_lost_pos + 1) % RECENT_LOST;
        out.extend([Delivery::Lost { stage, first, last }]);
    }

    /// Delivers everything that has become contiguous from `next`.
    fn drain(&mut self, out: &mut impl Extend<Delivery<T>>) {
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() != self.next {
                break;
            }
            match entry.remove() {
                Pending::Event(item) => {
                    out.extend([Delivery::Event(item)]);
                    self.next += 1;
                }
                Pending::Lost { last, stage } => {
                    let first = self.next;
                    self.declare_lost(stage, first, last, out);
                    self.next = last + 1;
                }
            }
        }
        self.high_water = self.high_water.max(self.next - 1);
    }

    /// Declares the gap before the first pending item (or up to the high-water mark) lost.
    fn skip_gap(&mut self, out: &mut impl Extend<Delivery<T>>) {
        let end = match self.pending.keys().next() {
            Some(&first_pending) => first_pending - 1,
            None => self.high_water,
        };
        if end >= self.next {
            let first = self.next;
            self.declare_lost(LossStage::Transport, first, end, out);
            self.next = end + 1;
        }
        self.drain(out);
    }

    /// An event with sequence number `seq` arrived.
    pub(crate) fn on_event(
        &mut self,
        now: u64,
        seq: u64,
        item: T,
        max_pending: usize,
        out: &mut impl Extend<Delivery<T>>,
    ) {
        // The common case, a producer's next event with nothing waiting, is delivered at once.
        // The general path would do exactly this (nothing pending can make it stale, and the
        // item would be inserted and drained again at once) at the cost of a map insert and
        // removal per event; the tests hold the two paths equal.
        if seq == self.next && self.pending.is_empty() {
            self.high_water = self.high_water.max(seq);
            self.next += 1;
            out.extend([Delivery::Event(item)]);
            self.note_gap(now);
            return;
        }
        self.on_event_general(now, seq, item, max_pending, out);
    }

    /// [`Self::on_event`] for any `seq`: stale, in order or ahead of a gap.
    fn on_event_general(
        &mut self,
        now: u64,
        seq: u64,
        item: T,
        max_pending: usize,
        out: &mut impl Extend<Delivery<T>>,
    ) {
        if seq < self.next || self.pending.contains_key(&seq) || self.inside_pending_loss(seq) {
            out.extend([self.stale(seq)]);
            return;
        }
        self.high_water = self.high_water.max(seq);
        self.pending.insert(seq, Pending::Event(item));
        self.drain(out);
        while self.pending.len() > max_pending {
            self.skip_gap(out);
        }
        self.note_gap(now);
    }

    fn inside_pending_loss(&self, seq: u64) -> bool {
        self.pending
            .range(..=seq)
            .next_back()
            .is_some_and(|(_, p)| matches!(p, Pending::Lost { last, .. } if seq <= *last))
    }

    /// The numbers `first..=last` are known lost at `stage` (the producer's report, or a failed
    /// reassembly). Any part already resolved is ignored; the rest is resolved now or in order.
    /// Like events, reported ranges held beyond `next` count against `max_pending`.
    pub(crate) fn on_lost_range(
        &mut self,
        now: u64,
        stage: LossStage,
        (first, last): (u64, u64),
        max_pending: usize,
        out: &mut impl Extend<Delivery<T>>,
    ) -> u64 {
        let first = first.max(self.next);
        if first > last {
            return 0;
        }
        // Walk the range; numbers already pending (events, or earlier reported losses) are
        // resolved by what is pending, so only the free sub-ranges are new losses.
        let mut accepted = 0;
        let mut cursor = first;
        loop {
            let covering = self
                .pending
                .range(..=cursor)
                .next_back()
                .and_then(|(&k, p)| match p {
                    Pending::Lost { last, .. } if cursor <= *last => Some(*last),
                    Pending::Event(_) if k == cursor => Some(k),
                    _ => None,
                });
            let resume_after = match covering {
                Some(end) => end,
                None => {
                    let next_pending = self.pending.range(cursor..=last).next().map(|(&k, _)| k);
                    let free_end = next_pending.map_or(last, |k| k - 1);
                    self.pending.insert(
                        cursor,
                        Pending::Lost {
                            last: free_end,
                            stage,
                        },
                    );
                    accepted += free_end - cursor + 1;
                    free_end
                }
            };
            if resume_after >= last {
                break;
            }
            cursor = resume_after + 1;
        }
        self.high_water = self.high_water.max(last);
        self.drain(out);
        while self.pending.len() > max_pending {
            self.skip_gap(out);
        }
        self.note_gap(now);
        accepted
    }

    /// The producer says it has sent everything up to `last_seq`.
    pub(crate) fn on_high_water(&mut self, now: u64, last_seq: u64) {
        self.high_water = self.high_water.max(last_seq);
        self.note_gap(now);
    }

    /// Declares gaps lost once they have waited `timeout` nanoseconds for the missing numbers.
    /// When the gap being waited on times out, if there is one: the next time [`Self::poll`]
    /// has work to do.
    pub(crate) fn gap_deadline(&self, timeout: u64) -> Option<u64> {
        self.gap_since.map(|since| since.saturating_add(timeout))
    }

    pub(crate) fn poll(&mut self, now: u64, timeout: u64, out: &mut impl Extend<Delivery<T>>) {
        while let Some(since) = self.gap_since {
            if now.saturating_sub(since) < timeout {
                return;
            }
            self.skip_gap(out);
            self.gap_since = None;
            // A later gap among what remains starts waiting now.
            self.note_gap(now);
            if !self.has_gap() {
                return;
            }
        }
    }

    /// The connection closed. The transport is ordered per connection, so everything it carried
    /// has arrived: gaps below the high-water mark are lost now. Numbers beyond it stay open for
    /// the producer's next connection, which reports what it failed to send.
    pub(crate) fn on_close(&mut self, out: &mut impl Extend<Delivery<T>>) {
        while self.has_gap() {
            self.skip_gap(out);
        }
        self.gap_since = None;
    }

    /// The producer reconnected and will continue at `next_seq`: everything below it was
    /// assigned, so it must be either reported by the producer or counted as a gap.
    pub(crate) fn on_resume(&mut self, now: u64, next_seq: u64) {
        if next_seq > self.next {
            self.high_water = self.high_water.max(next_seq - 1);
        }
        self.note_gap(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    type D = Delivery<u64>;

    fn events(out: &[D]) -> Vec<u64> {
        out.iter()
            .filter_map(|d| match d {
                Delivery::Event(s) => Some(*s),
                _ => None,
            })
            .collect()
    }

    fn lost(out: &[D]) -> Vec<(LossStage, u64, u64)> {
        out.iter()
            .filter_map(|d| match d {
                Delivery::Lost { stage, first, last } => Some((*stage, *first, *last)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn reorders_within_the_window() {
        let mut t = SequenceTracker::new(1);
        let mut out = Vec::new();
        for s in [2, 3, 1, 4] {
            t.on_event(0, s, s, 8, &mut out);
        }
        assert_eq!(events(&out), [1, 2, 3, 4]);
        assert!(lost(&out).is_empty());
    }

    #[test]
    fn a_gap_becomes_transport_loss_after_the_timeout() {
        let mut t = SequenceTracker::new(1);
        let mut out = Vec::new();
        t.on_event(0, 1, 1, 8, &mut out);
        t.on_event(10, 4, 4, 8, &mut out);
        t.poll(50, 100, &mut out);
        assert_eq!(events(&out), [1]);
        t.poll(110, 100, &mut out);
        assert_eq!(events(&out), [1, 4]);
        assert_eq!(lost(&out), [(LossStage::Transport, 2, 3)]);
        // A late arrival of a lost number is stale, not a duplicate, and is not delivered.
        t.on_event(120, 3, 3, 8, &mut out);
        assert_eq!(
            out.last(),
            Some(&Delivery::Stale {
                seq: 3,
                duplicate: false
            })
        );
        t.on_event(120, 4, 4, 8, &mut out);
        assert_eq!(
            out.last(),
            Some(&Delivery::Stale {
                seq: 4,
                duplicate: true
            })
        );
    }

    #[test]
    fn a_full_window_skips_the_gap_at_once() {
        let mut t = SequenceTracker::new(1);
        let mut out = Vec::new();
        for s in 3..=6 {
            t.on_event(0, s, s, 3, &mut out);
        }
        assert_eq!(lost(&out), [(LossStage::Transport, 1, 2)]);
        assert_eq!(events(&out), [3, 4, 5, 6]);
    }

    #[test]
    fn producer_reports_fill_gaps_without_double_counting() {
        let mut t = SequenceTracker::new(1);
        let mut out = Vec::new();
        t.on_event(0, 1, 1, 8, &mut out);
        t.on_resume(1, 6);
        assert_eq!(
            t.on_lost_range(2, LossStage::ProducerSend, (2, 5), 8, &mut out),
            4
        );
        t.on_event(3, 6, 6, 8, &mut out);
        assert_eq!(lost(&out), [(LossStage::ProducerSend, 2, 5)]);
        assert_eq!(events(&out), [1, 6]);
        // Reporting the same range again accepts nothing.
        assert_eq!(
            t.on_lost_range(4, LossStage::ProducerSend, (2, 5), 8, &mut out),
            0
        );
    }

    #[test]
    fn a_report_overlapping_pending_events_accepts_only_the_free_numbers() {
        let mut t = SequenceTracker::new(1);
        let mut out = Vec::new();
        t.on_event(0, 3, 3, 8, &mut out);
        t.on_event(0, 5, 5, 8, &mut out);
        assert_eq!(
            t.on_lost_range(0, LossStage::ProducerSend, (1, 6), 8, &mut out),
            4
        );
        assert_eq!(events(&out), [3, 5]);
        assert_eq!(
            lost(&out),
            [
                (LossStage::ProducerSend, 1, 2),
                (LossStage::ProducerSend, 4, 4),
                (LossStage::ProducerSend, 6, 6)
            ]
        );
        assert_eq!(t.next(), 7);
    }

    mod fast_path {
        use super::*;
        use proptest::prelude::*;

        /// One step driven into both trackers.
        #[derive(Debug, Clone)]
        enum Step {
            Event(u64),
            Lost(u64, u64),
            HighWater(u64),
            Poll,
            Close,
            Resume(u64),
        }

        fn step() -> impl Strategy<Value = Step> {
            prop_oneof![
                // Mostly in-order-ish events around a small range, so the fast path, stale
                // numbers, gaps and reordering all happen.
                6 => (1u64..40).prop_map(Step::Event),
                1 => (1u64..40, 0u64..6).prop_map(|(a, n)| Step::Lost(a, a + n)),
                1 => (1u64..40).prop_map(Step::HighWater),
                1 => Just(Step::Poll),
                1 => Just(Step::Close),
                1 => (1u64..40).prop_map(Step::Resume),
            ]
        }

        proptest! {
            /// The fast path of `on_event` delivers, resolves and times out exactly what the
            /// general path does, for any mix of in-order, early, late and repeated numbers.
            #[test]
            fn equals_the_general_path(
                steps in proptest::collection::vec(step(), 1..80),
                max_pending in 1usize..6,
            ) {
                let mut fast = SequenceTracker::new(1);
                let mut general = SequenceTracker::new(1);
                let (mut out_fast, mut out_general): (Vec<D>, Vec<D>) = (Vec::new(), Vec::new());
                for (now, step) in steps.into_iter().enumerate() {
                    let now = now as u64 * 10;
                    match step {
                        Step::Event(seq) => {
                            fast.on_event(now, seq, seq, max_pending, &mut out_fast);
                            general.on_event_general(now, seq, seq, max_pending, &mut out_general);
                        }
                        Step::Lost(a, b) => {
                            let stage = LossStage::ProducerSend;
                            let x = fast.on_lost_range(now, stage, (a, b), max_pending, &mut out_fast);
                            let y = general.on_lost_range(now, stage, (a, b), max_pending, &mut out_general);
                            prop_assert_eq!(x, y);
                        }
                        Step::HighWater(h) => {
                            fast.on_high_water(now, h);
                            general.on_high_water(now, h);
                        }
                        Step::Poll => {
                            fast.poll(now, 25, &mut out_fast);
                            general.poll(now, 25, &mut out_general);
                        }
                        Step::Close => {
                            fast.on_close(&mut out_fast);
                            general.on_close(&mut out_general);
                        }
                        Step::Resume(n) => {
                            fast.on_resume(now, n);
                            general.on_resume(now, n);
                        }
                    }
                    prop_assert_eq!(&out_fast, &out_general);
                    prop_assert_eq!(fast.next(), general.next());
                    prop_assert_eq!(fast.pending_len(), general.pending_len());
                    prop_assert_eq!(fast.high_water, general.high_water);
                    prop_assert_eq!(fast.gap_since, general.gap_since);
                    prop_assert_eq!(fast.recent_lost, general.recent_lost);
                }
            }
        }
    }

    #[test]
    fn close_resolves_below_the_high_water_mark_only() {
        let mut t = SequenceTracker::new(1);
        let mut out = Vec::new();
        t.on_event(0, 1, 1, 8, &mut out);
        t.on_high_water(0, 3);
        t.on_event(0, 5, 5, 8, &mut out);
        t.on_close(&mut out);
        assert_eq!(lost(&out), [(LossStage::Transport, 2, 4)]);
        assert_eq!(events(&out), [1, 5]);
        assert_eq!(t.next(), 6);
    }
}
