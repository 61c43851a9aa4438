//! CPU time of one future's own polls: the thread CPU clock read around each
//! poll, so the time is right even when tokio moves the task between threads
//! and excludes whatever other tasks (the embedded API server's) do meanwhile.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use nix::time::{clock_gettime, ClockId};

fn thread_cpu_seconds() -> f64 {
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).map_or(0.0, |t| t.tv_sec() as f64 + t.tv_nsec() as f64 * 1e-9)
}

/// `future`, recorded as one reconcile of `control_loop` when it completes.
pub fn timed<F: Future>(control_loop: &'static str, future: F) -> Timed<F> {
    Timed { control_loop, future: Box::pin(future), cpu_seconds: 0.0 }
}

pub struct Timed<F> {
    control_loop: &'static str,
    future: Pin<Box<F>>,
    cpu_seconds: f64,
}

impl<F: Future> Future for Timed<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let before = thread_cpu_seconds();
        let poll = self.future.as_mut().poll(cx);
        self.cpu_seconds += (thread_cpu_seconds() - before).max(0.0);
        if poll.is_ready() {
            super::global().reconciled(self.control_loop, self.cpu_seconds);
        }
        poll
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Burns `seconds` of this thread's CPU time.
    fn burn(seconds: f64) {
        let start = thread_cpu_seconds();
        while thread_cpu_seconds() - start < seconds {
            std::hint::black_box(0u64);
        }
    }

    #[tokio::test]
    async fn busy_polls_count_and_waiting_does_not() {
        let work = async {
            burn(0.02);
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            burn(0.02);
        };
        timed("test-loop", work).await;
        let text = super::super::global().render();
        let line =
            text.lines().find(|l| l.starts_with("kvmlet_reconcile_cpu_seconds_total{loop=\"test-loop\"}")).unwrap();
        let seconds: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(seconds >= 0.04, "both busy polls count: {line}");
        assert!(seconds < 0.09, "the 100 ms sleep does not: {line}");
        assert!(text.contains("kvmlet_reconciles_total{loop=\"test-loop\"} 1\n"), "{text}");
    }
}
