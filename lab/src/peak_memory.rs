//! Peak resident memory of the processes a run started, as the kernel counted it (VmHWM).

/// Peak resident memory of a process, MiB; 0 when it cannot be read (it has exited, or no /proc).
pub fn peak_rss_mib(pid: Option<u32>) -> f64 {
    let Some(pid) = pid else { return 0.0 };
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_a_peak_and_a_missing_one_has_none() {
        assert!(peak_rss_mib(Some(std::process::id())) > 1.0);
        assert_eq!(peak_rss_mib(None), 0.0);
        assert_eq!(peak_rss_mib(Some(u32::MAX)), 0.0);
    }
}
