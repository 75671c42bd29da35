//! The server's runtime under failure and abuse, against the real `tre serve`: a killed
//! server takes its jobs with it and its successor never runs them again; a stop with a
//! half-sent request and a running job ends within its deadline; bodies over the limit
//! get 413 on every route; a short job's peak memory is real; a flood of bad tokens is
//! rate-limited and aggregated in the audit; reads of results are audited.
//!
//! The server is started here (not through `util::Server`) because these tests signal
//! it, kill it, and time its exit.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use serde_json::Value;
use tre_pipeline::client::Client;
use tre_pipeline::tre::users::Token;

use crate::util::{Tre, TreSetup, Workdir, repo, s};

const COUNTS: &str =
    "SELECT age_band, COUNT(*) AS n FROM patients GROUP BY age_band ORDER BY age_band";

/// Runs until its time limit (60 s here): the tests stop it long before.
const FOREVER: &str = "SELECT SUM(LENGTH(p.patient_pseudonym || p.sex) + g.value) AS n FROM patients p CROSS JOIN generate_series(1, 10000000) g";

fn policy() -> String {
    let text = std::fs::read_to_string(repo().join("policies/demo.toml")).expect("policy");
    let head = text.split("[tre]").next().expect("has [tre]");
    format!(
        "{head}[tre]\nusers = [\"analyst\"]\noutput_checkers = [\"checker1\", \"checker2\"]\noutput_rules = \"opensafely\"\nmax_query_seconds = 60\n"
    )
}

fn setup() -> Tre {
    TreSetup::demo(2000, 5)
        .policy_text(policy())
        .users(&["analyst", "checker1", "checker2"])
        .build()
}

/// A `tre serve` process this test signals and times.
struct Serve {
    child: Option<Child>,
    base: String,
    addr: String,
}

impl Serve {
    fn start(w: &Workdir, extra: &[&str]) -> Serve {
        let (child, base) = crate::util::spawn_serve(w, extra, &[], None);
        let addr = base.trim_start_matches("http://").to_string();
        Serve {
            child: Some(child),
            base,
            addr,
        }
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    fn signal(&self, sig: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.pid()).expect("pid");
        rustix::process::kill_process(pid, sig).expect("signal the server");
    }

    /// Wait up to `limit` for the server to exit; how long it took.
    fn wait_exit(&mut self, limit: Duration) -> Duration {
        let started = Instant::now();
        let mut c = self.child.take().expect("running");
        loop {
            if c.try_wait().expect("wait").is_some() {
                return started.elapsed();
            }
            if started.elapsed() > limit {
                let _ = c.kill();
                let _ = c.wait();
                panic!("tre serve did not exit within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn client(&self, tre: &Tre, user: &str) -> Client {
        Client::new(&self.base, Token::new(tre.tokens[user].clone()))
    }
}

impl Drop for Serve {
    /// SIGTERM, so the server stops as it should (a SIGKILL in the middle of an audit
    /// append leaves a log `tre audit verify` rightly calls interrupted).
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(mut c) = self.child.take()
        {
            let _ = c.kill();
            let _ = c.wait();
        }
        if self.child.is_some() {
            self.signal(rustix::process::Signal::TERM);
            self.wait_exit(Duration::from_secs(60));
        }
    }
}

fn audit(ws: &Path) -> Vec<Value> {
    std::fs::read_to_string(ws.join("audit/audit.jsonl"))
        .expect("audit log")
        .lines()
        .map(|l| serde_json::from_str(l).expect("entry"))
        .collect()
}

fn entries<'a>(log: &'a [Value], action: &str) -> Vec<&'a Value> {
    log.iter().filter(|e| e["action"] == action).collect()
}

fn verify(tre: &Tre) {
    let log = tre.ws().join("audit/audit.jsonl");
    tre.w.tre_ok(&["audit", "verify", "--log", s(&log)]);
}

/// The pids of the processes running `job` (`tre internal-run-job ... --job JOB`).
fn job_processes(job: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmd.split(|&b| b == 0).collect();
        let has = |a: &str| args.contains(&a.as_bytes());
        if has("internal-run-job") && has(job) {
            pids.push(pid);
        }
    }
    pids
}

