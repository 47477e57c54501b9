//! `cbk`: inspect, verify and restore continuous backups.
#![expect(clippy::print_stdout, reason = "a command-line tool prints its results")]

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use continuous_backup::restore::{
    detect_format, format_named, inspect, mirror, prune_remote, prune_with, restore_points, seqno_at, verify,
    BackupRoot, Consolidate, Format, StoreReport,
};
use continuous_backup::retention::{format_time_ms, parse_duration, parse_time_ms, Retention};
use continuous_backup::{KvId, RemoteUrl};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Inspect, verify and restore the continuous backups of a node's KV stores.
///
/// A backup root holds one dir per KV store, named by its id
/// (`<root>/<kv_id>/`), as the component writes them for vBucket-driven
/// backups. Files are read in the format their round manifests name (the
/// reference engine's for dirs written before manifests), or `--format`.
///
/// A root may also be an object-store URL of a remote copy
/// (`s3://bucket/node1`, `gs://…`, `az://…`, `file:///…`): its objects are
/// checked against their sidecars and downloaded into a temp dir first
/// (`--download-to` keeps them). Credentials and endpoints come from the
/// environment (`AWS_*`, `GOOGLE_*`, `AZURE_*`) or `--option`.
#[derive(Parser, Debug)]
#[command(name = "cbk", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// An object-store client option, e.g. `aws_endpoint=http://127.0.0.1:9000`.
    #[arg(long = "option", value_name = "KEY=VALUE", global = true, value_parser = parse_option)]
    options: Vec<(String, String)>,
    /// Where to download a remote root (must be missing or empty); default:
    /// a temp dir removed at exit.
    #[arg(long, value_name = "DIR", global = true)]
    download_to: Option<PathBuf>,
    /// The files' format: `auto` (from the round manifests), `ref` (the
    /// reference engine) or `lsm-tree`. A restore writes a data dir of the
    /// same engine.
    #[arg(long, value_name = "FORMAT", global = true, default_value = "auto")]
    format: String,
}

