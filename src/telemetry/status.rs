//! `sideline status`: what a person at the device needs to know, in a few lines, read from the
//! running process's metrics endpoint (the only view into a running loop), and the store's
//! backlog read from disk when the process is not there to ask.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::text::Sample;
use crate::store::{Priority, Store, StoreConfig};

/// One scrape, parsed.
pub struct Reading(pub Vec<Sample>);

impl Reading {
    /// The first sample named `name` whose labels include `labels`.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.all(name)
            .find(|s| labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
            .map(|s| s.value)
    }

    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.0.iter().filter(move |s| s.name == name)
    }

    fn label<'a>(&'a self, name: &'a str, label: &str) -> Option<&'a str> {
        self.all(name).next().and_then(|s| s.labels.get(label)).map(String::as_str)
    }
}

/// A loop that decided nothing for this long is reported as stalled.
const STALE: f64 = 5.0;

/// The summary; `before` is an earlier reading of the same process, for the current rate.
pub fn render(addr: SocketAddr, now: &Reading, before: Option<&Reading>) -> String {
    let mut s = String::new();
    let n = |name: &str| now.get(name, &[]).unwrap_or(0.0);
    let device = now.label("sideline_build_info", "device").unwrap_or("?");
    let version = now.label("sideline_build_info", "version").unwrap_or("?");
    let frames = n("sideline_frames_total");
    let uptime = n("sideline_uptime_seconds");
    let state = match now.get("sideline_last_decision_age_seconds", &[]) {
        None => "running, no frame decided yet".to_string(),
        Some(age) if age > STALE => format!("running, but no frame decided for {age:.1} s"),
        Some(_) => "running".to_string(),
    };
    let _ = writeln!(s, "sideline {version} on {device}: {state} (metrics at http://{addr}/metrics)");
    let rate_now = before.and_then(|b| {
        let dt = uptime - b.get("sideline_uptime_seconds", &[])?;
        let earlier = b.get("sideline_frames_total", &[])?;
        (dt > 0.0).then(|| (frames - earlier) / dt)
    });
    let _ = write!(s, "frames {frames:.0} in {uptime:.1} s");
    match rate_now {
        Some(r) => {
            let _ = write!(s, " ({r:.1} fps now, {:.1} on average)", frames / uptime.max(1e-9));
        }
        None => {
            let _ = write!(s, " ({:.1} fps on average)", frames / uptime.max(1e-9));
        }
    }
    let _ = writeln!(s, "; {:.0} dropped", n("sideline_dropped_frames_total"));
    let _ = writeln!(
        s,
        "deadline {:.1} ms: {:.0} missed; degradation level {:.0} ({:.0} changes)",
        n("sideline_deadline_seconds") * 1000.0,
        n("sideline_deadline_misses_total"),
        n("sideline_ladder_level"),
        n("sideline_ladder_changes_total")
    );
    let rules: Vec<String> = now
        .all("sideline_alerts_total")
        // Rules that never fired would only bury the ones that did.
        .filter(|a| a.labels.get("state").map(String::as_str) == Some("raised") && a.value > 0.0)
        .filter_map(|a| {
            let rule = a.labels.get("rule")?;
            let active = now.get("sideline_alerts_active", &[("rule", rule)]).unwrap_or(0.0);
            Some(format!("{rule} {:.0} ({active:.0} active)", a.value))
        })
        .collect();
    let _ = writeln!(s, "alerts raised: {}", if rules.is_empty() { "none".into() } else { rules.join(", ") });
    if now.get("sideline_store_readable", &[]) == Some(1.0) {
        let counts = Priority::ALL.map(|p| {
            format!(
                "{} {:.0}",
                p.name(),
                now.get("sideline_store_backlog", &[("class", p.name())]).unwrap_or(0.0)
            )
        });
        let _ = writeln!(
            s,
            "store backlog: {} ({:.1} kB)",
            counts.join(", "),
            n("sideline_store_backlog_bytes") / 1e3
        );
    } else {
        let _ = writeln!(s, "store backlog: the store could not be read");
    }
    let uplink = match (n("sideline_uplink_configured") > 0.0, n("sideline_uplink_connected") > 0.0) {
        (false, _) => "not configured (no [sync])".to_string(),
        (true, true) => format!("connected ({:.0} patterns sent)", n("sideline_uplink_patterns_acked_total")),
        (true, false) => {
            format!("NOT connected ({:.0} connections lost so far)", n("sideline_uplink_disconnects_total"))
        }
    };
    let _ = writeln!(s, "uplink: {uplink}");
    let _ = writeln!(s, "thermal: {}", thermal(now));
    s
}

