//! The set of supervised plugins, reconciled to what is wanted: the local configuration,
//! overridden by the control plane's desired state, all held stopped by `stop_all`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hids_types::desired::DesiredBody;
use hids_types::status::{PluginState, PluginStatus};
use hids_wire::Control;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::PluginSpec;
use crate::supervisor::{self, Context, SharedStatus, Wanted};

struct Managed {
    name: String,
    status: SharedStatus,
    wanted: watch::Sender<Wanted>,
    requests: mpsc::Sender<Control>,
    task: JoinHandle<()>,
}

pub struct PluginManager {
    ctx: Arc<Context>,
    shutdown: watch::Receiver<bool>,
    plugins: Vec<Managed>,
    next_generation: u64,
}

impl PluginManager {
    pub fn new(ctx: Arc<Context>, shutdown: watch::Receiver<bool>) -> Self {
        PluginManager {
            ctx,
            shutdown,
            plugins: Vec::new(),
            next_generation: 1,
        }
    }

    /// Makes the plugins match `specs`. With `hold`, every plugin is stopped (the agent
    /// stays up and controllable). Plugins whose settings did not change are left alone;
    /// plugins no longer in `specs` are stopped.
    pub fn apply(&mut self, specs: &[PluginSpec], hold: bool) {
        for spec in specs {
            let run = spec.enabled && !hold;
            let generation = self.next_generation;
            match self.plugins.iter().find(|m| m.name == spec.name) {
                Some(m) => {
                    let changed = m.wanted.send_if_modified(|w| {
                        if w.spec == *spec && w.run == run {
                            return false;
                        }
                        *w = Wanted {
                            spec: spec.clone(),
                            run,
                            generation,
                        };
                        true
                    });
                    if changed {
                        self.next_generation += 1;
                    }
                }
                None => {
                    self.next_generation += 1;
                    let status = supervisor::new_status(spec);
                    let (tx, rx) = watch::channel(Wanted {
                        spec: spec.clone(),
                        run,
                        generation,
                    });
                    let (requests, requests_rx) = mpsc::channel(supervisor::REQUEST_QUEUE);
                    let task = tokio::spawn(supervisor::supervise(
                        self.ctx.clone(),
                        status.clone(),
                        rx,
                        requests_rx,
                        self.shutdown.clone(),
                    ));
                    self.plugins.push(Managed {
                        name: spec.name.clone(),
                        status,
                        wanted: tx,
                        requests,
                        task,
                    });
                }
            }
        }
        for m in &self.plugins {
            if !specs.iter().any(|s| s.name == m.name) {
                m.wanted
                    .send_if_modified(|w| std::mem::replace(&mut w.run, false));
            }
        }
    }

    /// Restarts one plugin (also out of quarantine). False when there is no such plugin.
    pub fn restart(&mut self, name: &str) -> bool {
        let generation = self.next_generation;
        let Some(m) = self.plugins.iter().find(|m| m.name == name) else {
            return false;
        };
        self.next_generation += 1;
        m.wanted.send_modify(|w| w.generation = generation);
        true
    }

    /// Passes a control request (a snapshot command) on to a running plugin. Never
    /// waits: a request that cannot go now is not kept for later.
    ///
    /// # Errors
    /// Why it was not passed on (no such plugin, not running, requests already
    /// waiting), for the caller's log.
    pub fn request(&self, name: &str, request: Control) -> Result<(), String> {
        let Some(m) = self.plugins.iter().find(|m| m.name == name) else {
            return Err("there is no such plugin on this host".into());
        };
        let state = m.status.lock().unwrap_or_else(|p| p.into_inner()).state;
        if state != PluginState::Running {
            return Err(format!("the plugin is {}, not running", state.as_str()));
        }
        m.requests.try_send(request).map_err(|_| {
            format!(
                "{} requests are already waiting for it",
                supervisor::REQUEST_QUEUE
            )
        })
    }

