//! The storage-server example serves the component's metrics over HTTP
//! (`--metrics ADDR`); a plain HTTP/1.1 client scrapes them while the
//! server runs, and every line parses as the OpenMetrics text format.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::example_binary;

/// One scrape: the status line, the content type and the body.
fn get(addr: SocketAddr, path: &str) -> (String, String, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("a response");
    let (head, body) = response.split_once("\r\n\r\n").expect("headers end");
    let mut lines = head.lines();
    let status = lines.next().unwrap_or_default().to_string();
    let content_type = lines
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    (status, content_type, body.to_string())
}

/// Parses an OpenMetrics text body: every sample as `series -> value`.
/// Panics, naming the line, on anything the format does not allow: a bad
/// name or label, a value that is not a number, a counter sample without
/// `_total`, a missing `# EOF`.
fn parse(body: &str) -> HashMap<String, f64> {
    let valid_name = |n: &str| {
        let mut chars = n.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    assert_eq!(body.lines().last(), Some("# EOF"), "the body ends with # EOF");
    let mut types: HashMap<String, String> = HashMap::new();
    let mut samples = HashMap::new();
    for line in body.lines() {
        if let Some(meta) = line.strip_prefix("# ") {
            let mut parts = meta.splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("EOF"), None, None) => {}
                (Some("TYPE"), Some(name), Some(kind)) => {
                    assert!(valid_name(name), "bad metric name in {line:?}");
                    types.insert(name.to_string(), kind.to_string());
                }
                (Some("HELP" | "UNIT"), Some(name), Some(_)) => assert!(valid_name(name), "{line:?}"),
                _ => panic!("unknown comment line {line:?}"),
            }
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value in {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("value of {line:?} is not a number"));
        let name = match series.split_once('{') {
            Some((name, labels)) => {
                let labels = labels
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("unclosed labels in {line:?}"));
                for label in labels.split(',') {
                    let (k, v) = label
                        .split_once('=')
                        .unwrap_or_else(|| panic!("bad label in {line:?}"));
                    assert!(
                        valid_name(k) && v.starts_with('"') && v.ends_with('"') && v.len() >= 2,
                        "{line:?}"
                    );
                }
                name
            }
            None => series,
        };
        assert!(valid_name(name), "bad sample name in {line:?}");
        let family = types
            .iter()
            .find(|(family, kind)| match kind.as_str() {
                "counter" => name.strip_suffix("_total") == Some(family.as_str()),
                _ => name == family.as_str(),
            })
            .map(|(family, _)| family.clone());
        assert!(
            family.is_some(),
            "sample {line:?} has no TYPE line (or a counter lacks _total)"
        );
        assert!(
            samples.insert(series.to_string(), value).is_none(),
            "{series} twice"
        );
    }
    samples
}

/// The example's process, killed if the test fails before it ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_storage_server_serves_metrics_that_parse_and_only_grow() {
    let stores = 4;
    let mut child = Child(
        Command::new(example_binary())
            .args([
                "--seconds",
                "8",
                "--stores",
                &stores.to_string(),
                "--metrics",
                "127.0.0.1:0",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the example starts"),
    );
    let mut out = BufReader::new(child.0.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    let addr: SocketAddr = first
        .trim()
        .strip_prefix("metrics on http://")
        .and_then(|a| a.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("first line names the address: {first:?}"))
        .parse()
        .unwrap();

    let (status, content_type, body) = get(addr, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let mut before = parse(&body);

    // Wait (bounded) for the rounds to show: callbacks and the files they
    // reported. Each scrape parses whole, and no counter ever goes down.
    let deadline = Instant::now() + Duration::from_secs(60);
    let callbacks = "ep_continuous_backup_callback_count_total";
    loop {
        let (_, _, body) = get(addr, "/metrics");
        let now = parse(&body);
        for (series, value) in &before {
            if series.ends_with("_total") {
                assert!(
                    now[series] >= *value,
                    "{series} went down: {value} -> {}",
                    now[series]
                );
            }
        }
        before = now;
        if before[callbacks] >= 2.0 * stores as f64
            && before["ep_continuous_backup_metadata_writes_total"] > 0.0
        {
            break;
        }
        assert!(Instant::now() < deadline, "no rounds counted in 60 s: {before:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(before["ep_continuous_backup_stores"], stores as f64);
    assert!(before["ep_continuous_backup_hard_links_total"] > 0.0);
    assert!(before["ep_continuous_backup_linked_bytes_total"] > 0.0);
    assert!(before["ep_continuous_backup_callback_time_seconds_total"] > 0.0);
    assert_eq!(before["ep_continuous_backup_failed_backups_total"], 0.0);
    assert_eq!(before["ep_continuous_backup_impossible_events_total"], 0.0);

    let (status, _, _) = get(addr, "/nothing");
    assert_eq!(status, "HTTP/1.1 404 Not Found", "only /metrics is served");

    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    assert!(
        child.0.wait().unwrap().success(),
        "the example ends well:\n{rest}"
    );
}

#[test]
#[should_panic(expected = "lacks _total")]
fn the_parser_refuses_a_counter_sample_without_total() {
    parse("# TYPE a counter\na 1\n# EOF");
}

#[test]
#[should_panic(expected = "is not a number")]
fn the_parser_refuses_a_value_that_is_not_a_number() {
    parse("# TYPE a gauge\na x\n# EOF");
}
