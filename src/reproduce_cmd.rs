//! `memvirt reproduce PAPER|all`: the command around [`memvirt::reproduce`].

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use memvirt::outfile;
use memvirt::output::Format;
use memvirt::reproduce::{self, Lab, Length, Paper, Reproduction};

use super::{emit, write_atomically, OutputArgs};

/// A paper, or all five.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(super) enum Which {
    /// Lazy Shadow Paging (RISC-V): TSP's exits, LSP's savings, TLB misses, walk length.
    Lsp,
    /// Swift Shadow Paging: exits against TSP, overhead on every workload.
    Ssp,
    /// ASP's overhead and swFNPT (SNP over a flat nested table), on sunway-like.
    Tc22,
    /// Flat nested and speculative inverted shadow paging against the 2D walker, on x86-64.
    Isca12,
    /// HSPT against QEMU's softmmu.
    Hspt,
    /// Every paper, one after another (14 claims).
    All,
}

#[derive(Args, Debug)]
pub(super) struct ReproduceArgs {
    /// The paper.
    #[arg(value_enum)]
    paper: Which,
    /// Short runs (each workload's defaults, half of them a warm-up) instead of the
    /// steady-state lengths: a first look in seconds, not the figures to quote.
    #[arg(long)]
    quick: bool,
    /// The seed of every run.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Also draw the claims (published range against memvirt's figures) as an SVG.
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
    #[command(flatten)]
    out: OutputArgs,
}

pub(super) fn reproduce(args: &ReproduceArgs) -> Result<()> {
    if args.out.format == Format::Csv {
        bail!("reproduce has no CSV form: use --format table or json");
    }
    if let Some(path) = &args.out.output {
        outfile::check(path, &[]).context("--output")?;
    }
    if let Some(svg) = &args.svg {
        if args.out.output.as_ref().is_some_and(|o| o == svg) {
            bail!("--svg and --output both name {}: give each its own file", svg.display());
        }
        outfile::check(svg, &[]).context("--svg")?;
    }
    let papers: Vec<Paper> = match args.paper {
        Which::Lsp => vec![Paper::Lsp],
        Which::Ssp => vec![Paper::Ssp],
        Which::Tc22 => vec![Paper::Tc22],
        Which::Isca12 => vec![Paper::Isca12],
        Which::Hspt => vec![Paper::Hspt],
        Which::All => Paper::ALL.to_vec(),
    };
    let runs: usize = papers.iter().map(|&p| reproduce::runs_in(&reproduce::papers::plan(p))).sum();
    let bar = if std::io::stderr().is_terminal() {
        let style = ProgressStyle::with_template("reproduce [{bar:30}] {pos}/{len} runs {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        ProgressBar::with_draw_target(Some(runs as u64), ProgressDrawTarget::stderr())
            .with_style(style)
    } else {
        ProgressBar::hidden()
    };
    let tick = || bar.inc(1);
    let length = if args.quick { Length::Quick } else { Length::Steady };
    let lab = Lab { seed: args.seed, length, tick: &tick };
    let done: Vec<Reproduction> =
        papers.iter().map(|&p| reproduce::reproduce(p, &lab)).collect::<Result<_, _>>()?;
    bar.finish_and_clear();
    if let Some(path) = &args.svg {
        let all = Reproduction {
            paper: papers.iter().map(|p| p.name()).collect::<Vec<_>>().join(", "),
            title: String::new(),
            setup: combined_setup(&done),
            claims: done.iter().flat_map(|r| r.claims.clone()).collect(),
        };
        write_atomically(path, &reproduce::chart::svg(&all)?)?;
    }
    let text = match args.out.format {
        Format::Json => {
            let mut text = serde_json::to_string_pretty(&done)?;
            text.push('\n');
            text
        }
        _ => {
            let mut text: Vec<String> = done.iter().map(reproduce::render).collect();
            text.push(format!("{}\n", reproduce::tally(&done)));
            text.join("\n")
        }
    };
    emit(&text, args.out.output.as_deref())
}

/// One setup line for several papers: their profiles, then what they share (seed, length,
/// compute model), which every paper's line states after its profiles.
fn combined_setup(done: &[Reproduction]) -> String {
    let mut profiles: Vec<&str> = Vec::new();
    for r in done {
        let listed = r.setup.split(", seed ").next().unwrap_or_default();
        for p in listed.split(", ") {
            if !profiles.contains(&p) {
                profiles.push(p);
            }
        }
    }
    let shared = done.first().and_then(|r| r.setup.split_once(", seed ")).map_or("", |(_, s)| s);
    format!("{}, seed {shared}", profiles.join(", "))
}
