//! Sign-in and sign-out.
//!
//! Sign-in exchanges the person's token for a session: the token is checked by
//! [`crate::tre::actions::auth::sign_in`] (the same check as the API's bearer tokens,
//! which audits the sign-in first), then a fresh session id replaces the anonymous one that
//! carried the sign-in form's token (no session fixation). The token is never stored in
//! the session or the cookie. Sign-out is audited and ends the session server-side, so
//! the old cookie no longer works. Failed sign-ins share one limiter with the API
//! ([`crate::tre::actions::limiter`]): over the limit, 429 with `Retry-After` and the token is
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
use super::session::ClientAddr;
use super::session::{Signed, check_form, clear_cookie, cookie_id, set_cookie};
use crate::tre::actions::Token;
use crate::tre::actions::auth;

fn with_cookie(mut r: Response, cookie: String) -> Response {
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// `GET /sign-in`: the form, with an anonymous session carrying its form token.
pub async fn form(State(web): State<Web>, headers: HeaderMap) -> Result<Response, WebError> {
    let now = web.tre.auditor.clock().now();
    let existing =
        cookie_id(&headers).and_then(|id| Some((id.clone(), web.sessions.get(&id, now)?)));
    let (sid, session, fresh) = match existing {
        Some((id, s)) if s.actor.is_none() => (id, s, false),
        Some((_, s)) if s.actor.is_some() => return Ok(Redirect::to("/").into_response()),
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
    let now = web.tre.auditor.clock().now();
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
    let route = "POST /sign-in".to_string();
    let actor = match auth::sign_in(&web.tre, addr, token, web.opts.session_minutes, route) {
        Ok(a) => a,
        Err(e) if e.retry_after().is_some() => {
            let retry = e.retry_after();
            let mut r = WebError::from(e).into_response();
            if let Some(s) = retry {
                r.headers_mut().insert(header::RETRY_AFTER, s.into());
            }
            return Ok(r);
        }
        Err(e) if e.is_refusal() => return Err(WebError::SignIn),
        Err(e) => return Err(e.into()),
    };
    if let Some(old) = &sid {
        web.sessions.end(old);
    }
    let (new, _) = web.sessions.start(
        Some(actor),
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
    auth::sign_out(&web.tre, &s.actor)?;
    web.sessions.end(&s.sid);
    Ok(with_cookie(
        Redirect::to("/sign-in").into_response(),
        clear_cookie(&web),
    ))
}
