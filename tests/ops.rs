//! The operability pack against the real thing: the axum example runs as a
//! child process, traffic opens its breaker, sheds and denies, and its
//! `/metrics` scrape is compared with the metric reference
//! (`docs/metrics.md`), the Grafana dashboard's queries and the alert
//! rules (`ops/`); promtool checks and unit-tests the rules.
#![cfg(all(feature = "axum", feature = "prometheus"))]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use http::{Request, StatusCode};
use support::{Example, Reply, send};

const REFERENCE: &str = include_str!("../docs/metrics.md");
const DASHBOARD: &str = include_str!("../ops/grafana-dashboard.json");
const RULES: &str = include_str!("../ops/prometheus-rules.yml");

/// One sample of a scrape.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A scrape: each family's type (from `# TYPE`) and every sample.
#[derive(Debug)]
struct Scrape {
    types: BTreeMap<String, String>,
    samples: Vec<Sample>,
}

impl Scrape {
    fn parse(text: &str) -> Self {
        let mut types = BTreeMap::new();
        let mut samples = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
                types.insert(name.to_owned(), kind.to_owned());
            } else if !line.starts_with('#') && !line.trim().is_empty() {
                samples.push(parse_sample(line));
            }
        }
        Self { types, samples }
    }

    /// The family a sample belongs to (a histogram's `_bucket`, `_sum`
    /// and `_count` belong to the histogram).
    fn family_of(&self, sample: &str) -> String {
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = sample.strip_suffix(suffix)
                && self.types.get(base).is_some_and(|t| t == "histogram")
            {
                return base.to_owned();
            }
        }
        sample.to_owned()
    }

    /// The samples named `name` whose labels include `labels`.
    fn find(&self, name: &str, labels: &[(&str, &str)]) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect()
    }
}

/// `name{k="v",...} value` (label values may hold escaped quotes, commas
/// and braces).
fn parse_sample(line: &str) -> Sample {
    let (name, rest) = match line.find(['{', ' ']) {
        Some(i) => line.split_at(i),
        None => panic!("a sample line: {line}"),
    };
    let mut labels = BTreeMap::new();
    let mut chars = rest.chars().peekable();
    if chars.peek() == Some(&'{') {
        chars.next();
        loop {
            let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
            let key = key.trim_start_matches(',').trim().to_owned();
            if key.is_empty() {
                break;
            }
            assert_eq!(chars.next(), Some('"'), "{line}");
            let mut value = String::new();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
            labels.insert(key, value);
            match chars.next() {
                Some(',') if chars.peek() == Some(&'}') => {
                    chars.next();
                    break;
                }
                Some(',') => {}
                _ => break,
            }
        }
    }
    let value: String = chars.collect();
    let value = value.split_whitespace().next().unwrap_or("");
    Sample {
        name: name.to_owned(),
        labels,
        value: value.parse().unwrap_or_else(|_| panic!("a value: {line}")),
    }
}

/// One row of the reference's instrument table.
#[derive(Debug)]
struct Documented {
    kind: String,
    always: BTreeSet<String>,
    some: BTreeSet<String>,
}

/// The backticked words of a table cell.
fn ticked(cell: &str) -> Vec<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// The rows of the table under the heading `section`.
fn table(section: &str) -> Vec<Vec<String>> {
    let body = REFERENCE
        .split(&format!("## {section}\n"))
        .nth(1)
        .unwrap_or_else(|| panic!("docs/metrics.md has no {section} section"));
    body.lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_owned())
                .collect()
        })
        .collect()
}

/// The instruments the reference lists, by Prometheus name.
fn reference() -> BTreeMap<String, Documented> {
    table("Instruments")
        .iter()
        .map(|cells| {
            let name = ticked(&cells[0]).remove(0);
            let doc = Documented {
                kind: cells[2].clone(),
                always: ticked(&cells[4]).into_iter().collect(),
                some: ticked(&cells[5]).into_iter().collect(),
            };
            (name, doc)
        })
        .collect()
}

