//! An instance start, step by step: when asked ([`crate::Runtime::spawn_with_steps`]), the daemon
//! side and sandbox-init note the monotonic clock at the end of each step of a start, so that a
//! benchmark can say where its milliseconds go. Both sides read the same clock: CLOCK_MONOTONIC
//! is not namespaced unless a time namespace is made, and an instance gets none.
//!
//! sandbox-init keeps its notes in a process-wide list (it is single-threaded and execs at the
//! end) and writes them as JSON to a file of the instance directory, opened before it pivots,
//! just before it execs the command; the daemon reads them once the exec is seen.

use std::cell::RefCell;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Which process took a step: the daemon (its spawn task) or the instance's sandbox-init.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StartSide {
    Daemon,
    SandboxInit,
}

/// One step: what was just done, by whom, and when it ended (CLOCK_MONOTONIC, nanoseconds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartStep {
    pub side: StartSide,
    pub name: String,
    pub at_ns: u64,
}

/// The steps of one start, in the order they ended; the first is the daemon's "begin".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartSteps {
    pub steps: Vec<StartStep>,
}

impl StartSteps {
    /// Each step's duration since the step before it on the same side (sandbox-init's first
    /// step counts from the daemon's clone), in microseconds, in the order the steps ended.
    pub fn durations_us(&self) -> Vec<(StartSide, &str, f64)> {
        let at = |side: StartSide, name: &str| {
            self.steps
                .iter()
                .find(|s| s.side == side && s.name == name)
                .map(|s| s.at_ns)
        };
        let cloned = at(StartSide::Daemon, CLONED);
        let mut last_daemon = None;
        let mut last_init = None;
        let mut out = Vec::with_capacity(self.steps.len());
        for step in &self.steps {
            let last = match step.side {
                StartSide::Daemon => &mut last_daemon,
                StartSide::SandboxInit => &mut last_init,
            };
            let from = match (step.side, *last) {
                (_, Some(at)) => at,
                (StartSide::SandboxInit, None) => cloned.unwrap_or(step.at_ns),
                (StartSide::Daemon, None) => step.at_ns,
            };
            out.push((
                step.side,
                step.name.as_str(),
                step.at_ns.saturating_sub(from) as f64 / 1000.0,
            ));
            *last = Some(step.at_ns);
        }
        out
    }

    /// The steps sorted by when they ended (the two sides interleave).
    pub(crate) fn merge(daemon: Vec<StartStep>, init: Vec<StartStep>) -> Self {
        let mut steps = daemon;
        steps.extend(init);
        steps.sort_by_key(|s| s.at_ns);
        StartSteps { steps }
    }
}

/// The daemon step after which sandbox-init's first step is counted.
pub(crate) const CLONED: &str = "clone3 into the namespaces";

/// The file of the instance directory that sandbox-init writes its steps to.
pub(crate) fn file(instance_dir: &Path) -> PathBuf {
    instance_dir.join("start-steps.json")
}

pub(crate) fn now_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always there");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

/// The daemon side's notes for one spawn; takes none unless asked.
pub(crate) struct DaemonSteps(Option<Vec<StartStep>>);

impl DaemonSteps {
    pub(crate) fn new(record: bool) -> Self {
        let mut steps = DaemonSteps(record.then(Vec::new));
        steps.mark("begin");
        steps
    }

    pub(crate) fn recording(&self) -> bool {
        self.0.is_some()
    }

    pub(crate) fn mark(&mut self, name: &str) {
        if let Some(steps) = &mut self.0 {
            steps.push(StartStep {
                side: StartSide::Daemon,
                name: name.to_string(),
                at_ns: now_ns(),
            });
        }
    }

    /// With sandbox-init's steps from the instance directory (the file is removed).
    pub(crate) fn finish(self, instance_dir: &Path) -> StartSteps {
        let daemon = self.0.unwrap_or_default();
        let path = file(instance_dir);
        let init = std::fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Vec<StartStep>>(&bytes).ok())
            .unwrap_or_default();
        let _ = std::fs::remove_file(&path);
        StartSteps::merge(daemon, init)
    }
}

