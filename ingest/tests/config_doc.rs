//! docs/configuration.md cannot drift from the code: every key of the config struct has a row,
//! every row names a real key, and each documented default and environment variable is the
//! one the code uses (defaults from `TEMPLATE`, which `config.rs`'s own test ties to
//! `Config::default()`).

use std::collections::BTreeMap;

use auditledger_ingest::config::{Config, TEMPLATE};

const DOC: &str = include_str!("../../docs/configuration.md");

/// Keys documented in prose instead of the tables (arrays of tables, empty by default).
const PROSE_KEYS: &[&str] = &["auth.client_cert"];

/// `section.key` → value, for the two levels of a config table.
fn flatten(table: &toml::Table) -> BTreeMap<String, toml::Value> {
    let mut out = BTreeMap::new();
    for (section, value) in table {
        let toml::Value::Table(keys) = value else {
            panic!("top-level key {section} is not a section");
        };
        for (key, v) in keys {
            out.insert(format!("{section}.{key}"), v.clone());
        }
    }
    out
}

struct Row {
    line: usize,
    default: String,
    env: String,
}

/// The reference tables: rows of the form | `section.key` | `default` | `ENV` | meaning |.
fn documented() -> BTreeMap<String, Row> {
    let mut rows = BTreeMap::new();
    for (i, line) in DOC.lines().enumerate() {
        let Some(rest) = line.strip_prefix("| `") else {
            continue;
        };
        let cells: Vec<&str> = rest.splitn(4, " | ").collect();
        assert_eq!(
            cells.len(),
            4,
            "docs/configuration.md:{}: malformed row",
            i + 1
        );
        let unquote = |c: &str| -> String {
            c.trim_start_matches('`')
                .trim_end_matches('`')
                .replace("\\|", "|")
        };
        let key = unquote(cells[0]);
        let previous = rows.insert(
            key.clone(),
            Row {
                line: i + 1,
                default: unquote(cells[1]),
                env: unquote(cells[2]),
            },
        );
        assert!(previous.is_none(), "{key} documented twice");
    }
    rows
}

#[test]
fn every_config_key_is_documented_with_its_real_default() {
    let doc = documented();
    assert!(
        doc.len() > 40,
        "the tables were not found: {} rows",
        doc.len()
    );

    let from_struct = match toml::Value::try_from(Config::default()).expect("serialize defaults") {
        toml::Value::Table(t) => flatten(&t),
        other => panic!("defaults serialize to {other:?}"),
    };
    let template = flatten(&toml::from_str(TEMPLATE).expect("TEMPLATE parses"));

    for key in from_struct.keys() {
        if PROSE_KEYS.contains(&key.as_str()) {
            let (section, name) = key.split_once('.').expect("dotted");
            assert!(
                DOC.contains(&format!("[[{section}.{name}]]")),
                "{key} is not described in docs/configuration.md"
            );
            continue;
        }
        assert!(
            doc.contains_key(key),
            "config key {key} is missing from docs/configuration.md"
        );
        assert!(
            template.contains_key(key),
            "config key {key} is missing from TEMPLATE (what `auditledger init` writes)"
        );
    }
    for (key, row) in &doc {
        assert!(
            from_struct.contains_key(key),
            "docs/configuration.md:{}: {key} is not a config key",
            row.line
        );
        let documented: toml::Table = toml::from_str(&format!("v = {}", row.default))
            .unwrap_or_else(|e| {
                panic!(
                    "docs/configuration.md:{}: default of {key} is not a TOML value: {e}",
                    row.line
                )
            });
        assert_eq!(
            Some(&documented["v"]),
            template.get(key),
            "docs/configuration.md:{}: documented default of {key} differs from the code's",
            row.line
        );
        let (section, name) = key.split_once('.').expect("dotted");
        assert_eq!(
            row.env,
            format!(
                "AUDITLEDGER_{}_{}",
                section.to_uppercase(),
                name.to_uppercase()
            ),
            "docs/configuration.md:{}: environment variable of {key}",
            row.line
        );
    }
}

/// The environment variables in the doc really override: a key of every section but
/// `witnesses` (whose only key must hold valid witness keys), through the parser `serve` uses.
/// (The `tiers` section was once missing from the overridable sections; this caught it.)
#[test]
fn documented_environment_variables_override_the_file() {
    let env = [
        ("AUDITLEDGER_LEDGER_CHECKPOINT_INTERVAL", "3s"),
        ("AUDITLEDGER_KEYS_KEYRING", "other/keyring.toml"),
        ("AUDITLEDGER_LIMITS_MAX_EVENT_BYTES", "1234"),
        ("AUDITLEDGER_SERVER_METRICS_LISTEN", "\"\""),
        ("AUDITLEDGER_AUTH_DEFAULT_ENVIRONMENT", "staging"),
        ("AUDITLEDGER_QUOTAS_EVENTS_PER_SECOND", "7"),
        ("AUDITLEDGER_TIERS_HOT_WINDOW", "30days"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()));
    let c = Config::parse(TEMPLATE, std::path::Path::new("/etc/al/config.toml"), env)
        .expect("overrides parse");
    assert_eq!(c.ledger.checkpoint_interval.as_secs(), 3);
    assert_eq!(
        c.keys.keyring,
        std::path::PathBuf::from("other/keyring.toml")
    );
    assert_eq!(c.limits.max_event_bytes, 1234);
    assert_eq!(c.server.metrics_listen, "");
    assert_eq!(c.auth.default_environment, "staging");
    assert_eq!(c.quotas.events_per_second, 7);
    assert_eq!(c.tiers.hot_window.as_secs(), 30 * 86_400);
    // An unknown key in a known section is an error naming it, not silently ignored.
    let typo = [(
        "AUDITLEDGER_TIERS_HOT_WINDOWS".to_string(),
        "1d".to_string(),
    )];
    let err = Config::parse(TEMPLATE, std::path::Path::new("/etc/al/config.toml"), typo)
        .expect_err("unknown key");
    assert!(err.to_string().contains("hot_windows"), "{err}");
}
