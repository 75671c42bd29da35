//! Sessions and cross-site request protection for the pages.
//!
//! Owns the server-side session store (random 256-bit ids; the cookie carries only the
//! id, never the token), the session cookie (`HttpOnly; SameSite=Strict; Path=/`,
//! `Secure` when configured, `Max-Age` the session lifetime), the [`Signed`] extractor
//! that every signed-in page takes, and [`check_form`], which every POST calls: the
//! per-session form token must match AND the `Origin` (or, failing that, `Referer`)
//! must be this server. Anonymous sessions exist only to carry the sign-in form's token.
//! Danger: a session is as good as the token it came from: it ends at sign-out, at its
//! lifetime, and as soon as the person's token is revoked or expires.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{DateTime, Utc};

use super::Web;
use super::error::WebError;
use crate::tre::actions::Actor;
use crate::tre::actions::auth;

/// The session cookie's name.
pub const COOKIE: &str = "tre_session";

/// One session.
#[derive(Debug, Clone)]
pub struct Session {
    /// The person, once signed in.
    pub actor: Option<Actor>,
    /// The form token every POST must carry.
    pub form_token: String,
    /// When it ends.
    pub expires: DateTime<Utc>,
}

/// The session store, keyed by random id.
#[derive(Debug, Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

/// 32 random bytes as hex.
pub fn random_hex() -> Result<String, WebError> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|_| WebError::Random)?;
    Ok(crate::digest::hex(&b))
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        // A panic while holding the lock leaves only whole entries behind.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Start a session; returns its id.
    pub fn start(
        &self,
        actor: Option<Actor>,
        now: DateTime<Utc>,
        expires: DateTime<Utc>,
    ) -> Result<(String, Session), WebError> {
        let id = random_hex()?;
        let s = Session {
            actor,
            form_token: random_hex()?,
            expires,
        };
        let mut map = self.lock();
        map.retain(|_, v| v.expires > now);
        map.insert(id.clone(), s.clone());
        Ok((id, s))
    }

    /// The live session with this id.
    pub fn get(&self, id: &str, now: DateTime<Utc>) -> Option<Session> {
        let mut map = self.lock();
        match map.get(id) {
            Some(s) if s.expires > now => Some(s.clone()),
            Some(_) => {
                map.remove(id);
                None
            }
            None => None,
        }
    }

    /// End a session.
    pub fn end(&self, id: &str) -> Option<Session> {
        self.lock().remove(id)
    }
}

/// The session id presented in the `Cookie` header.
pub fn cookie_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
        .filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// `Set-Cookie` for a session id.
pub fn set_cookie(web: &Web, id: &str) -> String {
    format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        web.opts.session_minutes * 60,
        if web.opts.secure_cookies {
            "; Secure"
        } else {
            ""
        }
    )
}

/// `Set-Cookie` that removes the session cookie.
pub fn clear_cookie(web: &Web) -> String {
    format!(
        "{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
        if web.opts.secure_cookies {
            "; Secure"
        } else {
            ""
        }
    )
}

/// A signed-in person on a page request. Without a live session, the page redirects to
/// the sign-in form.
#[derive(Debug, Clone)]
pub struct Signed {
    /// The session id.
    pub sid: String,
    /// The person, as authenticated at sign-in.
    pub actor: Actor,
    /// The session's form token.
    pub form_token: String,
}

impl Signed {
    /// The person's user id.
    pub fn user(&self) -> &crate::tre::actions::Id {
        self.actor.user()
    }
}

impl FromRequestParts<Web> for Signed {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, web: &Web) -> Result<Self, Self::Rejection> {
        let now = web.tre.auditor.clock().now();
        let found = cookie_id(&parts.headers).and_then(|sid| {
            let s = web.sessions.get(&sid, now)?;
            Some((sid, s))
        });
        match found {
            Some((
                sid,
                Session {
                    actor: Some(actor),
                    form_token,
                    ..
                },
            )) => {
                if auth::still_valid(&web.tre, &actor, now) {
                    Ok(Signed {
                        sid,
                        actor,
                        form_token,
                    })
                } else {
                    web.sessions.end(&sid);
                    Err(Redirect::to("/sign-in").into_response())
                }
            }
            _ => Err(Redirect::to("/sign-in").into_response()),
        }
    }
}

/// The client's address, when the server knows it (always, under `tre serve`): the
/// sign-in limiter's key.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub Option<std::net::IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientAddr(
            parts
                .extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0.ip()),
        ))
    }
}

