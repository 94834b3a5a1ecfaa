//! report.html: one page that needs no server and loads nothing: the trace's figures are
//! inlined as JSON and drawn as SVG by inline script.

use anyhow::{Context as _, Result};

use super::summary::TraceSummary;
use crate::units;

const TEMPLATE: &str = include_str!("report.html.j2");
/// Syscalls plotted.
const TOP: usize = 20;

pub fn render(title: &str, version: &str, s: &TraceSummary) -> Result<String> {
    let mut env = minijinja::Environment::new();
    env.add_template("report.html", TEMPLATE)
        .context("the report template")?;
    // Inside <script>, `</` would end the element and `<!--` open a comment: escape `<`.
    let data = serde_json::to_string(s)?.replace('<', "\\u003c");
    let ctx = minijinja::context! {
        title,
        version,
        duration => units::ns(s.duration_ms.saturating_mul(1_000_000)),
        lost => s.lost_events,
        merged => s.merged,
        intervals => s.timeline.len(),
        top => TOP,
        data,
    };
    env.get_template("report.html")?
        .render(ctx)
        .context("rendering report.html")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_is_self_contained_and_escapes_its_data() {
        let mut s = TraceSummary::default();
        s.syscalls.push(super::super::summary::Latency {
            name: "</script><b>".into(),
            count: 1,
            errors: 0,
            avg_ns: 1,
            p50_ns: 1,
            p99_ns: 1,
            max_ns: 1,
            buckets: vec![(1, 1)],
        });
        let page = render("pid 1 <x>", "v", &s).unwrap();
        assert!(!page.contains("</script><b>"));
        assert!(page.contains("pid 1 &lt;x&gt;"));
        for external in ["src=", "href=", "http://", "https://"] {
            let outside_svg_ns = page.replace("http://www.w3.org/2000/svg", "");
            assert!(!outside_svg_ns.contains(external), "{external}");
        }
    }
}
