//! `cbk`: inspect, verify and restore continuous backups.
#![expect(clippy::print_stdout, reason = "a command-line tool prints its results")]

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use continuous_backup::restore::{inspect, restore, verify, BackupRoot, RefFormat, StoreReport};
use continuous_backup::KvId;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Inspect, verify and restore the continuous backups of a node's KV stores.
///
/// A backup root holds one dir per KV store, named by its id
/// (`<root>/<kv_id>/`), as the component writes them for vBucket-driven
/// backups. Files are read in the reference engine's format.
#[derive(Parser, Debug)]
#[command(name = "cbk", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Per store: files, bytes, seqno coverage and gaps, the seqnos a restore
    /// gives exactly, metadata files, and how many files are still hard links
    /// shared with a live data dir. Reads only each file's footer.
    Inspect {
        /// The backup root.
        root: PathBuf,
        /// Print one JSON document instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Read every backed-up file (checksum, footer, records inside their
    /// range) and check that metadata files are numbered without holes.
    /// Prints one line per problem; exits 0 only when there is none.
    Verify {
        /// The backup root.
        root: PathBuf,
    },
    /// Rebuild stores as they were at a seqno (for each key the newest
    /// version at or below it, deletes honoured) into a fresh data dir that
    /// the reference engine opens normally.
    Restore(RestoreArgs),
}

#[derive(Args, Debug)]
struct RestoreArgs {
    /// The backup root.
    root: PathBuf,
    /// The store to restore.
    #[arg(long, required_unless_present = "all", conflicts_with = "all")]
    kv: Option<u16>,
    /// Restore every store in the backup root.
    #[arg(long)]
    all: bool,
    /// The seqno to restore to; refused, naming the seqnos that work, if the
    /// backup cannot give it exactly (outside its range, past a gap, or
    /// inside a compaction output whose inputs' versions it lacks).
    #[arg(long = "to-seqno", value_name = "S")]
    to_seqno: u64,
    /// The new data dir; must be missing or empty.
    #[arg(long, value_name = "DATA_DIR")]
    out: PathBuf,
}

fn range(lo: Option<u64>, hi: Option<u64>) -> String {
    match (lo, hi) {
        (Some(lo), Some(hi)) => format!("{lo}..={hi}"),
        _ => "-".into(),
    }
}

fn print_table(reports: &[StoreReport]) {
    println!(
        "{:>5} {:>6} {:>12} {:>20} {:>5} {:>5} {:>12} {:>6}  last metadata",
        "kv", "files", "bytes", "seqnos", "gaps", "meta", "n", "shared"
    );
    for r in reports {
        let m = &r.metadata;
        println!(
            "{:>5} {:>6} {:>12} {:>20} {:>5} {:>5} {:>12} {:>6}  {}",
            r.kv.0,
            r.files,
            r.bytes,
            range(r.lowest_seqno, r.highest_seqno),
            r.gaps.len(),
            m.count,
            range(m.first_n, m.last_n),
            r.shared_with_live,
            m.last.as_deref().unwrap_or("-"),
        );
        for (from, to) in &r.gaps {
            println!("      gap: seqnos {from}..={to} are in no file");
        }
        if let (Some(lo), Some(hi)) = (r.lowest_seqno, r.highest_seqno) {
            if r.restorable != [(lo, hi)] {
                let exact: Vec<String> = r.restorable.iter().map(|(a, b)| format!("{a}..={b}")).collect();
                println!(
                    "      exact restore points: {} ({} compaction outputs without their inputs' versions)",
                    if exact.is_empty() {
                        "none".into()
                    } else {
                        exact.join(", ")
                    },
                    r.lossy_files
                );
            }
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode, continuous_backup::Error> {
    match cli.command {
        Command::Inspect { root, json } => {
            let reports = inspect(&BackupRoot::open(&root)?, &RefFormat)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&reports).expect("reports serialise")
                );
            } else {
                print_table(&reports);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify { root } => {
            let backup = BackupRoot::open(&root)?;
            let problems = verify(&backup, &RefFormat);
            for p in &problems {
                println!("{p}");
            }
            let files: usize = backup
                .stores()
                .iter()
                .map(|s| s.files.len() + s.metadata.len())
                .sum();
            if problems.is_empty() {
                println!("clean: {} stores, {files} files", backup.stores().len());
                Ok(ExitCode::SUCCESS)
            } else {
                println!("{} problems in {} stores", problems.len(), backup.stores().len());
                Ok(ExitCode::from(1))
            }
        }
        Command::Restore(args) => {
            let backup = BackupRoot::open(&args.root)?;
            let kvs: Vec<KvId> = match args.kv {
                Some(kv) => vec![KvId(kv)],
                None => backup.stores().iter().map(|s| s.kv).collect(),
            };
            let total: usize = kvs
                .iter()
                .filter_map(|kv| backup.store(*kv).ok())
                .map(|s| s.files.len())
                .sum();
            let bar = ProgressBar::new(total as u64);
            if std::io::stderr().is_terminal() {
                bar.set_draw_target(ProgressDrawTarget::stderr());
                bar.set_style(
                    ProgressStyle::with_template("reading backups {bar:40} {pos}/{len} files {eta}")
                        .expect("the template is valid"),
                );
            } else {
                bar.set_draw_target(ProgressDrawTarget::hidden());
            }
            let summaries = restore(&backup, &kvs, args.to_seqno, &args.out, &RefFormat, &mut |n| {
                bar.inc(n)
            })?;
            bar.finish_and_clear();
            for s in &summaries {
                println!(
                    "kv {}: restored to seqno {} from {} files: {} keys ({} deleted) in {}",
                    s.kv,
                    s.to_seqno,
                    s.files_read,
                    s.keys,
                    s.tombstones,
                    s.dir.display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cbk: {e}");
            ExitCode::from(2)
        }
    }
}
