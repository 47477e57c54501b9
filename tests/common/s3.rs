//! A real S3 server on loopback for the replication tests: moto's server
//! mode (installed by `.ci/install-moto` when missing), and a TCP proxy in
//! front of it that can be stopped (the port refuses connections) and made
//! to answer every request with 503, while moto keeps what it stored.
#![allow(dead_code)] // each user (tests, the replication benchmark) uses its own subset

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The `moto_server` to run, installed once per test binary.
fn moto_server() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/install-moto");
        let out = Command::new("bash")
            .arg(&script)
            .stderr(Stdio::inherit())
            .output()
            .expect("run .ci/install-moto");
        assert!(
            out.status.success(),
            ".ci/install-moto failed: moto's S3 server is needed (pip install 'moto[server]')"
        );
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    })
    .clone()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A moto S3 server on a port of its own, killed on drop.
pub struct Moto {
    child: Child,
    pub port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Moto {
    pub fn start() -> Moto {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("moto.log");
        let port = free_port();
        let child = Command::new(moto_server())
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start moto_server");
        let moto = Moto {
            child,
            port,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while http(port, "GET", "/", b"").is_err() {
            assert!(
                Instant::now() < deadline,
                "moto_server did not answer within 60 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        moto
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn create_bucket(&self, bucket: &str) {
        let status = http(self.port, "PUT", &format!("/{bucket}"), b"").unwrap();
        assert_eq!(status, 200, "create bucket {bucket}");
    }

    /// Requests moto answered, as `(method, path with query, status)`.
    pub fn requests(&self) -> Vec<(String, String, u16)> {
        let log = std::fs::read_to_string(&self.log).unwrap();
        log.lines()
            .filter_map(|line| {
                let (_, rest) = line.split_once("] \"")?;
                let (request, status) = rest.split_once("\" ")?;
                let mut parts = request.split(' ');
                let method = parts.next()?.to_string();
                let path = parts.next()?.to_string();
                let status = status.split(' ').next()?.parse().ok()?;
                Some((method, path, status))
            })
            .collect()
    }

    /// How many times each object was stored (a `PUT` without query, or a
    /// completed multipart upload), by path.
    pub fn stores_per_object(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for (method, path, status) in self.requests() {
            let stored = match (method.as_str(), path.split_once('?')) {
                ("PUT", None) => status == 200,
                ("POST", Some((_, query))) => status == 200 && query.contains("uploadId"),
                _ => false,
            };
            let path = path.split('?').next().unwrap();
            // `/<bucket>` alone is the bucket's creation.
            if stored && path.matches('/').count() > 1 {
                *out.entry(path.to_string()).or_default() += 1;
            }
        }
        out
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request without keep-alive; returns the status.
fn http(port: u16, method: &str, path: &str, body: &[u8]) -> std::io::Result<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    s.write_all(body)?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    line.split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))
}

/// Client options for the S3 server at `endpoint`.
pub fn s3_options(endpoint: &str) -> BTreeMap<String, String> {
    [
        ("aws_endpoint", endpoint),
        ("aws_allow_http", "true"),
        ("aws_access_key_id", "test"),
        ("aws_secret_access_key", "test"),
        ("aws_region", "us-east-1"),
        ("aws_virtual_hosted_style_request", "false"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

const PASS: u8 = 0;
const ERRORS: u8 = 1;

/// A loopback TCP proxy in front of an S3 server.
pub struct Proxy {
    pub port: u16,
    upstream: u16,
    mode: Arc<AtomicU8>,
    conns: Arc<Conns>,
    listener: Option<(std::thread::JoinHandle<()>, Arc<AtomicU8>)>,
    /// 503 answers given.
    pub errors_answered: Arc<Mutex<u64>>,
}

impl Proxy {
    pub fn start(upstream: u16) -> Proxy {
        let mut proxy = Proxy {
            port: free_port(),
            upstream,
            mode: Arc::new(AtomicU8::new(PASS)),
            conns: Arc::new(Mutex::new(HashMap::new())),
            listener: None,
            errors_answered: Arc::new(Mutex::new(0)),
        };
        proxy.listen();
        proxy
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn listen(&mut self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).expect("bind the proxy port again");
        let stop = Arc::new(AtomicU8::new(0));
        let (mode, conns, upstream, stop2) = (
            Arc::clone(&self.mode),
            Arc::clone(&self.conns),
            self.upstream,
            Arc::clone(&stop),
        );
        let errors = Arc::clone(&self.errors_answered);
        let thread = std::thread::spawn(move || {
            for client in listener.incoming() {
                if stop2.load(Ordering::SeqCst) == 1 {
                    break;
                }
                let Ok(client) = client else { continue };
                if mode.load(Ordering::SeqCst) == ERRORS {
                    let errors = Arc::clone(&errors);
                    std::thread::spawn(move || answer_503(client, &errors));
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let _ = relay(client, server, &conns);
            }
        });
        self.listener = Some((thread, stop));
    }

    /// The server goes away: the port refuses connections, and open ones
    /// are cut.
    pub fn stop(&mut self) {
        if let Some((thread, stop)) = self.listener.take() {
            stop.store(1, Ordering::SeqCst);
            let _ = TcpStream::connect(("127.0.0.1", self.port)); // wakes accept
            thread.join().unwrap();
        }
        self.cut();
    }

    /// The server is back on the same port.
    pub fn restart(&mut self) {
        self.mode.store(PASS, Ordering::SeqCst);
        self.listen();
    }

    /// Every request is answered 503 Slow Down until `pass`.
    pub fn answer_errors(&self) {
        self.mode.store(ERRORS, Ordering::SeqCst);
        self.cut();
    }

    pub fn pass(&self) {
        self.mode.store(PASS, Ordering::SeqCst);
    }

    fn cut(&self) {
        for (_, (client, server)) in self.conns.lock().unwrap().drain() {
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}

type Conns = Mutex<HashMap<u64, (TcpStream, TcpStream)>>;

/// Copies bytes both ways between a client and the server until either
/// side closes; the pair stays in `conns` (for `cut`) until then.
fn relay(client: TcpStream, server: TcpStream, conns: &Arc<Conns>) -> std::io::Result<()> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    conns
        .lock()
        .unwrap()
        .insert(id, (client.try_clone()?, server.try_clone()?));
    let (mut client_in, mut server_out) = (client.try_clone()?, server.try_clone()?);
    let (mut server_in, mut client_out) = (server, client);
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut client_in, &mut server_out);
        let _ = server_out.shutdown(Shutdown::Write);
    });
    let conns = Arc::clone(conns);
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut server_in, &mut client_out);
        let _ = client_out.shutdown(Shutdown::Both);
        let _ = server_in.shutdown(Shutdown::Both);
        conns.lock().unwrap().remove(&id);
    });
    Ok(())
}

/// Reads one request (head and `Content-Length` body) and answers 503.
fn answer_503(client: TcpStream, errors: &Mutex<u64>) {
    let _ = client.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(client.try_clone().unwrap());
    let mut len = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        if line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                len = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0u8; len];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code><Message>injected by the test proxy</Message></Error>";
    let mut client = client;
    let _ = write!(
        client,
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{xml}",
        xml.len()
    );
    *errors.lock().unwrap() += 1;
}

/// Every file of a backup root, as `<kv>/<name>` → bytes.
pub fn files_under(root: &Path) -> HashMap<String, Vec<u8>> {
    let mut out = HashMap::new();
    for store in std::fs::read_dir(root).unwrap() {
        let store = store.unwrap();
        if !store.file_type().unwrap().is_dir() {
            continue;
        }
        for file in std::fs::read_dir(store.path()).unwrap() {
            let file = file.unwrap();
            let name = file.file_name().into_string().unwrap();
            if name.starts_with('.') || !file.file_type().unwrap().is_file() {
                continue;
            }
            let key = format!("{}/{}", store.file_name().into_string().unwrap(), name);
            out.insert(key, std::fs::read(file.path()).unwrap());
        }
    }
    out
}
