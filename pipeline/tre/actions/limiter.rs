//! Failed sign-ins: a small in-memory rate limiter, and their aggregation in the audit.
//!
//! Owns counting failed authentications (API bearer tokens and the sign-in page) per
//! client address and per token prefix (the first [`PREFIX_CHARS`] characters of the
//! presented token, never more), in fixed windows: after `max_failures` in one window
//! from one address or with one prefix, that key is blocked for `cooldown` and every
//! attempt is answered 429 with `Retry-After`, without looking the token up. It also
//! decides what the audit sees: the first failure of an address's window is audited as
//! a refusal like any other, and so is each failure that names a person (a revoked or
//! expired token); later anonymous failures and blocked attempts in that window are only
//! counted, and written as ONE aggregated entry ([`Aggregate`], action `auth.failed`)
//! once the window has closed (at the next authentication after it) or at shutdown.
//! Danger: memory is bounded by pruning closed windows; behind a reverse proxy every
//! client has the proxy's address, so a flood blocks everyone's sign-in for the
//! cooldown (better than letting it guess); the prefix never goes into the audit.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::audit::{EntryDraft, Outcome};

/// Characters of a presented token used as a rate-limit key.
pub const PREFIX_CHARS: usize = 8;

/// Windows kept at most; past it, the oldest closed ones go first, then the oldest.
const MAX_KEYS: usize = 10_000;

/// The rate-limit key of a presented token: its first [`PREFIX_CHARS`] characters.
pub fn prefix_of(token: &str) -> String {
    token.chars().take(PREFIX_CHARS).collect()
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Addr(Option<IpAddr>),
    Prefix(String),
}

#[derive(Debug)]
struct Window {
    start: Instant,
    failures: u32,
    blocked_until: Option<Instant>,
    /// Failures and blocked attempts not audited one by one (address keys only).
    unaudited: u32,
    blocked: u32,
}

impl Window {
    fn new(now: Instant) -> Window {
        Window {
            start: now,
            failures: 0,
            blocked_until: None,
            unaudited: 0,
            blocked: 0,
        }
    }
}

/// Failed attempts of one address in one closed window that were not audited one by
/// one: written as one `auth.failed` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Aggregate {
    /// The client address (`unknown` when not known).
    pub address: String,
    /// Failed authentications not audited one by one.
    pub failures: u32,
    /// Attempts answered 429 without a check.
    pub blocked: u32,
    /// The window's length in seconds.
    pub window_seconds: u64,
}

impl Aggregate {
    /// The audit entry.
    pub fn draft(&self) -> EntryDraft {
        EntryDraft::new("anonymous", "auth.failed")
            .outcome(Outcome::Refused)
            .detail(
                "reason",
                "repeated failed sign-ins (aggregated; the first of the window has its own entry)",
            )
            .detail("address", self.address.as_str())
            .detail("count", u64::from(self.failures + self.blocked))
            .detail("failures", u64::from(self.failures))
            .detail("blocked", u64::from(self.blocked))
            .detail("window_seconds", self.window_seconds)
    }
}

/// What a failure means for the audit.
#[derive(Debug, PartialEq, Eq)]
pub enum Note {
    /// The first of its address's window: audit it as a refusal.
    Audit,
    /// Counted into the window's aggregate: no entry now.
    Counted,
}

/// The limiter.
#[derive(Debug)]
pub struct Limiter {
    windows: Mutex<HashMap<Key, Window>>,
    /// Failures allowed per key and window.
    pub max_failures: u32,
    /// The window.
    pub window: Duration,
    /// How long a key stays blocked once over the limit.
    pub cooldown: Duration,
}

impl Default for Limiter {
    /// 10 failures a minute per address or prefix, then a minute's block.
    fn default() -> Self {
        Limiter::new(10, Duration::from_secs(60), Duration::from_secs(60))
    }
}

