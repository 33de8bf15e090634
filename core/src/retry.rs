//! The one place that decides whether a failed HTTP call (to Port or to a vendor) is tried again,
//! and after how long.

use std::time::{Duration, SystemTime};

use reqwest::StatusCode;
use reqwest::header::HeaderMap;

/// How persistently a call is retried.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// Wait before the first retry when Port gives no hint; doubles each retry.
    pub base_delay: Duration,
    /// No wait is longer than this, whatever Port asks for.
    pub max_delay: Duration,
    /// Fraction of the computed wait added or removed at random, so that many agents do not
    /// retry in lockstep.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    /// Ocean's numbers: 10 retries, 0.3 s doubling, ±10 %, at most 300 s.
    fn default() -> Self {
        Self {
            max_attempts: 11,
            base_delay: Duration::from_millis(300),
            max_delay: Duration::from_secs(300),
            jitter: 0.1,
        }
    }
}

/// Whether a request may be sent again after a failure whose effect on Port is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idempotency {
    /// Sending it twice has the effect of sending it once (reads, upserts, deletes, searches).
    Idempotent,
    /// Retried only when Port certainly did not act on it (429).
    NotIdempotent,
}

/// Port answered with `status`: is it worth another attempt?
pub fn is_retryable_status(status: StatusCode, idempotency: Idempotency) -> bool {
    if status == StatusCode::TOO_MANY_REQUESTS {
        return true;
    }
    if idempotency == Idempotency::NotIdempotent {
        return false;
    }
    status == StatusCode::REQUEST_TIMEOUT
        || (status.is_server_error()
            && status != StatusCode::NOT_IMPLEMENTED
            && status != StatusCode::HTTP_VERSION_NOT_SUPPORTED)
}

/// A 403 that is a rate limit, as GitHub answers one when the quota is used up
/// (`x-ratelimit-remaining: 0`) or for a secondary limit (`Retry-After`): retried as a 429 is,
/// after the wait it names. Any other 403 is a refusal.
pub fn is_rate_limit_refusal(status: StatusCode, headers: &HeaderMap) -> bool {
    status == StatusCode::FORBIDDEN
        && (headers.contains_key("retry-after")
            || headers
                .get("x-ratelimit-remaining")
                .is_some_and(|v| v.as_bytes() == b"0"))
}

/// A transport failure (connection refused or dropped, timeout): is it worth another attempt?
pub fn is_retryable_transport(error: &reqwest::Error, idempotency: Idempotency) -> bool {
    match idempotency {
        Idempotency::Idempotent => !error.is_builder() && !error.is_redirect(),
        // A refused connection never reached Port.
        Idempotency::NotIdempotent => error.is_connect(),
    }
}

impl RetryPolicy {
    /// The wait before retry number `retry` (0 for the first retry) when Port gave no hint.
    pub fn backoff(&self, retry: u32) -> Duration {
        let exponential = self
            .base_delay
            .saturating_mul(2u32.saturating_pow(retry.min(30)));
        let jittered =
            exponential.as_secs_f64() * (1.0 + self.jitter * (fastrand::f64() * 2.0 - 1.0));
        Duration::from_secs_f64(jittered.max(0.0)).min(self.max_delay)
    }

    /// The wait before retry number `retry`: Port's own hint when it sent one, else backoff.
    pub fn delay(&self, retry: u32, headers: Option<&HeaderMap>) -> Duration {
        headers
            .and_then(|h| server_hint(h, SystemTime::now()))
            .map(|hint| hint.min(self.max_delay))
            .unwrap_or_else(|| self.backoff(retry))
    }
}

/// How long Port asked us to wait, from `Retry-After` or `x-ratelimit-reset`.
///
/// Both headers take the same forms, as in Ocean: an integer up to 10000 is a number of seconds,
/// a larger one an epoch time in seconds, anything else an HTTP date or an ISO 8601 time.
pub fn server_hint(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    ["retry-after", "x-ratelimit-reset"]
        .iter()
        .filter_map(|name| headers.get(*name)?.to_str().ok())
        .find_map(|value| parse_wait(value.trim(), now))
}