/// Poll `f` every 50 ms until it is true, up to `limit`.
fn eventually(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let started = Instant::now();
    while !f() {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Submit `sql` as the analyst; the job id once its process runs.
fn start_job(srv: &Serve, tre: &Tre, sql: &str) -> String {
    let v = srv
        .client(tre, "analyst")
        .submit("demo", sql, "a test of the runtime")
        .expect("submit");
    let job = v["job"].as_str().expect("job id").to_string();
    eventually(Duration::from_secs(60), "the job's process starts", || {
        !job_processes(&job).is_empty()
    });
    job
}

/// One raw HTTP/1.1 exchange (`Connection: close`): status, headers (lowercase names),
/// body.
fn raw(stream: &mut TcpStream, request: &[u8]) -> (u16, Vec<(String, String)>, String) {
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    stream.write_all(request).expect("send");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

fn http(addr: &str, request: &[u8]) -> (u16, Vec<(String, String)>, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    raw(&mut stream, request)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn a_killed_server_takes_its_jobs_with_it_and_its_successor_never_runs_them_again() {
    let tre = setup();
    let mut srv = Serve::start(&tre.w, &[]);
    let job = start_job(&srv, &tre, FOREVER);
    let before = job_processes(&job);
    assert_eq!(before.len(), 1, "one process for the job: {before:?}");
    // The record as it was while the job ran, kept to be put back later.
    let record = tre
        .ws()
        .join(format!("projects/demo/results/{job}/job.json"));
    let running = std::fs::read(&record).expect("job record");
    srv.signal(rustix::process::Signal::KILL);
    srv.wait_exit(Duration::from_secs(10));
    eventually(
        Duration::from_secs(10),
        "the job's process dies with the server",
        || job_processes(&job).is_empty(),
    );

    let srv = Serve::start(&tre.w, &[]);
    let v = srv
        .client(&tre, "analyst")
        .job("demo", &job)
        .expect("status");
    assert_eq!(v["state"], "failed", "{v}");
    assert!(
        v["reason"]
            .as_str()
            .unwrap_or_default()
            .starts_with("interrupted: the server stopped while it ran"),
        "{v}"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(job_processes(&job).is_empty(), "the job was started again");
    drop(srv);
    let log = audit(&tre.ws());
    let recover = entries(&log, "job.recover");
    assert_eq!(recover.len(), 1, "{recover:?}");
    assert_eq!(recover[0]["actor"], "service");
    assert_eq!(recover[0]["detail"]["job"], job.as_str());
    let starts = entries(&log, "job.start");
    assert_eq!(starts.len(), 1, "started once: {starts:?}");
    verify(&tre);

    // The running record put back (a backup restore, or the service account's file
    // access): each state change is bound to its audit entry, so the older version is
    // refused, the job is neither recovered nor run again, and the refusal is audited.
    std::fs::write(&record, &running).expect("roll back");
    let srv = Serve::start(&tre.w, &[]);
    let e = srv
        .client(&tre, "analyst")
        .job("demo", &job)
        .expect_err("a rolled-back job record is refused");
    assert!(
        matches!(&e, tre_pipeline::client::ClientError::Status { status: 409, message } if message.contains("job.json")),
        "{e:?}"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(job_processes(&job).is_empty(), "the job was started again");
    drop(srv);
    let log = audit(&tre.ws());
    assert_eq!(entries(&log, "job.recover").len(), 1);
    assert_eq!(entries(&log, "job.start").len(), 1);
    verify(&tre);
}

#[test]
fn a_stop_with_a_half_sent_request_and_a_running_job_ends_within_its_deadline() {
    let tre = setup();
    // The header timeout is longer than the test: only the shutdown deadline can end
    // the half-sent request.
    let mut srv = Serve::start(
        &tre.w,
        &["--shutdown-seconds", "2", "--header-read-seconds", "300"],
    );
    let job = start_job(&srv, &tre, FOREVER);
    let mut half = TcpStream::connect(&srv.addr).expect("connect");
    half.write_all(b"GET /api/me HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthor")
        .expect("send half a header");
    std::thread::sleep(Duration::from_millis(300));
    srv.signal(rustix::process::Signal::TERM);
    let took = srv.wait_exit(Duration::from_secs(30));
    assert!(took < Duration::from_secs(20), "stopped in {took:?}");
    assert!(job_processes(&job).is_empty(), "the job's process was left");
    drop(half);

    let log = audit(&tre.ws());
    let stop = entries(&log, "serve.stop");
    assert_eq!(stop.len(), 1, "{stop:?}");
    assert_eq!(stop[0]["detail"]["connections_dropped"], 1, "{stop:?}");
    assert_eq!(stop[0]["detail"]["jobs_stopped"], 1, "{stop:?}");
    let run = entries(&log, "job.run");
    assert_eq!(run.len(), 1, "{run:?}");
    assert_eq!(run[0]["detail"]["state"], "failed");
    assert_eq!(
        run[0]["detail"]["reason"],
        "the server stopped while it ran; submit it again"
    );
    verify(&tre);

    // Its record says so, and the next server neither re-runs nor re-marks it.
    let srv = Serve::start(&tre.w, &[]);
    let v = srv
        .client(&tre, "analyst")
        .job("demo", &job)
        .expect("status");
    assert_eq!(v["state"], "failed", "{v}");
    assert!(
        v["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("the server stopped"),
        "{v}"
    );
    drop(srv);
    assert!(entries(&audit(&tre.ws()), "job.recover").is_empty());
}

#[test]
fn an_idle_or_slow_header_is_cut_off_by_the_header_timeout() {
    let tre = setup();
    let srv = Serve::start(&tre.w, &["--header-read-seconds", "1"]);
    let mut slow = TcpStream::connect(&srv.addr).expect("connect");
    slow.write_all(b"GET /api/me HTTP/1.1\r\n")
        .expect("send a line");
    slow.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = slow.read_to_end(&mut rest);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the connection was closed by the server after about 1 s, not {:?}",
        started.elapsed()
    );
}

#[test]
fn bodies_over_the_limit_get_413_on_api_and_page_routes_and_are_audited() {
    let tre = setup();
    let srv = Serve::start(&tre.w, &[]);
    let token = &tre.tokens["analyst"];
    let big = format!(
        "{{\"sql\":\"SELECT 1 -- {}\",\"purpose\":\"too big\"}}",
        "x".repeat(1 << 20)
    );
    let req = format!(
        "POST /api/projects/demo/jobs HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{big}",
        srv.addr,
        big.len()
    );
    let (status, _, body) = http(&srv.addr, req.as_bytes());
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("over the limit"), "{body}");

    // A page's form post, streamed (chunked, no length given up front).
    let form = format!("form_token=x&token={}", "y".repeat(600 << 10));
    let req = format!(
        "POST /sign-in HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{form}\r\n0\r\n\r\n",
        srv.addr,
        form.len()
    );
    let (status, _, body) = http(&srv.addr, req.as_bytes());
    assert_eq!(status, 413, "{body}");

    // Within the limit, the same routes still answer as before.
    let v = srv
        .client(&tre, "analyst")
        .submit("demo", COUNTS, "a small job")
        .expect("a small job is accepted");
    assert_eq!(v["state"], "queued", "{v}");
    drop(srv);
    let log = audit(&tre.ws());
    let refused: Vec<&Value> = log
        .iter()
        .filter(|e| e["outcome"] == "refused" && e["detail"]["status"] == 413)
        .collect();
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert_eq!(refused[0]["detail"]["route"], "POST /api/projects/{p}/jobs");
    assert_eq!(refused[1]["detail"]["route"], "POST /sign-in");
    for e in &refused {
        let text = e.to_string();
        assert!(!text.contains(token.as_str()), "no token in the audit");
    }
    verify(&tre);
}

#[test]
fn a_short_jobs_peak_memory_is_measured_not_sampled_at_its_start() {
    let tre = setup();
    let srv = Serve::start(&tre.w, &[]);
    let c = srv.client(&tre, "analyst");
    let v = c.submit("demo", COUNTS, "peak memory").expect("submit");
    let job = v["job"].as_str().expect("job");
    let v = c
        .wait("demo", job, Duration::from_secs(120))
        .expect("status");
    assert_eq!(v["state"], "succeeded", "{v}");
    let peak = v["peak_rss_kib"].as_u64().unwrap_or(0);
    // The `tre` binary with DataFusion loaded is tens of MiB; a sample taken between
    // fork and exec reads a few KiB.
    assert!(peak > 8 * 1024, "peak RSS of a short job: {peak} KiB");
}

/// Post the sign-in form with `token` (after getting the form): status and headers.
fn post_sign_in(addr: &str, token: &str) -> (u16, Vec<(String, String)>, String) {
    let (status, headers, body) = http(
        addr,
        format!("GET /sign-in HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    assert_eq!(status, 200, "{body}");
    let cookie = header(&headers, "set-cookie")
        .and_then(|c| c.split(';').next())
        .expect("a session cookie")
        .to_string();
    let form_token = body
        .split("name=\"form_token\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("a form token")
        .to_string();
    let form = format!("form_token={form_token}&token={token}");
    http(
        addr,
        format!(
            "POST /sign-in HTTP/1.1\r\nHost: {addr}\r\nOrigin: http://{addr}\r\nCookie: {cookie}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{form}",
            form.len()
        )
        .as_bytes(),
    )
}

/// Sign in through the form: the session cookie.
fn sign_in(addr: &str, token: &str) -> String {
    let (status, headers, body) = post_sign_in(addr, token);
    assert_eq!(status, 303, "signed in: {body}");
    header(&headers, "set-cookie")
        .and_then(|c| c.split(';').next())
        .expect("the signed-in cookie")
        .to_string()
}

#[test]
fn reads_of_results_are_audited_status_safe_table_and_page() {
    let tre = setup();
    let srv = Serve::start(&tre.w, &[]);
    let c = srv.client(&tre, "analyst");
    let v = c.submit("demo", COUNTS, "audited reads").expect("submit");
    let job = v["job"].as_str().expect("job").to_string();
    let v = c
        .wait("demo", &job, Duration::from_secs(120))
        .expect("status");
    assert_eq!(v["state"], "succeeded", "{v}");
    let reads_after = |log: &[Value], read: &str| {
        log.iter()
            .filter(|e| {
                e["action"] == "job.read"
                    && e["detail"]["read"] == read
                    && e["detail"]["job"] == job.as_str()
            })
            .count()
    };
    let log = audit(&tre.ws());
    let status_reads = reads_after(&log, "status");
    assert!(status_reads >= 1, "the final status was audited");
    c.job("demo", &job).expect("status again");
    c.safe("demo", &job).expect("safe table");
    let cookie = sign_in(&srv.addr, &tre.tokens["analyst"]);
    let (status, _, body) = http(
        &srv.addr,
        format!(
            "GET /projects/demo/jobs/{job} HTTP/1.1\r\nHost: {}\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n",
            srv.addr
        )
        .as_bytes(),
    );
    assert_eq!(status, 200, "{body}");
    drop(srv);
    let log = audit(&tre.ws());
    assert_eq!(reads_after(&log, "status"), status_reads + 1);
    assert_eq!(reads_after(&log, "page"), 1);
    let safe: Vec<&Value> = entries(&log, "job.safe")
        .into_iter()
        .filter(|e| e["outcome"] == "ok")
        .collect();
    // The API read, and the page's table when the job's table is releasable.
    assert!(!safe.is_empty(), "{safe:?}");
    verify(&tre);
}

/// A raw exchange over a connection from the loopback address `from` (127.0.0.2 ...).
fn http_from(from: &str, addr: &str, request: &[u8]) -> (u16, Vec<(String, String)>, String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let stream = rt
        .block_on(async {
            let sock = tokio::net::TcpSocket::new_v4()?;
            sock.bind(format!("{from}:0").parse().expect("address"))?;
            let s = sock.connect(addr.parse().expect("address")).await?;
            s.into_std()
        })
        .expect("connect from another loopback address");
    let mut stream = stream;
    stream.set_nonblocking(false).expect("blocking");
    raw(&mut stream, request)
}

fn get_me(addr: &str, token: &str) -> String {
    format!(
        "GET /api/me HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )
}

#[test]
fn a_flood_of_bad_tokens_is_rate_limited_and_aggregated_in_the_audit() {
    let tre = setup();
    let srv = Serve::start(&tre.w, &[]);
    let mut statuses = Vec::new();
    for i in 0..50 {
        // A prefix no real token has (tokens are `tre_` and hex).
        let bad = format!("tre_zzzz{i:060}");
        let (status, headers, _) = http(&srv.addr, get_me(&srv.addr, &bad).as_bytes());
        if status == 429 {
            let retry: u64 = header(&headers, "retry-after")
                .and_then(|v| v.parse().ok())
                .expect("Retry-After in seconds");
            assert!((1..=120).contains(&retry), "Retry-After {retry}");
        }
        statuses.push(status);
    }
    let refused = statuses.iter().filter(|s| **s == 401).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!((refused, limited), (10, 40), "{statuses:?}");
    assert!(statuses[10..].iter().all(|s| *s == 429), "{statuses:?}");

    // Blocked: the address is not served even with a good token, without a lookup...
    let good = &tre.tokens["analyst"];
    let (status, _, _) = http(&srv.addr, get_me(&srv.addr, good).as_bytes());
    assert_eq!(status, 429);
    // ...but the same good token from another address works.
    let (status, _, body) = http_from("127.0.0.2", &srv.addr, get_me(&srv.addr, good).as_bytes());
    assert_eq!(status, 200, "{body}");
    // The sign-in page shares the limit.
    let (status, headers, _) = post_sign_in(&srv.addr, "wrong");
    assert_eq!(status, 429);
    assert!(header(&headers, "retry-after").is_some());
    let mut srv = srv;
    srv.signal(rustix::process::Signal::TERM);
    srv.wait_exit(Duration::from_secs(30));

    let log = audit(&tre.ws());
    let auth: Vec<&Value> = log
        .iter()
        .filter(|e| e["action"] == "auth" || e["action"] == "auth.failed")
        .collect();
    assert!(
        (2..=5).contains(&auth.len()),
        "a handful of entries, not one per attempt: {auth:#?}"
    );
    let aggregated = entries(&log, "auth.failed");
    assert_eq!(aggregated.len(), 1, "{aggregated:?}");
    let d = &aggregated[0]["detail"];
    assert_eq!(d["address"], "127.0.0.1");
    // 49 bad tokens after the first, the good one and the sign-in that were blocked.
    assert_eq!(d["count"], 51, "{d}");
    for e in &log {
        let text = e.to_string();
        assert!(
            !text.contains("tre_zzzz"),
            "no token prefix in the audit: {text}"
        );
        assert!(!text.contains(good.as_str()));
    }
    verify(&tre);
}
