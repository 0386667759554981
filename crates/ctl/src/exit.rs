//! hidsctl's exit codes, named once. `hidsctl --help` lists them from here, so a script
//! can tell "the change did not reach every host" from "hidsctl failed".

use std::process::ExitCode;

/// How hidsctl ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Done. For a change with `--wait`: every target applied it.
    Success,
    /// An error: etcd unreachable or refusing, a bad file or key, no host matching, an
    /// `enroll`/`unenroll` that failed for some host.
    Error,
    /// The command line was not understood (clap's own code).
    Usage,
    /// `reconcile`: some events were lost without a declaration.
    UndeclaredLoss,
    /// A change with `--wait`: written, but not every target applied it in time (some
    /// refused it, were offline, or had not answered).
    NotAllApplied,
    /// `vulns hosts`, `packages hosts`/`show`: the query matched nothing.
    NothingFound,
    /// `rollout start`/`status`: the rollout stopped by itself before its last wave
    /// (failures or rollbacks over `--max-failure-percent`, or a wave timed out with
    /// hosts pending); later waves were not written.
    RolloutHalted,
    /// `gateways`: a gateway's report differs from the status keys on its lease.
    Inconsistent,
}

impl Exit {
    /// Every code, in the order `--help` lists them.
    const ALL: [Exit; 8] = [
        Exit::Success,
        Exit::Error,
        Exit::Usage,
        Exit::UndeclaredLoss,
        Exit::NotAllApplied,
        Exit::NothingFound,
        Exit::RolloutHalted,
        Exit::Inconsistent,
    ];

    /// The process exit status. Values are a contract with scripts: never renumber.
    pub const fn code(self) -> u8 {
        match self {
            Exit::Success => 0,
            Exit::Error => 1,
            Exit::Usage => 2,
            Exit::UndeclaredLoss => 3,
            Exit::NotAllApplied => 4,
            Exit::NothingFound => 5,
            Exit::RolloutHalted => 6,
            Exit::Inconsistent => 7,
        }
    }

    fn meaning(self) -> &'static str {
        match self {
            Exit::Success => "done (with --wait: every target applied the change)",
            Exit::Error => "error (etcd, files, keys, no matching host, a failed enroll)",
            Exit::Usage => "the command line was not understood",
            Exit::UndeclaredLoss => "reconcile: events lost without a declaration",
            Exit::NotAllApplied => "a change with --wait: not every target applied it in time",
            Exit::NothingFound => "vulns/packages: no host matched the query",
            Exit::RolloutHalted => {
                "rollout: halted (too many failures or rollbacks, or a wave timed out); \
                 later waves not written"
            }
            Exit::Inconsistent => {
                "gateways: a gateway's report differs from the status keys on its lease"
            }
        }
    }

    /// The table `hidsctl --help` ends with.
    pub fn help() -> String {
        let mut text = String::from("Exit codes:");
        for exit in Exit::ALL {
            text.push_str(&format!("\n  {}  {}", exit.code(), exit.meaning()));
        }
        text
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(exit.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_and_listed() {
        let help = Exit::help();
        let mut codes: Vec<u8> = Exit::ALL.iter().map(|e| e.code()).collect();
        codes.dedup();
        assert_eq!(codes, [0, 1, 2, 3, 4, 5, 6, 7]);
        for exit in Exit::ALL {
            assert!(help.contains(&format!("  {}  ", exit.code())), "{help}");
        }
    }
}
