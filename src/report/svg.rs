//! A small hand-written SVG plotting kit for the run report: line chart, grouped bar chart,
//! heatmap. Each function returns one self-contained `<svg>` element (no scripts, no external
//! fonts), with the given `id` and class `plot`, so the page needs no network and a test can
//! count the plots.

use std::fmt::Write;

/// Colours of the series, in order (colour-blind-safe Okabe-Ito palette).
pub const PALETTE: [&str; 8] = [
    "#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000",
];

const W: f64 = 560.0;
const H: f64 = 300.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 150.0;
const TOP: f64 = 34.0;
const BOTTOM: f64 = 46.0;
/// Category labels longer than this are cut (the full name is in the bar's tooltip).
const LABEL_CHARS: usize = 40;

/// Text escaped for XML/HTML content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// One named series of `(x, y)` points; non-finite points are left out.
#[derive(Clone, Debug)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// "Nice" tick values covering `[lo, hi]` (about `n` of them).
fn ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    let span = (hi - lo).abs().max(1e-12);
    let raw = span / n.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let start = (lo / step).ceil() * step;
    let mut out = Vec::new();
    let mut v = start;
    while v <= hi + step * 1e-9 && out.len() < 50 {
        out.push(if v.abs() < step * 1e-9 { 0.0 } else { v });
        v += step;
    }
    out
}

