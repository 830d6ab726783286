//! The console's pictures, laid out by pure functions (tested without a
//! browser) and drawn as inline SVG: a transaction's timeline, and the
//! overview's per-minute bar charts.

use chrono::{DateTime, Utc};
use maud::{html, Markup};
use tandem_wire::{AttemptOutcome, EventKind, MinuteCount, TimelineEvent};

/// Width of the drawing area of the timeline, in SVG units.
const WIDTH: f64 = 1000.0;
/// Left margin (lane labels).
const LEFT: f64 = 170.0;
/// Height of one lane.
const LANE: f64 = 34.0;
/// Top margin (the time axis).
const TOP: f64 = 26.0;

/// One mark of the timeline: where it goes and what it shows.
#[derive(Debug, Clone, PartialEq)]
pub struct Mark {
    /// Lane: 0 the transaction, 1.. the branches in registration order.
    pub lane: usize,
    /// Horizontal position of its start.
    pub x: f64,
    /// Its width (an attempt's latency; at least a visible minimum).
    pub width: f64,
    /// Its CSS class (by kind and outcome).
    pub class: &'static str,
    /// The hover text.
    pub title: String,
}

/// The timeline's layout: lanes, marks, and the axis span.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    /// Lane labels, the transaction's first.
    pub lanes: Vec<String>,
    /// The marks.
    pub marks: Vec<Mark>,
    /// Milliseconds from the first event to the last (at least 1).
    pub span_ms: f64,
}

/// Lays `events` out: a lane for the transaction and one per branch
/// (`branches`, in registration order), time from the first event to the
/// last scaled to the width; an attempt is as wide as its latency.
pub fn layout(events: &[TimelineEvent], branches: &[String]) -> Layout {
    let start = events.first().map(|e| e.at).unwrap_or_else(Utc::now);
    let end = events.iter().map(|e| e.at + latency(e)).max().unwrap_or(start);
    let span_ms = ((end - start).num_microseconds().unwrap_or(0) as f64 / 1000.0).max(1.0);
    let scale = (WIDTH - LEFT - 20.0) / span_ms;
    let ms = |t: DateTime<Utc>| (t - start).num_microseconds().unwrap_or(0) as f64 / 1000.0;
    let mut lanes = vec!["transaction".to_owned()];
    lanes.extend(branches.iter().map(|b| format!("branch {}", short(b))));
    let marks = events
        .iter()
        .map(|e| {
            let lane = e.branch_id.as_ref().and_then(|b| branches.iter().position(|x| x == b)).map_or(0, |i| i + 1);
            let width = (latency(e).num_microseconds().unwrap_or(0) as f64 / 1000.0 * scale).max(4.0);
            Mark { lane, x: LEFT + ms(e.at) * scale, width, class: class(e), title: title(e, ms(e.at)) }
        })
        .collect();
    Layout { lanes, marks, span_ms }
}

fn latency(e: &TimelineEvent) -> chrono::Duration {
    chrono::Duration::microseconds(e.latency_us.and_then(|us| i64::try_from(us).ok()).unwrap_or(0))
}

/// The last 12 characters of an id (the random end of a UUIDv7), for labels.
pub fn short(id: &str) -> &str {
    let n = id.len();
    id.get(n.saturating_sub(12)..).unwrap_or(id)
}

fn class(e: &TimelineEvent) -> &'static str {
    match (e.kind, e.outcome) {
        (EventKind::Attempt, Some(AttemptOutcome::Done)) => "m-done",
        (EventKind::Attempt, Some(AttemptOutcome::Refused | AttemptOutcome::Heuristic)) => "m-refused",
        (EventKind::Attempt, _) => "m-unknown",
        (EventKind::Takeover, _) => "m-takeover",
        (EventKind::OperatorRetry | EventKind::OperatorStop, _) => "m-operator",
        (EventKind::Decided, _) => "m-decided",
        _ => "m-point",
    }
}

fn title(e: &TimelineEvent, at_ms: f64) -> String {
    let mut t = format!("+{at_ms:.1} ms {}", e.kind.as_str());
    if let Some(a) = e.action {
        t.push_str(&format!(" {}", a.as_str()));
    }
    if let Some(o) = e.outcome {
        t.push_str(&format!(" → {}", o.as_str()));
    }
    if let Some(s) = e.http_status {
        t.push_str(&format!(" (HTTP {s})"));
    }
    if let Some(us) = e.latency_us {
        t.push_str(&format!(" in {:.1} ms", us as f64 / 1000.0));
    }
    if let Some(s) = e.status {
        t.push_str(&format!(" → {s}"));
    }
    if let Some(r) = e.reason {
        t.push_str(&format!(" ({})", r.as_str()));
    }
    if let Some(d) = &e.detail {
        t.push_str(&format!(": {}", d.chars().take(200).collect::<String>()));
    }
    t
}

