//! The shared recorder: the history and the event timeline behind one lock, stamped with a
//! monotonic clock read inside the lock, so the order of the records is the order of the
//! stamps.

use std::sync::Mutex;
use std::time::Instant;

use crate::history::{Action, History, Phase, ProcessId};
use crate::measure::{Event, EventKind};

/// Records the history holds at most; past it the workload stops recording (and says so).
pub const HISTORY_OPS_MAX: usize = 5_000_000;

pub struct Recorder {
    start: Instant,
    inner: Mutex<Inner>,
}

struct Inner {
    history: History,
    events: Vec<Event>,
    overflowed: bool,
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder {
            start: Instant::now(),
            inner: Mutex::new(Inner {
                history: History::new(),
                events: Vec::new(),
                overflowed: false,
            }),
        }
    }

    pub fn start(&self) -> Instant {
        self.start
    }

    pub fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("recorder lock is never poisoned")
    }

    pub fn invoke(&self, process: ProcessId, action: Action) {
        let mut inner = self.lock();
        if inner.history.len() >= HISTORY_OPS_MAX {
            inner.overflowed = true;
            return;
        }
        let at = self.now_ms();
        // The clock is read under the lock, so time cannot go backwards; a process with an
        // open op is a workload bug, recorded as an overflow rather than a panic.
        if inner.history.invoke(process, at, action).is_err() {
            inner.overflowed = true;
        }
    }

    pub fn complete(&self, process: ProcessId, phase: Phase, action: Option<Action>, error: Option<String>) {
        let mut inner = self.lock();
        let at = self.now_ms();
        if inner.history.complete(process, at, phase, action, error).is_err() {
            inner.overflowed = true;
        }
    }

    pub fn event(&self, kind: EventKind) {
        let mut inner = self.lock();
        let at_ms = self.now_ms();
        inner.events.push(Event { at_ms, kind });
    }

    /// Success of the client requests started in the last `window_ms`: (ok, total).
    pub fn recent_success(&self, window_ms: u64) -> (u64, u64) {
        let inner = self.lock();
        let since = self.now_ms().saturating_sub(window_ms);
        let mut ok = 0;
        let mut total = 0;
        for op in inner.history.ops().iter().rev() {
            if op.at_ms < since {
                break;
            }
            if op.phase != Phase::Invoke && matches!(op.action, Action::Request { .. }) {
                total += 1;
                if op.phase == Phase::Ok {
                    ok += 1;
                }
            }
        }
        (ok, total)
    }

    /// The active region the controller named last, with its generation, if any.
    pub fn last_active_region(&self) -> Option<(String, u64)> {
        let inner = self.lock();
        inner.events.iter().rev().find_map(|event| match &event.kind {
            crate::measure::EventKind::ActiveRegion { region, generation } => Some((region.clone(), *generation)),
            _ => None,
        })
    }

    /// The history and events so far, and whether records were dropped.
    pub fn snapshot(&self) -> (History, Vec<Event>, bool) {
        let inner = self.lock();
        (inner.history.clone(), inner.events.clone(), inner.overflowed)
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::EventKind;

    #[test]
    fn the_last_active_region_is_the_newest_one_recorded() {
        let recorder = Recorder::new();
        assert_eq!(recorder.last_active_region(), None);
        recorder.event(EventKind::ActiveRegion {
            region: "us-east-1".into(),
            generation: 3,
        });
        recorder.event(EventKind::FaultStart);
        recorder.event(EventKind::ActiveRegion {
            region: "eu-west-1".into(),
            generation: 4,
        });
        recorder.event(EventKind::Heal);
        assert_eq!(recorder.last_active_region(), Some(("eu-west-1".into(), 4)));
    }
}