impl Limiter {
    /// A limiter allowing `max_failures` per `window`, blocking for `cooldown`.
    pub fn new(max_failures: u32, window: Duration, cooldown: Duration) -> Limiter {
        Limiter {
            windows: Mutex::new(HashMap::new()),
            max_failures: max_failures.max(1),
            window,
            cooldown,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Window>> {
        // A panic while holding the lock leaves only whole counters behind.
        self.windows.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn keys(addr: Option<IpAddr>, prefix: Option<&str>) -> Vec<Key> {
        let mut keys = vec![Key::Addr(addr)];
        if let Some(p) = prefix {
            keys.push(Key::Prefix(prefix_of(p)));
        }
        keys
    }

    fn closed(&self, w: &Window, now: Instant) -> bool {
        let open_until = w.start + self.window;
        now >= open_until && w.blocked_until.is_none_or(|b| now >= b)
    }

    /// Before checking a token: `Err(retry_after)` if its address or prefix is blocked
    /// (the attempt is counted, not checked). Also returns the aggregates of windows
    /// closed by now, to be audited.
    pub fn check(
        &self,
        addr: Option<IpAddr>,
        prefix: Option<&str>,
        now: Instant,
    ) -> (Result<(), Duration>, Vec<Aggregate>) {
        let mut map = self.lock();
        let closed = self.collect(&mut map, now, false);
        let mut wait = None::<Duration>;
        for k in Self::keys(addr, prefix) {
            if let Some(until) = map.get(&k).and_then(|w| w.blocked_until)
                && until > now
            {
                wait = Some(wait.map_or(until - now, |d| d.max(until - now)));
            }
        }
        if wait.is_some()
            && let Some(w) = map.get_mut(&Key::Addr(addr))
        {
            w.blocked += 1;
        } else if wait.is_some() {
            let mut w = Window::new(now);
            w.blocked = 1;
            map.insert(Key::Addr(addr), w);
        }
        (wait.map_or(Ok(()), Err), closed)
    }

    /// A failed authentication from `addr` with a token starting `prefix`. A failure
    /// that `names` a person (a revoked or expired token) is always audited one by one
    /// (it still counts towards the limit, which bounds such entries too).
    pub fn fail(
        &self,
        addr: Option<IpAddr>,
        prefix: Option<&str>,
        names: bool,
        now: Instant,
    ) -> Note {
        let mut map = self.lock();
        let mut note = Note::Counted;
        for k in Self::keys(addr, prefix) {
            let w = map.entry(k.clone()).or_insert_with(|| Window::new(now));
            w.failures += 1;
            if w.failures >= self.max_failures {
                w.blocked_until = Some(now + self.cooldown);
            }
            if let Key::Addr(_) = k {
                if w.failures == 1 || names {
                    note = Note::Audit;
                } else {
                    w.unaudited += 1;
                }
            }
        }
        if map.len() > MAX_KEYS {
            self.collect(&mut map, now, false);
        }
        note
    }

    /// The aggregates of every window still holding unaudited attempts (at shutdown).
    pub fn drain(&self) -> Vec<Aggregate> {
        let mut map = self.lock();
        self.collect(&mut map, Instant::now(), true)
    }

    /// Remove closed windows (all, when `all`), returning the aggregates to audit.
    fn collect(&self, map: &mut HashMap<Key, Window>, now: Instant, all: bool) -> Vec<Aggregate> {
        let mut out = Vec::new();
        let window_seconds = self.window.as_secs();
        map.retain(|k, w| {
            if !(all || self.closed(w, now)) {
                return true;
            }
            if let Key::Addr(a) = k
                && w.unaudited + w.blocked > 0
            {
                out.push(Aggregate {
                    address: a.map_or_else(|| "unknown".to_string(), |a| a.to_string()),
                    failures: w.unaudited,
                    blocked: w.blocked,
                    window_seconds,
                });
            }
            false
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        s.parse().ok()
    }

    #[test]
    fn the_limit_blocks_an_address_then_its_window_is_one_aggregate() {
        let l = Limiter::new(3, Duration::from_secs(60), Duration::from_secs(60));
        let t0 = Instant::now();
        let a = ip("127.0.0.1");
        assert_eq!(l.fail(a, Some("tre_aaaa1"), false, t0), Note::Audit);
        assert_eq!(l.fail(a, Some("tre_bbbb1"), false, t0), Note::Counted);
        assert!(l.check(a, Some("tre_cccc"), t0).0.is_ok());
        assert_eq!(l.fail(a, Some("tre_cccc"), false, t0), Note::Counted);
        let (r, closed) = l.check(a, Some("tre_dddd"), t0 + Duration::from_secs(1));
        assert_eq!(r, Err(Duration::from_secs(59)));
        assert!(closed.is_empty());
        // Another address is not blocked.
        assert!(l.check(ip("127.0.0.2"), Some("tre_eeee"), t0).0.is_ok());
        // After the window and the cooldown: one aggregate, then a fresh window.
        let later = t0 + Duration::from_secs(61);
        let (r, closed) = l.check(a, Some("tre_ffff"), later);
        assert!(r.is_ok());
        assert_eq!(
            closed,
            vec![Aggregate {
                address: "127.0.0.1".into(),
                failures: 2,
                blocked: 1,
                window_seconds: 60,
            }]
        );
        assert_eq!(l.fail(a, None, false, later), Note::Audit);
        // A failure naming a person is audited even inside a window.
        assert_eq!(l.fail(a, None, true, later), Note::Audit);
        assert_eq!(l.fail(a, None, false, later), Note::Counted);
    }

    #[test]
    fn one_prefix_is_blocked_from_any_address_and_only_8_chars_are_kept() {
        let l = Limiter::new(2, Duration::from_secs(60), Duration::from_secs(30));
        let t0 = Instant::now();
        l.fail(ip("127.0.0.1"), Some("tre_1234aaaa"), false, t0);
        l.fail(ip("127.0.0.2"), Some("tre_1234bbbb"), false, t0);
        let (r, _) = l.check(ip("127.0.0.3"), Some("tre_1234cccc"), t0);
        assert_eq!(r, Err(Duration::from_secs(30)));
        assert!(l.check(ip("127.0.0.3"), Some("tre_9999"), t0).0.is_ok());
        assert_eq!(prefix_of("tre_1234cccc"), "tre_1234");
        let drained = l.drain();
        assert_eq!(drained.len(), 1, "{drained:?}");
        assert_eq!(drained[0].address, "127.0.0.3");
        assert_eq!(drained[0].blocked, 1);
        assert!(l.drain().is_empty());
    }
}
