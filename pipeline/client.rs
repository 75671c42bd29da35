//! The TRE's HTTP client: what `tre job ...`, `tre release ...` and `tre demo` use.
//!
//! Owns talking to `tre serve` through the HTTP API of docs/service.md only (never the
//! workspace's files) and reading the caller's token file, which must be private (mode
//! 0600 or stricter) and is looked for by default in the user's config folder
//! (`$XDG_CONFIG_HOME/tre/token`, else `~/.config/tre/token`). Danger: the token is a
//! password; it is sent only in the `Authorization` header and never printed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::tre::users::Token;

/// Client errors.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The token file is readable or writable by others.
    #[error(
        "token file {path} is accessible by group or others (mode {mode:o}); run `chmod 600 {path}`"
    )]
    TokenFileOpen {
        /// The file.
        path: PathBuf,
        /// Its mode.
        mode: u32,
    },
    /// The token file cannot be read.
    #[error("cannot read token file {path}: {source}; pass --token-file")]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// No token file and no config folder to look in.
    #[error("no token file given and no config folder (set HOME or pass --token-file)")]
    NoTokenFile,
    /// The server answered with an error status.
    #[error("the server refused ({status}): {message}")]
    Status {
        /// HTTP status.
        status: u16,
        /// The server's message.
        message: String,
    },
    /// The server could not be reached.
    #[error("cannot reach the TRE server at {url}: {source}")]
    Transport {
        /// The URL.
        url: String,
        /// The error.
        source: Box<ureq::Error>,
    },
}

impl crate::error::Classify for ClientError {
    fn kind(&self) -> crate::error::ErrorKind {
        match self {
            ClientError::Status { status, .. } if (400..500).contains(status) => {
                crate::error::ErrorKind::Refused
            }
            ClientError::TokenFileOpen { .. } => crate::error::ErrorKind::Refused,
            _ => crate::error::ErrorKind::Failed,
        }
    }
}

/// The default token file, under the user's config folder.
pub fn default_token_file(
    xdg_config_home: Option<PathBuf>,
    home: Option<PathBuf>,
) -> Option<PathBuf> {
    xdg_config_home
        .filter(|p| p.is_absolute())
        .or_else(|| home.map(|h| h.join(".config")))
        .map(|c| c.join("tre").join("token"))
}

/// Read a token file, refusing one that group or others can access.
pub fn read_token_file(path: &Path) -> Result<Token, ClientError> {
    use std::os::unix::fs::MetadataExt;
    let err = |source| ClientError::TokenFile {
        path: path.to_path_buf(),
        source,
    };
    let m = std::fs::metadata(path).map_err(err)?;
    if m.mode() & 0o077 != 0 {
        return Err(ClientError::TokenFileOpen {
            path: path.to_path_buf(),
            mode: m.mode() & 0o777,
        });
    }
    let text = std::fs::read_to_string(path).map_err(err)?;
    Ok(Token::new(text.trim()))
}

/// A client of one server, as one user.
pub struct Client {
    base: String,
    token: Token,
    agent: ureq::Agent,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Client({})", self.base)
    }
}

impl Client {
    /// A client of the server at `base` (`http://127.0.0.1:8080`).
    pub fn new(base: &str, token: Token) -> Client {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(120)))
            .build();
        Client {
            base: base.trim_end_matches('/').to_string(),
            token,
            agent: ureq::Agent::new_with_config(config),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    fn answer(
        &self,
        url: &str,
        r: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<(u16, String), ClientError> {
        let mut r = r.map_err(|source| ClientError::Transport {
            url: url.to_string(),
            source: Box::new(source),
        })?;
        let status = r.status().as_u16();
        let text = r.body_mut().read_to_string().unwrap_or_default();
        if status >= 400 {
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_string))
                .unwrap_or(text);
            return Err(ClientError::Status { status, message });
        }
        Ok((status, text))
    }

    /// GET a path; the body as text.
    pub fn get_text(&self, path: &str) -> Result<String, ClientError> {
        let url = self.url(path);
        let auth = format!("Bearer {}", self.token.expose());
        let r = self.agent.get(&url).header("Authorization", &auth).call();
        self.answer(&url, r).map(|(_, t)| t)
    }

    /// GET a path; the body as JSON.
    pub fn get(&self, path: &str) -> Result<Value, ClientError> {
        let text = self.get_text(path)?;
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// POST JSON to a path; the answer as JSON.
    pub fn post(&self, path: &str, body: &impl Serialize) -> Result<Value, ClientError> {
        let url = self.url(path);
        let auth = format!("Bearer {}", self.token.expose());
        let r = self
            .agent
            .post(&url)
            .header("Authorization", &auth)
            .send_json(body);
        let (_, text) = self.answer(&url, r)?;
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Submit a job.
    pub fn submit(&self, project: &str, sql: &str, purpose: &str) -> Result<Value, ClientError> {
        self.post(
            &format!("/api/projects/{project}/jobs"),
            &serde_json::json!({ "sql": sql, "purpose": purpose }),
        )
    }

    /// A job's status.
    pub fn job(&self, project: &str, job: &str) -> Result<Value, ClientError> {
        self.get(&format!("/api/projects/{project}/jobs/{job}"))
    }

    /// Wait until a job has ended (polling), up to `timeout`.
    pub fn wait(&self, project: &str, job: &str, timeout: Duration) -> Result<Value, ClientError> {
        let start = std::time::Instant::now();
        loop {
            let v = self.job(project, job)?;
            let done = matches!(v["state"].as_str(), Some("succeeded" | "failed" | "killed"));
            if done || start.elapsed() > timeout {
                return Ok(v);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A job's safe table.
    pub fn safe(&self, project: &str, job: &str) -> Result<String, ClientError> {
        self.get_text(&format!("/api/projects/{project}/jobs/{job}/safe.csv"))
    }

    /// Request a release.
    pub fn request(
        &self,
        project: &str,
        job: &str,
        justification: &str,
        context: &str,
    ) -> Result<Value, ClientError> {
        self.post(
            &format!("/api/projects/{project}/releases"),
            &serde_json::json!({ "job": job, "justification": justification, "context": context }),
        )
    }

    /// Review a release.
    pub fn review(
        &self,
        project: &str,
        release: &str,
        approve: bool,
        comment: &str,
    ) -> Result<Value, ClientError> {
        let decision = if approve { "approve" } else { "reject" };
        self.post(
            &format!("/api/projects/{project}/releases/{release}/reviews"),
            &serde_json::json!({ "decision": decision, "comment": comment }),
        )
    }

    /// A release's status.
    pub fn release(&self, project: &str, release: &str) -> Result<Value, ClientError> {
        self.get(&format!("/api/projects/{project}/releases/{release}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn an_open_token_file_is_refused() {
        let t = tempfile::tempdir().expect("tempdir");
        let p = t.path().join("token");
        std::fs::write(&p, "tre_abc\n").expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(matches!(
            read_token_file(&p),
            Err(ClientError::TokenFileOpen { .. })
        ));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(read_token_file(&p).expect("ok").expose(), "tre_abc");
    }

    #[test]
    fn the_default_token_file_is_in_the_config_folder() {
        assert_eq!(
            default_token_file(None, Some(PathBuf::from("/home/a"))),
            Some(PathBuf::from("/home/a/.config/tre/token"))
        );
        assert_eq!(
            default_token_file(Some(PathBuf::from("/x")), Some(PathBuf::from("/home/a"))),
            Some(PathBuf::from("/x/tre/token"))
        );
    }
}
