//! Shared helpers for CLI tests: run the real `tre` binary in a fresh folder with a
//! cleared environment, small readers for its outputs, and the TRE fixture (synthetic
//! data, key, extract, workspace with a project, its outbox, dataset and people, and a
//! running `tre serve`) that the service, web, lineage and audit tests share.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// The tests' fixed project key (32 bytes drawn once from a random source; a structured
/// key such as 20 21 .. 3f is refused as weak), as a key file holds it.
pub const TEST_KEY_HEX: &str = "9f3c61d27a0b84e5c2d95f1730ae6b48e07d2c91b5f3468a0c7e19d4a23b56f8";
/// The fingerprint of [`TEST_KEY_HEX`].
pub const TEST_KEY_FINGERPRINT: &str = "cb88086a5d67ed1e";

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A fresh temporary folder per test.
pub struct Workdir {
    dir: tempfile::TempDir,
}

impl Workdir {
    pub fn new() -> Self {
        Workdir {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn join(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// A new folder holding a copy of this one (modes kept, symlinks as they are).
    pub fn copy(&self) -> Workdir {
        let w = Workdir::new();
        let mut from = self.path().as_os_str().to_owned();
        from.push("/.");
        run_ok(
            Command::new("cp").arg("-a").arg(from).arg(w.path()),
            "copy the test folder",
        );
        w
    }

    /// Run `tre` with a cleared environment (PATH and HOME only, plus `env`).
    pub fn tre_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        tre_in(self.path(), args, env)
    }

    pub fn tre(&self, args: &[&str]) -> Output {
        self.tre_env(args, &[])
    }

    /// Run and insist on exit 0.
    pub fn tre_ok(&self, args: &[&str]) -> Output {
        tre_in_ok(self.path(), args)
    }

    /// Run and insist on a given exit code; returns stderr.
    pub fn tre_code(&self, args: &[&str], code: i32) -> String {
        let out = self.tre(args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "tre {args:?}:\n{}",
            show(&out)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Write a file (creating parent folders).
    pub fn write(&self, rel: &str, content: impl AsRef<[u8]>) -> PathBuf {
        let p = self.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&p, content).expect("write");
        p
    }

    /// A key file with mode 0600 holding the tests' fixed key [`TEST_KEY_HEX`] (the
    /// published vector 00 .. 1f of docs/contracts.md is refused as a project key).
    pub fn test_key(&self) -> PathBuf {
        let p = self.write("project.key", format!("{TEST_KEY_HEX}\n"));
        chmod(&p, 0o600);
        p
    }
}

/// Run the real `tre` in `dir` with a cleared environment (PATH and HOME only, plus `env`).
pub fn tre_in(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tre"));
    cmd.args(args).current_dir(dir).env_clear();
    for k in ["PATH", "HOME"] {
        if let Ok(v) = std::env::var(k) {
            cmd.env(k, v);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    output_within(&mut cmd, TRE_DEADLINE, &format!("tre {args:?}"))
}

/// How long one `tre` command of a test may run: a command that should end but does not
/// (a server that starts where it should refuse) fails the test instead of hanging it.
pub const TRE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(600);

/// Read `r` to its end on a thread of its own (a full pipe must not block the child).
fn drain<R: std::io::Read + Send + 'static>(r: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut r) = r {
            let _ = r.read_to_end(&mut buf);
        }
        buf
    })
}

/// [`Command::output`], killing the process and failing the test after `deadline`.
pub fn output_within(cmd: &mut Command, deadline: std::time::Duration, what: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let start = std::time::Instant::now();
    let mut pause = std::time::Duration::from_millis(1);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the command") {
            break status;
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let said = String::from_utf8_lossy(&err.join().unwrap_or_default()).into_owned();
            panic!("{what} did not end within {deadline:?}; stderr: {said}");
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(std::time::Duration::from_millis(50));
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// Run the real `tre` in `dir` with its stdout already closed by the reader (as in
/// `tre ... | head -0`): its first write to stdout meets a broken pipe.
pub fn tre_closed_stdout(dir: &Path, args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tre"))
        .args(args)
        .current_dir(dir)
        .env_clear()
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tre");
    drop(child.stdout.take());
    child.wait_with_output().expect("wait for tre")
}

/// [`tre_in`] without extra environment, insisting on exit 0.
pub fn tre_in_ok(dir: &Path, args: &[&str]) -> Output {
    let out = tre_in(dir, args, &[]);
    assert!(out.status.success(), "tre {args:?} failed:\n{}", show(&out));
    out
}

/// Run any command to completion; panic with its output unless it succeeds.
pub fn run_ok(cmd: &mut Command, what: &str) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    assert!(out.status.success(), "{what} failed\n{}", show(&out));
    out
}

/// A path as `&str` (temporary paths are UTF-8).
pub fn s(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

pub fn chmod(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

pub fn show(out: &Output) -> String {
    format!(
        "status: {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Today (UTC) as YYYY-MM-DD: what the binary compares opt-out list dates with.
pub fn today() -> String {
    #[allow(clippy::disallowed_methods)]
    chrono::Utc::now().date_naive().to_string()
}

/// Every value of every string column of a Parquet file, plus its row count.
pub fn parquet_strings(path: &Path) -> (usize, Vec<String>) {
    use arrow::array::{Array, StringArray};
    let f = std::fs::File::open(path).expect("open parquet");
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
        .expect("parquet")
        .build()
        .expect("reader");
    let mut rows = 0;
    let mut out = Vec::new();
    for b in reader {
        let b = b.expect("batch");
        rows += b.num_rows();
        for c in b.columns() {
            if let Some(s) = c.as_any().downcast_ref::<StringArray>() {
                out.extend(s.iter().flatten().map(str::to_string));
            }
        }
    }
    (rows, out)
}

/// The values of one string column of a Parquet file.
pub fn parquet_column(path: &Path, name: &str) -> Vec<String> {
    use arrow::array::{Array, StringArray};
    let f = std::fs::File::open(path).expect("open parquet");
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
        .expect("parquet")
        .build()
        .expect("reader");
    let mut out = Vec::new();
    for b in reader {
        let b = b.expect("batch");
        let c = b.column_by_name(name).expect("column");
        let c =
            arrow::compute::cast(c, &arrow::datatypes::DataType::Utf8).expect("a string column");
        let s = c
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("string column");
        out.extend(s.iter().flatten().map(str::to_string));
    }
    out
}

// ---------------------------------------------------------------------------------------
// The TRE fixture: the operator's real commands, each run quietly in a Workdir and
// insisting on exit 0. Every fixture keeps its workspace at `WORKDIR/ws`.

/// The workspace folder, relative to the Workdir.
pub const WS: &str = "ws";

/// The project id of the demo policy.
pub const DEMO: &str = "demo";

/// The demo policy shipped in `policies/demo.toml`.
pub fn demo_policy_path() -> PathBuf {
    repo().join("policies/demo.toml")
}

impl Workdir {
    /// `tre generate --patients N --seed S --out DIR`: a synthetic extract and its
    /// `opt_outs.txt`.
    pub fn generate(&self, patients: u32, seed: u64, out: &str) {
        let (patients, seed) = (patients.to_string(), seed.to_string());
        self.tre_ok(&[
            "generate",
            "--patients",
            &patients,
            "--seed",
            &seed,
            "--out",
            out,
        ]);
    }

    /// `tre extract` of `INPUT/*.csv` under `policy` into `out`, with `INPUT/opt_outs.txt`
    /// dated today and `project.key` (see [`Workdir::test_key`]); `extra` is appended
    /// (`--quarantine DIR`, ...). Quiet, and must exit 0.
    pub fn extract(&self, policy: &str, input: &str, out: &str, extra: &[&str]) {
        let mut extra = extra.to_vec();
        extra.push("-q");
        let o = self.extract_output(policy, input, out, &extra);
        assert!(o.status.success(), "tre extract failed: {}", show(&o));
    }

    /// [`Workdir::extract`] whatever its outcome: the process output, for tests of
    /// refusals.
    pub fn extract_output(
        &self,
        policy: &str,
        input: &str,
        out: &str,
        extra: &[&str],
    ) -> std::process::Output {
        self.extract_env(policy, input, out, extra, &[])
    }

    /// [`Workdir::extract_output`] with extra environment variables (`TRE_CRASH_AT`).
    pub fn extract_env(
        &self,
        policy: &str,
        input: &str,
        out: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> std::process::Output {
        let opt_outs = format!("{input}/opt_outs.txt");
        let today = today();
        let mut args = vec![
            "extract",
            "--policy",
            policy,
            "--input",
            input,
            "--opt-outs",
            &opt_outs,
            "--opt-outs-as-of",
            &today,
            "--key-file",
            "project.key",
            "--out",
            out,
        ];
        args.extend_from_slice(extra);
        self.tre_env(&args, env)
    }

    /// `tre admin init --workspace ws`.
    pub fn admin_init(&self) {
        self.tre_ok(&["admin", "init", "--workspace", WS, "-q"]);
    }

    /// `tre admin user add --workspace ws NAME`: returns the new token, which must be
    /// alone on stdout.
    pub fn admin_user(&self, name: &str) -> String {
        let out = self.tre_ok(&["admin", "user", "add", "--workspace", WS, name, "-q"]);
        let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(
            token.starts_with("tre_") && token.len() == 68,
            "a token alone on stdout: {token}"
        );
        token
    }

    /// `tre admin project add --workspace ws POLICY`.
    pub fn admin_project(&self, policy: &str) {
        self.tre_ok(&["admin", "project", "add", "--workspace", WS, policy, "-q"]);
    }

    /// `tre admin project outbox --workspace ws PROJECT DIR`.
    pub fn admin_outbox(&self, project: &str, dir: &str) {
        self.tre_ok(&[
            "admin",
            "project",
            "outbox",
            "--workspace",
            WS,
            project,
            dir,
            "-q",
        ]);
    }

    /// `tre admin dataset add --workspace ws PROJECT EXTRACT_DIR`.
    pub fn admin_dataset(&self, project: &str, extract: &str) {
        self.tre_ok(&[
            "admin",
            "dataset",
            "add",
            "--workspace",
            WS,
            project,
            extract,
            "-q",
        ]);
    }
}

/// Where a fixture's policy comes from.
enum PolicySource {
    /// A file used where it is (the shipped demo policy).
    Path(PathBuf),
    /// Text written to `WORKDIR/policy.toml`.
    Text(String),
}

/// How to build a [`Tre`]: `patients` synthetic patients from `seed`, the demo policy
/// (or [`TreSetup::policy_text`]) and the people of [`TreSetup::users`].
pub struct TreSetup {
    patients: u32,
    seed: u64,
    policy: PolicySource,
    users: Vec<String>,
}

impl TreSetup {
    /// The demo project over `patients` patients generated from `seed`, with no people.
    pub fn demo(patients: u32, seed: u64) -> TreSetup {
        TreSetup {
            patients,
            seed,
            policy: PolicySource::Path(demo_policy_path()),
            users: Vec::new(),
        }
    }

    /// Use this policy text (written to `policy.toml`) instead of the demo policy file;
    /// its project id must stay `demo`.
    pub fn policy_text(mut self, text: String) -> TreSetup {
        self.policy = PolicySource::Text(text);
        self
    }

    /// Add these people (`tre admin user add`), keeping their tokens.
    pub fn users(mut self, users: &[&str]) -> TreSetup {
        self.users = users.iter().map(|u| u.to_string()).collect();
        self
    }

    /// Generate, write the test key, extract into `extract/`, then as the operator: init
    /// the workspace, add the people, the project, its outbox (`WORKDIR/outbox`) and the
    /// extract as its dataset.
    pub fn build(self) -> Tre {
        let w = Workdir::new();
        w.generate(self.patients, self.seed, "in");
        w.test_key();
        let policy = match self.policy {
            PolicySource::Path(p) => s(&p).to_string(),
            PolicySource::Text(text) => {
                w.write("policy.toml", text);
                "policy.toml".to_string()
            }
        };
        w.extract(&policy, "in", "extract", &[]);
        w.admin_init();
        let tokens = self
            .users
            .iter()
            .map(|u| (u.clone(), w.admin_user(u)))
            .collect();
        let outbox = w.join("outbox");
        std::fs::create_dir(&outbox).expect("outbox");
        w.admin_project(&policy);
        w.admin_outbox(DEMO, "outbox");
        w.admin_dataset(DEMO, "extract");
        Tre { w, tokens, outbox }
    }
}

/// A workspace with one project, its dataset and outbox, and people with tokens.
pub struct Tre {
    /// The test's folder: `in/`, `project.key`, `extract/`, `ws/`, `outbox/`.
    pub w: Workdir,
    /// Each person's bearer token.
    pub tokens: BTreeMap<String, String>,
    /// The project's outbox.
    pub outbox: PathBuf,
}

impl Tre {
    /// The demo project's installed datasets as tables of a fresh DataFusion session (the
    /// ground truth tests compare released tables with), and a runtime to query them on.
    pub fn installed_datasets(
        &self,
    ) -> (tokio::runtime::Runtime, datafusion::prelude::SessionContext) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let ctx = datafusion::prelude::SessionContext::new();
        let data = self.ws().join("projects/demo/data");
        for e in std::fs::read_dir(&data).expect("data folder") {
            let path = e.expect("entry").path();
            let Some(stem) = path.file_stem().and_then(|s| s.to_str()).map(String::from) else {
                continue;
            };
            if path.extension().is_some_and(|x| x == "parquet") {
                rt.block_on(ctx.register_parquet(
                    &stem,
                    path.to_str().expect("utf-8 path"),
                    datafusion::prelude::ParquetReadOptions::default(),
                ))
                .expect("register");
            }
        }
        (rt, ctx)
    }

    /// The workspace folder.
    pub fn ws(&self) -> PathBuf {
        self.w.join(WS)
    }

    /// Start `tre serve` over the workspace (with `extra` arguments).
    pub fn serve(&self, extra: &[&str]) -> Server {
        Server::start(&self.w, extra)
    }
}

/// Start `tre serve --workspace ws --listen 127.0.0.1:0 EXTRA` in `w` with a cleared
/// environment plus `env`, stderr appended to `stderr` (else dropped); wait for the
/// address it prints. Returns the process and `http://ADDR`.
pub fn spawn_serve(
    w: &Workdir,
    extra: &[&str],
    env: &[(&str, &str)],
    stderr: Option<&Path>,
) -> (Child, String) {
    let err = match stderr {
        Some(p) => Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .expect("server stderr file"),
        ),
        None => Stdio::null(),
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_tre"))
        .args(["serve", "--workspace", WS, "--listen", "127.0.0.1:0"])
        .args(extra)
        .current_dir(w.path())
        .env_clear()
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(err)
        .spawn()
        .expect("start tre serve");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read the address");
    let Some(base) = line.trim().strip_prefix("listening on ") else {
        let _ = child.wait();
        let said = stderr
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default();
        panic!("tre serve did not start: printed {line:?}; stderr: {said}");
    };
    (child, base.to_string())
}

/// `tre serve --workspace ws --listen 127.0.0.1:0` in a Workdir with a cleared
/// environment; stopped (SIGTERM, then waited for) by [`Server::stop`] or when dropped.
/// Keep it before the Workdir in a struct, so it stops before the folder is removed.
pub struct Server {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`, as the server printed it.
    pub base: String,
}

impl Server {
    /// Start the server and wait for the address it listens on.
    pub fn start(w: &Workdir, extra: &[&str]) -> Server {
        Server::start_env(w, extra, &[], None)
    }

    /// [`Server::start`] with `env` set and stderr appended to `stderr` (else dropped).
    pub fn start_env(
        w: &Workdir,
        extra: &[&str],
        env: &[(&str, &str)],
        stderr: Option<&Path>,
    ) -> Server {
        let (child, base) = spawn_serve(w, extra, env, stderr);
        Server {
            child: Some(child),
            base,
        }
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stop the server (SIGTERM, so it writes its shutdown checkpoint) and wait for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = rustix::process::Pid::from_raw(c.id() as i32).expect("pid");
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            let _ = c.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `tre purge` of project `demo` in `ws` with the opt-out list `newer.txt` dated `today`
/// and `project.key`, then `extra`.
pub fn purge_with<'a>(today: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "purge",
        "--workspace",
        "ws",
        "--project",
        "demo",
        "--opt-outs",
        "newer.txt",
        "--opt-outs-as-of",
        today,
        "--key-file",
        "project.key",
    ];
    v.extend_from_slice(extra);
    v
}

/// [`purge_with`] the extract's quarantine folder.
pub fn purge_args<'a>(today: &'a str, quarantine: &'a str) -> Vec<&'a str> {
    purge_with(today, &["--quarantine", quarantine])
}

/// How many entries of `action` with `outcome` a workspace's audit log holds.
pub fn audit_count(ws: &Path, action: &str, outcome: &str) -> usize {
    audit_entries(ws)
        .iter()
        .filter(|e| e["action"] == action && e["outcome"] == outcome)
        .count()
}

/// The entries of a workspace's audit log (empty when there is none yet).
pub fn audit_entries(ws: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(ws.join("audit/audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The demo policy with its `[tre]` section replaced by `tre`.
pub fn policy_with(tre: &str) -> String {
    let text = std::fs::read_to_string(repo().join("policies/demo.toml")).expect("policy");
    let head = text.split("[tre]").next().expect("has [tre]");
    format!("{head}[tre]\n{tre}\n")
}

/// One raw HTTP/1.1 exchange with `Connection: close`: status, `Set-Cookie` (name=value)
/// and body.
pub fn http(addr: &str, request: String) -> (u16, Option<String>, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(120)))
        .expect("timeout");
    stream.write_all(request.as_bytes()).expect("send");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let cookie = head
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .and_then(|l| l.split_once(':'))
        .and_then(|(_, v)| v.trim().split(';').next())
        .map(str::to_string);
    (status, cookie, body.to_string())
}

/// Sign in through the form as the holder of `token`: the session cookie.
pub fn sign_in(addr: &str, token: &str) -> String {
    let (_, cookie, body) = http(
        addr,
        format!("GET /sign-in HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    );
    let cookie = cookie.expect("a session cookie");
    let form_token = body
        .split("name=\"form_token\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("a form token");
    let form = format!("form_token={form_token}&token={token}");
    let (status, cookie, body) = http(
        addr,
        format!(
            "POST /sign-in HTTP/1.1\r\nHost: {addr}\r\nOrigin: http://{addr}\r\nCookie: {cookie}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{form}",
            form.len()
        ),
    );
    assert_eq!(status, 303, "signed in: {body}");
    cookie.expect("the signed-in cookie")
}