/// The timeline as an SVG picture.
pub fn timeline(l: &Layout) -> Markup {
    let height = TOP + LANE * l.lanes.len() as f64 + 8.0;
    let ticks: Vec<f64> = (0..=4).map(|i| f64::from(i) / 4.0).collect();
    html! {
        svg.timeline xmlns="http://www.w3.org/2000/svg" viewBox=(format!("0 0 {WIDTH} {height}"))
            role="img" aria-label="timeline" {
            @for f in &ticks {
                @let x = LEFT + f * (WIDTH - LEFT - 20.0);
                line.tick x1=(x) x2=(x) y1=(TOP - 6.0) y2=(height - 4.0) {}
                text.axis x=(x) y=(TOP - 10.0) text-anchor="middle" { (format!("{:.0} ms", f * l.span_ms)) }
            }
            @for (i, name) in l.lanes.iter().enumerate() {
                @let y = TOP + LANE * i as f64;
                rect.lane x="0" y=(y) width=(WIDTH) height=(LANE - 4.0) {}
                text.label x="8" y=(y + LANE / 2.0 + 2.0) { (name) }
            }
            @for m in &l.marks {
                @let y = TOP + LANE * m.lane as f64 + 6.0;
                rect class=(m.class) x=(m.x) y=(y) width=(m.width) height=(LANE - 16.0) rx="2" {
                    title { (m.title) }
                }
            }
        }
    }
}

/// One bar chart series value per minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Series {
    /// Committed plus rolled back.
    Throughput,
    /// Ended needing a person.
    Failures,
}

/// Bar heights (0..=1) of `series` over `minutes`, and the largest value.
pub fn bars(minutes: &[MinuteCount], series: Series) -> (Vec<f64>, i64) {
    let values: Vec<i64> = minutes
        .iter()
        .map(|m| match series {
            Series::Throughput => m.committed + m.rolled_back,
            Series::Failures => m.failed,
        })
        .collect();
    let max = values.iter().copied().max().unwrap_or(0);
    let heights = values.iter().map(|&v| if max == 0 { 0.0 } else { v as f64 / max as f64 }).collect();
    (heights, max)
}

/// A small bar chart of the last hour, one bar per minute.
pub fn chart(minutes: &[MinuteCount], series: Series, label: &str) -> Markup {
    let (heights, max) = bars(minutes, series);
    let (w, h) = (300.0, 80.0);
    let bar = w / heights.len().max(1) as f64;
    let class = match series {
        Series::Throughput => "bar-ok",
        Series::Failures => "bar-fail",
    };
    html! {
        figure.chart {
            svg xmlns="http://www.w3.org/2000/svg" viewBox=(format!("0 0 {w} {}", h + 2.0)) role="img" aria-label=(label) {
                line.base x1="0" x2=(w) y1=(h) y2=(h) {}
                @for (i, f) in heights.iter().enumerate() {
                    @if *f > 0.0 {
                        rect class=(class) x=(i as f64 * bar + 0.5) y=(h - f * h) width=(bar - 1.0) height=(f * h) {}
                    }
                }
            }
            figcaption { (label) " — last 60 min, peak " (max) "/min" }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(ms: i64, kind: EventKind, branch: Option<&str>, latency_us: Option<u64>) -> TimelineEvent {
        let t0 = DateTime::parse_from_rfc3339("2026-12-03T10:00:00Z").expect("time").with_timezone(&Utc);
        let mut e = TimelineEvent::new(t0 + chrono::Duration::milliseconds(ms), kind);
        e.branch_id = branch.map(str::to_owned);
        e.latency_us = latency_us;
        e
    }

    #[test]
    fn marks_go_to_their_lanes_in_time_order_and_attempts_are_as_wide_as_their_latency() {
        let mut done = ev(20, EventKind::Attempt, Some("b2"), Some(50_000));
        done.outcome = Some(AttemptOutcome::Done);
        let events = vec![
            ev(0, EventKind::Begun, None, None),
            ev(5, EventKind::Registered, Some("b1"), None),
            ev(10, EventKind::Decided, None, None),
            done,
            ev(100, EventKind::Finished, None, None),
        ];
        let l = layout(&events, &["b1".into(), "b2".into()]);
        assert_eq!(l.lanes, ["transaction", "branch b1", "branch b2"]);
        assert_eq!(l.marks.iter().map(|m| m.lane).collect::<Vec<_>>(), [0, 1, 0, 2, 0]);
        assert!(l.marks.windows(2).all(|w| w[0].x <= w[1].x));
        assert_eq!(l.span_ms, 100.0);
        let scale = (WIDTH - LEFT - 20.0) / 100.0;
        assert!((l.marks[3].width - 50.0 * scale).abs() < 1e-6);
        assert_eq!(l.marks[3].class, "m-done");
        assert!(l.marks[0].width >= 4.0, "points stay visible");
        assert!((l.marks[4].x - (WIDTH - 20.0)).abs() < 1e-6, "the last event ends the axis");
        assert!(l.marks[3].title.contains("in 50.0 ms"));
    }

    #[test]
    fn an_empty_or_instant_timeline_has_a_nonzero_span() {
        assert_eq!(layout(&[], &[]).span_ms, 1.0);
        let one = [ev(0, EventKind::Begun, None, None)];
        assert_eq!(layout(&one, &[]).span_ms, 1.0);
    }

    #[test]
    fn bars_scale_to_the_peak() {
        let m = |c, r, f| MinuteCount { minute: Utc::now(), committed: c, rolled_back: r, failed: f };
        let minutes = [m(2, 2, 0), m(8, 0, 1), m(0, 0, 0)];
        assert_eq!(bars(&minutes, Series::Throughput), (vec![0.5, 1.0, 0.0], 8));
        assert_eq!(bars(&minutes, Series::Failures), (vec![0.0, 1.0, 0.0], 1));
        assert_eq!(bars(&minutes[2..], Series::Failures), (vec![0.0], 0));
    }
}
