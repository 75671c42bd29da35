//! The page shell every page shares: `lang`, title, skip link, navigation with the
//! sign-out form, one `main` landmark; the error page (a [`WebError`] as HTML with its
//! status code); and small pieces used by several pages.

use axum::response::{Html, IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};

use super::error::WebError;
use super::session::Signed;

/// The page shell. `who` is the signed-in person (navigation and sign-out), if any.
pub fn page(title: &str, who: Option<&Signed>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · TRE" }
                link rel="stylesheet" href="/static/tre.css";
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header {
                    p.brand { a href="/" { "Trusted research environment" } }
                    @if let Some(s) = who {
                        nav aria-label="Main" {
                            ul {
                                li { a href="/" { "Projects" } }
                                li { a href="/queue" { "Review queue" } }
                                li { a href="/audit" { "Audit trail" } }
                                li { a href="/alerts" { "Alerts" } }
                                li { a href="/register" { "Register" } }
                            }
                        }
                        form.signout method="post" action="/sign-out" {
                            input type="hidden" name="form_token" value=(s.form_token);
                            span { "Signed in as " strong { (s.user()) } }
                            " "
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main id="main" { (body) }
            }
        }
    }
}

/// The hidden form-token field every form carries.
pub fn token_field(s: &Signed) -> Markup {
    html! { input type="hidden" name="form_token" value=(s.form_token); }
}

/// A job or release state as a labelled badge.
pub fn badge(state: &str) -> Markup {
    let class = match state {
        "succeeded" | "exported" => "badge ok",
        "failed" | "killed" | "rejected" => "badge bad",
        _ => "badge wait",
    };
    html! { span class=(class) { (state.replace('_', " ")) } }
}

/// A timestamp for people (UTC, to the minute).
pub fn when(t: &chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M UTC").to_string()
}

/// The error page: the refusal's own words under "Refused" (or "Something went wrong"
/// for a failure), with its status code.
impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let status = self.status();
        let title = if status.is_server_error() {
            "Something went wrong"
        } else {
            "Refused"
        };
        let body = html! {
            h1 { (title) }
            p.error role="alert" { (self.to_string()) }
            p { a href="/" { "Back to your projects" } }
        };
        (status, Html(page(title, None, body).into_string())).into_response()
    }
}
