//! Up/down state with hysteresis: `rise` consecutive successes bring a backend up,
//! `fall` consecutive failures take it down; a single contrary result resets the run.
//! Pure and synchronous, so its rules are tested on their own.

/// A state change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Became healthy.
    Up,
    /// Became unhealthy.
    Down,
}

/// Hysteresis over check results.
#[derive(Debug, Clone)]
pub struct Hysteresis {
    rise: u32,
    fall: u32,
    up: bool,
    /// Consecutive results contrary to the current state.
    run: u32,
}

impl Hysteresis {
    /// Starts `up` (or down) with thresholds `rise` and `fall` (each at least 1).
    pub fn new(rise: u32, fall: u32, up: bool) -> Self {
        Hysteresis {
            rise: rise.max(1),
            fall: fall.max(1),
            up,
            run: 0,
        }
    }

    /// Whether the state is up.
    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Records one result; returns the transition it caused, if any.
    pub fn record(&mut self, success: bool) -> Option<Transition> {
        if success == self.up {
            self.run = 0;
            return None;
        }
        self.run += 1;
        let threshold = if self.up { self.fall } else { self.rise };
        if self.run < threshold {
            return None;
        }
        self.up = success;
        self.run = 0;
        Some(if success {
            Transition::Up
        } else {
            Transition::Down
        })
    }

    /// Takes over the state and current run of `previous` (the same backend before a
    /// reload), keeping this one's own `rise` and `fall`.
    pub fn carry_over(&mut self, previous: &Hysteresis) {
        self.up = previous.up;
        self.run = previous
            .run
            .min(if self.up { self.fall } else { self.rise } - 1);
    }

    /// Forces the state down (passive health); `rise` successes bring it back.
    pub fn force_down(&mut self) -> Option<Transition> {
        self.run = 0;
        if self.up {
            self.up = false;
            Some(Transition::Down)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn falls_after_fall_consecutive_failures() {
        let mut h = Hysteresis::new(2, 3, true);
        assert_eq!(h.record(false), None);
        assert_eq!(h.record(false), None);
        assert_eq!(h.record(false), Some(Transition::Down));
        assert!(!h.is_up());
        assert_eq!(h.record(false), None);
    }

    #[test]
    fn a_success_resets_the_failure_run() {
        let mut h = Hysteresis::new(2, 3, true);
        h.record(false);
        h.record(false);
        assert_eq!(h.record(true), None);
        assert_eq!(h.record(false), None);
        assert_eq!(h.record(false), None);
        assert!(h.is_up());
        assert_eq!(h.record(false), Some(Transition::Down));
    }

    #[test]
    fn rises_after_rise_consecutive_successes() {
        let mut h = Hysteresis::new(2, 3, false);
        assert_eq!(h.record(true), None);
        assert_eq!(h.record(false), None);
        assert_eq!(h.record(true), None);
        assert_eq!(h.record(true), Some(Transition::Up));
        assert!(h.is_up());
    }

    #[test]
    fn rise_and_fall_of_one_flip_at_once() {
        let mut h = Hysteresis::new(1, 1, true);
        assert_eq!(h.record(false), Some(Transition::Down));
        assert_eq!(h.record(true), Some(Transition::Up));
    }

    #[test]
    fn carry_over_keeps_the_new_thresholds() {
        let mut old = Hysteresis::new(2, 5, true);
        old.record(false);
        old.record(false);
        old.record(false);
        let mut new = Hysteresis::new(2, 2, true);
        new.carry_over(&old);
        // Three failures already counted, but the new fall is 2: one more takes it down.
        assert!(new.is_up());
        assert_eq!(new.record(false), Some(Transition::Down));
        let down = Hysteresis::new(1, 1, false);
        let mut fresh = Hysteresis::new(3, 3, true);
        fresh.carry_over(&down);
        assert!(!fresh.is_up());
        assert_eq!(fresh.record(true), None);
        assert_eq!(fresh.record(true), None);
        assert_eq!(fresh.record(true), Some(Transition::Up));
    }

    #[test]
    fn force_down_needs_rise_to_return() {
        let mut h = Hysteresis::new(3, 2, true);
        assert_eq!(h.force_down(), Some(Transition::Down));
        assert_eq!(h.force_down(), None);
        assert_eq!(h.record(true), None);
        assert_eq!(h.record(true), None);
        assert_eq!(h.record(true), Some(Transition::Up));
    }
}