/// A wait as Ocean reads `Retry-After` and `x-ratelimit-reset`: seconds up to 10000, an epoch
/// time in seconds beyond, else an HTTP or ISO 8601 date.
pub fn parse_wait(value: &str, now: SystemTime) -> Option<Duration> {
    if let Ok(number) = value.parse::<f64>() {
        if !number.is_finite() || number < 0.0 {
            return None;
        }
        if number <= 10_000.0 {
            return Some(Duration::from_secs_f64(number));
        }
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs_f64(number);
        return Some(at.duration_since(now).unwrap_or(Duration::ZERO));
    }
    let at = parse_http_or_iso_date(value)?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

fn parse_http_or_iso_date(value: &str) -> Option<SystemTime> {
    let timestamp = jiff::fmt::rfc2822::parse(value)
        .map(|zoned| zoned.timestamp())
        .or_else(|_| value.parse::<jiff::Timestamp>())
        .ok()?;
    Some(SystemTime::from(timestamp))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(name: &'static str, value: &str) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert(name, HeaderValue::from_str(value).unwrap());
        map
    }

    #[test]
    fn a_403_is_retried_only_when_it_is_a_rate_limit() {
        let forbidden = StatusCode::FORBIDDEN;
        assert!(is_rate_limit_refusal(
            forbidden,
            &headers("x-ratelimit-remaining", "0")
        ));
        assert!(is_rate_limit_refusal(
            forbidden,
            &headers("retry-after", "60")
        ));
        assert!(!is_rate_limit_refusal(
            forbidden,
            &headers("x-ratelimit-remaining", "12")
        ));
        assert!(!is_rate_limit_refusal(forbidden, &HeaderMap::new()));
        assert!(!is_rate_limit_refusal(
            StatusCode::NOT_FOUND,
            &headers("retry-after", "60")
        ));
    }

    #[test]
    fn retryable_statuses_follow_the_policy() {
        use Idempotency::*;
        for code in [408u16, 429, 500, 502, 503, 504] {
            assert!(
                is_retryable_status(StatusCode::from_u16(code).unwrap(), Idempotent),
                "{code}"
            );
        }
        for code in [400u16, 401, 403, 404, 413, 422, 501, 505] {
            assert!(
                !is_retryable_status(StatusCode::from_u16(code).unwrap(), Idempotent),
                "{code}"
            );
        }
        assert!(is_retryable_status(
            StatusCode::TOO_MANY_REQUESTS,
            NotIdempotent
        ));
        assert!(!is_retryable_status(StatusCode::BAD_GATEWAY, NotIdempotent));
    }

    #[test]
    fn retry_after_seconds_epoch_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            server_hint(&headers("retry-after", "3"), now),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            server_hint(&headers("x-ratelimit-reset", "1700000042"), now),
            Some(Duration::from_secs(42))
        );
        // 1700000060 is Tue, 14 Nov 2023 22:14:20 GMT.
        assert_eq!(
            server_hint(
                &headers("retry-after", "Tue, 14 Nov 2023 22:14:20 GMT"),
                now
            ),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            server_hint(&headers("retry-after", "2023-11-14T22:14:30Z"), now),
            Some(Duration::from_secs(70))
        );
        // A time already past means "now", not a negative wait.
        assert_eq!(
            server_hint(&headers("x-ratelimit-reset", "1600000000"), now),
            Some(Duration::ZERO)
        );
        assert_eq!(server_hint(&headers("retry-after", "soon"), now), None);
    }

    #[test]
    fn backoff_doubles_with_bounded_jitter_and_cap() {
        let policy = RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            jitter: 0.1,
        };
        for _ in 0..100 {
            let first = policy.backoff(0).as_secs_f64();
            assert!((0.09..=0.11).contains(&first), "{first}");
            let third = policy.backoff(2).as_secs_f64();
            assert!((0.36..=0.44).contains(&third), "{third}");
            assert!(policy.backoff(20) <= Duration::from_secs(1));
        }
    }

    #[test]
    fn server_hint_is_capped_by_max_delay() {
        let policy = RetryPolicy {
            max_delay: Duration::from_secs(5),
            ..RetryPolicy::default()
        };
        assert_eq!(
            policy.delay(0, Some(&headers("retry-after", "9000"))),
            Duration::from_secs(5)
        );
    }
}