/// Labels whose values the reference enumerates: every value is
/// backticked, with nothing else in the cell but commas.
fn enumerated_labels() -> BTreeMap<String, BTreeSet<String>> {
    let mut labels = BTreeMap::new();
    for cells in table("Labels") {
        let values = &cells[1];
        let prose: String = values.split('`').step_by(2).collect();
        if !prose.chars().all(|c| c == ',' || c.is_whitespace()) {
            continue;
        }
        for label in ticked(&cells[0]) {
            labels.insert(label, ticked(values).into_iter().collect());
        }
    }
    labels
}

/// The `(layer, event)` pairs the reference lists.
fn documented_events() -> BTreeSet<(String, String)> {
    let mut events = BTreeSet::new();
    for cells in table("Events") {
        let layer = ticked(&cells[0]).remove(0);
        for event in ticked(&cells[1]) {
            events.insert((layer.clone(), event));
        }
    }
    events
}

/// Labels every series carries whatever the instrument: the exporter's
/// scope, and a histogram bucket's bound.
fn is_exporter_label(label: &str) -> bool {
    label.starts_with("otel_scope_") || label == "le"
}

/// `GET path` on `app`.
async fn get_from(app: &Example, path: &str) -> Reply {
    support::get(&app.url(path)).await
}

/// Polls `/metrics` until `done` holds for the scrape; fails after 10 s.
async fn scrape_until(app: &Example, done: impl Fn(&Scrape) -> bool) -> Scrape {
    let started = Instant::now();
    loop {
        let scrape = Scrape::parse(&get_from(app, "/metrics").await.body);
        if done(&scrape) {
            return scrape;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the scrape never showed what was awaited: {scrape:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The example after traffic that runs every layer of it: a keyed order,
/// a downstream failing until `/proxy`'s breaker opens, a request shed
/// while two others hold the concurrency limit, requests past the rate
/// limit, a gRPC-shaped request, a readiness probe. Returns the
/// app, and its `/metrics` text at the end.
async fn example_after_traffic() -> (Example, String) {
    // A downstream that always fails.
    let downstream = Router::new().route(
        "/",
        get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "down") }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, downstream).await });
    let downstream_url = format!("http://{addr}/");
    let app = Example::start(
        "axum",
        &[
            ("DOWNSTREAM_URL", &downstream_url),
            ("RATE_LIMIT", "20/m"),
            ("RATE_LIMIT_MODE", "leased"),
            ("CONCURRENCY_LIMIT", "2"),
            // Open for the rest of the test.
            ("BREAKER_OPEN", "600"),
            ("RUST_LOG", "warn"),
        ],
    );
    assert_eq!(get_from(&app, "/hello").await.status, StatusCode::OK);
    assert_eq!(get_from(&app, "/items/1").await.status, StatusCode::OK);
    let order = Request::post(app.url("/orders"))
        .header("content-type", "application/json")
        .header("idempotency-key", "\"ops-1\"")
        .body("{}".to_owned())
        .unwrap();
    assert_eq!(send(order).await.status, StatusCode::CREATED);
    assert_eq!(get_from(&app, "/readyz").await.status, StatusCode::OK);

    // Failures until the breaker opens: then 503 naming it.
    let mut opened = false;
    for _ in 0..6 {
        let reply = get_from(&app, "/proxy").await;
        if reply.status == StatusCode::SERVICE_UNAVAILABLE {
            assert!(
                reply.body.contains("\"breaker\":\"downstream\""),
                "{reply:?}"
            );
            opened = true;
            break;
        }
        assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR, "{reply:?}");
    }
    assert!(opened, "the breaker never opened");

    // Two slow requests hold the limit of 2 (the gauge says so); a third
    // is shed.
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let url = app.url("/slow?ms=3000");
            tokio::spawn(async move { support::get(&url).await })
        })
        .collect();
    let held = scrape_until(&app, |s| {
        let in_flight = ("policy", "concurrency");
        s.find("battlement_concurrency_limit_in_flight", &[in_flight])
            .iter()
            .any(|s| s.value == 2.0)
    })
    .await;
    let limit = held.find(
        "battlement_concurrency_limit_limit",
        &[("policy", "concurrency")],
    );
    assert_eq!(limit.len(), 1, "{limit:?}");
    assert_eq!(limit[0].value, 2.0);
    let shed = get_from(&app, "/slow?ms=1").await;
    assert_eq!(shed.status, StatusCode::SERVICE_UNAVAILABLE, "{shed:?}");
    for task in slow {
        assert_eq!(task.await.unwrap().status, StatusCode::OK);
    }

    // Past the quota: 429.
    let mut denied = false;
    for i in 0..40 {
        if get_from(&app, &format!("/items/{i}")).await.status == StatusCode::TOO_MANY_REQUESTS {
            denied = true;
            break;
        }
    }
    assert!(denied, "the rate limit never denied");
    let grpc = Request::post(app.url("/helloworld.Greeter/SayHello"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(String::new())
        .unwrap();
    // No route serves it: answered by the router (404), as a gRPC call of
    // an unknown service and method in the metrics.
    assert_eq!(send(grpc).await.status, StatusCode::NOT_FOUND);

    let text = get_from(&app, "/metrics").await.body;
    server.abort();
    (app, text)
}

// Every instrument in the scrape is in the reference with its type and
// labels, and every instrument of the reference is in the scrape; labels
// with enumerated values take only those; the state gauges read what the
// traffic left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metric_reference_matches_a_scrape_of_the_example() {
    let (_app, text) = example_after_traffic().await;
    let scrape = Scrape::parse(&text);
    let reference = reference();
    let mut problems = Vec::new();

    let scraped: BTreeSet<String> = scrape
        .samples
        .iter()
        .map(|s| scrape.family_of(&s.name))
        .filter(|f| f != "target_info")
        .collect();
    for family in &scraped {
        match reference.get(family) {
            None => problems.push(format!("{family} is scraped but not documented")),
            Some(doc) if scrape.types.get(family) != Some(&doc.kind) => problems.push(format!(
                "{family}: documented as a {}, scraped as a {:?}",
                doc.kind,
                scrape.types.get(family)
            )),
            Some(_) => {}
        }
    }
    for family in reference.keys() {
        if !scraped.contains(family) {
            problems.push(format!("{family} is documented but not scraped"));
        }
    }

    let enumerated = enumerated_labels();
    let events = documented_events();
    for sample in &scrape.samples {
        let family = scrape.family_of(&sample.name);
        let Some(doc) = reference.get(&family) else {
            continue;
        };
        let labels: BTreeSet<&String> = sample
            .labels
            .keys()
            .filter(|l| !is_exporter_label(l))
            .collect();
        for label in &doc.always {
            if !labels.contains(label) {
                problems.push(format!("{family}: a series without {label}: {sample:?}"));
            }
        }
        for label in labels {
            if !doc.always.contains(label) && !doc.some.contains(label) {
                problems.push(format!("{family}: undocumented label {label}"));
            }
            let value = &sample.labels[label];
            if let Some(values) = enumerated.get(label)
                && !values.contains(value)
            {
                problems.push(format!("{family}: {label}={value:?} is not documented"));
            }
        }
        if family == "battlement_events_total" {
            let pair = (
                sample.labels["layer"].clone(),
                sample.labels["event"].clone(),
            );
            if !events.contains(&pair) {
                problems.push(format!("undocumented event {pair:?}"));
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}\n{text}");

    // The state gauges, as the traffic left them.
    let open = scrape.find(
        "battlement_circuit_breaker_state",
        &[("policy", "downstream"), ("state", "open")],
    );
    assert_eq!(open.len(), 1, "{text}");
    assert_eq!(open[0].value, 1.0);
    assert!(open[0].labels["key"].starts_with("127.0.0.1:"), "{open:?}");
    let memory = scrape.find("battlement_store_up", &[("backend", "memory")]);
    assert_eq!(memory.iter().map(|s| s.value).collect::<Vec<_>>(), [1.0]);
    let leased = scrape.find(
        "battlement_rate_limit_leased_units",
        &[("policy", "per-ip")],
    );
    assert_eq!(leased.len(), 1, "{text}");
    let in_flight = scrape.find("battlement_concurrency_limit_in_flight", &[]);
    assert_eq!(in_flight.iter().map(|s| s.value).collect::<Vec<_>>(), [0.0]);
    let claims = scrape.find("battlement_idempotency_in_flight", &[]);
    assert_eq!(claims.iter().map(|s| s.value).collect::<Vec<_>>(), [0.0]);
}

/// The metric names a PromQL expression reads: identifiers that are not
/// functions or aggregations (followed by `(`), keywords, label names
/// (in `{..}` and in `by`/`without`/`on`/`ignoring`/`group_*` lists),
/// durations, numbers, strings or Grafana variables (`$..`).
fn metric_names(expr: &str) -> BTreeSet<String> {
    // Operators and aggregations (which may come before `by (..)`).
    const KEYWORDS: [&str; 22] = [
        "bool",
        "and",
        "or",
        "unless",
        "offset",
        "atan2",
        "inf",
        "nan",
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    ];
    const LABEL_LISTS: [&str; 6] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    // Skips from an opening `open` to its `close`, over strings.
    let skip_group = |mut i: usize, open: char, close: char| -> usize {
        let mut depth = 0;
        while i < chars.len() {
            match chars[i] {
                '"' | '\'' | '`' => {
                    let quote = chars[i];
                    i += 1;
                    while i < chars.len() && chars[i] != quote {
                        i += if chars[i] == '\\' { 2 } else { 1 };
                    }
                }
                c if c == open => depth += 1,
                c if c == close => {
                    depth -= 1;
                    if depth == 0 {
                        return i + 1;
                    }
                }
                _ => {}
            }
            i += 1;
        }
        i
    };
    let is_word = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    while i < chars.len() {
        let c = chars[i];
        match c {
            '{' => i = skip_group(i, '{', '}'),
            '[' => i = skip_group(i, '[', ']'),
            '"' | '\'' | '`' => {
                let quote = c;
                i += 1;
                while i < chars.len() && chars[i] != quote {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
                i += 1;
            }
            '$' | '0'..='9' | '.' => {
                i += 1;
                while i < chars.len() && (is_word(chars[i]) || chars[i] == '.') {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len() && is_word(chars[i]) {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let mut next = i;
                while next < chars.len() && chars[next].is_whitespace() {
                    next += 1;
                }
                let before_paren = chars.get(next) == Some(&'(');
                if LABEL_LISTS.contains(&word.as_str()) {
                    if before_paren {
                        i = skip_group(next, '(', ')');
                    }
                } else if !before_paren && !KEYWORDS.contains(&word.as_str()) {
                    names.insert(word);
                }
            }
            _ => i += 1,
        }
    }
    names
}

/// Every PromQL expression of the dashboard: its panels' queries and its
/// variables' (`label_values(<expr>, label)` reads `<expr>`). Checks the
/// dashboard's shape on the way.
fn dashboard_queries() -> Vec<String> {
    let dashboard: serde_json::Value = serde_json::from_str(DASHBOARD).expect("valid JSON");
    assert!(dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 30));
    assert!(dashboard["uid"].is_string() && dashboard["title"].is_string());
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("variables");
    let datasource = variables
        .iter()
        .find(|v| v["type"] == "datasource")
        .expect("a data source variable");
    assert_eq!(datasource["query"], "prometheus");
    let mut queries = Vec::new();
    for variable in variables.iter().filter(|v| v["type"] == "query") {
        let query = variable["query"]["query"]
            .as_str()
            .expect("a variable query");
        let inner = query
            .strip_prefix("label_values(")
            .and_then(|q| q.rsplit_once(','))
            .map(|(expr, _)| expr)
            .expect("label_values(<expr>, <label>)");
        queries.push(inner.to_owned());
    }
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut graphs = 0;
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        graphs += 1;
        let title = &panel["title"];
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        assert!(panel["gridPos"]["w"].is_u64(), "{title}");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title} has no query");
        for target in targets {
            assert_eq!(target["datasource"]["uid"], "${datasource}", "{title}");
            queries.push(target["expr"].as_str().expect("expr").to_owned());
        }
    }
    assert!(graphs >= 10, "{graphs} panels");
    queries
}

/// Every `expr:` of the rules file (one line, or a `|` block).
fn rule_expressions() -> Vec<String> {
    let mut exprs = Vec::new();
    let mut lines = RULES.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(value) = line.trim_start().strip_prefix("expr:") else {
            continue;
        };
        let value = value.trim();
        if value != "|" && value != ">" {
            exprs.push(value.to_owned());
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let mut block = String::new();
        while let Some(next) = lines.peek() {
            let deeper = next.len() - next.trim_start().len() > indent;
            if !next.trim().is_empty() && !deeper {
                break;
            }
            block.push_str(next.trim());
            block.push('\n');
            lines.next();
        }
        exprs.push(block);
    }
    exprs
}

#[test]
fn the_promql_parser_finds_metric_names_only() {
    let expr = r#"histogram_quantile(0.99, sum by (http_route, le) (rate(http_server_request_duration_seconds_bucket{job=~"$job", a="b{c}"}[$__rate_interval])))
        / on (job) group_left sum without (instance) (up offset 5m) > bool 0 and x:recorded:rate5m
        or count by (job) (sum(rate(y_total[5m])))"#;
    let names: Vec<String> = metric_names(expr).into_iter().collect();
    assert_eq!(
        names,
        [
            "http_server_request_duration_seconds_bucket",
            "up",
            "x:recorded:rate5m",
            "y_total"
        ]
    );
}

// Every metric the dashboard's queries and the rules' expressions read
// is in a scrape of the example after traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_and_the_rules_read_only_metrics_the_example_exports() {
    let queries = dashboard_queries();
    let rules = rule_expressions();
    assert_eq!(rules.len(), RULES.matches("- alert:").count());
    let mut used = BTreeMap::new();
    for (source, expr) in queries
        .iter()
        .map(|q| ("dashboard", q))
        .chain(rules.iter().map(|r| ("rules", r)))
    {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{source}: no metric in {expr}");
        for name in names {
            used.entry(name).or_insert(source);
        }
    }
    let (_app, text) = example_after_traffic().await;
    let scrape = Scrape::parse(&text);
    let exported: BTreeSet<&str> = scrape.samples.iter().map(|s| s.name.as_str()).collect();
    let missing: Vec<_> = used
        .iter()
        .filter(|(name, _)| !exported.contains(name.as_str()))
        .collect();
    assert!(missing.is_empty(), "not in the scrape: {missing:?}\n{text}");
}

/// Runs promtool with `args` in `ops/`; under CI a missing promtool
/// fails, elsewhere the check is skipped.
fn promtool(args: &[&str]) {
    let ops = concat!(env!("CARGO_MANIFEST_DIR"), "/ops");
    let out = match std::process::Command::new("promtool")
        .args(args)
        .current_dir(ops)
        .output()
    {
        Ok(out) => out,
        Err(e) if std::env::var_os("CI").is_some() => panic!("promtool: {e}"),
        Err(e) => return eprintln!("skipping promtool {args:?}: {e}"),
    };
    assert!(
        out.status.success(),
        "promtool {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// The rules load, and their unit tests pass.
#[test]
fn promtool_checks_and_tests_the_rules() {
    promtool(&["check", "rules", "prometheus-rules.yml"]);
    promtool(&["test", "rules", "prometheus-rules.test.yml"]);
}
