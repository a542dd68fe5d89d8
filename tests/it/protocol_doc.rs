//! `docs/protocol.md` against the code: every environment variable the configuration reads,
//! every event the gateway handles or emits and every HTTP route is in the document, and every
//! one the document's tables list exists in the code. Renaming one without the other fails here.

use std::collections::BTreeSet;
use std::path::Path;

fn read(rel: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(root.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The string literals of a source file (no escapes needed for the names looked for).
fn literals(src: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut rest = src;
    let mut at = 0;
    while let Some(i) = rest.find('"') {
        let after = &rest[i + 1..];
        let Some(j) = after.find('"') else { break };
        out.push((at + i, &after[..j]));
        at += i + j + 2;
        rest = &after[j + 1..];
    }
    out
}

fn is_var(s: &str) -> bool {
    s.len() > 2
        && s.starts_with(|c: char| c.is_ascii_uppercase())
        && s.chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

fn is_event(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.contains([':', '-', '_'])
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || ":-_".contains(c))
        && !s.ends_with("_total")
}

/// Variables read by the configuration: literals passed to its readers.
fn code_vars() -> BTreeSet<String> {
    // The configuration, and the webhook settings it reads through the domain.
    ["src/config.rs", "src/domain/webhook.rs"]
        .into_iter()
        .flat_map(|file| {
            let src = read(file);
            literals(&src)
                .into_iter()
                .filter(|(i, s)| {
                    let before = src[..*i].trim_end();
                    is_var(s)
                        && [
                            "get(",
                            "ms(",
                            "flag(",
                            "flag_or_true(",
                            "count(",
                            "var(",
                            "number(",
                        ]
                        .iter()
                        .any(|f| before.ends_with(f))
                })
                .map(|(_, s)| s.to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn code_events() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/gateway");
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| format!("src/gateway/{}", e.unwrap().file_name().to_string_lossy()))
        .collect();
    files.push("src/server.rs".into());
    for f in files {
        let src = read(&f);
        // An event name is what is emitted, sent, listened to, or matched as a request.
        for (i, s) in literals(&src) {
            let before = src[..i].trim_end();
            let after = src[i + s.len() + 2..].trim_start();
            // (`send(state, v, …)` and `event_frame(…)`: the fan-out's frames written onto a
            // connection, `gateway/fanout.rs`.)
            let used_as_event = [
                "emit(",
                "on(",
                "send(&s,",
                "send(state, v,",
                "send(state, &v,",
                "event_frame(",
            ]
            .iter()
            .any(|f| before.ends_with(f))
                || after.starts_with("=>");
            if is_event(s) && used_as_event {
                out.insert(s.to_string());
            }
        }
    }
    out
}

/// `METHOD /path` of every route, with path parameters named as the document names them.
fn code_routes() -> BTreeSet<String> {
    let src = read("src/http/mod.rs");
    let mut out = BTreeSet::new();
    for chunk in src.split(".route(").skip(1) {
        let path = chunk.split('"').nth(1).unwrap();
        // Each method router named in the chunk (`get(h)`, `get(h).put(h2)`), not a handler
        // that happens to be called `get`.
        let body = chunk.split(".route(").next().unwrap();
        for (m, method) in [
            ("get(", "GET"),
            ("post(", "POST"),
            ("put(", "PUT"),
            ("delete(", "DELETE"),
        ] {
            let named = body.match_indices(m).any(|(i, _)| {
                i == 0
                    || !body[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':')
            });
            if named {
                out.insert(format!(
                    "{method} {}",
                    path.replace("{user_id}", "{userId}")
                        .replace("{other_id}", "{otherId}")
                ));
            }
        }
    }
    out
}

/// What the document's tables list in their first column, by kind.
fn doc_names() -> (BTreeSet<String>, BTreeSet<String>, BTreeSet<String>) {
    let doc = read("docs/protocol.md");
    let (mut vars, mut events, mut routes) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    for line in doc.lines().filter(|l| l.starts_with("| `")) {
        let first = line.split(" | ").next().unwrap_or("");
        for name in first.split('`').skip(1).step_by(2) {
            if is_var(name) {
                vars.insert(name.to_string());
            } else if ["GET ", "POST ", "PUT ", "DELETE "]
                .iter()
                .any(|m| name.starts_with(m))
            {
                routes.insert(name.split('?').next().unwrap().to_string());
            } else if is_event(name) {
                events.insert(name.to_string());
            }
        }
    }
    (vars, events, routes)
}

#[test]
fn docs_protocol_lists_exactly_what_the_code_has() {
    let doc = read("docs/protocol.md");
    let (vars, events, routes) = doc_names();
    for v in code_vars() {
        assert!(
            doc.contains(&format!("`{v}`")),
            "the configuration reads {v}; docs/protocol.md does not name it"
        );
    }
    for v in &vars {
        assert!(
            code_vars().contains(v),
            "docs/protocol.md lists {v}; the configuration does not read it"
        );
    }
    assert_eq!(
        events,
        code_events(),
        "events: docs/protocol.md's tables against src/gateway/ and src/server.rs"
    );
    assert_eq!(
        routes,
        code_routes(),
        "routes: docs/protocol.md's HTTP table against src/http/mod.rs"
    );
}
