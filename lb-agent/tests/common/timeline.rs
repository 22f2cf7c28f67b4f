//! The lab's picture: an SVG timeline, one column per second — which server acknowledged
//! writes and which answered reads, which host held the write VIP (the VRRP master), and the
//! steps of the test plan as numbered bands with their names below. Plain SVG written by
//! hand: a few rectangles and labels need no plotting crate.

use std::{
    fmt::Write,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use super::sqlclient::Log;

/// What the picture shows, in seconds since `start`.
pub struct Timeline {
    pub start: Instant,
    pub end: Instant,
    /// (when, server id) of every acknowledged write.
    pub writes: Vec<(Instant, u32)>,
    /// (when, server id) of every answered read.
    pub reads: Vec<(Instant, u32)>,
    /// (when, which hosts held the write VIP: bit 0 db1, bit 1 db2), sampled.
    pub vip: Vec<(Instant, u8)>,
    /// (step, began, ended).
    pub steps: Vec<(String, Instant, Instant)>,
}

const COLUMN: usize = 6;
const LANE: usize = 18;
const LEFT: usize = 170;
const TOP: usize = 30;
pub const DB1: &str = "#1f77b4";
pub const DB2: &str = "#ff7f0e";
pub const BOTH: &str = "#d62728";
pub const REPLICA: &str = "#2ca02c";

/// The lanes, top to bottom: (label, what fills a second's cell).
fn lanes(t: &Timeline) -> Vec<(&'static str, Vec<Option<&'static str>>)> {
    let secs = seconds(t);
    let per_second = |events: &[(Instant, u32)], server: u32| {
        let mut cells = vec![None; secs];
        for (at, s) in events {
            if *s == server
                && let Some(c) = cells.get_mut(index(t, *at))
            {
                *c = Some(if server == 1 { DB1 } else { DB2 });
            }
        }
        cells
    };
    let mut vip = vec![None; secs];
    for (at, held) in &t.vip {
        if let Some(c) = vip.get_mut(index(t, *at)) {
            // Two holders in one second outrank one: a split is what the picture must show.
            let colour = match held {
                1 => Some(DB1),
                2 => Some(DB2),
                3 => Some(BOTH),
                _ => None,
            };
            if *c != Some(BOTH) && colour.is_some() {
                *c = colour;
            }
        }
    }
    let mut lanes = vec![
        ("writes acked by db1", per_second(&t.writes, 1)),
        ("writes acked by db2", per_second(&t.writes, 2)),
        ("reads answered by db1", per_second(&t.reads, 1)),
        ("reads answered by db2", per_second(&t.reads, 2)),
    ];
    // Replicas (server ids above 2), when the run has them.
    if t.reads.iter().any(|(_, s)| *s > 2) {
        let mut cells = vec![None; secs];
        for (at, s) in &t.reads {
            if *s > 2
                && let Some(c) = cells.get_mut(index(t, *at))
            {
                *c = Some(REPLICA);
            }
        }
        lanes.push(("reads answered by replicas", cells));
    }
    lanes.push(("write VIP (VRRP master)", vip));
    lanes
}

fn seconds(t: &Timeline) -> usize {
    t.end.saturating_duration_since(t.start).as_secs() as usize + 1
}

fn index(t: &Timeline, at: Instant) -> usize {
    at.saturating_duration_since(t.start).as_secs() as usize
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The SVG document.
pub fn render(t: &Timeline) -> String {
    let secs = seconds(t);
    let lanes = lanes(t);
    let plot_h = lanes.len() * LANE;
    let width = LEFT + secs * COLUMN + 20;
    let legend_top = TOP + plot_h + 40;
    let height = legend_top + (t.steps.len() + 2) * 14 + 10;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         font-family=\"sans-serif\" font-size=\"11\">"
    );
    let _ = writeln!(
        s,
        "<rect width=\"{width}\" height=\"{height}\" fill=\"white\"/>"
    );
    // The steps: alternating bands behind the lanes, numbered above them.
    for (i, (_, began, ended)) in t.steps.iter().enumerate() {
        let x0 = LEFT + index(t, *began) * COLUMN;
        let x1 = (LEFT + (index(t, *ended) + 1) * COLUMN).max(x0 + COLUMN);
        let fill = if i % 2 == 0 { "#f0f0f0" } else { "#e0e8f0" };
        let _ = writeln!(
            s,
            "<rect class=\"step\" x=\"{x0}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"{fill}\"/>",
            TOP - 14,
            x1 - x0,
            plot_h + 14
        );
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            (x0 + x1) / 2,
            TOP - 3,
            i + 1
        );
    }
    for (row, (label, cells)) in lanes.iter().enumerate() {
        let y = TOP + row * LANE;
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{label}</text>",
            LEFT - 6,
            y + LANE - 5
        );
        for (i, cell) in cells.iter().enumerate() {
            if let Some(colour) = cell {
                let _ = writeln!(
                    s,
                    "<rect class=\"cell\" x=\"{}\" y=\"{}\" width=\"{COLUMN}\" height=\"{}\" fill=\"{colour}\"/>",
                    LEFT + i * COLUMN,
                    y + 2,
                    LANE - 4
                );
            }
        }
    }
    // The time axis: a tick every 10 s.
    let axis_y = TOP + plot_h + 4;
    for sec in (0..secs).step_by(10) {
        let x = LEFT + sec * COLUMN;
        let _ = writeln!(
            s,
            "<line x1=\"{x}\" y1=\"{axis_y}\" x2=\"{x}\" y2=\"{}\" stroke=\"black\"/>\
             <text x=\"{x}\" y=\"{}\" text-anchor=\"middle\">{sec} s</text>",
            axis_y + 4,
            axis_y + 16
        );
    }
    // The legend: colours, then the steps by number.
    let _ = writeln!(
        s,
        "<text x=\"10\" y=\"{legend_top}\"><tspan fill=\"{DB1}\">■ db1</tspan>  \
         <tspan fill=\"{DB2}\">■ db2</tspan>  <tspan fill=\"{BOTH}\">■ both hosts held the \
         write VIP</tspan>  (one column per second)</text>"
    );
    for (i, (step, began, ended)) in t.steps.iter().enumerate() {
        let _ = writeln!(
            s,
            "<text x=\"10\" y=\"{}\">{}. {} ({:.0}–{:.0} s)</text>",
            legend_top + (i + 1) * 14,
            i + 1,
            escape(step),
            began.saturating_duration_since(t.start).as_secs_f64(),
            ended.saturating_duration_since(t.start).as_secs_f64()
        );
    }
    s.push_str("</svg>\n");
    s
}

/// Samples, every 250 ms until the log says stop (bounded: 20 minutes), which of the two
/// namespaces hold `vip` on eth0.
pub fn sample_vip(
    ns1: String,
    ns2: String,
    vip: &'static str,
    log: Arc<Log>,
) -> std::thread::JoinHandle<Vec<(Instant, u8)>> {
    std::thread::spawn(move || {
        let holds = |ns: &str| {
            std::process::Command::new("ip")
                .args(["-n", ns, "-o", "addr", "show", "dev", "eth0"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).contains(&format!("inet {vip}/")))
                .unwrap_or(false)
        };
        let mut samples = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20 * 60);
        while !log.stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            let held = u8::from(holds(&ns1)) | (u8::from(holds(&ns2)) << 1);
            samples.push((Instant::now(), held));
            std::thread::sleep(Duration::from_millis(250));
        }
        samples
    })
}
