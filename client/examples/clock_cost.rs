//! What the middleware's wall-clock cache buys: each request already reads
//! the monotonic clock (for its response time); `occurred_at` is derived
//! from it and a wall-clock reading at most 100 ms old, instead of reading
//! the wall clock again. Side by side in one run, rounds alternating.
//!   cargo run --release -p auditline-client --example clock_cost
use chrono::Utc;
use std::{
    hint::black_box,
    time::{Duration, Instant},
};

fn main() {
    let rounds = 5_000_000u32;
    let mut ratios = Vec::new();
    for round in 1..=5 {
        let read_again = || {
            let start = Instant::now();
            for _ in 0..rounds {
                let at = black_box(Instant::now());
                black_box((at, Utc::now().timestamp_micros()));
            }
            start.elapsed().as_nanos() as f64 / f64::from(rounds)
        };
        let cached = || {
            let (mut base, mut wall) = (Instant::now(), Utc::now().timestamp_micros());
            let start = Instant::now();
            for _ in 0..rounds {
                let at = black_box(Instant::now());
                let offset = at.saturating_duration_since(base);
                let micros = if offset < Duration::from_millis(100) {
                    wall + offset.as_micros() as i64
                } else {
                    (base, wall) = (Instant::now(), Utc::now().timestamp_micros());
                    wall - base.saturating_duration_since(at).as_micros() as i64
                };
                black_box((at, micros));
            }
            start.elapsed().as_nanos() as f64 / f64::from(rounds)
        };
        let (again, cache) = if round % 2 == 1 {
            let a = read_again();
            (a, cached())
        } else {
            let c = cached();
            (read_again(), c)
        };
        println!(
            "[round {round}] monotonic + wall clock {again:.1} ns, monotonic + cached wall clock {cache:.1} ns a request"
        );
        ratios.push(again - cache);
    }
    ratios.sort_by(f64::total_cmp);
    println!("saved a request, median of rounds: {:.1} ns", ratios[2]);
}
