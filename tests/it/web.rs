//! The web pages in a real browser: headless Chromium driven through WebDriver
//! (chromedriver), against `tre serve` started on 127.0.0.1 port 0 over a workspace set
//! up with `tre admin`. Screenshots of each page go to `target/screenshots/`.
//!
//! The WebDriver client is the dozen W3C endpoints these tests use, spoken over `ureq`
//! (already a dependency), rather than a client crate with its own HTTP and TLS stacks.
//! Without chromium and chromedriver the tests fail loudly under `CI=true`; elsewhere
//! they fail too, naming the packages to install (a test never silently skips).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::util::{Server, Tre, TreSetup, repo};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn require_browser() {
    let missing: Vec<&str> = [CHROMIUM, CHROMEDRIVER]
        .into_iter()
        .filter(|p| !Path::new(p).exists())
        .collect();
    assert!(
        missing.is_empty(),
        "browser tests need {missing:?}: install the Debian packages `chromium` and `chromium-driver` (CI={})",
        std::env::var("CI").unwrap_or_default()
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .max_redirects_will_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

/// chromedriver, stopped when dropped.
pub(crate) struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn start_driver() -> Driver {
    require_browser();
    let port = free_port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let d = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let start = Instant::now();
    loop {
        if let Ok(mut r) = agent().get(format!("{}/status", d.url)).call()
            && r.body_mut()
                .read_json::<Value>()
                .is_ok_and(|v| v["value"]["ready"] == true)
        {
            return d;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "chromedriver did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One browser (WebDriver session).
pub(crate) struct Browser<'a> {
    driver: &'a Driver,
    session: String,
    shots: PathBuf,
}

impl Drop for Browser<'_> {
    fn drop(&mut self) {
        let _ = agent()
            .delete(format!("{}/session/{}", self.driver.url, self.session))
            .call();
    }
}

fn wd(method: &str, url: &str, body: Option<Value>) -> Value {
    let a = agent();
    let mut r = match (method, body) {
        ("GET", _) => a.get(url).call(),
        ("DELETE", _) => a.delete(url).call(),
        (_, b) => a.post(url).send_json(b.unwrap_or(json!({}))),
    }
    .unwrap_or_else(|e| panic!("WebDriver {method} {url}: {e}"));
    let v: Value = r.body_mut().read_json().expect("WebDriver answers JSON");
    assert!(
        v["value"].get("error").is_none(),
        "WebDriver {method} {url}: {v}"
    );
    v["value"].clone()
}

impl<'a> Browser<'a> {
    pub(crate) fn open(driver: &'a Driver, shots: &Path) -> Browser<'a> {
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": [
                "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1366,2400", "--lang=en-GB"]}
        }}});
        let v = wd("POST", &format!("{}/session", driver.url), Some(caps));
        Browser {
            driver,
            session: v["sessionId"].as_str().expect("session id").to_string(),
            shots: shots.to_path_buf(),
        }
    }

    fn at(&self, path: &str) -> String {
        format!("{}/session/{}{path}", self.driver.url, self.session)
    }

    /// Navigate, then wait until the page has loaded (on a loaded machine the driver can
    /// answer before the document is complete, and a read would see an empty page).
    pub(crate) fn go(&self, url: &str) {
        wd("POST", &self.at("/url"), Some(json!({ "url": url })));
        self.wait_loaded();
    }

    fn wait_loaded(&self) {
        let start = Instant::now();
        loop {
            let state = wd(
                "POST",
                &self.at("/execute/sync"),
                Some(json!({ "script": "return document.readyState", "args": [] })),
            );
            let body = self.source();
            if state == "complete" && body.contains("</body>") {
                return;
            }
            if start.elapsed() > Duration::from_secs(20) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub(crate) fn url(&self) -> String {
        wd("GET", &self.at("/url"), None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    pub(crate) fn source(&self) -> String {
        wd("GET", &self.at("/source"), None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    fn find(&self, css: &str) -> String {
        let v = wd(
            "POST",
            &self.at("/element"),
            Some(json!({"using": "css selector", "value": css})),
        );
        v[ELEMENT].as_str().expect("element id").to_string()
    }

    pub(crate) fn type_in(&self, css: &str, text: &str) {
        let e = self.find(css);
        wd(
            "POST",
            &self.at(&format!("/element/{e}/value")),
            Some(json!({ "text": text })),
        );
    }

    fn click(&self, css: &str) {
        let e = self.find(css);
        wd(
            "POST",
            &self.at(&format!("/element/{e}/click")),
            Some(json!({})),
        );
    }

    /// Click a submit button and wait until the browser has left the page.
    pub(crate) fn submit(&self, css: &str) {
        let before = self.url();
        self.click(css);
        let start = Instant::now();
        while self.url() == before && start.elapsed() < Duration::from_secs(15) {
            std::thread::sleep(Duration::from_millis(100));
        }
        self.wait_loaded();
    }

    fn cookie(&self, name: &str) -> Option<String> {
        let v = wd("GET", &self.at("/cookie"), None);
        v.as_array()?
            .iter()
            .find(|c| c["name"] == name)
            .and_then(|c| c["value"].as_str().map(str::to_string))
    }

    pub(crate) fn screenshot(&self, name: &str) {
        use base64::Engine;
        let v = wd("GET", &self.at("/screenshot"), None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().expect("base64"))
            .expect("screenshot is base64");
        std::fs::create_dir_all(&self.shots).expect("screenshots folder");
        std::fs::write(self.shots.join(format!("{name}.png")), png).expect("write screenshot");
    }

    /// Run a script in the page (WebDriver's scripts are not bound by the page's CSP).
    fn exec(&self, script: &str, args: Value) {
        wd(
            "POST",
            &self.at("/execute/sync"),
            Some(json!({ "script": script, "args": args })),
        );
    }

    pub(crate) fn sign_in(&self, base: &str, token: &str) {
        self.go(&format!("{base}/sign-in"));
        self.type_in("#token", token);
        self.submit("button[type=submit]");
        assert_eq!(self.url(), format!("{base}/"), "{}", self.source());
    }

    fn sign_out(&self) {
        self.submit("form.signout button");
    }
}

/// A workspace with the demo project, its dataset, an outbox and three people, set up
/// with the operator's `tre admin` commands; `tre serve` running on a loopback port,
/// stopped (SIGTERM) when dropped.
struct Trial {
    /// First, so that the server stops before the folder is removed.
    server: Server,
    tre: Tre,
}

impl Trial {
    fn base(&self) -> &str {
        &self.server.base
    }
}

fn trial() -> Trial {
    let tre = TreSetup::demo(2000, 7)
        .users(&["analyst", "checker1", "checker2"])
        .build();
    Trial {
        server: tre.serve(&[]),
        tre,
    }
}

fn shots() -> PathBuf {
    repo().join("target").join("screenshots")
}

/// Wait until the job page shows a final state.
fn wait_for_job(b: &Browser, job_url: &str) -> String {
    let start = Instant::now();
    loop {
        b.go(job_url);
        let s = b.source();
        if ["succeeded", "failed", "killed"].iter().any(|st| {
            s.contains(&format!("badge ok\">{st}")) || s.contains(&format!("badge bad\">{st}"))
        }) {
            return s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "job did not finish: {s}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn whole_story_in_a_browser_analyst_submits_two_checkers_approve_export_appears() {
    let driver = start_driver();
    let t = trial();
    let base = t.base();
    let a = Browser::open(&driver, &shots());

    a.go(&format!("{base}/sign-in"));
    a.screenshot("01-sign-in");
    a.sign_in(base, &t.tre.tokens["analyst"]);
    a.screenshot("02-projects");
    assert!(a.source().contains("href=\"/projects/demo\""));

    a.go(&format!("{base}/projects/demo"));
    a.type_in(
        "#sql",
        "SELECT age_band, COUNT(*) AS n FROM patients GROUP BY age_band ORDER BY age_band",
    );
    a.type_in(
        "#purpose",
        "Counts by sex and age band for the annual report",
    );
    a.screenshot("03-submit-job");
    a.submit("form.stack button[type=submit]");
    let job_url = a.url();
    assert!(job_url.contains("/projects/demo/jobs/job-"), "{job_url}");
    let page = wait_for_job(&a, &job_url);
    assert!(page.contains("badge ok\">succeeded"), "{page}");
    assert!(
        page.contains("Safe table") && !page.contains("Disclosure report"),
        "{page}"
    );
    a.screenshot("04-job-safe-table");

    a.type_in(
        "#justification",
        "Needed for the annual practice report table 2",
    );
    a.type_in(
        "#context",
        "Registered patients by sex and age band, all practices, at extract date",
    );
    a.submit("#context ~ div button[type=submit]");
    let rel_url = a.url();
    assert!(
        rel_url.contains("/projects/demo/releases/rel-"),
        "{rel_url}"
    );
    a.screenshot("05-release-requested");

    // The analyst is not a checker of the project: approving their own request is
    // refused by the API's review handler, shown in the page.
    let own = a.source();
    assert!(
        !own.contains("Record decision"),
        "no review form for the requester"
    );

    for (n, who) in [(1, "checker1"), (2, "checker2")] {
        let c = Browser::open(&driver, &shots());
        c.sign_in(base, &t.tre.tokens[who]);
        c.go(&format!("{base}/queue"));
        let q = c.source();
        assert!(q.contains(rel_url.rsplit('/').next().expect("id")), "{q}");
        c.screenshot(&format!("06-queue-{who}"));
        c.go(&rel_url);
        let r = c.source();
        assert!(
            r.contains("Justification")
                && r.contains("Compared with earlier releases")
                && r.contains("SELECT age_band"),
            "{r}"
        );
        if n == 2 {
            assert!(
                r.contains("shown after you decide"),
                "checker2 must not see checker1's decision yet: {r}"
            );
            assert!(!r.contains("checker1</strong>"), "{r}");
        }
        c.screenshot(&format!("07-review-{who}"));
        c.click("#approve");
        c.type_in("#comment", "Checked rounding and suppression; low risk");
        c.click("#comment ~ div button[type=submit]");
        let start = Instant::now();
        while !c.source().contains(&format!("{who}</strong> approved"))
            && start.elapsed() < Duration::from_secs(15)
        {
            std::thread::sleep(Duration::from_millis(100));
        }
        let after = c.source();
        assert!(
            after.contains(&format!("{who}</strong> approved")),
            "{after}"
        );
        if n == 2 {
            assert!(after.contains("checker1</strong> approved"), "{after}");
            assert!(after.contains("badge ok\">exported"), "{after}");
            c.screenshot("08-exported");
        }
    }
    let files: Vec<String> = std::fs::read_dir(&t.tre.outbox)
        .expect("outbox")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(files.iter().any(|f| f.ends_with(".csv")), "{files:?}");

    a.go(&format!("{base}/audit"));
    a.screenshot("09-audit-analyst");
    let c = Browser::open(&driver, &shots());
    c.sign_in(base, &t.tre.tokens["checker1"]);
    c.go(&format!("{base}/audit?project=demo&action=release"));
    let trail = c.source();
    assert!(
        trail.contains("release.export") && trail.contains("The audit log verifies"),
        "{trail}"
    );
    c.screenshot("10-audit-trail");
}

#[test]
fn refusals_in_the_browser_self_approval_cross_site_post_and_sign_out() {
    let driver = start_driver();
    let t = trial();
    let base = t.base();
    let a = Browser::open(&driver, &shots());
    a.sign_in(base, &t.tre.tokens["analyst"]);
    a.go(&format!("{base}/projects/demo"));
    a.type_in(
        "#sql",
        "SELECT sex, COUNT(*) AS n FROM patients GROUP BY sex ORDER BY sex",
    );
    a.type_in("#purpose", "Counts by sex");
    a.submit("form.stack button[type=submit]");
    let job_url = a.url();
    wait_for_job(&a, &job_url);
    a.type_in("#justification", "For the paper");
    a.type_in("#context", "Patients by sex");
    a.submit("#context ~ div button[type=submit]");
    let rel_url = a.url();

    // Self-approval: the page offers the requester no review form, so the analyst makes
    // one in their own page (same origin, their own form token) and submits it; the API's
    // review handler refuses and the page says so.
    let sid = a.cookie("tre_session").expect("session cookie");
    let form_token = {
        let s = a.source();
        let i = s.find("name=\"form_token\" value=\"").expect("form token") + 25;
        s[i..i + 64].to_string()
    };
    assert!(
        !a.source().contains("Record decision"),
        "no review form for the requester"
    );
    a.exec(
        "const f = document.createElement('form'); f.method = 'post'; f.action = arguments[0];\
         for (const [k, v] of [['form_token', arguments[1]], ['decision', 'approve'], ['comment', 'my own table is fine']]) {\
           const i = document.createElement('input'); i.type = 'hidden'; i.name = k; i.value = v; f.appendChild(i); }\
         document.body.appendChild(f); f.submit();",
        json!([rel_url, form_token]),
    );
    std::thread::sleep(Duration::from_millis(500));
    a.wait_loaded();
    let refused = a.source();
    assert!(
        refused.contains("Refused") && refused.contains("not an approved output_checker"),
        "{refused}"
    );
    a.screenshot("11-self-approval-refused");
    a.go(&rel_url);
    assert!(
        a.source().contains("No checker has decided yet"),
        "nothing was recorded"
    );

    let post = |origin: &str, body: String, cookie: &str| {
        let mut r = agent()
            .post(&rel_url)
            .header("Cookie", format!("tre_session={cookie}"))
            .header("Origin", origin)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .send(body)
            .expect("post");
        (
            r.status().as_u16(),
            r.body_mut().read_to_string().unwrap_or_default(),
        )
    };
    // Cross-site: a foreign Origin, and a missing form token, are both refused.
    let (code, page) = post(
        "https://evil.example",
        format!("form_token={form_token}&decision=approve&comment=x+y+z"),
        &sid,
    );
    assert_eq!(code, 403, "{page}");
    assert!(page.contains("another site"), "{page}");
    let (code, page) = post(base, "decision=approve&comment=x+y+z".into(), &sid);
    assert_eq!(code, 403, "{page}");
    assert!(page.contains("form token"), "{page}");

    // Sign-out ends the session server-side: the old cookie no longer works.
    a.sign_out();
    assert_eq!(a.url(), format!("{base}/sign-in"));
    let mut r = agent()
        .get(format!("{base}/projects/demo"))
        .header("Cookie", format!("tre_session={sid}"))
        .call()
        .expect("get");
    assert_eq!(
        r.status().as_u16(),
        303,
        "{}",
        r.body_mut().read_to_string().unwrap_or_default()
    );
    assert_eq!(
        r.headers().get("location").and_then(|v| v.to_str().ok()),
        Some("/sign-in")
    );
}

#[test]
fn every_page_carries_the_security_headers() {
    let t = trial();
    for path in ["/sign-in", "/static/tre.css", "/", "/projects/demo"] {
        let r = agent()
            .get(format!("{}{path}", t.base()))
            .call()
            .expect("get");
        let h = |n: &str| {
            r.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        assert_eq!(
            h("content-security-policy"),
            tre_pipeline::web::CSP,
            "{path}"
        );
        assert_eq!(h("x-content-type-options"), "nosniff", "{path}");
        assert_eq!(h("referrer-policy"), "no-referrer", "{path}");
    }
    let r = agent()
        .get(format!("{}/sign-in", t.base()))
        .call()
        .expect("get");
    let cookie = r
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
}
