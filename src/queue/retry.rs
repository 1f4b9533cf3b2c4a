//! Retry timing: River's attempt⁴-seconds curve with ±10 % jitter, capped.

use std::time::Duration;

use rand::Rng;

/// Delay before the run that follows failed attempt number `attempt` (1-based).
pub fn backoff(attempt: u32, cap: Duration) -> Duration {
    let base = f64::from(attempt.max(1)).powi(4);
    let jitter = rand::rng().random_range(-0.1..=0.1);
    let secs = (base * (1.0 + jitter)).max(0.5);
    Duration::from_secs_f64(secs).min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_with_attempts_and_stays_within_jitter() {
        let cap = Duration::from_secs(86_400);
        for attempt in 1..=10u32 {
            let expected = f64::from(attempt).powi(4);
            let got = backoff(attempt, cap).as_secs_f64();
            assert!(
                got >= (expected * 0.9).max(0.5) - 1e-9 && got <= expected * 1.1 + 1e-9,
                "attempt {attempt}: {got}s not within 10% of {expected}s"
            );
        }
    }

    #[test]
    fn is_capped() {
        let cap = Duration::from_secs(3600);
        assert_eq!(backoff(25, cap), cap);
    }
}
