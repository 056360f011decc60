//! Memory of a process, counted honestly. RSS counts a memory-mapped model file in full in every process
//! that maps it; PSS divides shared pages among the processes sharing them, so the sum of PSS over a pool
//! counts the weights once; USS is what a process alone holds (what killing it would free).

use crate::proto;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProcessMemory {
    pub rss_bytes: u64,
    pub pss_bytes: u64,
    pub uss_bytes: u64,
}

impl ProcessMemory {
    /// Reads the memory of process `pid`; `None` if it is gone or cannot be read.
    pub fn of_pid(pid: u32) -> Option<Self> {
        #[cfg(target_os = "linux")]
        {
            let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
            Some(Self::parse_smaps_rollup(&rollup))
        }
        #[cfg(not(target_os = "linux"))]
        {
            // Without smaps, the resident size is the best figure: PSS and USS fall back to it.
            let mut system = sysinfo::System::new();
            let pid = sysinfo::Pid::from_u32(pid);
            system.refresh_processes(sysinfo::ProcessesToUpdate::Some(&[pid]), true);
            let rss = system.process(pid)?.memory();
            Some(Self { rss_bytes: rss, pss_bytes: rss, uss_bytes: rss })
        }
    }

    /// The memory of the calling process.
    pub fn of_self() -> Self {
        Self::of_pid(std::process::id()).unwrap_or_default()
    }

    /// Parses `/proc/PID/smaps_rollup` (values in kB).
    pub fn parse_smaps_rollup(text: &str) -> Self {
        let mut memory = Self::default();
        for line in text.lines() {
            let Some((key, rest)) = line.split_once(':') else { continue };
            let Some(kb) = rest.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()) else { continue };
            let bytes = kb * 1024;
            match key {
                "Rss" => memory.rss_bytes = bytes,
                "Pss" => memory.pss_bytes = bytes,
                "Private_Clean" | "Private_Dirty" => memory.uss_bytes += bytes,
                _ => {}
            }
        }
        memory
    }
}

impl From<ProcessMemory> for proto::MemoryUsage {
    fn from(m: ProcessMemory) -> Self {
        proto::MemoryUsage { rss_bytes: m.rss_bytes, pss_bytes: m.pss_bytes, uss_bytes: m.uss_bytes }
    }
}

impl From<proto::MemoryUsage> for ProcessMemory {
    fn from(m: proto::MemoryUsage) -> Self {
        ProcessMemory { rss_bytes: m.rss_bytes, pss_bytes: m.pss_bytes, uss_bytes: m.uss_bytes }
    }
}

/// Memory of the whole machine, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SystemMemory {
    pub total_bytes: u64,
    pub available_bytes: u64,
    pub used_bytes: u64,
    pub swap_used_bytes: u64,
}

impl SystemMemory {
    pub fn read() -> Self {
        let mut system = sysinfo::System::new();
        system.refresh_memory();
        Self {
            total_bytes: system.total_memory(),
            available_bytes: system.available_memory(),
            used_bytes: system.used_memory(),
            swap_used_bytes: system.used_swap(),
        }
    }
}

/// Formats bytes as mebibytes with one decimal, for tables.
/// This process's memory, read by a thread of its own every `period` and kept for callers on the async
/// runtime: reading smaps_rollup walks every mapping of the process (milliseconds with a mapped model),
/// which a heartbeat, an Info call or a /metrics scrape must not do on a runtime thread.
pub struct MemoryGauge {
    latest: std::sync::Mutex<ProcessMemory>,
}

impl MemoryGauge {
    /// Reads once now, then every `period` on a background thread for as long as the gauge lives.
    pub fn start(period: std::time::Duration) -> std::sync::Arc<Self> {
        let gauge = std::sync::Arc::new(Self { latest: std::sync::Mutex::new(ProcessMemory::of_self()) });
        let weak = std::sync::Arc::downgrade(&gauge);
        let spawned = std::thread::Builder::new().name("memory-gauge".into()).spawn(move || {
            loop {
                std::thread::sleep(period);
                let Some(gauge) = weak.upgrade() else { return };
                let memory = ProcessMemory::of_self();
                *gauge.latest.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = memory;
            }
        });
        if let Err(error) = spawned {
            tracing::warn!(%error, "no memory gauge thread; memory figures stay as first read");
        }
        gauge
    }

    /// The latest reading (at most one period old). Never touches /proc.
    pub fn latest(&self) -> ProcessMemory {
        *self.latest.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

pub fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hardening Heartbeats, Info and /metrics read memory on the async runtime (a /proc
    /// read per call). They read the gauge instead, which touches /proc only on its own thread: 64 MiB
    /// touched after it started do not show until its next sample, though a fresh read sees them.
    #[cfg(target_os = "linux")]
    #[test]
    fn the_gauge_answers_from_its_last_sample_without_reading_proc() {
        let gauge = MemoryGauge::start(std::time::Duration::from_secs(3600));
        let before = gauge.latest().rss_bytes;
        let touched = std::hint::black_box(vec![1u8; 64 << 20]);
        let fresh = ProcessMemory::of_self().rss_bytes;
        assert!(fresh >= before + (60 << 20), "a fresh read sees the new pages ({before} -> {fresh})");
        assert_eq!(gauge.latest().rss_bytes, before, "the gauge answered from its sample");
        drop(touched);
    }

    #[test]
    fn parses_smaps_rollup() {
        let text = "55d0c-7ffd [rollup]\nRss:              133120 kB\nPss:               66560 kB\n\
                    Pss_Dirty:          1000 kB\nShared_Clean:     100000 kB\nPrivate_Clean:       1024 kB\n\
                    Private_Dirty:     30720 kB\nSwap:                  0 kB\n";
        let m = ProcessMemory::parse_smaps_rollup(text);
        assert_eq!(m.rss_bytes, 133120 * 1024);
        assert_eq!(m.pss_bytes, 66560 * 1024);
        assert_eq!(m.uss_bytes, (1024 + 30720) * 1024);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn reads_this_process() {
        let m = ProcessMemory::of_self();
        assert!(m.rss_bytes > 0 && m.pss_bytes > 0 && m.uss_bytes > 0);
        assert!(m.pss_bytes <= m.rss_bytes && m.uss_bytes <= m.pss_bytes);
        assert!(ProcessMemory::of_pid(u32::MAX).is_none());
    }
}
