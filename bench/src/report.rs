//! Results: a row per backend and scenario, written as BENCHMARKS.md and
//! results.json.

use std::fmt::Write as _;

/// One measured figure, ours beside the raw baseline and the peer.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub(crate) backend: &'static str,
    pub(crate) scenario: &'static str,
    /// What is measured, with its unit, e.g. "acquire+release/s, 1 task".
    pub(crate) metric: String,
    /// Whether larger is better (throughput) or smaller (latency, calls).
    pub(crate) higher_is_better: bool,
    pub(crate) ours: f64,
    pub(crate) raw: Option<f64>,
    pub(crate) peer: Option<f64>,
    /// What the raw baseline and the peer were.
    pub(crate) note: String,
}

impl Row {
    pub(crate) fn ratio_raw(&self) -> Option<f64> {
        self.raw.map(|raw| self.ours / raw)
    }

    pub(crate) fn ratio_peer(&self) -> Option<f64> {
        self.peer.map(|peer| self.ours / peer)
    }
}

fn figure(value: f64) -> String {
    if !value.is_finite() {
        "-".into()
    } else if value >= 100.0 {
        format!("{value:.0}")
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

fn optional(value: Option<f64>) -> String {
    value.map_or_else(|| "-".into(), figure)
}

/// The whole report as Markdown.
pub(crate) fn markdown(header: &str, rows: &[Row], notes: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{header}");
    let mut scenarios: Vec<&str> = rows.iter().map(|row| row.scenario).collect();
    scenarios.dedup();
    for scenario in scenarios {
        let _ = writeln!(out, "\n## {scenario}\n");
        let _ = writeln!(
            out,
            "| backend | metric | dlock | raw | peer | dlock / raw | dlock / peer | compared with |"
        );
        let _ = writeln!(
            out,
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"
        );
        for row in rows.iter().filter(|row| row.scenario == scenario) {
            let direction = if row.higher_is_better {
                "higher is better"
            } else {
                "lower is better"
            };
            let _ = writeln!(
                out,
                "| {} | {} ({direction}) | {} | {} | {} | {} | {} | {} |",
                row.backend,
                row.metric,
                figure(row.ours),
                optional(row.raw),
                optional(row.peer),
                optional(row.ratio_raw()),
                optional(row.ratio_peer()),
                row.note
            );
        }
    }
    if !notes.is_empty() {
        let _ = writeln!(out, "\n## Notes\n\n{notes}");
    }
    out
}

/// The rows as JSON: one object per backend and scenario figure.
pub(crate) fn json(rows: &[Row]) -> serde_json::Value {
    serde_json::Value::Array(
        rows.iter()
            .map(|row| {
                serde_json::json!({
                    "backend": row.backend,
                    "scenario": row.scenario,
                    "metric": row.metric,
                    "higher_is_better": row.higher_is_better,
                    "ours": row.ours,
                    "raw": row.raw,
                    "peer": row.peer,
                    "ratio_raw": row.ratio_raw(),
                    "ratio_peer": row.ratio_peer(),
                    "note": row.note,
                })
            })
            .collect(),
    )
}
