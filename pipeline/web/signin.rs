//! Sign-in and sign-out.
//!
//! Sign-in exchanges the person's token for a session: the token is checked by
//! [`crate::tre::users::authenticate`] (the same check as the API's bearer tokens), the
//! sign-in is audited first, then a fresh session id replaces the anonymous one that
//! carried the sign-in form's token (no session fixation). The token is never stored in
//! the session or the cookie. Sign-out is audited and ends the session server-side, so
//! the old cookie no longer works. Failed sign-ins share the API's limiter
//! ([`crate::server::limiter`]): over the limit, 429 with `Retry-After` and the token is
//! not checked; only the first failure of a window (and any naming a person) is audited
//! one by one.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use chrono::Duration;
use maud::html;

use super::Web;
use super::error::WebError;
use super::layout::page;
use super::session::{Signed, check_form, clear_cookie, cookie_id, set_cookie};
use crate::audit::EntryDraft;
use crate::server::error::ApiError;
use crate::server::limiter::{ClientAddr, prefix_of};
use crate::tre::users::{self, Token, UserError};

fn with_cookie(mut r: Response, cookie: String) -> Response {
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// `GET /sign-in`: the form, with an anonymous session carrying its form token.
pub async fn form(State(web): State<Web>, headers: HeaderMap) -> Result<Response, WebError> {
    let now = web.app.auditor.clock().now();
    let existing =
        cookie_id(&headers).and_then(|id| Some((id.clone(), web.sessions.get(&id, now)?)));
    let (sid, session, fresh) = match existing {
        Some((id, s)) if s.user.is_none() => (id, s, false),
        Some((_, s)) if s.user.is_some() => return Ok(Redirect::to("/").into_response()),
        _ => {
            let (id, s) =
                web.sessions
                    .start(None, now, now + Duration::minutes(web.opts.session_minutes))?;
            (id, s, true)
        }
    };
    let body = html! {
        h1 { "Sign in" }
        p { "Paste the token the operator gave you. It is checked once and never stored in your browser; you stay signed in for " (web.opts.session_minutes) " minutes." }
        form.stack method="post" action="/sign-in" {
            input type="hidden" name="form_token" value=(session.form_token);
            label for="token" { "Your token" }
            input type="password" id="token" name="token" required autocomplete="off" spellcheck="false";
            div { button type="submit" { "Sign in" } }
        }
    };
    let r = Html(page("Sign in", None, body).into_string()).into_response();
    Ok(if fresh {
        with_cookie(r, set_cookie(&web, &sid))
    } else {
        r
    })
}

/// `POST /sign-in`.
pub async fn sign_in(
    State(web): State<Web>,
    ClientAddr(addr): ClientAddr,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, WebError> {
    let now = web.app.auditor.clock().now();
    let fields: HashMap<String, String> =
        serde_urlencoded::from_bytes(&body).map_err(|e| WebError::Form {
            problem: e.to_string(),
        })?;
    let sid = cookie_id(&headers);
    let anon = sid
        .as_deref()
        .and_then(|id| web.sessions.get(id, now))
        .ok_or(WebError::Csrf {
            why: "the sign-in form has expired (reload the page and try again)",
        })?;
    let sent = fields.get("form_token").map_or("", String::as_str);
    check_form(&web, &headers, &anon.form_token, sent)?;
    let token = Token::new(fields.get("token").map_or("", |t| t.trim()));
    let prefix = prefix_of(token.expose());
    if let Err(e) = web.app.auth_gate(addr, Some(&prefix)) {
        let status = e.status().as_u16();
        let retry = match &e {
            ApiError::TooManyFailures { retry_after } => Some(*retry_after),
            _ => None,
        };
        let mut r = WebError::Api {
            status,
            message: e.to_string(),
        }
        .into_response();
        if let Some(s) = retry {
            r.headers_mut().insert(header::RETRY_AFTER, s.into());
        }
        return Ok(r);
    }
    let user = match users::authenticate(&web.app.ws, &token, now) {
        Ok(u) => u,
        Err(UserError::UnknownToken) if !web.app.auth_failed(addr, Some(&prefix), false) => {
            // Counted into its window's aggregate entry.
            return Err(WebError::SignIn);
        }
        Err(e) => {
            if matches!(e, UserError::Revoked { .. } | UserError::Expired { .. }) {
                // Names a person: counted towards the limit, and audited one by one.
                web.app.auth_failed(addr, Some(&prefix), true);
            }
            let actor = match &e {
                UserError::Revoked { user } | UserError::Expired { user, .. } => user.to_string(),
                _ => "anonymous".into(),
            };
            web.app
                .auditor
                .record(EntryDraft::new(actor, "web.sign_in").refused(e.to_string()))
                .map_err(|_| WebError::Api {
                    status: 500,
                    message: "the audit log could not be written, so nothing was done".into(),
                })?;
            return Err(WebError::SignIn);
        }
    };
    web.app
        .auditor
        .record(
            EntryDraft::new(user.as_str(), "web.sign_in")
                .detail("minutes", web.opts.session_minutes),
        )
        .map_err(|_| WebError::Api {
            status: 500,
            message: "the audit log could not be written, so nothing was done".into(),
        })?;
    if let Some(old) = &sid {
        web.sessions.end(old);
    }
    let (new, _) = web.sessions.start(
        Some(user),
        now,
        now + Duration::minutes(web.opts.session_minutes),
    )?;
    Ok(with_cookie(
        Redirect::to("/").into_response(),
        set_cookie(&web, &new),
    ))
}

/// `POST /sign-out`: audited, then the session ends server-side.
pub async fn sign_out(
    State(web): State<Web>,
    s: Signed,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, WebError> {
    let fields: HashMap<String, String> =
        serde_urlencoded::from_bytes(&body).map_err(|e| WebError::Form {
            problem: e.to_string(),
        })?;
    check_form(
        &web,
        &headers,
        &s.form_token,
        fields.get("form_token").map_or("", String::as_str),
    )?;
    web.app
        .auditor
        .record(EntryDraft::new(s.user.as_str(), "web.sign_out"))
        .map_err(|_| WebError::Api {
            status: 500,
            message: "the audit log could not be written, so nothing was done".into(),
        })?;
    web.sessions.end(&s.sid);
    Ok(with_cookie(
        Redirect::to("/sign-in").into_response(),
        clear_cookie(&web),
    ))
}
