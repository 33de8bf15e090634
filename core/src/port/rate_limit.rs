//! A client-side request rate limit, so a large resync stays under Port's quota instead of
//! storming into 429s.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Spaces requests evenly: at most `per_second` start in any second, shared by every task
/// that holds the same limiter.
#[derive(Debug)]
pub struct RateLimiter {
    interval: Duration,
    next_slot: Mutex<Instant>,
}

impl RateLimiter {
    /// `per_second` must be positive and finite (checked when the client is built).
    pub fn new(per_second: f64) -> Self {
        Self {
            interval: Duration::from_secs_f64(1.0 / per_second),
            next_slot: Mutex::new(Instant::now()),
        }
    }

    /// Waits for this caller's slot.
    pub async fn acquire(&self) {
        let slot = {
            let mut next = self.next_slot.lock().unwrap_or_else(|e| e.into_inner());
            let slot = (*next).max(Instant::now());
            *next = slot + self.interval;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn spaces_requests_evenly() {
        let limiter = RateLimiter::new(10.0);
        let start = Instant::now();
        for _ in 0..21 {
            limiter.acquire().await;
        }
        // 21 slots at 10/s: the last starts 2 s after the first.
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }
}