thread_local! {
    /// sandbox-init's notes, and the file they go to; none unless the daemon asked.
    static INIT_STEPS: RefCell<Option<(std::fs::File, Vec<StartStep>)>> = const { RefCell::new(None) };
}

/// sandbox-init: note steps from now on, into `file` (opened before the pivot). The time it
/// started running is noted first, as "sandbox-init runs".
pub(crate) fn init_record(file: std::fs::File, started_ns: u64) {
    INIT_STEPS.with(|steps| {
        *steps.borrow_mut() = Some((
            file,
            vec![StartStep {
                side: StartSide::SandboxInit,
                name: "sandbox-init runs".into(),
                at_ns: started_ns,
            }],
        ))
    });
}

/// sandbox-init: `name` was just done (nothing when not recording).
pub(crate) fn init_mark(name: &str) {
    INIT_STEPS.with(|steps| {
        if let Some((_, steps)) = steps.borrow_mut().as_mut() {
            steps.push(StartStep {
                side: StartSide::SandboxInit,
                name: name.to_string(),
                at_ns: now_ns(),
            });
        }
    });
}

/// sandbox-init, just before the exec: writes the notes (a failure only loses them).
pub(crate) fn init_write() {
    INIT_STEPS.with(|steps| {
        if let Some((file, steps)) = steps.borrow_mut().as_mut() {
            if let Ok(json) = serde_json::to_vec(steps) {
                let _ = file.write_all(&json);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(side: StartSide, name: &str, at_ns: u64) -> StartStep {
        StartStep {
            side,
            name: name.into(),
            at_ns,
        }
    }

    #[test]
    fn durations_count_from_the_step_before_on_the_same_side() {
        use StartSide::{Daemon, SandboxInit};
        let steps = StartSteps::merge(
            vec![
                step(Daemon, "begin", 1_000_000),
                step(Daemon, CLONED, 1_200_000),
                step(Daemon, "veth", 1_900_000),
                step(Daemon, "exec seen", 3_000_000),
            ],
            vec![
                step(SandboxInit, "sandbox-init runs", 1_700_000),
                step(SandboxInit, "root", 2_500_000),
            ],
        );
        let names: Vec<_> = steps.steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "begin",
                CLONED,
                "sandbox-init runs",
                "veth",
                "root",
                "exec seen"
            ]
        );
        let durations = steps.durations_us();
        assert_eq!(durations[0], (Daemon, "begin", 0.0));
        assert_eq!(durations[1], (Daemon, CLONED, 200.0));
        // sandbox-init's first step counts from the clone.
        assert_eq!(durations[2], (SandboxInit, "sandbox-init runs", 500.0));
        assert_eq!(durations[3], (Daemon, "veth", 700.0));
        assert_eq!(durations[4], (SandboxInit, "root", 800.0));
        assert_eq!(durations[5], (Daemon, "exec seen", 1100.0));
    }

    #[test]
    fn nothing_is_noted_unless_asked() {
        let mut steps = DaemonSteps::new(false);
        steps.mark("anything");
        assert!(!steps.recording());
        let dir = tempfile::tempdir().unwrap();
        assert!(steps.finish(dir.path()).steps.is_empty());
    }

    #[test]
    fn the_daemon_reads_and_removes_the_init_file() {
        let dir = tempfile::tempdir().unwrap();
        let init = vec![step(StartSide::SandboxInit, "sandbox-init runs", u64::MAX)];
        std::fs::write(file(dir.path()), serde_json::to_vec(&init).unwrap()).unwrap();
        let mut steps = DaemonSteps::new(true);
        steps.mark("exec seen");
        let all = steps.finish(dir.path());
        assert_eq!(all.steps.len(), 3);
        assert_eq!(all.steps[2].side, StartSide::SandboxInit);
        assert!(!file(dir.path()).exists());
    }
}
