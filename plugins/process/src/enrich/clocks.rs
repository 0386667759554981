//! The kernel's clocks turned into wall time: events carry CLOCK_MONOTONIC, `/proc`
//! start times count clock ticks from boot.

use hids_procfs as procfs;
use hids_types::Timestamp;

const TICK_NS: i128 = 1_000_000_000 / procfs::TICKS_PER_SEC as i128;

/// Offsets between the clocks, sampled together (and again every second: wall time can
/// be stepped).
#[derive(Debug, Clone, Copy)]
pub struct Clocks {
    /// realtime - monotonic, in ns.
    mono_to_wall: i128,
    /// boottime - monotonic, in ns: `/proc` start times count from boot.
    boot_minus_mono: i128,
    boot_wall_ns: i128,
}

impl Clocks {
    pub fn now() -> Self {
        use rustix::time::{clock_gettime, ClockId};
        let ns = |id| {
            let t = clock_gettime(id);
            i128::from(t.tv_sec) * 1_000_000_000 + i128::from(t.tv_nsec)
        };
        let mono = ns(ClockId::Monotonic);
        let real = ns(ClockId::Realtime);
        let boot = ns(ClockId::Boottime);
        Clocks {
            mono_to_wall: real - mono,
            boot_minus_mono: boot - mono,
            boot_wall_ns: real - boot,
        }
    }

    pub fn wall_from_mono(&self, ts_ns: u64) -> Timestamp {
        Timestamp::from_unix_nanos((i128::from(ts_ns) + self.mono_to_wall).max(0) as u64)
    }

    pub fn start_wall(&self, start_ticks: u64) -> Timestamp {
        let since_boot = i128::from(start_ticks) * TICK_NS;
        Timestamp::from_unix_nanos((self.boot_wall_ns + since_boot).max(0) as u64)
    }

    /// True when a process that started at `start_ticks` cannot be the one that exec'd
    /// at `exec_ts_ns`: the pid was reused in between.
    pub fn started_after(&self, start_ticks: u64, exec_ts_ns: u64) -> bool {
        let start_mono = i128::from(start_ticks) * TICK_NS - self.boot_minus_mono;
        // One tick of slack: start times are truncated to ticks.
        start_mono > i128::from(exec_ts_ns) + TICK_NS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Booted at wall time 1000 s; the monotonic clock ran 5 s slower than boottime
    /// (5 s suspended).
    fn clocks() -> Clocks {
        Clocks {
            mono_to_wall: 1005 * 1_000_000_000,
            boot_minus_mono: 5 * 1_000_000_000,
            boot_wall_ns: 1000 * 1_000_000_000,
        }
    }

    #[test]
    fn monotonic_and_start_times_become_wall_time() {
        let c = clocks();
        assert_eq!(
            c.wall_from_mono(2_000_000_000),
            Timestamp::from_unix_nanos(1007 * 1_000_000_000)
        );
        let ticks = 3 * procfs::TICKS_PER_SEC;
        assert_eq!(
            c.start_wall(ticks),
            Timestamp::from_unix_nanos(1003 * 1_000_000_000)
        );
    }

    #[test]
    fn a_process_started_after_the_exec_is_a_reused_pid() {
        let c = clocks();
        // Started 10 s after boot = 5 s on the monotonic clock.
        let start = 10 * procfs::TICKS_PER_SEC;
        let exec_mono = 5_000_000_000u64;
        assert!(
            !c.started_after(start, exec_mono),
            "exec'd right as it started"
        );
        assert!(
            !c.started_after(start + 1, exec_mono),
            "within one tick of slack"
        );
        assert!(c.started_after(start + 2, exec_mono));
        assert!(!c.started_after(start, exec_mono + 60_000_000_000));
    }
}
