//! Temperatures, throttling and power mode, read from sysfs at scrape time, so deadline misses
//! can be laid next to a hot or throttled board.
//!
//! On a Jetson: thermal zones (`/sys/class/thermal/thermal_zone*/{type,temp}`), cooling devices
//! (fan, cpufreq and GPU cooling states: a non-zero state is throttling in progress), CPU
//! frequencies now, allowed (`scaling_max_freq`, lowered by thermal capping) and possible
//! (`cpuinfo_max_freq`), devfreq devices (the GPU) and the nvpmodel power mode. Any of these
//! may be missing (a PC, a VM); what is missing is simply not reported. Every path is under a
//! root directory so tests can point it at a fake tree.

use std::path::{Path, PathBuf};

use super::text::Writer;

/// Where the real files are; `SIDELINE_FS_ROOT` moves it (for tests of the whole binary).
pub fn root_from_env() -> PathBuf {
    std::env::var_os("SIDELINE_FS_ROOT").map_or_else(|| PathBuf::from("/"), PathBuf::from)
}

#[derive(Clone, Debug, PartialEq)]
pub struct Zone {
    /// Directory name, e.g. `thermal_zone0`.
    pub zone: String,
    /// What it measures, e.g. `CPU-therm`.
    pub kind: String,
    pub celsius: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Cooling {
    pub device: String,
    pub kind: String,
    pub state: u64,
    pub max_state: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct CpuFreq {
    pub cpu: u32,
    pub hz: u64,
    /// Allowed now (policy maximum; thermal capping and power modes lower it).
    pub max_hz: Option<u64>,
    /// What the hardware can do.
    pub hw_max_hz: Option<u64>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct DevFreq {
    pub device: String,
    pub hz: u64,
    pub max_hz: Option<u64>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PowerMode {
    pub id: u32,
    /// From `/etc/nvpmodel.conf`, e.g. `15W`.
    pub name: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Thermal {
    pub zones: Vec<Zone>,
    pub cooling: Vec<Cooling>,
    pub cpus: Vec<CpuFreq>,
    pub devfreq: Vec<DevFreq>,
    pub power_mode: Option<PowerMode>,
}

fn read_trimmed(p: &Path) -> Option<String> {
    std::fs::read_to_string(p).ok().map(|s| s.trim().to_string())
}

fn read_u64(p: &Path) -> Option<u64> {
    read_trimmed(p)?.parse().ok()
}

/// Entries of `dir` whose names start with `prefix`, sorted by name (numbers in order).
fn entries(dir: &Path, prefix: &str) -> Vec<(String, PathBuf)> {
    let Ok(rd) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut v: Vec<(String, PathBuf)> = rd
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.starts_with(prefix).then(|| (name, e.path()))
        })
        .collect();
    // `thermal_zone10` after `thermal_zone9`.
    v.sort_by_key(|(name, _)| {
        let digits = name.trim_start_matches(|c: char| !c.is_ascii_digit());
        (digits.parse::<u64>().unwrap_or(u64::MAX), name.clone())
    });
    v
}

impl Thermal {
    pub fn read(root: &Path) -> Self {
        let thermal = root.join("sys/class/thermal");
        let zones = entries(&thermal, "thermal_zone")
            .into_iter()
            .filter_map(|(zone, dir)| {
                // A zone whose sensor is off reads as an error (EINVAL, ENODATA): not reported.
                let milli: i64 = read_trimmed(&dir.join("temp"))?.parse().ok()?;
                let kind = read_trimmed(&dir.join("type")).unwrap_or_default();
                Some(Zone { zone, kind, celsius: milli as f64 / 1000.0 })
            })
            .collect();
        let cooling = entries(&thermal, "cooling_device")
            .into_iter()
            .filter_map(|(device, dir)| {
                Some(Cooling {
                    kind: read_trimmed(&dir.join("type")).unwrap_or_default(),
                    state: read_u64(&dir.join("cur_state"))?,
                    max_state: read_u64(&dir.join("max_state"))?,
                    device,
                })
            })
            .collect();
        let cpus = entries(&root.join("sys/devices/system/cpu"), "cpu")
            .into_iter()
            .filter_map(|(name, dir)| {
                let cpu = name.strip_prefix("cpu")?.parse().ok()?;
                let f = dir.join("cpufreq");
                // cpufreq speaks kHz.
                let khz = |file: &str| read_u64(&f.join(file)).map(|v| v * 1000);
                Some(CpuFreq {
                    cpu,
                    hz: khz("scaling_cur_freq")?,
                    max_hz: khz("scaling_max_freq"),
                    hw_max_hz: khz("cpuinfo_max_freq"),
                })
            })
            .collect();
        let devfreq = entries(&root.join("sys/class/devfreq"), "")
            .into_iter()
            .filter_map(|(device, dir)| {
                Some(DevFreq {
                    hz: read_u64(&dir.join("cur_freq"))?,
                    max_hz: read_u64(&dir.join("max_freq")),
                    device,
                })
            })
            .collect();
        let power_mode = read_trimmed(&root.join("var/lib/nvpmodel/status")).and_then(|s| {
            let id = parse_pmode(&s)?;
            let name = read_trimmed(&root.join("etc/nvpmodel.conf")).and_then(|c| mode_name(&c, id));
            Some(PowerMode { id, name })
        });
        Thermal { zones, cooling, cpus, devfreq, power_mode }
    }

    pub fn hottest(&self) -> Option<&Zone> {
        self.zones.iter().max_by(|a, b| a.celsius.total_cmp(&b.celsius))
    }

    pub fn render(&self, w: &mut Writer) {
        if !self.zones.is_empty() {
            w.family("sideline_thermal_zone_celsius", "gauge", "Temperature of each thermal zone.");
            for z in &self.zones {
                w.sample("sideline_thermal_zone_celsius", &[("zone", &z.zone), ("type", &z.kind)], z.celsius);
            }
        }
        if !self.cooling.is_empty() {
            w.family(
                "sideline_cooling_state",
                "gauge",
                "Cooling device state (fan speed step, or throttling step of a CPU/GPU cooling device; 0 = not throttling).",
            );
            for c in &self.cooling {
                w.sample(
                    "sideline_cooling_state",
                    &[("device", &c.device), ("type", &c.kind)],
                    c.state as f64,
                );
            }
            w.family("sideline_cooling_max_state", "gauge", "Highest state of each cooling device.");
            for c in &self.cooling {
                let labels = [("device", c.device.as_str()), ("type", c.kind.as_str())];
                w.sample("sideline_cooling_max_state", &labels, c.max_state as f64);
            }
        }
        let cpu_labels: Vec<String> = self.cpus.iter().map(|c| c.cpu.to_string()).collect();
        let cpus = || self.cpus.iter().zip(&cpu_labels);
        if !self.cpus.is_empty() {
            w.family("sideline_cpu_frequency_hertz", "gauge", "Current CPU clock.");
            for (c, l) in cpus() {
                w.sample("sideline_cpu_frequency_hertz", &[("cpu", l)], c.hz as f64);
            }
        }
        if self.cpus.iter().any(|c| c.max_hz.is_some()) {
            w.family(
                "sideline_cpu_max_frequency_hertz",
                "gauge",
                "Highest CPU clock allowed now (scaling_max_freq: lowered by thermal capping and power modes).",
            );
            for (c, l) in cpus() {
                if let Some(v) = c.max_hz {
                    w.sample("sideline_cpu_max_frequency_hertz", &[("cpu", l)], v as f64);
                }
            }
        }
        if self.cpus.iter().any(|c| c.hw_max_hz.is_some()) {
            w.family("sideline_cpu_hw_max_frequency_hertz", "gauge", "Highest CPU clock of the hardware.");
            for (c, l) in cpus() {
                if let Some(v) = c.hw_max_hz {
                    w.sample("sideline_cpu_hw_max_frequency_hertz", &[("cpu", l)], v as f64);
                }
            }
        }
        if !self.devfreq.is_empty() {
            w.family(
                "sideline_devfreq_frequency_hertz",
                "gauge",
                "Current clock of each devfreq device (the Jetson's GPU among them).",
            );
            for d in &self.devfreq {
                w.sample("sideline_devfreq_frequency_hertz", &[("device", &d.device)], d.hz as f64);
            }
            w.family(
                "sideline_devfreq_max_frequency_hertz",
                "gauge",
                "Highest clock allowed of each devfreq device.",
            );
            for d in &self.devfreq {
                if let Some(v) = d.max_hz {
                    w.sample("sideline_devfreq_max_frequency_hertz", &[("device", &d.device)], v as f64);
                }
            }
        }
        if let Some(p) = &self.power_mode {
            w.family(
                "sideline_power_mode",
                "gauge",
                "nvpmodel power mode id (the name is a label when known).",
            );
            let name = p.name.as_deref().unwrap_or("");
            w.sample("sideline_power_mode", &[("name", name)], p.id as f64);
        }
    }
}

/// `pmode:0001 fmode:quiet` -> 1.
fn parse_pmode(status: &str) -> Option<u32> {
    status.split_whitespace().find_map(|f| f.strip_prefix("pmode:")).and_then(|v| v.parse().ok())
}

/// The name of mode `id` in nvpmodel.conf: `< POWER_MODEL ID=1 NAME=15W >`.
fn mode_name(conf: &str, id: u32) -> Option<String> {
    conf.lines().filter(|l| l.contains("POWER_MODEL")).find_map(|l| {
        let field = |key: &str| {
            l.split(|c: char| c.is_whitespace() || c == '<' || c == '>')
                .find_map(|f| f.strip_prefix(key))
                .map(str::to_string)
        };
        (field("ID=")?.parse::<u32>().ok()? == id).then(|| field("NAME=")).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    /// A fake Orin Nano: two zones (one with its sensor off), a throttling GPU cooling device,
    /// two CPUs (one capped), the GPU's devfreq node and power mode 1.
    fn fake_jetson(root: &Path) {
        put(root, "sys/class/thermal/thermal_zone0/type", "cpu-thermal\n");
        put(root, "sys/class/thermal/thermal_zone0/temp", "48500\n");
        put(root, "sys/class/thermal/thermal_zone1/type", "gpu-thermal\n");
        put(root, "sys/class/thermal/thermal_zone1/temp", "61250\n");
        put(root, "sys/class/thermal/thermal_zone10/type", "tj-thermal\n");
        put(root, "sys/class/thermal/thermal_zone10/temp", "");
        put(root, "sys/class/thermal/cooling_device0/type", "gpu-cooling\n");
        put(root, "sys/class/thermal/cooling_device0/cur_state", "2\n");
        put(root, "sys/class/thermal/cooling_device0/max_state", "5\n");
        for (cpu, cur, max) in [(0, 1_510_400, 1_510_400), (1, 729_600, 1_113_600)] {
            let d = format!("sys/devices/system/cpu/cpu{cpu}/cpufreq");
            put(root, &format!("{d}/scaling_cur_freq"), &format!("{cur}\n"));
            put(root, &format!("{d}/scaling_max_freq"), &format!("{max}\n"));
            put(root, &format!("{d}/cpuinfo_max_freq"), "1510400\n");
        }
        // Not a CPU: ignored.
        put(root, "sys/devices/system/cpu/cpufreq/boost", "0\n");
        put(root, "sys/class/devfreq/17000000.ga10b/cur_freq", "306000000\n");
        put(root, "sys/class/devfreq/17000000.ga10b/max_freq", "624750000\n");
        put(root, "var/lib/nvpmodel/status", "pmode:0001 fmode:quiet\n");
        put(
            root,
            "etc/nvpmodel.conf",
            "< POWER_MODEL ID=0 NAME=15W >\nCPU_ONLINE CORE_0 1\n< POWER_MODEL ID=1 NAME=7W >\n",
        );
    }

    #[test]
    fn reads_a_fake_jetson_tree() {
        let dir = tempfile::tempdir().unwrap();
        fake_jetson(dir.path());
        let t = Thermal::read(dir.path());
        assert_eq!(
            t.zones,
            vec![
                Zone { zone: "thermal_zone0".into(), kind: "cpu-thermal".into(), celsius: 48.5 },
                Zone { zone: "thermal_zone1".into(), kind: "gpu-thermal".into(), celsius: 61.25 },
            ],
            "the zone with its sensor off is left out"
        );
        assert_eq!(t.hottest().unwrap().kind, "gpu-thermal");
        assert_eq!(
            t.cooling,
            vec![Cooling {
                device: "cooling_device0".into(),
                kind: "gpu-cooling".into(),
                state: 2,
                max_state: 5
            }]
        );
        assert_eq!(t.cpus.len(), 2);
        assert_eq!(
            t.cpus[1],
            CpuFreq { cpu: 1, hz: 729_600_000, max_hz: Some(1_113_600_000), hw_max_hz: Some(1_510_400_000) }
        );
        assert_eq!(
            t.devfreq,
            vec![DevFreq { device: "17000000.ga10b".into(), hz: 306_000_000, max_hz: Some(624_750_000) }]
        );
        assert_eq!(t.power_mode, Some(PowerMode { id: 1, name: Some("7W".into()) }));

        let mut w = Writer::new();
        t.render(&mut w);
        let samples = super::super::text::parse(&w.finish()).unwrap();
        let find = |name: &str, k: &str, v: &str| {
            samples
                .iter()
                .find(|s| s.name == name && s.labels.get(k).map(String::as_str) == Some(v))
                .map(|s| s.value)
        };
        assert_eq!(find("sideline_thermal_zone_celsius", "type", "gpu-thermal"), Some(61.25));
        assert_eq!(find("sideline_cooling_state", "type", "gpu-cooling"), Some(2.0));
        assert_eq!(find("sideline_cpu_max_frequency_hertz", "cpu", "1"), Some(1_113_600_000.0));
        assert_eq!(find("sideline_devfreq_frequency_hertz", "device", "17000000.ga10b"), Some(306_000_000.0));
        assert_eq!(find("sideline_power_mode", "name", "7W"), Some(1.0));
    }

    #[test]
    fn nothing_there_reports_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let t = Thermal::read(dir.path());
        assert_eq!(t, Thermal::default());
        let mut w = Writer::new();
        t.render(&mut w);
        assert_eq!(w.finish(), "");
    }

    #[test]
    fn power_mode_without_a_conf_has_no_name() {
        let dir = tempfile::tempdir().unwrap();
        put(dir.path(), "var/lib/nvpmodel/status", "pmode:0002 fmode:cool\n");
        assert_eq!(Thermal::read(dir.path()).power_mode, Some(PowerMode { id: 2, name: None }));
        put(dir.path(), "var/lib/nvpmodel/status", "garbage\n");
        assert_eq!(Thermal::read(dir.path()).power_mode, None);
    }
}
