//! Resource guard transitions: a log line and an event on the `agent` stream each
//! (`guard_tripped`, `guard_probing`, `guard_recovered`).

use hids_types::guard::GuardStatus;

use crate::events::AgentEvents;

/// Over a limit for too long: every plugin is stopped for the cooldown.
pub struct GuardTripped<'a> {
    pub reason: &'a str,
    pub status: &'a GuardStatus,
}

impl GuardTripped<'_> {
    pub fn emit(self, events: &mut AgentEvents) {
        tracing::error!(
            "resource guard tripped: {}; stopping every plugin for {} s (trip {})",
            self.reason,
            self.status.cooldown_secs,
            self.status.trips
        );
        events.guard("guard_tripped", self.status);
    }
}

/// The cooldown is over: plugins run again, on probation.
pub struct GuardProbing<'a> {
    pub probe_secs: u64,
    pub status: &'a GuardStatus,
}

impl GuardProbing<'_> {
    pub fn emit(self, events: &mut AgentEvents) {
        tracing::warn!(
            "resource guard: cooldown over, starting plugins again on probation for {} s",
            self.probe_secs
        );
        events.guard("guard_probing", self.status);
    }
}

/// Probation passed without a trip.
pub struct GuardRecovered<'a> {
    pub status: &'a GuardStatus,
}

impl GuardRecovered<'_> {
    pub fn emit(self, events: &mut AgentEvents) {
        tracing::info!("resource guard: probation passed; back to normal");
        events.guard("guard_recovered", self.status);
    }
}
