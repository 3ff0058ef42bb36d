//! `memvirt sweep`, part of the binary (declared in `main.rs`, not in the library): turns
//! [`SweepArgs`] into a [`SweepSpec`], runs it with [`memvirt::sweep::sweep`], prints the matrix
//! and writes the chart with the same atomic helper as `--output`.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use memvirt::output;
use memvirt::plot;
use memvirt::scheme::SchemeKind;
use memvirt::sweep::{self, Journal, SweepSpec};
use memvirt::workload::WorkloadKind;

use super::{
    check_output, emit, has_param, selected, write_atomically, Setup, SharedBar, SweepArgs,
};
use memvirt::outfile;

/// What `--lsp-micro` stands for.
const LSP_MICRO_VARY: &str = "workload.modify_ratio=0:1:0.1";
const LSP_MICRO_SCHEMES: [SchemeKind; 5] =
    [SchemeKind::Tsp, SchemeKind::TspUnsync, SchemeKind::Ssp, SchemeKind::Lsp, SchemeKind::Rvirt];

pub(super) fn sweep(args: &SweepArgs) -> Result<()> {
    let inputs = args.machine.inputs();
    check_output(&args.out, &inputs)?;
    if let Some(svg) = &args.svg {
        if args.out.output.as_ref().is_some_and(|o| o == svg) {
            bail!("--svg and --output both name {}: give each its own file", svg.display());
        }
        // The same early check as --output's.
        outfile::check(svg, &inputs).context("--svg")?;
    }
    let (workload, vary, default_schemes) = if args.lsp_micro {
        (WorkloadKind::LspMicro, LSP_MICRO_VARY, &LSP_MICRO_SCHEMES[..])
    } else {
        match (args.workload, args.vary.as_deref()) {
            (Some(w), Some(v)) => (w, v, SchemeKind::ALL),
            _ => bail!("sweep needs --workload and --vary (or --lsp-micro)"),
        }
    };
    let (key, values) = sweep::parse_vary(vary).map_err(|e| anyhow!("--vary {e}"))?;
    let schemes = if args.schemes.is_empty() && !args.lsp_micro {
        super::runnable_schemes(&args.machine)?
    } else {
        selected(&args.schemes, default_schemes)
    };
    let Some(&first) = schemes.first() else { bail!("--schemes names no scheme") };
    let setup = Setup::new(&args.machine, &schemes, &[workload])?;
    if key.strip_prefix("workload.").is_none() && has_param(workload, &key) {
        bail!(
            "--vary {key}: `{key}` is a parameter of {}; write `workload.{key}`",
            workload.name()
        );
    }
    let spec = SweepSpec {
        base: setup.spec(first, workload, true),
        schemes,
        key,
        values,
        metric: args.metric,
    };
    // Every value is checked before any simulation, each error naming its value.
    for value in &spec.values {
        spec.check_value(value).with_context(|| format!("--vary {}={value}", spec.key))?;
    }

    let journal = match journal_path(args, &spec) {
        None => None,
        Some(path) => {
            outfile::check(&path, &inputs).context("--journal")?;
            let existed = path.exists();
            let journal = Journal::open(&path, &spec, args.resume)?;
            if journal.resumed() > 0 {
                eprintln!(
                    "memvirt: note: resuming from {}: {} finished points are not run again",
                    path.display(),
                    journal.resumed()
                );
            } else if args.resume && !existed {
                eprintln!(
                    "memvirt: note: no journal at {} to resume; starting afresh",
                    path.display()
                );
            } else if std::io::stderr().is_terminal() {
                eprintln!(
                    "memvirt: note: finished points go to {} as they finish; after an \
                     interruption, the same command with --resume runs only the rest",
                    path.display()
                );
            }
            Some(journal)
        }
    };

    let bar = SharedBar::new(format!("sweep {} on {}", spec.key, workload.name()), SharedBar::RUNS);
    let result =
        sweep::sweep_journaled(&spec, journal.as_ref(), &|done, total| bar.update(done, total));
    bar.finish();
    let result = result.map_err(|e| match &journal {
        Some(j) => anyhow!(
            "{e}\nmemvirt: note: the {} finished points are kept in {}; the same command with \
             --resume runs only the rest",
            j.points(),
            j.path().display()
        ),
        None => anyhow!(e),
    })?;

    let what = format!("{} of {} over {}", spec.metric.label(), workload.name(), spec.key);
    let title = format!("memvirt sweep: {what}, {}", setup.describe());
    let text = output::render_sweep(&result, args.out.format, &title)?;
    if let Some(path) = &args.svg {
        let chart = plot::svg(&result, &setup.describe())?;
        write_atomically(path, &chart)?;
    }
    emit(&text, args.out.output.as_deref())?;
    // Everything is written: the journal has nothing left to keep.
    journal.map_or(Ok(()), Journal::remove)?;
    Ok(())
}

/// The journal `args` ask for: `--journal`, else beside `--output` or `--svg`, else in the
/// current directory; none with `--no-journal`.
fn journal_path(args: &SweepArgs, spec: &SweepSpec) -> Option<PathBuf> {
    if args.no_journal {
        return None;
    }
    if let Some(path) = &args.journal {
        return Some(path.clone());
    }
    let beside = args.out.output.as_ref().or(args.svg.as_ref());
    Some(match beside {
        Some(file) => {
            let mut name = file.as_os_str().to_owned();
            name.push(".partial.jsonl");
            PathBuf::from(name)
        }
        None => PathBuf::from(sweep::default_journal_name(spec)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Cli;
    use clap::Parser;

    #[test]
    fn lsp_micro_is_a_valid_vary_and_conflicts_with_its_expansion() {
        assert!(sweep::parse_vary(LSP_MICRO_VARY).is_ok_and(|(_, v)| v.len() == 11));
        assert!(Cli::try_parse_from(["memvirt", "sweep", "--lsp-micro"]).is_ok());
        assert!(
            Cli::try_parse_from(["memvirt", "sweep", "--lsp-micro", "--workload", "fork"]).is_err()
        );
        assert!(Cli::try_parse_from(["memvirt", "sweep", "--workload", "fork"]).is_err());
        assert!(
            Cli::try_parse_from(["memvirt", "sweep", "--lsp-micro", "--schemes", "tsp"]).is_ok()
        );
    }
}
