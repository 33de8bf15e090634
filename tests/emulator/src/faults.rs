//! Injected trouble: error statuses, latency, dropped connections, and Port's request quota.

use std::time::{Duration, Instant};

use serde::Deserialize;

/// The body of `POST /_emulator/faults`; `{}` clears every fault.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    /// Answer with this status (e.g. 429, 500, 503) instead of serving the request.
    pub status: Option<u16>,
    /// ... for the next `count` requests;
    pub count: Option<u64>,
    /// ... or for this fraction (0..1) of requests. With neither, for every request.
    pub ratio: Option<f64>,
    /// Sent as `Retry-After` (seconds) with the injected status.
    pub retry_after: Option<u64>,
    /// Added to every request.
    pub latency_ms: Option<u64>,
    /// Cut the connection instead of answering (selected like `status`).
    pub drop_connections: Option<bool>,
    /// Serve the request (a write is applied), then cut the connection instead of answering:
    /// the agent cannot know whether Port acted. Selected like `status`, writes only.
    pub lose_answers: Option<bool>,
    /// Serve every write, then wait this long before answering (a kill in that time lands
    /// after Port applied the write but before the agent heard of it).
    pub answer_delay_ms: Option<u64>,
}

/// What to do with one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    Serve,
    Fail {
        status: u16,
        retry_after: Option<u64>,
    },
    Drop,
    /// Serve it, then cut the connection instead of answering.
    LoseAnswer,
}

#[derive(Debug, Default)]
pub struct Faults {
    spec: FaultSpec,
    remaining: Option<u64>,
}

impl Faults {
    pub fn set(&mut self, spec: FaultSpec) -> Result<(), String> {
        if let Some(ratio) = spec.ratio
            && !(0.0..=1.0).contains(&ratio)
        {
            return Err(format!("ratio must be within 0..1, got {ratio}"));
        }
        if let Some(status) = spec.status
            && !(400..=599).contains(&status)
        {
            return Err(format!(
                "status must be an error status (400..599), got {status}"
            ));
        }
        self.remaining = spec.count;
        self.spec = spec;
        Ok(())
    }

    pub fn latency(&self) -> Duration {
        Duration::from_millis(self.spec.latency_ms.unwrap_or(0))
    }

    /// How long a served write waits before its answer leaves.
    pub fn answer_delay(&self) -> Duration {
        Duration::from_millis(self.spec.answer_delay_ms.unwrap_or(0))
    }

    /// What to do with the next request; `write` tells whether it changes Port's data.
    pub fn judge(&mut self, write: bool) -> Verdict {
        let drop = self.spec.drop_connections.unwrap_or(false);
        let lose = write && self.spec.lose_answers.unwrap_or(false);
        if self.spec.status.is_none() && !drop && !lose {
            return Verdict::Serve;
        }
        let selected = match (self.remaining.as_mut(), self.spec.ratio) {
            (Some(0), _) => false,
            (Some(left), _) => {
                *left -= 1;
                true
            }
            (None, Some(ratio)) => fastrand::f64() < ratio,
            (None, None) => true,
        };
        match (selected, drop, self.spec.status) {
            (false, _, _) => Verdict::Serve,
            (true, _, _) if lose => Verdict::LoseAnswer,
            (true, true, _) => Verdict::Drop,
            (true, false, Some(status)) => Verdict::Fail {
                status,
                retry_after: self.spec.retry_after,
            },
            (true, false, None) => Verdict::Serve,
        }
    }
}

/// Port's per-second quota: past `per_second` requests in the current second, 429.
#[derive(Debug)]
pub struct Quota {
    per_second: u32,
    window_start: Instant,
    used: u32,
}

impl Quota {
    pub fn new(per_second: u32) -> Self {
        Self {
            per_second,
            window_start: Instant::now(),
            used: 0,
        }
    }

    /// `None` when the request may pass, else the seconds to wait.
    pub fn take(&mut self) -> Option<u64> {
        let now = Instant::now();
        if now.duration_since(self.window_start) >= Duration::from_secs(1) {
            self.window_start = now;
            self.used = 0;
        }
        if self.used < self.per_second {
            self.used += 1;
            None
        } else {
            Some(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_limits_the_fault_to_the_next_requests() {
        let mut faults = Faults::default();
        faults
            .set(FaultSpec {
                status: Some(503),
                count: Some(2),
                retry_after: Some(1),
                ..Default::default()
            })
            .unwrap();
        let fail = Verdict::Fail {
            status: 503,
            retry_after: Some(1),
        };
        assert_eq!(
            [faults.judge(true), faults.judge(false), faults.judge(true)],
            [fail, fail, Verdict::Serve]
        );
        faults.set(FaultSpec::default()).unwrap();
        assert_eq!(faults.judge(true), Verdict::Serve);
    }

    #[test]
    fn lost_answers_touch_only_writes() {
        let mut faults = Faults::default();
        faults
            .set(FaultSpec {
                lose_answers: Some(true),
                count: Some(1),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(faults.judge(false), Verdict::Serve, "a read is served");
        assert_eq!(faults.judge(true), Verdict::LoseAnswer);
        assert_eq!(faults.judge(true), Verdict::Serve, "count spent");
    }

    #[test]
    fn quota_refuses_past_the_limit() {
        let mut quota = Quota::new(2);
        assert_eq!(
            [quota.take(), quota.take(), quota.take()],
            [None, None, Some(1)]
        );
    }
}