fn fmt_tick(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 1e4 || v.abs() < 1e-3 {
        format!("{v:.1e}")
    } else {
        let s = format!("{v:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

fn open(out: &mut String, id: &str, title: &str, w: f64, h: f64) {
    let _ = write!(
        out,
        r#"<svg id="{id}" class="plot" xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" aria-label="{t}"><title>{t}</title><text x="{cx}" y="20" text-anchor="middle" font-size="14" font-weight="bold">{t}</text>"#,
        id = escape(id),
        t = escape(title),
        cx = w / 2.0,
    );
}

fn legend(out: &mut String, names: &[String], x: f64, y: f64) {
    for (i, name) in names.iter().enumerate() {
        let yy = y + 18.0 * i as f64;
        let _ = write!(
            out,
            r#"<rect x="{x}" y="{ry}" width="12" height="12" fill="{c}"/><text x="{tx}" y="{ty}" font-size="12">{n}</text>"#,
            ry = yy,
            c = PALETTE[i % PALETTE.len()],
            tx = x + 16.0,
            ty = yy + 10.0,
            n = escape(name),
        );
    }
}

/// Axes with y ticks over `[y0, y1]`; returns the y -> pixel mapping's parameters.
fn y_axis(out: &mut String, y0: f64, y1: f64, y_label: &str, plot_w: f64) {
    let ph = H - TOP - BOTTOM;
    for t in ticks(y0, y1, 5) {
        let py = TOP + ph - (t - y0) / (y1 - y0) * ph;
        let _ = write!(
            out,
            r##"<line x1="{LEFT}" x2="{x2}" y1="{py:.1}" y2="{py:.1}" stroke="#ddd"/><text x="{tx}" y="{ty:.1}" font-size="11" text-anchor="end">{l}</text>"##,
            x2 = LEFT + plot_w,
            tx = LEFT - 6.0,
            ty = py + 4.0,
            l = fmt_tick(t),
        );
    }
    let _ = write!(
        out,
        r##"<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{yb}" stroke="#333"/><line x1="{LEFT}" x2="{x2}" y1="{yb}" y2="{yb}" stroke="#333"/><text transform="translate(14,{my}) rotate(-90)" font-size="12" text-anchor="middle">{yl}</text>"##,
        yb = TOP + ph,
        x2 = LEFT + plot_w,
        my = TOP + ph / 2.0,
        yl = escape(y_label),
    );
}

fn y_range(values: impl Iterator<Item = f64>, fixed: Option<(f64, f64)>) -> (f64, f64) {
    if let Some(r) = fixed {
        return r;
    }
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let lo = lo.min(0.0);
    if hi <= lo {
        hi = lo + 1.0;
    }
    (lo, hi * 1.05)
}

/// A line chart with markers, one line per series, a legend on the right. `y_fixed` pins the
/// y range (e.g. `(0, 100)` for accuracies).
pub fn line_chart(
    id: &str,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    y_fixed: Option<(f64, f64)>,
) -> String {
    let mut out = String::new();
    open(&mut out, id, title, W, H);
    let pts = || {
        series
            .iter()
            .flat_map(|s| s.points.iter())
            .filter(|(x, y)| x.is_finite() && y.is_finite())
    };
    let (x0, x1) = {
        let (lo, hi) = pts().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), (x, _)| {
            (lo.min(*x), hi.max(*x))
        });
        if lo.is_finite() && hi > lo {
            (lo, hi)
        } else if lo.is_finite() {
            (lo - 1.0, lo + 1.0)
        } else {
            (0.0, 1.0)
        }
    };
    let (y0, y1) = y_range(pts().map(|(_, y)| *y), y_fixed);
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    y_axis(&mut out, y0, y1, y_label, pw);
    let px = |x: f64| LEFT + (x - x0) / (x1 - x0) * pw;
    let py = |y: f64| TOP + ph - (y - y0) / (y1 - y0) * ph;
    // Epochs are whole numbers: whole ticks only.
    let integer_x = pts().all(|(x, _)| x.fract() == 0.0);
    let x_ticks = if integer_x {
        let step = ((x1 - x0) / 6.0).ceil().max(1.0);
        let mut v = Vec::new();
        let mut t = x0.ceil();
        while t <= x1 {
            v.push(t);
            t += step;
        }
        v
    } else {
        ticks(x0, x1, 6)
    };
    for t in x_ticks {
        let _ = write!(
            out,
            r#"<text x="{x:.1}" y="{y}" font-size="11" text-anchor="middle">{l}</text>"#,
            x = px(t),
            y = TOP + ph + 16.0,
            l = fmt_tick(t),
        );
    }
    let _ = write!(
        out,
        r#"<text x="{x}" y="{y}" font-size="12" text-anchor="middle">{l}</text>"#,
        x = LEFT + pw / 2.0,
        y = H - 8.0,
        l = escape(x_label),
    );
    for (i, s) in series.iter().enumerate() {
        let c = PALETTE[i % PALETTE.len()];
        let p: Vec<(f64, f64)> = s
            .points
            .iter()
            .copied()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect();
        let path: Vec<String> = p
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let _ = write!(
            out,
            r#"<polyline class="series" fill="none" stroke="{c}" stroke-width="2" points="{}"/>"#,
            path.join(" ")
        );
        for &(x, y) in &p {
            let _ = write!(
                out,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{c}"><title>{}: ({}, {})</title></circle>"#,
                px(x),
                py(y),
                escape(&s.name),
                fmt_tick(x),
                fmt_tick(y)
            );
        }
    }
    let names: Vec<String> = series.iter().map(|s| s.name.clone()).collect();
    legend(&mut out, &names, W - RIGHT + 14.0, TOP);
    out.push_str("</svg>");
    out
}

/// A grouped bar chart: one group of bars per category, one bar per named group of values
/// (`None` = no bar). Wide charts grow horizontally with the number of categories.
pub fn bar_chart(
    id: &str,
    title: &str,
    categories: &[String],
    groups: &[(String, Vec<Option<f64>>)],
    y_label: &str,
    y_fixed: Option<(f64, f64)>,
) -> String {
    let n = categories.len().max(1);
    let k = groups.len().max(1);
    let slot = (W - LEFT - RIGHT) / n as f64;
    let min_slot = 8.0 * k as f64 + 6.0;
    let pw = if slot < min_slot {
        min_slot * n as f64
    } else {
        W - LEFT - RIGHT
    };
    let slot = pw / n as f64;
    let rotate = categories
        .iter()
        .map(|c| c.chars().count())
        .max()
        .unwrap_or(0) as f64
        * 6.5
        > slot
        || n > 12;
    let bottom = if rotate {
        let longest = categories
            .iter()
            .map(|c| c.chars().count().min(LABEL_CHARS))
            .max()
            .unwrap_or(0);
        BOTTOM + 5.0 * longest as f64
    } else {
        BOTTOM
    };
    // Rotated labels reach left of their bar; make room for the first one.
    let longest_px = categories
        .iter()
        .map(|c| c.chars().count().min(LABEL_CHARS))
        .max()
        .unwrap_or(0) as f64
        * 5.5;
    let left = if rotate {
        LEFT.max(longest_px * 0.6 - slot / 2.0 + 10.0)
    } else {
        LEFT
    };
    let w = left + pw + RIGHT;
    let h = H - BOTTOM + bottom;
    let mut out = String::new();
    open(&mut out, id, title, w, h);
    let (y0, y1) = y_range(
        groups.iter().flat_map(|(_, v)| v.iter().flatten().copied()),
        y_fixed,
    );
    let ph = H - TOP - BOTTOM;
    // y_axis draws with the default width; redo it with this chart's.
    {
        for t in ticks(y0, y1, 5) {
            let py = TOP + ph - (t - y0) / (y1 - y0) * ph;
            let _ = write!(
                out,
                r##"<line x1="{left}" x2="{x2}" y1="{py:.1}" y2="{py:.1}" stroke="#ddd"/><text x="{tx}" y="{ty:.1}" font-size="11" text-anchor="end">{l}</text>"##,
                x2 = left + pw,
                tx = left - 6.0,
                ty = py + 4.0,
                l = fmt_tick(t),
            );
        }
        let _ = write!(
            out,
            r##"<line x1="{left}" x2="{left}" y1="{TOP}" y2="{yb}" stroke="#333"/><line x1="{left}" x2="{x2}" y1="{yb}" y2="{yb}" stroke="#333"/><text transform="translate(14,{my}) rotate(-90)" font-size="12" text-anchor="middle">{yl}</text>"##,
            yb = TOP + ph,
            x2 = left + pw,
            my = TOP + ph / 2.0,
            yl = escape(y_label),
        );
    }
    let py = |y: f64| TOP + ph - (y.clamp(y0, y1) - y0) / (y1 - y0) * ph;
    let bar_w = (slot - 6.0) / k as f64;
    for (ci, cat) in categories.iter().enumerate() {
        let x_slot = left + slot * ci as f64 + 3.0;
        for (gi, (gname, vals)) in groups.iter().enumerate() {
            let Some(v) = vals.get(ci).copied().flatten().filter(|v| v.is_finite()) else {
                continue;
            };
            let (ya, yb) = (py(v), py(0f64.max(y0)));
            let _ = write!(
                out,
                r#"<rect class="bar" x="{x:.1}" y="{y:.1}" width="{bw:.1}" height="{hh:.1}" fill="{c}"><title>{cat} / {g}: {v}</title></rect>"#,
                x = x_slot + bar_w * gi as f64,
                y = ya.min(yb),
                bw = (bar_w - 1.0).max(1.0),
                hh = (yb - ya).abs(),
                c = PALETTE[gi % PALETTE.len()],
                cat = escape(cat),
                g = escape(gname),
                v = fmt_tick(v),
            );
        }
        let label: String = cat.chars().take(LABEL_CHARS).collect();
        let cx = left + slot * (ci as f64 + 0.5);
        let ly = TOP + ph + 14.0;
        if rotate {
            let _ = write!(
                out,
                r#"<text transform="translate({cx:.1},{ly:.1}) rotate(-55)" font-size="10" text-anchor="end">{l}</text>"#,
                l = escape(&label),
            );
        } else {
            let _ = write!(
                out,
                r#"<text x="{cx:.1}" y="{ly:.1}" font-size="11" text-anchor="middle">{l}</text>"#,
                l = escape(&label),
            );
        }
    }
    let names: Vec<String> = groups.iter().map(|(n, _)| n.clone()).collect();
    legend(&mut out, &names, left + pw + 14.0, TOP);
    out.push_str("</svg>");
    out
}

/// A heatmap of `values[row][col]` (e.g. a confusion matrix: rows = true class, columns =
/// predicted), colour by row-normalised value, the raw number written in each cell when the
/// matrix is small enough to read.
pub fn heatmap(
    id: &str,
    title: &str,
    row_labels: &[String],
    col_labels: &[String],
    values: &[Vec<f64>],
    x_label: &str,
    y_label: &str,
) -> String {
    let (r, c) = (row_labels.len().max(1), col_labels.len().max(1));
    let cell = (420.0 / r.max(c) as f64).clamp(4.0, 40.0);
    let show_labels = cell >= 9.0;
    let label_room = if show_labels {
        let longest = row_labels
            .iter()
            .chain(col_labels)
            .map(|s| s.chars().count().min(24))
            .max()
            .unwrap_or(0);
        10.0 + 6.0 * longest as f64
    } else {
        20.0
    };
    let left = label_room + 24.0;
    let top = TOP + 10.0;
    let w = left + cell * c as f64 + 30.0;
    let h = top + cell * r as f64 + label_room + 24.0;
    let mut out = String::new();
    let w = w.max(40.0 + 8.0 * title.chars().count() as f64);
    open(&mut out, id, title, w, h);
    for (i, row) in values.iter().enumerate() {
        let total: f64 = row.iter().sum();
        for (j, &v) in row.iter().enumerate() {
            let share = if total > 0.0 { v / total } else { 0.0 };
            // white -> deep blue
            let lerp = |a: f64, b: f64| (a + (b - a) * share).round() as u8;
            let fill = format!(
                "#{:02x}{:02x}{:02x}",
                lerp(255.0, 8.0),
                lerp(255.0, 48.0),
                lerp(255.0, 107.0)
            );
            let (x, y) = (left + cell * j as f64, top + cell * i as f64);
            let _ = write!(
                out,
                r##"<rect class="cell" x="{x:.1}" y="{y:.1}" width="{cell:.1}" height="{cell:.1}" fill="{fill}" stroke="#eee"><title>{t} -> {p}: {v}</title></rect>"##,
                t = escape(row_labels.get(i).map_or("", |s| s.as_str())),
                p = escape(col_labels.get(j).map_or("", |s| s.as_str())),
                v = fmt_tick(v),
            );
            if cell >= 22.0 && v > 0.0 {
                let _ = write!(
                    out,
                    r#"<text x="{tx:.1}" y="{ty:.1}" font-size="10" text-anchor="middle" fill="{tc}">{v}</text>"#,
                    tx = x + cell / 2.0,
                    ty = y + cell / 2.0 + 3.5,
                    tc = if share > 0.5 { "#fff" } else { "#000" },
                    v = fmt_tick(v),
                );
            }
        }
    }
    if show_labels {
        for (i, l) in row_labels.iter().enumerate() {
            let s: String = l.chars().take(24).collect();
            let _ = write!(
                out,
                r#"<text x="{x:.1}" y="{y:.1}" font-size="10" text-anchor="end">{s}</text>"#,
                x = left - 4.0,
                y = top + cell * (i as f64 + 0.5) + 3.5,
                s = escape(&s),
            );
        }
        for (j, l) in col_labels.iter().enumerate() {
            let s: String = l.chars().take(24).collect();
            let _ = write!(
                out,
                r#"<text transform="translate({x:.1},{y:.1}) rotate(-55)" font-size="10" text-anchor="end">{s}</text>"#,
                x = left + cell * (j as f64 + 0.5),
                y = top + cell * r as f64 + 10.0,
                s = escape(&s),
            );
        }
    }
    let _ = write!(
        out,
        r#"<text x="{x:.1}" y="{y:.1}" font-size="12" text-anchor="middle">{xl}</text><text transform="translate(12,{my:.1}) rotate(-90)" font-size="12" text-anchor="middle">{yl}</text>"#,
        x = left + cell * c as f64 / 2.0,
        y = h - 6.0,
        xl = escape(x_label),
        my = top + cell * r as f64 / 2.0,
        yl = escape(y_label),
    );
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(
            ticks(0.0, 100.0, 5),
            vec![0.0, 20.0, 40.0, 60.0, 80.0, 100.0]
        );
        let t = ticks(0.013, 2.47, 5);
        assert!(t.first().unwrap() >= &0.013 && t.last().unwrap() <= &2.47);
        assert!(t.len() >= 3);
    }

    #[test]
    fn charts_are_single_escaped_svg_elements() {
        let s = line_chart(
            "l",
            "loss <a&b>",
            "epoch",
            "loss",
            &[Series {
                name: "m1".into(),
                points: vec![(1.0, 2.0), (2.0, f64::NAN), (3.0, 0.5)],
            }],
            None,
        );
        assert!(s.starts_with("<svg id=\"l\"") && s.ends_with("</svg>"));
        assert!(s.contains("loss &lt;a&amp;b&gt;") && !s.contains("<a&b>"));
        assert_eq!(s.matches("<circle").count(), 2);
        let b = bar_chart(
            "b",
            "sizes",
            &["x".into(), "y".into()],
            &[("n".into(), vec![Some(3.0), None])],
            "images",
            None,
        );
        assert_eq!(b.matches("class=\"bar\"").count(), 1);
        let h = heatmap(
            "h",
            "cm",
            &["a".into(), "b".into()],
            &["a".into(), "b".into()],
            &[vec![3.0, 1.0], vec![0.0, 4.0]],
            "predicted",
            "true",
        );
        assert_eq!(h.matches("class=\"cell\"").count(), 4);
    }
}
