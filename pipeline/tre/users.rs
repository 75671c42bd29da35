//! People and their bearer tokens.
//!
//! Owns `users/<user>.json` (sealed records): a token is 256 random bits, shown once
//! when it is made (`tre admin user add`), and stored only as its SHA-256, with an expiry
//! and a revoked flag. [`authenticate`] turns a presented token into a user id or says
//! why not. Roles are not here: they come from each project's installed policy. Danger:
//! a token is a password; it is never logged, stored, or put in an error or audit entry.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use crate::tre::id::Id;
use crate::tre::workspace::{Workspace, WorkspaceError};

/// A token as presented (redacted in `Debug`).
pub struct Token(zeroize::Zeroizing<String>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    /// Wrap a presented token.
    pub fn new(s: impl Into<String>) -> Token {
        Token(zeroize::Zeroizing::new(s.into()))
    }

    /// The token text (to print once, or to send).
    pub fn expose(&self) -> &str {
        &self.0
    }

    fn sha256(&self) -> String {
        crate::digest::sha256_hex(self.0.trim().as_bytes())
    }
}

/// A user's stored record.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserRecord {
    /// The user id.
    pub user: Id,
    /// SHA-256 of the token.
    pub token_sha256: String,
    /// When it was made.
    #[serde(with = "crate::tre::stamp")]
    pub created_at: DateTime<Utc>,
    /// When it stops working.
    #[serde(with = "crate::tre::stamp")]
    pub expires_at: DateTime<Utc>,
    /// Revoked by the operator.
    pub revoked: bool,
}

/// Why a token was not accepted, or a user record could not be changed.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// No token matches.
    #[error("the token is not known; ask the operator for a token")]
    UnknownToken,
    /// The token was revoked.
    #[error("the token of user {user} was revoked")]
    Revoked {
        /// The user.
        user: Id,
    },
    /// The token expired.
    #[error("the token of user {user} expired at {at}; ask the operator for a new one")]
    Expired {
        /// The user.
        user: Id,
        /// When.
        at: DateTime<Utc>,
    },
    /// No such user.
    #[error("no user {user} in this workspace")]
    NoSuchUser {
        /// The user.
        user: Id,
    },
    /// Bad lifetime.
    #[error("a token must live between 1 and 3650 days, not {days}")]
    BadLifetime {
        /// Days asked.
        days: i64,
    },
    /// The OS random source failed.
    #[error("cannot make a token: the OS random source failed")]
    Random,
    /// Workspace trouble.
    #[error(transparent)]
    Workspace(#[from] WorkspaceError),
}

impl crate::error::Classify for UserError {
    fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind;
        match self {
            UserError::Workspace(w) => crate::error::Classify::kind(w),
            UserError::Random => ErrorKind::Failed,
            _ => ErrorKind::Refused,
        }
    }
}

/// A user's record file.
pub fn record_path(ws: &Workspace, user: &Id) -> std::path::PathBuf {
    ws.users_dir().join(format!("{user}.json"))
}

fn path(ws: &Workspace, user: &Id) -> std::path::PathBuf {
    record_path(ws, user)
}

/// Make a user (or replace their token): returns the new token, to be shown once.
/// (`tre admin user add` commits the record of [`make`] under its audit entry instead.)
pub fn add(ws: &Workspace, user: &Id, days: i64, now: DateTime<Utc>) -> Result<Token, UserError> {
    let (token, rec) = make(user, days, now)?;
    ws.write_record(&path(ws, user), &rec)?;
    Ok(token)
}

/// A new token for `user` and the record that stores its hash (not yet written).
pub fn make(user: &Id, days: i64, now: DateTime<Utc>) -> Result<(Token, UserRecord), UserError> {
    if !(1..=3650).contains(&days) {
        return Err(UserError::BadLifetime { days });
    }
    let mut raw = zeroize::Zeroizing::new([0u8; 32]);
    getrandom::fill(raw.as_mut()).map_err(|_| UserError::Random)?;
    let token = Token::new(format!("tre_{}", crate::digest::hex(raw.as_ref())));
    let rec = UserRecord {
        user: user.clone(),
        token_sha256: token.sha256(),
        created_at: now,
        expires_at: now + Duration::days(days),
        revoked: false,
    };
    Ok((token, rec))
}

/// Revoke a user's token.
pub fn revoke(ws: &Workspace, user: &Id) -> Result<(), UserError> {
    let rec = revoked(ws, user)?;
    ws.write_record(&path(ws, user), &rec)?;
    Ok(())
}

/// The user's record, revoked (not yet written).
pub fn revoked(ws: &Workspace, user: &Id) -> Result<UserRecord, UserError> {
    let mut rec: UserRecord = ws
        .read_record(&path(ws, user))?
        .ok_or_else(|| UserError::NoSuchUser { user: user.clone() })?;
    rec.revoked = true;
    Ok(rec)
}

