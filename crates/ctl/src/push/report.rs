//! Stage 5: the report. What was written and, with `--wait`, where every target stands:
//! as JSON, or as a summary for a person.

use serde::Serialize;

use super::acks::{Ack, HostAck, Tally};

#[derive(Serialize, Default)]
pub struct Outcome {
    action: String,
    generation: u64,
    targets: usize,
    /// Targets that applied the document (`applied_generation` reached it).
    acked: usize,
    refused: usize,
    offline: usize,
    pending: usize,
    pub elapsed_secs: f64,
    /// From each host's write to its acknowledgement being seen, over the hosts that
    /// applied: milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    ack_ms: Option<Percentiles>,
    refusals: Vec<Refusal>,
    offline_hosts: Vec<String>,
    pending_hosts: Vec<String>,
    waited: bool,
}

#[derive(Serialize, Default)]
struct Percentiles {
    p50: f64,
    p99: f64,
    max: f64,
}

impl Percentiles {
    fn of(mut ms: Vec<f64>) -> Option<Self> {
        if ms.is_empty() {
            return None;
        }
        ms.sort_by(f64::total_cmp);
        let at = |q: f64| ms[((ms.len() as f64 * q).ceil() as usize).clamp(1, ms.len()) - 1];
        Some(Percentiles {
            p50: at(0.50),
            p99: at(0.99),
            max: ms[ms.len() - 1],
        })
    }
}

#[derive(Serialize)]
struct Refusal {
    host_id: String,
    reason: String,
}

/// Hosts listed by name per state, at most.
const LISTED_HOSTS: usize = 100;

impl Outcome {
    /// A change written and not waited for: every target pending.
    pub fn written(action: String, generation: u64, targets: usize) -> Self {
        Outcome {
            action,
            generation,
            targets,
            pending: targets,
            ..Default::default()
        }
    }

    /// Every target applied the change.
    pub fn all_applied(&self) -> bool {
        self.acked == self.targets
    }

    /// Where each of `hosts` stood when the wait ended.
    pub fn waited(&mut self, hosts: &[String], tally: &Tally<'_>) {
        self.waited = true;
        self.pending = 0;
        self.ack_ms = Percentiles::of(tally.ack_delays_ms());
        for h in hosts {
            let Some(HostAck { ack, status, .. }) = tally.get(h) else {
                continue;
            };
            match ack {
                Ack::Applied => self.acked += 1,
                Ack::Refused => {
                    self.refused += 1;
                    self.refusals.push(Refusal {
                        host_id: h.clone(),
                        reason: status
                            .as_ref()
                            .and_then(|s| s.desired_error.clone())
                            .unwrap_or_default(),
                    });
                }
                Ack::Offline => {
                    self.offline += 1;
                    if self.offline_hosts.len() < LISTED_HOSTS {
                        self.offline_hosts.push(h.clone());
                    }
                }
                Ack::Pending => {
                    self.pending += 1;
                    if self.pending_hosts.len() < LISTED_HOSTS {
                        self.pending_hosts.push(h.clone());
                    }
                }
            }
        }
    }

    /// # Errors
    /// Only if the outcome cannot be encoded as JSON.
    pub fn print(&self, json: bool) -> anyhow::Result<()> {
        if json {
            out!("{}", serde_json::to_string_pretty(self)?);
        } else {
            self.print_summary();
        }
        Ok(())
    }

    fn print_summary(&self) {
        let o = self;
        out!(
            "{} generation {} to {} host(s)",
            o.action,
            o.generation,
            o.targets
        );
        if !o.waited {
            out!(
                "written in {:.2}s; not waiting for acknowledgements (use --wait)",
                o.elapsed_secs
            );
            return;
        }
        out!(
            "applied {}  refused {}  offline {}  pending {}  in {:.2}s",
            o.acked,
            o.refused,
            o.offline,
            o.pending,
            o.elapsed_secs
        );
        if let Some(p) = &o.ack_ms {
            out!(
                "acknowledged after write: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
                p.p50,
                p.p99,
                p.max
            );
        }
        for r in &o.refusals {
            out!("  refused by {}: {}", r.host_id, r.reason);
        }
        if !o.offline_hosts.is_empty() {
            out!("  offline: {}", o.offline_hosts.join(" "));
        }
        if !o.pending_hosts.is_empty() {
            out!("  pending: {}", o.pending_hosts.join(" "));
        }
    }
}
