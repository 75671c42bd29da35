//! The scale-out on a loopback DataFusion Ballista cluster (cargo feature `cluster`): a
//! scheduler and two executors started by each test as `tre cluster` processes, one of
//! them trusted with the project key. Every byte between the clients, the executors and
//! the scheduler passes through a recording proxy (executors pull their tasks, so every
//! task plan crosses it), and the key search reads that recording, every process's log
//! and the executors' shuffle directories.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tre_pipeline::client::Client;
use tre_pipeline::tre::users::Token;

use crate::util::{
    DEMO, Server, TEST_KEY_FINGERPRINT, TEST_KEY_HEX, TreSetup, Workdir, demo_policy_path, s, show,
};

/// Logs detailed enough to hold every plan Ballista prints (its own debug lines), without
/// the HTTP/2 frame chatter.
const LOG_FILTER: &str = "debug,h2=info,tonic=info,hyper=info,hyper_util=info,tower=info";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn wait_for_port(port: u16, what: &str) {
    let until = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < until, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every byte both ways between clients and the scheduler, one buffer per connection and
/// direction (so a message is never cut by another connection's bytes).
type Recording = Arc<Mutex<Vec<Arc<Mutex<Vec<u8>>>>>>;

/// Forward `127.0.0.1:listen` to `127.0.0.1:target`, recording.
fn recording_proxy(listen: TcpListener, target: u16, rec: Recording) {
    std::thread::spawn(move || {
        for client in listen.incoming() {
            let Ok(client) = client else { return };
            let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                let _ = client.shutdown(Shutdown::Both);
                continue;
            };
            for (mut from, mut to) in [
                (
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                ),
                (server, client),
            ] {
                let buf = Arc::new(Mutex::new(Vec::new()));
                rec.lock().expect("recording").push(Arc::clone(&buf));
                std::thread::spawn(move || {
                    let mut chunk = [0u8; 16 << 10];
                    loop {
                        match from.read(&mut chunk) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                buf.lock().expect("buffer").extend_from_slice(&chunk[..n]);
                                if to.write_all(&chunk[..n]).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = to.shutdown(Shutdown::Write);
                });
            }
        }
    });
}

/// A scheduler, an untrusted and a trusted executor, as `tre cluster` processes of the
/// test's folder; killed when dropped.
struct Cluster {
    /// `127.0.0.1:PORT` of the recording proxy in front of the scheduler.
    scheduler: String,
    procs: Vec<(&'static str, Child)>,
    logs: PathBuf,
    work: PathBuf,
    recording: Recording,
}

impl Cluster {
    fn start(w: &Workdir) -> Cluster {
        let logs = w.join("cluster-logs");
        let work = w.join("cluster-work");
        std::fs::create_dir_all(&logs).expect("logs");
        std::fs::create_dir_all(&work).expect("work");
        let sched_port = free_port();
        let mut c = Cluster {
            scheduler: String::new(),
            procs: Vec::new(),
            logs,
            work,
            recording: Arc::default(),
        };
        let listen = format!("127.0.0.1:{sched_port}");
        c.spawn(
            w,
            "scheduler",
            &["cluster", "scheduler", "--listen", &listen],
        );
        wait_for_port(sched_port, "the scheduler");
        let proxy = TcpListener::bind("127.0.0.1:0").expect("proxy port");
        let proxy_port = proxy.local_addr().expect("proxy address").port();
        recording_proxy(proxy, sched_port, Arc::clone(&c.recording));
        c.scheduler = format!("127.0.0.1:{proxy_port}");
        let key = w.test_key();
        for (name, trusted) in [("executor-a", false), ("executor-b", true)] {
            let (port, grpc) = (free_port().to_string(), free_port().to_string());
            let dir = c.work.join(name);
            std::fs::create_dir_all(&dir).expect("work dir");
            let mut args = vec![
                "cluster",
                "executor",
                "--scheduler",
                &c.scheduler,
                "--port",
                &port,
                "--grpc-port",
                &grpc,
                "--concurrent-tasks",
                "2",
                "--work-dir",
                s(&dir),
            ];
            if trusted {
                args.extend(["--trusted", "--key-file", s(&key)]);
            }
            let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            c.spawn(w, name, &args);
            wait_for_port(port.parse().expect("port"), name);
        }
        // Both have registered once they answer; give the first heartbeat a moment.
        std::thread::sleep(Duration::from_secs(2));
        c
    }

    fn spawn(&mut self, w: &Workdir, name: &'static str, args: &[&str]) {
        let log = std::fs::File::create(self.logs.join(format!("{name}.log"))).expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_tre"))
            .args(args)
            .current_dir(w.path())
            .env_clear()
            .env("RUST_LOG", LOG_FILTER)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start tre {args:?}: {e}"));
        self.procs.push((name, child));
    }

    fn kill(&mut self, name: &str) {
        for (n, c) in &mut self.procs {
            if *n == name {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    fn log(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.logs.join(format!("{name}.log"))).unwrap_or_default()
    }

    /// The recorded traffic, one buffer per connection and direction.
    fn traffic(&self) -> Vec<Vec<u8>> {
        self.recording
            .lock()
            .expect("recording")
            .iter()
            .map(|b| b.lock().expect("buffer").clone())
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, c) in &mut self.procs {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn policy() -> String {
    s(&demo_policy_path()).to_string()
}

/// Files of a folder tree, by relative path.
fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else if let Ok(bytes) = std::fs::read(&p) {
                let rel = p.strip_prefix(root).unwrap_or(&p).display().to_string();
                out.push((rel, bytes));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// The manifest without what differs between any two runs (when, and the quarantine's
/// path, which is named after OUT).
fn manifest_facts(dir: &Path) -> Value {
    let text = std::fs::read_to_string(dir.join("manifest.json")).expect("manifest");
    let name = dir
        .file_name()
        .expect("a name")
        .to_string_lossy()
        .into_owned();
    let text = text.replace(&format!("/{name}.quarantine/"), "/OUT.quarantine/");
    let mut v: Value = serde_json::from_str(&text).expect("manifest json");
    if let Some(o) = v.as_object_mut() {
        for k in ["started_at", "finished_at"] {
            o.remove(k);
        }
    }
    v
}

/// The project key and everything key-equivalent, as they could appear in bytes: the key
/// raw and in hex, and the HMAC's inner and outer SHA-256 mid-states as big- and
/// little-endian words, raw and in hex.
fn key_needles() -> Vec<(String, Vec<u8>)> {
    let key: Vec<u8> = hex::decode(TEST_KEY_HEX).expect("hex key");
    let mut needles = vec![
        ("key (raw)".to_string(), key.clone()),
        ("key (hex)".into(), TEST_KEY_HEX.as_bytes().to_vec()),
        (
            "key (HEX)".into(),
            TEST_KEY_HEX.to_uppercase().as_bytes().to_vec(),
        ),
    ];
    const H0: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    for (name, pad) in [("inner", 0x36u8), ("outer", 0x5c)] {
        let mut block = [pad; 64];
        for (b, k) in block.iter_mut().zip(&key) {
            *b ^= k;
        }
        let mut state = H0;
        sha2::compress256(
            &mut state,
            std::slice::from_ref(sha2::digest::generic_array::GenericArray::from_slice(
                &block,
            )),
        );
        let be: Vec<u8> = state.iter().flat_map(|w| w.to_be_bytes()).collect();
        let le: Vec<u8> = state.iter().flat_map(|w| w.to_le_bytes()).collect();
        for (form, bytes) in [("big-endian", be), ("little-endian", le)] {
            needles.push((
                format!("{name} mid-state ({form}, hex)"),
                hex::encode(&bytes).into_bytes(),
            ));
            needles.push((
                format!("{name} mid-state ({form}, HEX)"),
                hex::encode_upper(&bytes).into_bytes(),
            ));
            needles.push((format!("{name} mid-state ({form}, raw)"), bytes));
        }
    }
    needles
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.len() <= hay.len() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Search everything the cluster saw for the key; returns how many bytes were searched.
fn assert_no_key_material(c: &Cluster, extra: &[(&str, Vec<u8>)]) -> usize {
    let mut hay: Vec<(String, Vec<u8>)> = c
        .traffic()
        .into_iter()
        .enumerate()
        .map(|(i, b)| (format!("scheduler connection {i}"), b))
        .collect();
    for name in ["scheduler", "executor-a", "executor-b"] {
        hay.push((format!("{name} log"), c.log(name)));
    }
    for (p, b) in tree(&c.work) {
        hay.push((format!("executor file {p}"), b));
    }
    for (n, b) in extra {
        hay.push((n.to_string(), b.clone()));
    }
    let needles = key_needles();
    let mut searched = 0;
    for (where_, bytes) in &hay {
        searched += bytes.len();
        for (what, needle) in &needles {
            assert!(!contains(bytes, needle), "the {what} appears in {where_}");
        }
    }
    searched
}

#[test]
fn extract_on_the_cluster_equals_the_embedded_run_and_no_key_leaves_the_trusted_executor() {
    let w = Workdir::new();
    w.generate(3000, 11, "in");
    w.test_key();
    let c = Cluster::start(&w);
    let scratch = w.join("scratch");
    w.extract(&policy(), "in", "local", &[]);
    let remote = w.extract_output(
        &policy(),
        "in",
        "remote",
        &[
            "--scheduler",
            &c.scheduler,
            "--cluster-scratch",
            s(&scratch),
        ],
    );
    assert!(remote.status.success(), "{}", show(&remote));

    // Same files, same bytes (Parquet, quarantine); the same manifest but for its times.
    let strip = |t: Vec<(String, Vec<u8>)>| -> Vec<(String, Vec<u8>)> {
        t.into_iter()
            .filter(|(n, _)| n != "manifest.json")
            .collect()
    };
    let (local, cluster) = (tree(&w.join("local")), tree(&w.join("remote")));
    assert!(local.iter().any(|(n, _)| n.ends_with(".parquet")));
    assert_eq!(
        local.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
        cluster.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>()
    );
    for ((n, a), (_, b)) in strip(local).iter().zip(strip(cluster).iter()) {
        assert!(
            a == b,
            "{n} differs between the embedded and the cluster run"
        );
    }
    assert_eq!(
        tree(&w.join("local.quarantine")),
        tree(&w.join("remote.quarantine"))
    );
    assert_eq!(
        manifest_facts(&w.join("local")),
        manifest_facts(&w.join("remote"))
    );
    // The numbers sent are removed after each job.
    assert!(
        tree(&scratch).is_empty(),
        "numbers left in the scratch folder"
    );

    // The pseudonyms were computed on the trusted executor: its plans named only the
    // fingerprint, and they went through the recorded scheduler port.
    let traffic: Vec<u8> = c.traffic().concat();
    assert!(
        contains(&traffic, b"tre_pseudonym_keyed"),
        "no plan was recorded"
    );
    assert!(contains(&traffic, TEST_KEY_FINGERPRINT.as_bytes()));
    let searched = assert_no_key_material(&c, &[("the client's output", remote.stderr.clone())]);
    assert!(searched > 10_000, "only {searched} bytes searched");
}

#[test]
fn a_cluster_without_a_trusted_executor_pseudonymises_nothing() {
    // An untrusted executor has the function but no key: the task fails closed with a
    // clear message and no manifest is written.
    let w = Workdir::new();
    w.generate(300, 3, "in");
    w.test_key();
    let mut c = Cluster::start(&w);
    c.kill("executor-b");
    let out = w.extract_output(
        &policy(),
        "in",
        "remote",
        &["--scheduler", &c.scheduler, "--cluster-timeout", "20", "-q"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cluster"), "{err}");
    assert!(!w.join("remote/manifest.json").exists());
}

#[test]
fn an_executor_killed_mid_extract_fails_it_without_a_manifest() {
    let w = Workdir::new();
    w.generate(30_000, 5, "in");
    w.test_key();
    let mut c = Cluster::start(&w);
    let scratch = w.join("scratch");
    let mut args = vec![
        "extract".to_string(),
        "--policy".into(),
        policy(),
        "--input".into(),
        "in".into(),
        "--opt-outs".into(),
        "in/opt_outs.txt".into(),
        "--opt-outs-as-of".into(),
        crate::util::today(),
        "--key-file".into(),
        "project.key".into(),
        "--out".into(),
        "remote".into(),
        "-q".into(),
    ];
    args.extend(["--scheduler".into(), c.scheduler.clone()]);
    args.extend(["--cluster-scratch".into(), s(&scratch).to_string()]);
    args.extend(["--cluster-timeout".into(), "30".into()]);
    let mut extract = Command::new(env!("CARGO_BIN_EXE_tre"))
        .args(&args)
        .current_dir(w.path())
        .env_clear()
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the extract");
    // Kill the trusted executor as soon as the first numbers are on their way to it.
    let until = Instant::now() + Duration::from_secs(120);
    while tree(&scratch).is_empty() {
        assert!(
            Instant::now() < until,
            "the extract sent nothing to the cluster"
        );
        assert!(
            extract.try_wait().expect("poll").is_none(),
            "the extract ended before it used the cluster"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    c.kill("executor-b");
    let out = extract.wait_with_output().expect("extract ends");
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the cluster could not pseudonymise"),
        "a clear message: {err}"
    );
    eprintln!("the killed executor's extract said: {err}");
    assert!(
        !w.join("remote/manifest.json").exists(),
        "a manifest was written"
    );
}

#[test]
fn a_scheduler_that_is_down_is_a_clear_error() {
    let w = Workdir::new();
    w.generate(100, 1, "in");
    w.test_key();
    let port = free_port().to_string();
    let addr = format!("127.0.0.1:{port}");
    let out = w.extract_output(&policy(), "in", "remote", &["--scheduler", &addr]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not answer"), "{err}");
    assert!(!w.join("remote/manifest.json").exists());
    w.admin_init();
    let err = w.tre_code(&["serve", "--workspace", "ws", "--scheduler", &addr], 2);
    assert!(err.contains("does not answer"), "{err}");
    let err = w.tre_code(&["cluster", "executor", "--scheduler", &addr], 2);
    assert!(err.contains("does not answer"), "{err}");
}

/// Submit `sql` as the analyst and wait for it.
fn job(base: &str, token: &str, sql: &str) -> (String, Value) {
    let c = Client::new(base, Token::new(token.to_string()));
    let v = c.submit(DEMO, sql, "a cluster test").expect("submit");
    let job = v["job"].as_str().expect("job id").to_string();
    let v = c
        .wait(DEMO, &job, Duration::from_secs(180))
        .expect("status");
    (job, v)
}

#[test]
fn a_tre_job_on_the_cluster_gives_the_embedded_result_and_checks() {
    let tre = TreSetup::demo(2000, 5).users(&["analyst"]).build();
    let token = tre.tokens["analyst"].clone();
    let sql = "SELECT age_band, COUNT(*) AS n FROM patients GROUP BY age_band ORDER BY age_band";
    let (embedded, embedded_safe) = {
        let server = Server::start(&tre.w, &[]);
        let (id, v) = job(&server.base, &token, sql);
        assert_eq!(v["state"], "succeeded", "{v}");
        let c = Client::new(&server.base, Token::new(token.clone()));
        (v, c.safe(DEMO, &id).expect("safe table"))
    };
    let c = Cluster::start(&tre.w);
    let before = c.traffic().concat().len();
    let server = Server::start(&tre.w, &["--scheduler", &c.scheduler]);
    let (id, v) = job(&server.base, &token, sql);
    assert_eq!(v["state"], "succeeded", "{v}");
    for k in ["state", "releasable"] {
        assert_eq!(v[k], embedded[k], "{k}: {v} vs {embedded}");
    }
    let client = Client::new(&server.base, Token::new(token.clone()));
    assert_eq!(client.safe(DEMO, &id).expect("safe table"), embedded_safe);
    // It ran on the cluster: its plan went through the scheduler.
    let traffic = c.traffic().concat();
    assert!(traffic.len() > before);
    assert!(
        contains(&traffic, b"age_band"),
        "the job's plan was not seen"
    );
    // An analyst cannot call the pseudonym function (it is not in a job's session).
    let (_, v) = job(
        &server.base,
        &token,
        &format!("SELECT tre_pseudonym_keyed('{TEST_KEY_FINGERPRINT}', 9434765919) AS p"),
    );
    assert_eq!(v["state"], "failed", "{v}");
    assert_no_key_material(&c, &[]);
}
