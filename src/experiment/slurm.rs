//! The Slurm batch script of `memvirt experiment submit`: one job array whose task `I` runs
//! `memvirt experiment run SNAPSHOT --results DIR --chunk I/N`, so the cluster runs exactly the
//! points a local run would and writes the same result files.
//!
//! Everything the tasks need is named by absolute path (the memvirt binary, the experiment's
//! snapshot, the results directory), so the cluster's nodes must share that file system, as
//! they do on a typical cluster's home or scratch directories.

use std::path::{Path, PathBuf};

/// Slurm's default `MaxArraySize` is 1001, so task numbers run from 0 to 1000: a larger array
/// is refused by a default installation.
pub const MAX_TASKS: usize = 1000;

/// One job array.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    /// The job name (`memvirt-` and the experiment's name).
    pub name: String,
    /// Array tasks; task `I` runs chunk `I/tasks` of the points.
    pub tasks: usize,
    /// CPUs each task asks for and runs its points on.
    pub cpus_per_task: usize,
    /// The memvirt binary the tasks run.
    pub memvirt: PathBuf,
    /// The experiment file they run (the snapshot in the results directory).
    pub experiment: PathBuf,
    /// The results directory.
    pub results: PathBuf,
    /// Where each task's standard output and error go (`%A_%a.out` inside it).
    pub logs: PathBuf,
    /// `--partition`, if given.
    pub partition: Option<String>,
    /// `--time`, if given.
    pub time: Option<String>,
    /// Further `#SBATCH` options, as given (`--sbatch-arg=--mem=2G`).
    pub extra: Vec<String>,
}

/// Why a job cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// A path Slurm's `#SBATCH` lines or file patterns cannot hold.
    #[error("{what} {path}: {why}")]
    Path {
        /// Which path.
        what: &'static str,
        /// The path.
        path: String,
        /// Why not.
        why: &'static str,
    },
    /// More tasks than a default Slurm accepts.
    #[error("{0} tasks: a default Slurm allows at most {MAX_TASKS} (MaxArraySize); give --points-per-task a larger value")]
    TooManyTasks(usize),
    /// An option that would break the script.
    #[error("--sbatch-arg {0:?}: give one option such as --mem=2G, without line breaks")]
    BadOption(String),
}

impl Job {
    /// The batch script, to be submitted with `sbatch`.
    pub fn script(&self) -> Result<String, JobError> {
        if self.tasks == 0 || self.tasks > MAX_TASKS {
            return Err(JobError::TooManyTasks(self.tasks));
        }
        // `#SBATCH` lines are not parsed by a shell: a path there cannot be quoted, and `%`
        // starts one of Slurm's file-name patterns.
        check_plain("the log directory", &self.logs)?;
        for (what, path) in [
            ("memvirt", &self.memvirt),
            ("the experiment", &self.experiment),
            ("results", &self.results),
        ] {
            if path.to_str().is_none_or(|p| p.contains(['\n', '\r'])) {
                return Err(JobError::Path {
                    what,
                    path: path.display().to_string(),
                    why: "not representable in a batch script (line break or not UTF-8)",
                });
            }
        }
        if let Some(bad) =
            self.extra.iter().find(|o| o.contains(['\n', '\r']) || !o.starts_with('-'))
        {
            return Err(JobError::BadOption(bad.clone()));
        }
        let mut s = String::from("#!/bin/bash\n");
        s.push_str(&format!(
            "# memvirt experiment {}: {} array tasks, task I runs every {}-th point from I.\n",
            self.name, self.tasks, self.tasks
        ));
        s.push_str("# Written by `memvirt experiment submit`; `memvirt experiment collect` merges the results.\n");
        s.push_str(&format!("#SBATCH --job-name={}\n", self.name));
        s.push_str(&format!("#SBATCH --array=0-{}\n", self.tasks - 1));
        s.push_str(&format!("#SBATCH --cpus-per-task={}\n", self.cpus_per_task));
        s.push_str("#SBATCH --ntasks=1\n");
        s.push_str(&format!("#SBATCH --output={}/%A_%a.out\n", self.logs.display()));
        if let Some(p) = &self.partition {
            s.push_str(&format!("#SBATCH --partition={p}\n"));
        }
        if let Some(t) = &self.time {
            s.push_str(&format!("#SBATCH --time={t}\n"));
        }
        for option in &self.extra {
            s.push_str(&format!("#SBATCH {option}\n"));
        }
        s.push_str("set -eu\n");
        s.push_str(&format!(
            "exec {} experiment run {} --results {} --chunk \"${{SLURM_ARRAY_TASK_ID}}/{}\" --jobs \"${{SLURM_CPUS_PER_TASK:-1}}\"\n",
            quoted(&self.memvirt),
            quoted(&self.experiment),
            quoted(&self.results),
            self.tasks
        ));
        Ok(s)
    }
}

/// Refuses a path with white space, `%` or a line break, which an `#SBATCH` line cannot hold.
fn check_plain(what: &'static str, path: &Path) -> Result<(), JobError> {
    let plain = path.to_str().is_some_and(|p| !p.contains(|c: char| c.is_whitespace() || c == '%'));
    if plain {
        Ok(())
    } else {
        Err(JobError::Path {
            what,
            path: path.display().to_string(),
            why:
                "holds white space or `%`, which an #SBATCH line cannot (choose another --results)",
        })
    }
}

/// `path` as one shell word: single-quoted, each `'` written as `'\''`.
fn quoted(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> Job {
        Job {
            name: "memvirt-smp".into(),
            tasks: 3,
            cpus_per_task: 2,
            memvirt: "/opt/memvirt/bin/memvirt".into(),
            experiment: "/data/it's here/experiment.toml".into(),
            results: "/data/res".into(),
            logs: "/data/res/slurm".into(),
            partition: Some("short".into()),
            time: None,
            extra: vec!["--mem=2G".into()],
        }
    }

    #[test]
    fn the_script_names_the_array_the_chunk_and_quotes_paths_for_the_shell() {
        let s = job().script().unwrap();
        assert!(s.starts_with("#!/bin/bash\n"));
        assert!(s.contains("#SBATCH --array=0-2\n"));
        assert!(s.contains("#SBATCH --cpus-per-task=2\n"));
        assert!(s.contains("#SBATCH --partition=short\n"));
        assert!(s.contains("#SBATCH --mem=2G\n"));
        assert!(!s.contains("--time"));
        assert!(s.contains("#SBATCH --output=/data/res/slurm/%A_%a.out\n"));
        assert!(s.contains(
            "exec '/opt/memvirt/bin/memvirt' experiment run '/data/it'\\''s here/experiment.toml' \
             --results '/data/res' --chunk \"${SLURM_ARRAY_TASK_ID}/3\""
        ));
    }

    #[test]
    fn paths_and_options_a_batch_script_cannot_hold_are_refused() {
        let mut j = job();
        j.logs = "/data/my results/slurm".into();
        assert!(j.script().unwrap_err().to_string().contains("white space"));
        let mut j = job();
        j.extra = vec!["--mem=2G\nrm -rf /".into()];
        assert!(matches!(j.script(), Err(JobError::BadOption(_))));
        let mut j = job();
        j.tasks = MAX_TASKS + 1;
        assert!(matches!(j.script(), Err(JobError::TooManyTasks(_))));
        j.tasks = 0;
        assert!(j.script().is_err());
    }
}
