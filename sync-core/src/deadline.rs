//! Reporting the next timeout to the host once each time it changes.

/// The deadline last handed to the host. State machines report their next
/// timeout through this, so the host hears of each new deadline once,
/// not on every poll.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ReportedDeadline(Option<u64>);

impl ReportedDeadline {
    /// `Some(at)` when `next` differs from what the host was last told.
    pub(crate) fn report(&mut self, next: Option<u64>) -> Option<u64> {
        if next == self.0 {
            return None;
        }
        self.0 = next;
        next
    }
}
