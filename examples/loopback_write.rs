//! What one small write to a loopback TCP socket costs on this machine, with nothing else
//! running: the kernel's part of every delivery, which no server on this machine can avoid.
//!
//! It opens `N` connected pairs on 127.0.0.1 (default 5,000: two descriptors each), then, a
//! few rounds over, writes one 150-byte frame (a `presence-update`'s size) to each server-side
//! socket and reports the wall and CPU time per write; the client sides are read empty between
//! rounds, outside the timing. On loopback a write also runs the receiver's TCP path (and the
//! acknowledgement back) in the writer's system call, so this is a server's write and the
//! kernel's share of a client's read together.
//!
//! Beside `loadtest/bench.sh floor-fanout2x20` (a whole server that only writes) it tells what
//! a broadcast to 10,000 viewers cannot go below here: 10,000 writes on two cores. Run:
//! `cargo run --release --example loopback_write [N]`.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// This thread's time on a CPU so far (the kernel's `schedstat`, in nanoseconds: precise
/// where `getrusage` counts in ticks).
fn cpu() -> Duration {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    let ns = s
        .split_whitespace()
        .next()
        .and_then(|f| f.parse().ok())
        .unwrap_or(0);
    Duration::from_nanos(ns)
}

fn main() -> std::io::Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5_000);
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let mut pairs = Vec::with_capacity(n);
    for _ in 0..n {
        let client = TcpStream::connect(addr)?;
        let (server, _) = listener.accept()?;
        server.set_nodelay(true)?;
        client.set_nonblocking(true)?;
        pairs.push((server, client));
    }
    let frame = [b'x'; 150];
    let mut sink = vec![0u8; 64 * 1024];
    let mut per_write = Vec::new();
    for round in 0..8 {
        // A gap as between two changes: the receivers are idle when the burst comes.
        std::thread::sleep(Duration::from_millis(500));
        let (t0, c0) = (Instant::now(), cpu());
        for (server, _) in &mut pairs {
            server.write_all(&frame)?;
        }
        let (wall, used) = (t0.elapsed(), cpu() - c0);
        for (_, client) in &mut pairs {
            loop {
                match client.read(&mut sink) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
        }
        let us = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
        println!(
            "round {round}: {:.2} µs per write (wall), {:.2} µs (CPU)",
            us(wall),
            us(used)
        );
        if round >= 2 {
            per_write.push(us(used));
        }
    }
    per_write.sort_by(f64::total_cmp);
    let median = per_write[per_write.len() / 2];
    println!(
        "median of the last {} rounds: {median:.2} µs of CPU per 150-byte loopback write; \
         10,000 such writes: {:.0} ms of CPU, {:.0} ms on two cores doing nothing else",
        per_write.len(),
        median * 10.0,
        median * 5.0
    );
    Ok(())
}
