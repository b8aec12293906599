//! The real Prometheus tools, from Debian's `prometheus` package (`.ci/run` installs it):
//! `promtool` to check and unit-test the alert rules, and a `prometheus` server of the test's
//! own (own data directory, port 0, killed when dropped) to evaluate dashboard queries and
//! alert expressions against a running ingest and worker.

use std::path::{Path, PathBuf};
use std::time::Duration;

use promql_parser::parser::value::ValueType;
use promql_parser::parser::Expr;
use serde_json::Value;

use crate::LoggedProcess;

/// The repository root (the parent of `testkit/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("testkit lives in the repository").to_path_buf()
}

/// Path of a Prometheus tool. A missing tool fails the test, never skips it.
pub fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| p.is_file()).unwrap_or_else(|| {
        panic!(
            "`{name}` is not installed. Install Debian's Prometheus package \
             (`apt-get install -y --no-install-recommends prometheus`, as .ci/run does) and run the tests again."
        )
    })
}

/// Runs `promtool` with `args` in `dir`; returns its output, or panics with it on failure.
pub fn promtool(dir: &Path, args: &[&str]) -> String {
    let output = std::process::Command::new(tool("promtool"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run promtool: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "promtool {} failed:\n{text}", args.join(" "));
    text
}

/// A Prometheus server with a configuration of the test's own. Dropping it kills the server
/// and removes its data directory.
pub struct PrometheusServer {
    process: LoggedProcess,
    pub addr: std::net::SocketAddr,
    client: reqwest::Client,
    // Dropped after the process (fields drop in order), so the server never outlives its data.
    _dir: tempfile::TempDir,
}

/// One series of an instant query's result.
#[derive(Debug, Clone)]
pub struct Sample {
    pub labels: serde_json::Map<String, Value>,
    pub value: f64,
}

impl PrometheusServer {
    /// Starts `prometheus` with `config` (YAML) written next to `files` (name, contents), e.g.
    /// the rule files the configuration names, and waits until it is ready.
    pub async fn start(config: &str, files: &[(&str, String)]) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        std::fs::write(dir.path().join("prometheus.yml"), config).expect("write prometheus.yml");
        for (name, contents) in files {
            std::fs::write(dir.path().join(name), contents).expect("write a file for Prometheus");
        }
        let data = dir.path().join("data");
        let args = [
            format!("--config.file={}", dir.path().join("prometheus.yml").display()),
            format!("--storage.tsdb.path={}", data.display()),
            "--web.listen-address=127.0.0.1:0".to_string(),
            "--log.level=info".to_string(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let program = tool("prometheus");
        let mut process = LoggedProcess::spawn(program.to_str().expect("UTF-8 path"), &args, &[]);
        // Prometheus logs the port it was given for `:0` (logfmt: `msg="Listening on" address=...`).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let line = loop {
            if let Some(line) = process.lines().into_iter().find(|l| l.contains("msg=\"Listening on\"")) {
                break line;
            }
            if let Ok(Some(status)) = process.child.try_wait() {
                panic!("prometheus exited ({status}) before listening:\n{}", process.lines().join("\n"));
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("prometheus did not listen within 30 s:\n{}", process.lines().join("\n"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let addr = line
            .split_whitespace()
            .find_map(|field| field.strip_prefix("address="))
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        let server = Self { process, addr, client: reqwest::Client::new(), _dir: dir };
        crate::eventually("Prometheus ready", Duration::from_secs(30), || async {
            let response = server.client.get(server.url("/-/ready")).send().await.ok()?;
            response.status().is_success().then_some(())
        })
        .await;
        server
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Everything the server logged so far (for failure messages).
    pub fn logs(&self) -> String {
        self.process.lines().join("\n")
    }

    /// Evaluates `expr` now. `Err` carries Prometheus's error (a parse error, say).
    pub async fn query(&self, expr: &str) -> Result<Vec<Sample>, String> {
        let url = reqwest::Url::parse_with_params(&self.url("/api/v1/query"), &[("query", expr)])
            .map_err(|e| format!("query URL: {e}"))?;
        let body: Value = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|e| format!("query request failed: {e}"))?
            .json()
            .await
            .map_err(|e| format!("query answer is not JSON: {e}"))?;
        if body["status"] != "success" {
            return Err(format!("{}: {}", body["errorType"], body["error"]));
        }
        let result = &body["data"]["result"];
        let samples = match body["data"]["resultType"].as_str() {
            Some("vector") => result.as_array().cloned().unwrap_or_default(),
            Some("scalar") => vec![serde_json::json!({"metric": {}, "value": result})],
            other => return Err(format!("unexpected result type {other:?}")),
        };
        Ok(samples
            .into_iter()
            .map(|s| Sample {
                labels: s["metric"].as_object().cloned().unwrap_or_default(),
                value: s["value"][1].as_str().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN),
            })
            .collect())
    }

    /// The health of every scrape target: (job, health, last error).
    pub async fn targets(&self) -> Vec<(String, String, String)> {
        let body: Value =
            self.client.get(self.url("/api/v1/targets")).send().await.expect("targets").json().await.expect("JSON");
        body["data"]["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|t| {
                let field = |name: &str| t[name].as_str().unwrap_or_default().to_string();
                (t["labels"]["job"].as_str().unwrap_or_default().to_string(), field("health"), field("lastError"))
            })
            .collect()
    }

    /// The rule groups Prometheus loaded: (alert name, health, last error) per rule.
    pub async fn rules(&self) -> Vec<(String, String, String)> {
        let body: Value =
            self.client.get(self.url("/api/v1/rules")).send().await.expect("rules").json().await.expect("JSON");
        body["data"]["groups"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .map(|r| {
                let field = |name: &str| r[name].as_str().unwrap_or_default().to_string();
                (field("name"), field("health"), field("lastError"))
            })
            .collect()
    }
}

/// The series an alert expression needs to be able to fire, as expressions to evaluate: the
/// expression with its threshold comparisons taken off (`x > 100` needs `x`), both sides of
/// `and` / `or` / `unless`, and for `absent(x)` the `x` whose absence it detects. An alert
/// expression is usually empty when nothing is wrong, so evaluating it alone proves only that
/// it parses; each of these parts must return data for the alert to be meaningful.
pub fn series_behind(expr: &str) -> Result<Vec<String>, String> {
    let parsed = promql_parser::parser::parse(expr)?;
    let mut parts = Vec::new();
    collect_parts(&parsed, &mut parts);
    Ok(parts.iter().map(ToString::to_string).collect())
}

fn collect_parts(expr: &Expr, out: &mut Vec<Expr>) {
    match expr {
        Expr::Paren(inner) => collect_parts(&inner.expr, out),
        Expr::Binary(b) if b.op.is_set_operator() => {
            collect_parts(&b.lhs, out);
            collect_parts(&b.rhs, out);
        }
        // A filtering comparison: the vector side(s) must have series; a number is a threshold.
        Expr::Binary(b) if b.op.is_comparison_operator() && !b.return_bool() => {
            for side in [&b.lhs, &b.rhs] {
                if side.value_type() == ValueType::Vector {
                    collect_parts(side, out);
                }
            }
        }
        Expr::Call(call) if call.func.name == "absent" => {
            for arg in &call.args.args {
                collect_parts(arg, out);
            }
        }
        other => out.push(other.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::series_behind;

    fn parts(expr: &str) -> Vec<String> {
        series_behind(expr).unwrap()
    }

    #[test]
    fn a_threshold_comparison_leaves_its_vector_side() {
        assert_eq!(parts("amqp_connected == 0"), ["amqp_connected"]);
        assert_eq!(parts("0 < max by (queue) (x)"), ["max by (queue) (x)"]);
    }

    #[test]
    fn set_operators_need_both_sides() {
        assert_eq!(parts("(a > 100) and max by (q) (deriv(b[10m])) > 0"), ["a", "max by (q) (deriv(b[10m]))"]);
    }

    #[test]
    fn absent_needs_the_series_it_watches() {
        assert_eq!(parts(r#"absent(up{job="worker"} == 1)"#), [r#"up{job="worker"}"#]);
    }

    #[test]
    fn vector_comparisons_need_both_sides_and_bool_comparisons_are_values() {
        assert_eq!(parts("a > b"), ["a", "b"]);
        assert_eq!(parts("a > bool 1"), ["a > bool 1"]);
        assert_eq!(parts("rate(x[5m])"), ["rate(x[5m])"]);
    }

    #[test]
    fn an_invalid_expression_is_an_error() {
        assert!(series_behind("rate(x)").is_err());
    }
}