    pub fn statuses(&self) -> Vec<PluginStatus> {
        self.plugins
            .iter()
            .map(|m| m.status.lock().unwrap_or_else(|p| p.into_inner()).clone())
            .collect()
    }

    /// Waits for every plugin task to finish (after shutdown was signalled), at most
    /// `deadline`. Returns false when some did not finish in time.
    pub async fn join(&mut self, deadline: Duration) -> bool {
        let all = async {
            for m in &mut self.plugins {
                let _ = (&mut m.task).await;
            }
        };
        tokio::time::timeout(deadline, all).await.is_ok()
    }
}

/// A plugin task still running when the manager goes (it did not stop within its
/// deadline) is aborted: dropping the task drops its child, which kills the plugin, and
/// the task's share of the event queue, so the pipeline can finish.
impl Drop for PluginManager {
    fn drop(&mut self) {
        for m in &self.plugins {
            m.task.abort();
        }
    }
}

/// The local plugin specs with the desired state's overrides applied. Problems (a
/// plugin the agent does not know and no usable path for it) are returned as warnings
/// and that entry is skipped: the rest of the desired state still applies.
pub fn effective_specs(local: &[PluginSpec], body: &DesiredBody) -> (Vec<PluginSpec>, Vec<String>) {
    let mut specs = local.to_vec();
    let mut warnings = Vec::new();
    for d in &body.plugins {
        if let Some(problem) = hids_types::desired::plugin_name_problem(&d.name) {
            warnings.push(format!("{problem}; skipped"));
            continue;
        }
        match specs.iter_mut().find(|s| s.name == d.name) {
            Some(s) => {
                if let Some(enabled) = d.enabled {
                    s.enabled = enabled;
                }
                if let Some(args) = &d.args {
                    s.args = args.clone();
                }
                if let Some(path) = &d.path {
                    s.path = PathBuf::from(path);
                }
            }
            None => match &d.path {
                Some(path) if crate::config::is_executable(std::path::Path::new(path)) => {
                    specs.push(PluginSpec {
                        name: d.name.clone(),
                        path: PathBuf::from(path),
                        args: d.args.clone().unwrap_or_default(),
                        enabled: d.enabled.unwrap_or(true),
                        limits: Default::default(),
                        version: None,
                    })
                }
                Some(path) => warnings.push(format!(
                    "plugin {:?}: {path} is not an executable file on this host",
                    d.name
                )),
                // A build to download: the updater adds the plugin once installed.
                None if d.version.is_some() => {}
                None => warnings.push(format!(
                    "plugin {:?} is not configured on this host and the desired state gives no path or build",
                    d.name
                )),
            },
        }
    }
    (specs, warnings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hids_types::desired::DesiredPlugin;

    fn spec(name: &str) -> PluginSpec {
        PluginSpec {
            name: name.into(),
            path: "/bin/sh".into(),
            args: vec![],
            enabled: true,
            limits: Default::default(),
            version: None,
        }
    }

    #[test]
    fn desired_overrides_local_by_name() {
        let body = DesiredBody {
            log_level: None,
            guard: None,
            agent: None,
            plugins: vec![
                DesiredPlugin {
                    name: "process".into(),
                    enabled: Some(false),
                    args: None,
                    path: None,
                    ..Default::default()
                },
                DesiredPlugin {
                    name: "extra".into(),
                    enabled: None,
                    args: Some(vec!["-c".into(), "true".into()]),
                    path: Some("/bin/sh".into()),
                    ..Default::default()
                },
                DesiredPlugin {
                    name: "ghost".into(),
                    enabled: Some(true),
                    args: None,
                    path: None,
                    ..Default::default()
                },
            ],
        };
        let (specs, warnings) = effective_specs(&[spec("process"), spec("other")], &body);
        assert!(!specs[0].enabled);
        assert!(specs[1].enabled);
        assert_eq!(specs[2].name, "extra");
        assert_eq!(specs[2].args, vec!["-c", "true"]);
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("ghost"));
    }
}
