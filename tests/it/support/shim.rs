//! Storage faults on demand: `faultshim.c`, built with the system's C
//! compiler into a tempdir and preloaded into the real binary, fails writes
//! and syncs (ENOSPC, EIO) at random, only under the daemon's `data_dir`
//! and only while a switch file exists; it writes down each fault it makes.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Which calls fail, how often: the first rule whose `path` is part of
/// the file's path and whose `op` (`write`, `sync` or `any`) matches
/// applies; its `rate` is in [0, 1]. Calls no rule matches never fail.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    pub path: &'static str,
    pub op: &'static str,
    pub rate: f64,
}

/// One fault the shim made.
#[derive(Debug, Clone)]
pub struct Fault {
    pub at: SystemTime,
    /// `write` or `sync` (fsync, fdatasync, sync_file_range).
    pub op: String,
    pub errno: String,
    /// A prefix was written, and the next write to the file failed.
    pub partial: bool,
    pub path: PathBuf,
}

impl Fault {
    /// A fault in the routing and delivery state, not the event log.
    pub fn in_state(&self) -> bool {
        self.path.components().any(|c| c.as_os_str() == "state")
    }

    /// A failed sync of an event-log segment: by design it poisons the
    /// log until a restart.
    pub fn poisons_the_log(&self) -> bool {
        self.op == "sync" && self.path.extension().is_some_and(|e| e == "seg")
    }
}

/// The built shim and its files, for one daemon's `data_dir`.
pub struct FaultShim {
    library: PathBuf,
    data: PathBuf,
    switch: PathBuf,
    log: PathBuf,
}

impl FaultShim {
    /// Builds the shim into `dir` for a daemon whose data is `data` (made
    /// here). `None` when there is no C compiler.
    pub fn build(dir: &Path, data: &Path) -> Option<FaultShim> {
        let source = dir.join("faultshim.c");
        std::fs::write(&source, include_str!("faultshim.c")).unwrap();
        let library = dir.join("faultshim.so");
        let out = match std::process::Command::new("cc")
            .args(["-shared", "-fPIC", "-O2", "-Wall", "-o"])
            .arg(&library)
            .arg(&source)
            .arg("-ldl")
            .output()
        {
            Ok(out) => out,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => panic!("cc: {e}"),
        };
        assert!(
            out.status.success(),
            "building the fault shim: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::create_dir_all(data).unwrap();
        Some(FaultShim {
            library,
            // The shim compares with what /proc/self/fd links to.
            data: data.canonicalize().unwrap(),
            switch: dir.join("faults.on"),
            log: dir.join("faults.log"),
        })
    }

    /// The environment that preloads the shim, faults off, with `seed`.
    pub fn env(&self, seed: u64) -> Vec<(String, String)> {
        let s = |p: &Path| p.display().to_string();
        vec![
            ("LD_PRELOAD".into(), s(&self.library)),
            ("HOOKGATE_FAULT_DIR".into(), s(&self.data)),
            ("HOOKGATE_FAULT_SWITCH".into(), s(&self.switch)),
            ("HOOKGATE_FAULT_LOG".into(), s(&self.log)),
            ("HOOKGATE_FAULT_SEED".into(), seed.to_string()),
        ]
    }

    /// Faults on, by `rules` (the file is replaced whole: the shim never
    /// reads half of it).
    pub fn on(&self, rules: &[Rule]) {
        let tmp = self.switch.with_extension("tmp");
        let text: String = rules
            .iter()
            .map(|r| {
                assert!(!r.path.contains(char::is_whitespace), "{r:?}");
                format!("{} {} {}\n", r.path, r.op, r.rate)
            })
            .collect();
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &self.switch).unwrap();
    }

    pub fn off(&self) {
        let _ = std::fs::remove_file(&self.switch);
    }

    /// The faults made so far, oldest first.
    pub fn faults(&self) -> Vec<Fault> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .map(|line| {
                let mut f = line.splitn(5, ' ');
                let mut next = || f.next().unwrap_or_else(|| panic!("fault log: {line}"));
                let secs: f64 = next().parse().unwrap();
                Fault {
                    at: SystemTime::UNIX_EPOCH + Duration::from_secs_f64(secs),
                    op: next().into(),
                    errno: next().into(),
                    partial: next() == "partial",
                    path: next().into(),
                }
            })
            .collect()
    }
}