fn thermal(now: &Reading) -> String {
    let mut parts = Vec::new();
    let hottest = now.all("sideline_thermal_zone_celsius").max_by(|a, b| a.value.total_cmp(&b.value));
    match hottest {
        Some(z) => {
            let name = z.labels.get("type").filter(|t| !t.is_empty()).or(z.labels.get("zone"));
            parts.push(format!("hottest zone {} at {:.1} °C", name.map_or("?", String::as_str), z.value));
        }
        None => parts.push("no thermal zones".into()),
    }
    let throttling: Vec<String> = now
        .all("sideline_cooling_state")
        .filter(|c| c.value > 0.0)
        .map(|c| {
            let kind = c.labels.get("type").map_or("?", String::as_str);
            let max = now.get(
                "sideline_cooling_max_state",
                &[("device", c.labels.get("device").map_or("", String::as_str))],
            );
            format!("{kind} at {:.0}/{:.0}", c.value, max.unwrap_or(0.0))
        })
        .collect();
    if !throttling.is_empty() {
        parts.push(format!("cooling {}", throttling.join(", ")));
    }
    // The lowest CPU cap, as a share of what the hardware can do.
    let capped = now
        .all("sideline_cpu_max_frequency_hertz")
        .filter_map(|c| {
            let hw = now.get("sideline_cpu_hw_max_frequency_hertz", &[("cpu", c.labels.get("cpu")?)])?;
            (hw > 0.0).then(|| c.value / hw)
        })
        .min_by(f64::total_cmp);
    if let Some(share) = capped.filter(|&s| s < 0.999) {
        parts.push(format!("CPU clock capped at {:.0}% of its maximum", share * 100.0));
    }
    if let Some(p) = now.all("sideline_power_mode").next() {
        let name = p.labels.get("name").filter(|n| !n.is_empty());
        parts.push(match name {
            Some(name) => format!("power mode {:.0} ({name})", p.value),
            None => format!("power mode {:.0}", p.value),
        });
    }
    parts.join("; ")
}

/// The backlog straight from the store, for when the process cannot be asked.
pub fn store_backlog(dir: &Path, cfg: StoreConfig) -> String {
    if !dir.join("patterns.db").is_file() {
        return format!("store backlog: no store at {} yet", dir.display());
    }
    match Store::open(dir, cfg).and_then(|st| st.backlog()) {
        Ok(b) => {
            let counts = Priority::ALL.map(|p| format!("{} {}", p.name(), b.count[p as usize]));
            format!(
                "store backlog (read from {}): {} ({:.1} kB)",
                dir.display(),
                counts.join(", "),
                b.bytes as f64 / 1e3
            )
        }
        Err(e) => format!("store backlog: {e}"),
    }
}

/// Reads the endpoint twice, `gap` apart, for a rate over the gap; the second reading is
/// optional (the process may have just ended).
pub fn read(addr: SocketAddr, gap: Duration) -> Result<(Reading, Option<Reading>), String> {
    let once = || -> Result<Reading, String> {
        let (code, body) =
            super::server::fetch(addr, "/metrics", Duration::from_secs(3)).map_err(|e| e.to_string())?;
        if code != 200 {
            return Err(format!("HTTP status {code}"));
        }
        super::text::parse(&body).map(Reading).map_err(|e| e.to_string())
    };
    let first = once()?;
    std::thread::sleep(gap);
    Ok((first, once().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(text: &str) -> Reading {
        Reading(super::super::text::parse(text).unwrap())
    }

    #[test]
    fn summarises_a_scrape() {
        let before = reading("sideline_frames_total 100\nsideline_uptime_seconds 10\n");
        let now = reading(
            r#"sideline_build_info{version="0.1.0",device="field-7"} 1
sideline_frames_total 120
sideline_uptime_seconds 12
sideline_last_decision_age_seconds 0.05
sideline_deadline_seconds 0.1
sideline_deadline_misses_total 3
sideline_ladder_level 1
sideline_alerts_total{rule="road",state="raised"} 4
sideline_alerts_total{rule="road",state="cleared"} 3
sideline_alerts_active{rule="road"} 1
sideline_alerts_total{rule="player-down",state="raised"} 0
sideline_store_readable 1
sideline_store_backlog{class="safety"} 7
sideline_uplink_configured 1
sideline_uplink_connected 0
sideline_uplink_disconnects_total 2
sideline_thermal_zone_celsius{zone="thermal_zone0",type="cpu-thermal"} 48.5
sideline_thermal_zone_celsius{zone="thermal_zone1",type="gpu-thermal"} 61.3
sideline_cooling_state{device="cooling_device0",type="gpu-cooling"} 2
sideline_cooling_max_state{device="cooling_device0",type="gpu-cooling"} 5
sideline_cpu_max_frequency_hertz{cpu="1"} 1113600000
sideline_cpu_hw_max_frequency_hertz{cpu="1"} 1510400000
sideline_power_mode{name="7W"} 1
"#,
        );
        let s = render("127.0.0.1:9464".parse().unwrap(), &now, Some(&before));
        for want in [
            "sideline 0.1.0 on field-7: running (metrics at http://127.0.0.1:9464/metrics)",
            "frames 120 in 12.0 s (10.0 fps now, 10.0 on average)",
            "deadline 100.0 ms: 3 missed; degradation level 1",
            "alerts raised: road 4 (1 active)\n",
            "store backlog: safety 7, event 0, telemetry 0",
            "uplink: NOT connected (2 connections lost so far)",
            "hottest zone gpu-thermal at 61.3 °C; cooling gpu-cooling at 2/5; CPU clock capped at 74% of its maximum; power mode 1 (7W)",
        ] {
            assert!(s.contains(want), "missing `{want}` in\n{s}");
        }
        let stalled = reading("sideline_last_decision_age_seconds 9\n");
        assert!(render("127.0.0.1:1".parse().unwrap(), &stalled, None).contains("no frame decided for 9.0 s"));
    }
}
