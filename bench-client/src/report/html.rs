//! The self-contained HTML report: the table, the verdict and the recommendation, and SVG charts drawn
//! here (no script, no network): throughput with its spread, latency percentiles, memory per
//! configuration, the roofline, and each configuration's memory over time, stacked per worker.

use std::fmt::Write as _;

use crate::report::Report;

const WIDTH: f64 = 760.0;
const LABEL_WIDTH: f64 = 150.0;
const BAR_HEIGHT: f64 = 18.0;
const COLORS: [&str; 8] = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#9c755f"];

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// One row of a bar chart: its label, a value per series, and an optional (min, max) whisker.
pub type BarRow = (String, Vec<f64>, Option<(f64, f64)>);

/// Horizontal bars, one group per row, one bar per series; an optional (min, max) whisker on the first.
pub fn bar_chart(title: &str, unit: &str, series: &[&str], rows: &[BarRow]) -> String {
    let max = rows.iter().flat_map(|(_, values, range)| values.iter().copied().chain(range.map(|r| r.1))).fold(0.0f64, f64::max).max(1e-9);
    let group = BAR_HEIGHT * series.len() as f64 + 8.0;
    let height = 40.0 + group * rows.len() as f64 + 24.0;
    let plot = WIDTH - LABEL_WIDTH - 70.0;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(svg, r#"<text x="0" y="16" font-size="14" font-weight="bold">{}</text>"#, escape(title));
    for (i, name) in series.iter().enumerate() {
        let x = LABEL_WIDTH + i as f64 * 140.0;
        let _ = write!(
            svg,
            r#"<rect x="{x}" y="24" width="10" height="10" fill="{}"/><text x="{}" y="33">{}</text>"#,
            COLORS[i % 8],
            x + 14.0,
            escape(name)
        );
    }
    for (row, (label, values, range)) in rows.iter().enumerate() {
        let top = 40.0 + group * row as f64;
        let _ = write!(svg, r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#, LABEL_WIDTH - 6.0, top + group / 2.0, escape(label));
        for (i, value) in values.iter().enumerate() {
            let y = top + BAR_HEIGHT * i as f64;
            let w = plot * value / max;
            let _ = write!(
                svg,
                r#"<rect x="{LABEL_WIDTH}" y="{y}" width="{w:.1}" height="{}" fill="{}"><title>{}: {value:.2} {unit}</title></rect><text x="{}" y="{}">{value:.1}</text>"#,
                BAR_HEIGHT - 2.0,
                COLORS[i % 8],
                escape(series[i]),
                LABEL_WIDTH + w + 4.0,
                y + BAR_HEIGHT - 5.0
            );
        }
        if let Some((lo, hi)) = range {
            let (x1, x2) = (LABEL_WIDTH + plot * lo / max, LABEL_WIDTH + plot * hi / max);
            let y = top + (BAR_HEIGHT - 2.0) / 2.0;
            let _ = write!(svg, r#"<line x1="{x1:.1}" y1="{y}" x2="{x2:.1}" y2="{y}" stroke="black" stroke-width="1.5"/>"#);
        }
    }
    let _ = write!(svg, r#"<text x="{LABEL_WIDTH}" y="{}" fill="gray">{}</text></svg>"#, height - 6.0, escape(unit));
    svg
}

/// Areas stacked per series over time: `points` holds (seconds, one value per series).
pub fn stacked_area(title: &str, unit_scale: f64, unit: &str, series: &[String], points: &[(f64, Vec<f64>)]) -> String {
    let (w, h, left, top) = (360.0, 180.0, 50.0, 24.0);
    let t_max = points.iter().map(|p| p.0).fold(0.0f64, f64::max).max(1e-9);
    let total_max = points.iter().map(|p| p.1.iter().sum::<f64>()).fold(0.0f64, f64::max).max(1e-9) / unit_scale;
    let x = |t: f64| left + w * t / t_max;
    let y = |v: f64| top + h - h * (v / unit_scale) / total_max;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" font-family="sans-serif" font-size="11">"#,
        w + left + 10.0,
        h + top + 40.0
    );
    let _ = write!(svg, r#"<text x="0" y="14" font-size="13" font-weight="bold">{}</text>"#, escape(title));
    let mut below = vec![0.0; points.len()];
    for (s, name) in series.iter().enumerate() {
        let above: Vec<f64> = points.iter().zip(&below).map(|(p, b)| b + p.1.get(s).copied().unwrap_or(0.0)).collect();
        let mut path = String::new();
        for (i, p) in points.iter().enumerate() {
            let _ = write!(path, "{}{:.1},{:.1} ", if i == 0 { "M" } else { "L" }, x(p.0), y(above[i]));
        }
        for (i, p) in points.iter().enumerate().rev() {
            let _ = write!(path, "L{:.1},{:.1} ", x(p.0), y(below[i]));
        }
        let _ = write!(svg, r#"<path d="{path}Z" fill="{}" fill-opacity="0.8"><title>{}</title></path>"#, COLORS[s % 8], escape(name));
        below = above;
    }
    let _ = write!(
        svg,
        r#"<line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="black"/><line x1="{left}" y1="{top}" x2="{left}" y2="{}" stroke="black"/>"#,
        top + h,
        left + w,
        top + h,
        top + h
    );
    let _ = write!(svg, r#"<text x="{}" y="{}" text-anchor="end">{total_max:.0}</text>"#, left - 4.0, top + 8.0);
    let _ = write!(svg, r#"<text x="{}" y="{}" text-anchor="end">{unit}</text>"#, left - 4.0, top + 22.0);
    let _ = write!(svg, r#"<text x="{}" y="{}" text-anchor="end">{t_max:.1} s</text></svg>"#, left + w, top + h + 14.0);
    svg
}

/// The whole page.
pub fn render(report: &Report) -> String {
    let mut page = String::new();
    let _ = write!(
        page,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>modelpool report</title><style>\
         body{{font-family:sans-serif;margin:24px;max-width:1100px}} pre{{background:#f6f6f6;padding:8px;overflow-x:auto;font-size:12px}}\
         .grid{{display:flex;flex-wrap:wrap;gap:12px}}</style></head><body>"
    );
    let _ = write!(
        page,
        "<h1>modelpool: {}</h1><p>{} · model {} · max_tokens {}</p>",
        escape(&report.tool),
        escape(&report.machine.describe()),
        escape(&report.model),
        report.max_tokens
    );
    let _ = write!(page, "<h2>Recommendation</h2><p><b>{}</b></p>", escape(&report.recommendation.text));
    if let Some(roofline) = &report.roofline {
        let _ = write!(page, "<p>Roofline verdict: {}</p>", escape(&roofline.verdict));
    }
    let _ = write!(page, "<h2>Table</h2><pre>{}</pre>", escape(&report.table()));

    let s = &report.summaries;
    let throughput: Vec<_> = s
        .iter()
        .map(|x| (x.name.clone(), vec![x.output_tokens_per_s.median], Some((x.output_tokens_per_s.min, x.output_tokens_per_s.max))))
        .collect();
    page.push_str("<h2>Throughput</h2>");
    page.push_str(&bar_chart("Output tokens/s (median; line: min–max over repeats)", "tokens/s", &["tok/s"], &throughput));
    let latency: Vec<_> = s
        .iter()
        .map(|x| (x.name.clone(), vec![x.latency_ms.p50 / 1000.0, x.latency_ms.p95 / 1000.0, x.latency_ms.p99 / 1000.0], None))
        .collect();
    page.push_str("<h2>Latency</h2>");
    page.push_str(&bar_chart("End-to-end latency percentiles", "seconds", &["p50", "p95", "p99"], &latency));
    let memory: Vec<_> = s
        .iter()
        .map(|x| (x.name.clone(), vec![x.peak_pool_pss_bytes as f64 / 1048576.0, x.peak_pool_rss_bytes as f64 / 1048576.0], None))
        .collect();
    page.push_str("<h2>Memory</h2>");
    page.push_str(&bar_chart(
        "Pool memory at its peak: PSS counts shared weights once, RSS in every process",
        "MiB",
        &["pool PSS", "pool RSS"],
        &memory,
    ));
    if let Some(roofline) = &report.roofline {
        let rows: Vec<_> =
            roofline.points.iter().map(|p| (p.name.clone(), vec![p.achieved_tokens_per_s, p.ceiling_tokens_per_s], None)).collect();
        page.push_str("<h2>Roofline</h2>");
        page.push_str(&bar_chart(
            &format!("Achieved tokens/s against the memory-bandwidth ceiling ({:.1} GB/s measured)", roofline.bandwidth_bytes_per_s / 1e9),
            "tokens/s",
            &["achieved", "ceiling"],
            &rows,
        ));
    }
    page.push_str("<h2>Memory over time (first run of each configuration, PSS stacked per worker)</h2><div class=\"grid\">");
    let mut seen = Vec::new();
    for run in &report.runs {
        if seen.contains(&run.name) || run.memory.timeline.is_empty() {
            continue;
        }
        seen.push(run.name.clone());
        let workers: Vec<String> = run.memory.workers.keys().cloned().collect();
        let points: Vec<(f64, Vec<f64>)> = run
            .memory
            .timeline
            .iter()
            .map(|p| (p.t_ms as f64 / 1000.0, workers.iter().map(|w| p.pss_bytes.get(w).copied().unwrap_or(0) as f64).collect()))
            .collect();
        page.push_str(&stacked_area(&run.name, 1048576.0, "MiB", &workers, &points));
    }
    page.push_str("</div></body></html>\n");
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_svg_with_escaped_labels_and_scaled_bars() {
        let svg = bar_chart("t<1>", "u", &["a"], &[("x&y".into(), vec![10.0], Some((5.0, 20.0))), ("z".into(), vec![5.0], None)]);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(svg.contains("t&lt;1&gt;") && svg.contains("x&amp;y"));
        // the whisker's maximum (20) sets the scale: a value of 10 spans half the plot
        let plot = WIDTH - LABEL_WIDTH - 70.0;
        assert!(svg.contains(&format!("width=\"{:.1}\"", plot / 2.0)), "{svg}");
        let area = stacked_area("m", 1.0, "B", &["w1".into(), "w2".into()], &[(0.0, vec![1.0, 2.0]), (1.0, vec![2.0, 2.0])]);
        assert_eq!(area.matches("<path").count(), 2);
    }
}
