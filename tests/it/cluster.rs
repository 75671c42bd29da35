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

/// A scheduler and executors (by default an untrusted and a trusted one), as `tre
/// cluster` processes of the test's folder; killed when dropped.
struct Cluster {
    /// `127.0.0.1:PORT` of the recording proxy in front of the scheduler.
    scheduler: String,
    procs: Vec<(&'static str, Child)>,
    logs: PathBuf,
    work: PathBuf,
    recording: Recording,
}

/// The default executors: `executor-a` untrusted, `executor-b` trusted.
const TWO_EXECUTORS: &[(&str, bool)] = &[("executor-a", false), ("executor-b", true)];

impl Cluster {
    fn start(w: &Workdir) -> Cluster {
        Cluster::start_with(w, TWO_EXECUTORS)
    }

    /// A scheduler and these executors (name, trusted with the project key).
    fn start_with(w: &Workdir, executors: &[(&'static str, bool)]) -> Cluster {
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
        for &(name, trusted) in executors {
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

/// The extracts `a` and `b` of the test's folder are the same: the same files with the
/// same bytes (Parquet, quarantine), the same manifest but for its times.
fn assert_same_extract(w: &Workdir, a: &str, b: &str) {
    let strip = |t: Vec<(String, Vec<u8>)>| -> Vec<(String, Vec<u8>)> {
        t.into_iter()
            .filter(|(n, _)| n != "manifest.json")
            .collect()
    };
    let (left, right) = (tree(&w.join(a)), tree(&w.join(b)));
    assert!(left.iter().any(|(n, _)| n.ends_with(".parquet")));
    assert_eq!(
        left.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
        right.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>()
    );
    for ((n, x), (_, y)) in strip(left).iter().zip(strip(right).iter()) {
        assert!(x == y, "{n} differs between {a} and {b}");
    }
    assert_eq!(
        tree(&w.join(&format!("{a}.quarantine"))),
        tree(&w.join(&format!("{b}.quarantine")))
    );
    assert_eq!(manifest_facts(&w.join(a)), manifest_facts(&w.join(b)));
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
    for (name, _) in &c.procs {
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

    assert_same_extract(&w, "local", "remote");
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
    // The extract's jobs carry no job memory limit: the executors' own pools apply.
    for n in ["executor-a", "executor-b"] {
        assert!(!contains(&c.log(n), MEMORY_POOL_LINE.as_bytes()));
    }
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

/// `tre extract` of `in/` into `out` on the cluster at `scheduler`, started and left
/// running (quiet; output piped).
fn spawn_extract(w: &Workdir, out: &str, scheduler: &str, scratch: &Path, timeout: u32) -> Child {
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
        out.into(),
        "-q".into(),
    ];
    args.extend(["--scheduler".into(), scheduler.to_string()]);
    args.extend(["--cluster-scratch".into(), s(scratch).to_string()]);
    args.extend(["--cluster-timeout".into(), timeout.to_string()]);
    Command::new(env!("CARGO_BIN_EXE_tre"))
        .args(&args)
        .current_dir(w.path())
        .env_clear()
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the extract")
}

#[test]
fn an_executor_killed_mid_extract_fails_it_without_a_manifest() {
    let w = Workdir::new();
    w.generate(30_000, 5, "in");
    w.test_key();
    let mut c = Cluster::start(&w);
    let scratch = w.join("scratch");
    let mut extract = spawn_extract(&w, "remote", &c.scheduler, &scratch, 30);
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

/// An executor's log line when a TRE job's session gets a pool capped at the job's limit.
const MEMORY_POOL_LINE: &str = "a job's session here shares a memory pool of at most";

/// Ballista's log line when an executor takes a task.
const TASK_RECEIVED: &[u8] = b"Received task";

#[test]
fn a_trusted_executor_killed_mid_extract_is_replaced_by_the_other_and_the_output_is_unchanged() {
    // Two trusted executors with the same key and an untrusted one. The trusted executor
    // that takes the extract's first task is killed (SIGKILL) at once; the extract must
    // still finish, through the other one, with the embedded run's bytes. Ballista 55
    // runs a lost executor's tasks again once the scheduler has declared it lost (no
    // heartbeat for 30 s), and a job whose result cannot be fetched from the dead
    // executor fails and is submitted again by the client (`--cluster-timeout` bounds
    // both); either way the pseudonyms come from the surviving trusted executor.
    let w = Workdir::new();
    w.generate(60_000, 7, "in");
    w.test_key();
    w.extract(&policy(), "in", "local", &[]);
    let trusted = ["executor-b", "executor-c"];
    let mut c = Cluster::start_with(
        &w,
        &[
            ("executor-a", false),
            ("executor-b", true),
            ("executor-c", true),
        ],
    );
    let scratch = w.join("scratch");
    let mut extract = spawn_extract(&w, "remote", &c.scheduler, &scratch, 300);
    let until = Instant::now() + Duration::from_secs(300);
    let first = loop {
        if let Some(name) = trusted.iter().find(|n| contains(&c.log(n), TASK_RECEIVED)) {
            break *name;
        }
        assert!(
            Instant::now() < until,
            "no trusted executor took a task of the extract"
        );
        assert!(
            extract.try_wait().expect("poll").is_none(),
            "the extract ended before it used the cluster"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    c.kill(first);
    assert!(
        extract.try_wait().expect("poll").is_none(),
        "the extract ended before the kill: give it more rows"
    );
    let out = extract.wait_with_output().expect("extract ends");
    assert!(out.status.success(), "{}", show(&out));
    assert_same_extract(&w, "local", "remote");
    // Which way it recovered (shown with --nocapture): the scheduler's loss of the
    // executor and the tasks it ran again, or the client's resubmission.
    let sched = String::from_utf8_lossy(&c.log("scheduler")).into_owned();
    for l in sched
        .lines()
        .filter(|l| l.contains("heartbeat timed out") || l.contains("resubmit"))
    {
        eprintln!("scheduler: {l}");
    }
    eprintln!(
        "{first} killed; the extract said: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let other = trusted.iter().find(|n| **n != first).expect("the other");
    assert!(
        contains(&c.log(other), TASK_RECEIVED),
        "{other}, the surviving trusted executor, ran none of the extract's tasks"
    );
    assert!(
        tree(&scratch).is_empty(),
        "numbers left in the scratch folder"
    );
    let searched = assert_no_key_material(&c, &[("the client's output", out.stderr.clone())]);
    assert!(searched > 10_000, "only {searched} bytes searched");
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
    // Its queries' Ballista jobs are listed in its folder (what a kill would cancel).
    let listed = tre
        .ws()
        .join("projects")
        .join(DEMO)
        .join("results")
        .join(&id)
        .join(tre_pipeline::cluster::CLUSTER_JOBS_FILE);
    let ids = tre_pipeline::cluster::remote::recorded_job_ids(&listed).expect("the list");
    assert!(!ids.is_empty(), "the job's cluster jobs were not listed");
    // It ran on the cluster: its plan went through the scheduler.
    let traffic = c.traffic().concat();
    assert!(traffic.len() > before);
    assert!(
        contains(&traffic, b"age_band"),
        "the job's plan was not seen"
    );
    // The job's memory limit went with its session: an executor held its tasks to the
    // job's pool (the demo policy's 1024 MiB limit; DataFusion's pool is a third of it).
    let cap = format!("{MEMORY_POOL_LINE} {} bytes", (1024u64 << 20) / 3);
    assert!(
        ["executor-a", "executor-b"]
            .iter()
            .any(|n| contains(&c.log(n), cap.as_bytes())),
        "no executor capped the job's pool at its limit ({cap})"
    );
    // An analyst cannot call the pseudonym function (it is not in a job's session).
    let (_, v) = job(
        &server.base,
        &token,
        &format!("SELECT tre_pseudonym_keyed('{TEST_KEY_FINGERPRINT}', 9434765919) AS p"),
    );
    assert_eq!(v["state"], "failed", "{v}");
    // A table function with no cluster encoding is a planning refusal saying what to write.
    let (_, v) = job(
        &server.base,
        &token,
        "SELECT p.sex, COUNT(*) AS n FROM patients p CROSS JOIN generate_series(1, 3) g GROUP BY p.sex",
    );
    assert_eq!(v["state"], "failed", "{v}");
    assert!(
        v["reason"].as_str().unwrap_or_default().contains("VALUES"),
        "{v}"
    );
    assert_no_key_material(&c, &[]);
}

#[test]
fn a_job_killed_at_its_time_limit_leaves_no_cluster_job_running() {
    // The job's process lists the Ballista jobs its queries submit in its folder; the
    // server, having killed the process at the time limit, asks the scheduler to cancel
    // them. Without that, this query (each patient's row against a billion rows of public numbers)
    // would run on the executors for hours.
    let tre = TreSetup::demo(2000, 5)
        .policy_text(crate::util::policy_with(
            "users = [\"analyst\"]\noutput_checkers = [\"checker1\", \"checker2\"]\nmax_query_seconds = 10\n",
        ))
        .users(&["analyst", "checker1"])
        .build();
    let token = tre.tokens["analyst"].clone();
    let c = Cluster::start(&tre.w);
    let server = Server::start(&tre.w, &["--scheduler", &c.scheduler]);
    // `generate_series` does not travel to a cluster (no codec for it), VALUES does.
    let thousand = (1..=1000)
        .map(|i| format!("({i})"))
        .collect::<Vec<_>>()
        .join(",");
    let (id, v) = job(
        &server.base,
        &token,
        &format!(
            "SELECT SUM(LENGTH(p.patient_pseudonym || p.sex) + a.v + b.v + c.v) AS n FROM patients p \
             CROSS JOIN (VALUES {thousand}) AS a(v) CROSS JOIN (VALUES {thousand}) AS b(v) \
             CROSS JOIN (VALUES {thousand}) AS c(v)"
        ),
    );
    // The analyst learns one bit (it failed while running); a checker sees why.
    assert_eq!(v["state"], "failed", "{v}");
    let v = Client::new(&server.base, Token::new(tre.tokens["checker1"].clone()))
        .job(DEMO, &id)
        .expect("the checker's status");
    assert_eq!(v["state"], "killed", "{v}");
    assert!(
        v["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("time limit"),
        "{v}"
    );
    let listed = tre
        .ws()
        .join("projects")
        .join(DEMO)
        .join("results")
        .join(&id)
        .join(tre_pipeline::cluster::CLUSTER_JOBS_FILE);
    let ids = tre_pipeline::cluster::remote::recorded_job_ids(&listed).expect("the list");
    assert!(
        !ids.is_empty(),
        "the job's process listed no cluster job: {v} {:?}",
        std::fs::read_dir(listed.parent().expect("job folder"))
            .map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // Cancelling is an event the scheduler handles in its own loop: ask until it has.
    let until = Instant::now() + Duration::from_secs(60);
    let states = loop {
        let states = rt
            .block_on(tre_pipeline::cluster::remote::job_states(
                &c.scheduler,
                &ids,
            ))
            .expect("the scheduler answers");
        if states
            .iter()
            .all(|(_, s)| !matches!(*s, "queued" | "running"))
            || Instant::now() > until
        {
            break states;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    for (job, state) in &states {
        assert!(
            matches!(*state, "failed" | "successful"),
            "cluster job {job} is {state} after the TRE job was killed: {states:?}"
        );
    }
    assert!(
        states.iter().any(|(_, s)| *s == "failed"),
        "the cross join's cluster job was not cancelled: {states:?}"
    );
    let log = String::from_utf8_lossy(&c.log("scheduler")).into_owned();
    let last = &states.last().expect("a job").0;
    assert!(
        log.contains(&format!("Received cancellation request for job {last}")),
        "the scheduler was not asked to cancel {last}"
    );
}
