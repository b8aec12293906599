//! Scraping `/metrics` the way Prometheus would, and reading values out of it.

use prometheus_parse::{Scrape, Value};

/// One parsed scrape.
pub struct Metrics(pub Scrape);

/// Fetches and parses `url`; panics when the answer is not Prometheus text.
pub async fn scrape(url: &str) -> Metrics {
    let response = reqwest::get(url).await.expect("metrics endpoint reachable");
    assert!(response.status().is_success(), "{url} answered {}", response.status());
    let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    assert!(content_type.starts_with("text/plain"), "Prometheus text content type, got {content_type:?}");
    let text = response.text().await.unwrap();
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("parses as Prometheus text");
    Metrics(scrape)
}

impl Metrics {
    /// Sum of the samples of `name` whose labels include all of `labels` (0 when none).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match &s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
                Value::Histogram(buckets) => buckets.iter().map(|b| b.count).fold(0.0, f64::max),
                Value::Summary(_) => 0.0,
            })
            .sum()
    }

    /// Whether any sample of `name` is present.
    pub fn has(&self, name: &str) -> bool {
        self.0.samples.iter().any(|s| s.metric == name)
    }
}
