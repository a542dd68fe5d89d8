//! HTTP query mixes: user search and the statistics report (cold and cached).
use super::*;

/// The search mix: what people type (one or two letters, a first name, a surname, a full
/// name), what matches one user (a number), and what matches nobody.
pub(super) async fn search(c: &Common, rounds: usize) -> Result<Value, String> {
    let q = |class: &str, q: &str, limit: usize| {
        (
            class.to_string(),
            format!("/api/users/search?q={q}&limit={limit}"),
        )
    };
    let queries = vec![
        q("1 char", "a", 20),
        q("2 chars", "an", 20),
        // Inside names only (no first name starts with them): the substring index for one
        // or two characters, the trigram index for three.
        q("1 char inside", "y", 20),
        q("2 chars inside", "lm", 20),
        q("3 chars inside", "ilm", 20),
        q("1 char, no match", "%25", 20),
        q("2 chars, digits", "57", 20),
        q("first name", "anna", 20),
        q("surname", "kowalski", 20),
        q("full name", "maria%20garcia", 20),
        q("one user", "123457", 20),
        q("no match", "zzqxv", 20),
        q("2 chars, no match", "zq", 20),
        q("limit 100", "el", 100),
    ];
    let mut out = serde_json::Map::new();
    for (viewer, gender) in [("as_woman", "female"), ("as_man", "male")] {
        let token = crate::token::mint(&c.secret, &format!("{}-search-{viewer}", c.prefix), gender);
        let r = crate::http::query_mix(
            c.target[0],
            token,
            queries.clone(),
            rounds,
            c.concurrency.min(8),
        )
        .await?;
        out.insert(viewer.into(), r);
    }
    Ok(Value::Object(out))
}

/// Cold: each window asked once with a distinct `limit` (a new cache key, so the replica
/// queries PostgreSQL); cached: the same window asked again.
pub(super) async fn report(c: &Common, rounds: usize, windows: &str) -> Result<Value, String> {
    let mut token_claims =
        crate::token::mint_roles(&c.secret, &format!("{}-dash", c.prefix), &["dashboard"]);
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    for (i, w) in windows.split(';').filter(|w| !w.is_empty()).enumerate() {
        let (from, to) = w.split_once(',').ok_or("windows: from,to;from,to")?;
        for r in 0..rounds {
            // limit 100+r..: a key never asked before.
            cold.push((
                format!("window {i}"),
                format!("/api/stats?from={from}&to={to}&limit={}", 100 + r + 1),
            ));
        }
        warm.push((
            format!("window {i}"),
            format!("/api/stats?from={from}&to={to}&limit=100"),
        ));
    }
    let cold_r = crate::http::query_mix(c.target[0], token_claims.clone(), cold, 1, 1).await?;
    // Each cached window asked once first, unmeasured: that request is a cold one.
    crate::http::query_mix(c.target[0], token_claims.clone(), warm.clone(), 1, 1).await?;
    let warm_r = crate::http::query_mix(
        c.target[0],
        std::mem::take(&mut token_claims),
        warm,
        rounds,
        1,
    )
    .await?;
    Ok(serde_json::json!({"cold": cold_r, "cached": warm_r}))
}