fn parse_option(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Per store: files, bytes, seqno coverage and gaps, the seqnos a restore
    /// gives exactly, metadata files, and how many files are still hard links
    /// shared with a live data dir. Reads the round manifests and only the
    /// footers of files they do not declare.
    Inspect {
        /// The backup root: a dir, or an object-store URL.
        root: String,
        /// Print one JSON document instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Read every backed-up file (the format's checksums, records inside
    /// their declared range), check the round manifests against the files,
    /// and that metadata files are numbered without holes.
    /// Prints one line per problem; exits 0 only when there is none.
    /// Stores are checked in parallel, one per core.
    Verify {
        /// The backup root: a dir, or an object-store URL.
        root: String,
    },
    /// Delete from each store's backup dir the files no restore point of the
    /// retention window needs (never a manifest or metadata file, never a
    /// file the newest round lists). The dirs must not be in use by a
    /// running component. Prints what each store freed. On an object-store
    /// URL, prunes the remote copy from its own listing: what goes is
    /// marked first and deleted by a prune at least --grace later.
    Prune {
        /// The backup root: a dir, or an object-store URL.
        root: String,
        /// With a URL: how long marked objects stay for readers that
        /// listed the remote before the mark (`0s`: delete at once).
        #[arg(long, value_name = "DURATION", default_value = "1h")]
        grace: String,
        /// Keep every restore point of the last DURATION before the newest
        /// round (`24h`, `90m`, `7d`).
        #[arg(long, value_name = "DURATION", required_unless_present = "keep_rounds")]
        keep: Option<String>,
        /// Keep every restore point of the newest K rounds.
        #[arg(long, value_name = "K")]
        keep_rounds: Option<u64>,
        /// Report what would be deleted, delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// When to write a consolidated base (the state at the window's
        /// first restore point) so the older base and its chain can go:
        /// `auto` when that frees more than twice the live engine's bytes.
        #[arg(long, default_value = "auto", value_parser = ["auto", "always", "never"])]
        consolidate: String,
    },
    /// Rebuild stores as they were at a seqno (for each key the newest
    /// version at or below it, deletes honoured) into a fresh data dir that
    /// their engine (the reference engine, or the lsm-tree adapter) opens
    /// normally. Stores are restored in parallel, two per core; a failure
    /// removes the stores already written.
    Restore(RestoreArgs),
}

#[derive(Args, Debug)]
struct RestoreArgs {
    /// The backup root: a dir, or an object-store URL.
    root: String,
    /// The store to restore.
    #[arg(long, required_unless_present = "all", conflicts_with = "all")]
    kv: Option<u16>,
    /// Restore every store in the backup root.
    #[arg(long)]
    all: bool,
    /// The seqno to restore to; refused, naming the seqnos that work, if the
    /// backup cannot give it exactly (outside its range, past a gap, or
    /// inside a compaction output whose inputs' versions it lacks).
    #[arg(
        long = "to-seqno",
        value_name = "S",
        required_unless_present = "at",
        conflicts_with = "at"
    )]
    to_seqno: Option<u64>,
    /// Restore each store as its newest round at or before this RFC 3339
    /// time held it (`2026-12-01T22:35:00Z`); refused outside the times
    /// `inspect` lists (not backed up yet, or pruned).
    #[arg(long, value_name = "TIME")]
    at: Option<String>,
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
        "{:>5} {:>10} {:>6} {:>12} {:>20} {:>5} {:>5} {:>12} {:>6}  last metadata",
        "kv", "format", "files", "bytes", "seqnos", "gaps", "meta", "n", "shared"
    );
    for r in reports {
        let m = &r.metadata;
        println!(
            "{:>5} {:>10} {:>6} {:>12} {:>20} {:>5} {:>5} {:>12} {:>6}  {}",
            r.kv.0,
            r.format,
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
        println!(
            "      space: {} bytes only the backup holds, {} bytes shared with the live engine",
            r.own_bytes, r.shared_bytes
        );
        if let Some((from, to)) = r.restorable_times {
            println!(
                "      restorable times (restore --at): {} ..= {}",
                format_time_ms(from),
                format_time_ms(to)
            );
        }
        if m.foreign > 0 {
            println!(
                "      {} files named like metadata files that the component does not write (run verify)",
                m.foreign
            );
        }
        if let (Some(lo), Some(hi)) = (r.lowest_seqno, r.highest_seqno) {
            if r.restorable != [(lo, hi)] {
                let exact: Vec<String> = r.restorable.iter().map(|(a, b)| format!("{a}..={b}")).collect();
                println!(
                    "      exact restore points: {} ({} files do not hold every version of their range)",
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

/// A backup root opened for reading: a local dir as it is, a URL mirrored
/// into a local dir first.
struct Opened {
    root: BackupRoot,
    /// What the mirror of a remote root found wrong.
    remote_problems: Vec<String>,
    _temp: Option<tempfile::TempDir>,
}

fn open_root(
    root: &str,
    cli_options: &[(String, String)],
    download_to: Option<&PathBuf>,
) -> Result<Opened, continuous_backup::Error> {
    if !RemoteUrl::is_url(root) {
        return Ok(Opened {
            root: BackupRoot::open(root.as_ref())?,
            remote_problems: Vec::new(),
            _temp: None,
        });
    }
    let (temp, dir) = match download_to {
        Some(dir) => (None, dir.clone()),
        None => {
            let temp = tempfile::tempdir()
                .map_err(|e| continuous_backup::Error::io("create temp dir", std::env::temp_dir(), e))?;
            let dir = temp.path().to_path_buf();
            (Some(temp), dir)
        }
    };
    let options = cli_options.iter().cloned().collect();
    let mirrored = mirror(root, &options, &dir)?;
    eprintln!(
        "cbk: downloaded {} files ({} bytes) of {root} into {}{}",
        mirrored.files,
        mirrored.bytes,
        dir.display(),
        if mirrored.in_flight.is_empty() {
            String::new()
        } else {
            format!(
                "; {} uploads still under way (sidecar without object)",
                mirrored.in_flight.len()
            )
        }
    );
    Ok(Opened {
        root: BackupRoot::open(&dir)?,
        remote_problems: mirrored.problems,
        _temp: temp,
    })
}

fn run(cli: Cli) -> Result<ExitCode, continuous_backup::Error> {
    let open = |root: &str| open_root(root, &cli.options, cli.download_to.as_ref());
    let format = |root: &BackupRoot| -> Result<Format, continuous_backup::Error> {
        match cli.format.as_str() {
            "auto" => format_named(&detect_format(root)?),
            named => format_named(named),
        }
    };
    match cli.command {
        Command::Inspect { ref root, json } => {
            let opened = open(root)?;
            for p in &opened.remote_problems {
                eprintln!("cbk: not downloaded: {p}");
            }
            let reports = inspect(&opened.root, format(&opened.root)?.reader.as_ref())?;
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
        Command::Verify { ref root } => {
            let opened = open(root)?;
            let backup = &opened.root;
            let mut problems: Vec<String> = opened.remote_problems.clone();
            let reader = format(backup)?.reader;
            problems.extend(verify(backup, reader.as_ref()).iter().map(ToString::to_string));
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
        Command::Prune {
            ref root,
            ref grace,
            ref keep,
            keep_rounds,
            dry_run,
            ref consolidate,
        } => {
            let keep_for = match keep {
                Some(text) => Some(
                    parse_duration(text)
                        .map_err(|e| continuous_backup::Error::InvalidRetention { reason: e.0 })?,
                ),
                None => None,
            };
            let policy = Retention {
                keep_for,
                keep_rounds,
            };
            if RemoteUrl::is_url(root) {
                let grace = match grace.trim() {
                    "0" | "0s" => Duration::ZERO,
                    text => parse_duration(text)
                        .map_err(|e| continuous_backup::Error::InvalidRetention { reason: e.0 })?,
                };
                let options = cli.options.iter().cloned().collect();
                let reports = prune_remote(root, &options, &policy, grace, dry_run)?;
                return Ok(print_remote_prune(&reports, dry_run));
            }
            let consolidate = match consolidate.as_str() {
                "always" => Consolidate::Always,
                "never" => Consolidate::Never,
                _ => Consolidate::WhenItPays,
            };
            let reports = prune_with(&BackupRoot::open(root.as_ref())?, &policy, dry_run, consolidate)?;
            let verb = if dry_run { "would delete" } else { "deleted" };
            let (mut files, mut freed) = (0, 0);
            for r in &reports {
                if let Some(why) = &r.skipped {
                    println!("kv {}: kept whole: {why}", r.kv);
                }
                if let Some(c) = r.consolidated.filter(|_| r.skipped.is_none()) {
                    println!(
                        "kv {}: consolidated a base first: the state of round {} (seqno {}), {} bytes",
                        r.kv, c.round, c.seqno, c.bytes
                    );
                }
                if let (None, Some(round), Some(seqno)) = (&r.skipped, r.window_round, r.window_seqno) {
                    println!(
                        "kv {}: window from round {round} (seqno {seqno} on): {verb} {} files, {} bytes \
                         freed ({} bytes still shared with the live engine), {} files kept",
                        r.kv,
                        r.deleted.len(),
                        r.bytes_freed,
                        r.bytes_shared,
                        r.kept
                    );
                }
                files += r.deleted.len();
                freed += r.bytes_freed;
            }
            println!(
                "{verb} {files} files, {freed} bytes freed, in {} stores",
                reports.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Restore(ref args) => {
            let opened = open(&args.root)?;
            for p in &opened.remote_problems {
                eprintln!("cbk: not downloaded: {p}");
            }
            let backup = &opened.root;
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
            let Format { reader, target } = format(backup)?;
            let points: Vec<(KvId, u64)> = match (args.to_seqno, &args.at) {
                (Some(seqno), _) => kvs.iter().map(|kv| (*kv, seqno)).collect(),
                (None, Some(at)) => {
                    let ms = parse_time_ms(at)
                        .map_err(|e| continuous_backup::Error::InvalidTime { reason: e.0 })?;
                    kvs.iter()
                        .map(|kv| seqno_at(backup, *kv, ms).map(|s| (*kv, s)))
                        .collect::<Result<_, _>>()?
                }
                (None, None) => unreachable!("clap requires --to-seqno or --at"),
            };
            let summaries = restore_points(
                backup,
                &points,
                &args.out,
                reader.as_ref(),
                target.as_ref(),
                &mut |n| bar.inc(n),
            )?;
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

/// Prints what a prune of a remote copy did, store by store.
fn print_remote_prune(reports: &[continuous_backup::restore::RemotePruneReport], dry_run: bool) -> ExitCode {
    let verb = if dry_run { "would mark" } else { "marked" };
    let (mut marked, mut deleted, mut freed) = (0, 0, 0);
    for r in reports {
        if let Some(why) = &r.skipped {
            println!("kv {}: nothing marked: {why}", r.kv);
        } else if let (Some(round), Some(seqno)) = (r.window_round, r.window_seqno) {
            println!(
                "kv {}: window from round {round} (seqno {seqno} on): {verb} {} objects ({} bytes)",
                r.kv,
                r.marked.len(),
                r.marked_bytes
            );
        }
        if !r.deleted.is_empty() {
            println!(
                "kv {}: deleted {} objects marked earlier, {} bytes",
                r.kv,
                r.deleted.len(),
                r.deleted_bytes
            );
        }
        marked += r.marked.len();
        deleted += r.deleted.len();
        freed += r.deleted_bytes;
    }
    println!(
        "{verb} {marked} objects, deleted {deleted} objects ({freed} bytes freed), in {} stores",
        reports.len()
    );
    ExitCode::SUCCESS
}