/// Every user record, sorted by id; refused if any record is refused (the operator's
/// listing must show a forged record, not hide it).
pub fn list(ws: &Workspace) -> Result<Vec<UserRecord>, UserError> {
    let (ok, bad) = scan(ws)?;
    if let Some((_, e)) = bad.into_iter().next() {
        return Err(e.into());
    }
    Ok(ok)
}

/// Each refused user record: the user, and why.
type Refused = Vec<(Id, WorkspaceError)>;

/// Every readable user record, and each refused one with why.
fn scan(ws: &Workspace) -> Result<(Vec<UserRecord>, Refused), UserError> {
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    for name in crate::tre::workspace::list_dir(&ws.users_dir())? {
        let Some(stem) = name.strip_suffix(".json") else {
            continue;
        };
        let Ok(id) = Id::parse("user", stem) else {
            continue;
        };
        match ws.read_record::<UserRecord>(&path(ws, &id)) {
            Ok(Some(rec)) if rec.user == id => ok.push(rec),
            Ok(Some(_)) => bad.push((
                id.clone(),
                WorkspaceError::Forged {
                    path: path(ws, &id),
                },
            )),
            Ok(None) => {}
            Err(e) => bad.push((id, e)),
        }
    }
    ok.sort_by(|a, b| a.user.cmp(&b.user));
    Ok((ok, bad))
}

/// The user a presented token belongs to, if it is known, not revoked and not expired.
/// A user record that is refused (forged, rolled back, a symlink) refuses that user
/// only: its token matches nothing, and every other user still signs in.
pub fn authenticate(ws: &Workspace, token: &Token, now: DateTime<Utc>) -> Result<Id, UserError> {
    let sha = token.sha256();
    let (records, _refused) = scan(ws)?;
    let rec = records
        .into_iter()
        .find(|r| r.token_sha256 == sha)
        .ok_or(UserError::UnknownToken)?;
    if rec.revoked {
        return Err(UserError::Revoked { user: rec.user });
    }
    if now >= rec.expires_at {
        return Err(UserError::Expired {
            user: rec.user,
            at: rec.expires_at,
        });
    }
    Ok(rec.user)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, Workspace, DateTime<Utc>) {
        let t = tempfile::tempdir().expect("tempdir");
        let w = Workspace::init(&t.path().join("ws")).expect("init");
        let now = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .expect("date")
            .with_timezone(&Utc);
        (t, w, now)
    }

    #[test]
    fn a_token_authenticates_its_user_and_is_stored_hashed() {
        let (_t, w, now) = setup();
        let alice = Id::parse("user", "alice").expect("id");
        let tok = add(&w, &alice, 30, now).expect("add");
        assert_eq!(authenticate(&w, &tok, now).expect("auth"), alice);
        let stored = std::fs::read_to_string(w.users_dir().join("alice.json")).expect("read");
        assert!(!stored.contains(tok.expose()));
        assert!(matches!(
            authenticate(&w, &Token::new("tre_00"), now),
            Err(UserError::UnknownToken)
        ));
    }

    #[test]
    fn revoked_and_expired_tokens_are_refused() {
        let (_t, w, now) = setup();
        let bob = Id::parse("user", "bob").expect("id");
        let tok = add(&w, &bob, 1, now).expect("add");
        assert!(matches!(
            authenticate(&w, &tok, now + Duration::days(2)),
            Err(UserError::Expired { .. })
        ));
        revoke(&w, &bob).expect("revoke");
        assert!(matches!(
            authenticate(&w, &tok, now),
            Err(UserError::Revoked { .. })
        ));
    }

    #[test]
    fn a_forged_user_record_refuses_that_user_only() {
        let (_t, w, now) = setup();
        let alice = Id::parse("user", "alice").expect("id");
        let mallory = Id::parse("user", "mallory").expect("id");
        let a = add(&w, &alice, 30, now).expect("alice");
        let m = add(&w, &mallory, 30, now).expect("mallory");
        let p = w.users_dir().join("mallory.json");
        let text = std::fs::read_to_string(&p).expect("read");
        std::fs::write(&p, text.replace("false", "true ")).expect("forge");
        assert_eq!(
            authenticate(&w, &a, now).expect("alice still signs in"),
            alice
        );
        assert!(matches!(
            authenticate(&w, &m, now),
            Err(UserError::UnknownToken)
        ));
        assert!(
            list(&w).is_err(),
            "the operator's listing shows the forgery"
        );
    }

    #[test]
    fn a_user_record_copied_to_another_name_is_refused() {
        let (_t, w, now) = setup();
        let alice = Id::parse("user", "alice").expect("id");
        let a = add(&w, &alice, 30, now).expect("alice");
        std::fs::copy(
            w.users_dir().join("alice.json"),
            w.users_dir().join("eve.json"),
        )
        .expect("copy");
        assert_eq!(authenticate(&w, &a, now).expect("alice"), alice);
        assert!(list(&w).is_err());
    }
}