/// Equal without an early exit.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// This server's origin, as browsers should send it.
pub fn expected_origin(web: &Web, headers: &HeaderMap) -> Option<String> {
    if let Some(o) = &web.opts.public_origin {
        return Some(o.trim_end_matches('/').to_string());
    }
    let host = headers.get(header::HOST)?.to_str().ok()?;
    let scheme = if web.opts.secure_cookies {
        "https"
    } else {
        "http"
    };
    Some(format!("{scheme}://{host}"))
}

/// Refuse a POST unless its form token is the session's and it comes from this
/// server's own pages. The `Origin` must be this server; browsers send `Origin: null`
/// on a same-origin POST when the page's referrer policy is `no-referrer` (ours), so a
/// `null` origin is accepted only with `Sec-Fetch-Site: same-origin` (Fetch Metadata),
/// and a missing one only with a matching `Sec-Fetch-Site` or `Referer`.
pub fn check_form(
    web: &Web,
    headers: &HeaderMap,
    session_token: &str,
    sent: &str,
) -> Result<(), WebError> {
    if sent.is_empty() || !same(session_token, sent) {
        return Err(WebError::Csrf {
            why: "the form token is missing or not this session's (reload the page and try again)",
        });
    }
    let want = expected_origin(web, headers).ok_or(WebError::Csrf {
        why: "the request names no host",
    })?;
    same_origin(&want, headers)
}

/// Whether a POST's `Origin`, `Sec-Fetch-Site` or `Referer` says it came from `want`.
pub fn same_origin(want: &str, headers: &HeaderMap) -> Result<(), WebError> {
    let get = |h: &str| headers.get(h).and_then(|v| v.to_str().ok());
    let foreign = WebError::Csrf {
        why: "the form was sent from another site (Origin does not match)",
    };
    match get("origin") {
        Some("null") | None => {}
        Some(o) if o == want => return Ok(()),
        Some(_) => return Err(foreign),
    }
    match (get("sec-fetch-site"), get("referer")) {
        (Some("same-origin"), _) => Ok(()),
        (Some(_), _) => Err(foreign),
        (None, Some(r)) if r == want || r.starts_with(&format!("{want}/")) => Ok(()),
        _ => Err(WebError::Csrf {
            why: "the form was not sent from this site's pages (no matching Origin, Sec-Fetch-Site or Referer)",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    #[test]
    fn cookie_id_takes_only_a_well_formed_session_id() {
        let mut h = HeaderMap::new();
        let id = "a".repeat(64);
        h.insert(
            header::COOKIE,
            format!("other=1; {COOKIE}={id}").parse().expect("header"),
        );
        assert_eq!(cookie_id(&h), Some(id));
        h.insert(
            header::COOKIE,
            format!("{COOKIE}=../x").parse().expect("header"),
        );
        assert_eq!(cookie_id(&h), None);
    }

    #[test]
    fn sessions_expire_and_end() {
        let s = Sessions::default();
        let now = DateTime::from_timestamp(1_700_000_000, 0).expect("time");
        let (id, _) = s
            .start(None, now, now + Duration::minutes(5))
            .expect("start");
        assert!(s.get(&id, now).is_some());
        assert!(s.get(&id, now + Duration::minutes(6)).is_none());
        let (id2, _) = s
            .start(None, now, now + Duration::minutes(5))
            .expect("start");
        assert!(s.end(&id2).is_some());
        assert!(s.get(&id2, now).is_none());
        assert_ne!(id, id2);
    }

    fn h(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.insert(*k, v.parse().expect("header"));
        }
        m
    }

    #[test]
    fn posts_from_other_sites_are_refused() {
        let me = "http://127.0.0.1:8080";
        assert!(same_origin(me, &h(&[("origin", me)])).is_ok());
        assert!(
            same_origin(
                me,
                &h(&[("origin", "null"), ("sec-fetch-site", "same-origin")])
            )
            .is_ok()
        );
        assert!(
            same_origin(
                me,
                &h(&[("referer", "http://127.0.0.1:8080/projects/demo")])
            )
            .is_ok()
        );
        for bad in [
            h(&[("origin", "https://evil.example")]),
            h(&[
                ("origin", "https://evil.example"),
                ("sec-fetch-site", "same-origin"),
            ]),
            h(&[("origin", "null"), ("sec-fetch-site", "cross-site")]),
            h(&[("origin", "null")]),
            h(&[("referer", "http://127.0.0.1:8080.evil.example/")]),
            h(&[]),
        ] {
            assert!(same_origin(me, &bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn same_compares_whole_strings() {
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "ab"));
    }
}
