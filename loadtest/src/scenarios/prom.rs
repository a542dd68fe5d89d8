//! Reading a gateway's Prometheus text: a metric's sum over its series, a histogram's buckets,
//! and the latency summary between two readings.
use super::*;

/// A gateway's Prometheus text, summed per metric name over every series (None when absent).
pub(super) async fn metric_sum(
    addr: std::net::SocketAddr,
    name: &str,
) -> Result<Option<f64>, String> {
    let text = http_text(addr, "/metrics").await?;
    let mut sum = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue;
        }
        if let Some(v) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            *sum.get_or_insert(0.0) += v;
        }
    }
    Ok(sum)
}

/// A Prometheus histogram summed over every series and every target: (upper bound, cumulative
/// count) per bucket, in bound order.
pub(super) async fn histogram(
    targets: &[std::net::SocketAddr],
    name: &str,
) -> Result<Vec<(f64, f64)>, String> {
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    let prefix = format!("{name}_bucket{{");
    for t in targets {
        for line in http_text(*t, "/metrics").await?.lines() {
            let Some(rest) = line.strip_prefix(&prefix) else {
                continue;
            };
            let le = rest.split("le=\"").nth(1).and_then(|v| v.split('"').next());
            let le = match le {
                Some("+Inf") => f64::INFINITY,
                Some(v) => v.parse().map_err(|_| format!("bucket bound {v}"))?,
                None => continue,
            };
            let n: f64 = rest
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0);
            match buckets.iter_mut().find(|(b, _)| *b == le) {
                Some((_, c)) => *c += n,
                None => buckets.push((le, n)),
            }
        }
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(buckets)
}

/// Quantiles (milliseconds, interpolated within buckets) of what a histogram gained between
/// two snapshots.
pub(super) fn histogram_summary(before: &[(f64, f64)], after: &[(f64, f64)]) -> Value {
    let diff: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, n)| {
            let was = before
                .iter()
                .find(|(b, _)| b == le)
                .map_or(0.0, |(_, c)| *c);
            (*le, n - was)
        })
        .collect();
    let total = diff.last().map_or(0.0, |(_, c)| *c);
    let q = |q: f64| -> Value {
        if total <= 0.0 {
            return Value::Null;
        }
        let want = q * total;
        let mut lower = (0.0, 0.0);
        for &(le, c) in &diff {
            if c >= want {
                if le.is_infinite() {
                    return json!(format!("> {} ms", lower.0 * 1000.0));
                }
                let share = if c > lower.1 {
                    (want - lower.1) / (c - lower.1)
                } else {
                    1.0
                };
                return json!(((lower.0 + (le - lower.0) * share) * 1e6).round() / 1000.0);
            }
            lower = (le, c);
        }
        Value::Null
    };
    let within = |bound: f64| {
        diff.iter()
            .find(|(le, _)| *le == bound)
            .map(|(_, c)| c / total)
    };
    json!({"count": total, "p50_ms": q(0.5), "p99_ms": q(0.99), "share_within_50ms": within(0.05)})
}
