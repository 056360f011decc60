//! A bench run's report: the data (the machine, the model, every configuration's summary, the
//! recommendation, the roofline) in [`Report`], built once; its renderings apart, each in its own
//! module: the terminal table and outputs ([`table`]), CSV ([`csv`]) and HTML charts ([`html`]).

mod csv;
pub mod html;
mod table;

use modelpool::memory::SystemMemory;

use crate::recommend::{Recommendation, recommend};
use crate::record::RequestRecord;
use crate::roofline::{ModelTraffic, Roofline, measure_bandwidth};
use crate::slo::Slo;
pub use crate::summary::{ScenarioRun, ScenarioSummary, Spread};

/// The machine a report came from.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory_total_bytes: u64,
    pub memory_available_bytes: u64,
    pub os: String,
    pub hostname: String,
    /// The vector and matrix instruction sets the CPU reports (what kernels built for it may use).
    pub simd: String,
    /// The kernels the pool's workers computed with, as they reported them (empty: not known here).
    pub worker_kernels: String,
}

/// The CPU flags that decide which llama.cpp kernels can run, as /proc/cpuinfo names them.
const SIMD_FLAGS: &[&str] = &[
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx_vnni",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
];

/// The [`SIMD_FLAGS`] this machine's CPU lists (Linux; empty elsewhere).
fn simd_flags() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags: Vec<&str> = cpuinfo.lines().find(|l| l.starts_with("flags")).map(|l| l.split_whitespace().collect()).unwrap_or_default();
    SIMD_FLAGS.iter().filter(|f| flags.contains(f)).copied().collect::<Vec<_>>().join(" ")
}

impl Machine {
    pub fn this() -> Self {
        let mut system = sysinfo::System::new();
        system.refresh_cpu_all();
        let memory = SystemMemory::read();
        Self {
            cpu: system.cpus().first().map(|c| c.brand().trim().to_string()).unwrap_or_default(),
            cores: system.cpus().len(),
            memory_total_bytes: memory.total_bytes,
            memory_available_bytes: memory.available_bytes,
            os: sysinfo::System::long_os_version().unwrap_or_default(),
            hostname: sysinfo::System::host_name().unwrap_or_default(),
            simd: simd_flags(),
            worker_kernels: String::new(),
        }
    }

    /// This machine, with the kernels the workers reported (see `LocalPool::cpu_kernels`).
    pub fn with_worker_kernels(mut self, kernels: &[String]) -> Self {
        self.worker_kernels = kernels.join(" | ");
        self
    }

    pub fn describe(&self) -> String {
        let simd = if self.simd.is_empty() { String::new() } else { format!("; {}", self.simd) };
        let kernels = if self.worker_kernels.is_empty() { String::new() } else { format!("; worker kernels: {}", self.worker_kernels) };
        format!("{} ({} cores{simd}), {} GiB RAM, {}{kernels}", self.cpu, self.cores, self.memory_total_bytes / (1 << 30), self.os)
    }
}

/// The kernels named by several workers or runs, once each in the order first seen (a worker that
/// names none is left out): what a report's machine line lists.
pub fn distinct_kernels<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut kernels: Vec<String> = Vec::new();
    for name in names {
        if !name.is_empty() && !kernels.iter().any(|k| k == name) {
            kernels.push(name.to_string());
        }
    }
    kernels
}

/// Everything a bench run produced; written as JSON with `--json`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub tool: String,
    pub machine: Machine,
    pub model: String,
    /// SHA-256 of the model file, when it was readable here: which exact weights were measured.
    pub model_sha256: Option<String>,
    /// Version of the tool that measured (the workspace version).
    pub version: String,
    /// SHA-256 of the worker binary that served (engines included), when the bench started the workers.
    pub worker_binary_sha256: Option<String>,
    pub max_tokens: u32,
    pub summaries: Vec<ScenarioSummary>,
    /// Configurations not run, with the reason (they would not fit in memory).
    pub skipped: Vec<String>,
    pub slo: Slo,
    pub recommendation: Recommendation,
    /// Measured configurations against the memory-bandwidth ceiling (when the model file is readable here).
    pub roofline: Option<Roofline>,
    pub runs: Vec<ScenarioRun>,
}

impl Report {
    /// Summarises runs by configuration name, in the order configurations first ran; the configuration
    /// named "serial" is the baseline for speedup and efficiency.
    pub fn new(tool: &str, model: String, max_tokens: u32, slo: Slo, runs: Vec<ScenarioRun>) -> Self {
        let mut names: Vec<&str> = Vec::new();
        for run in &runs {
            if !names.contains(&run.name.as_str()) {
                names.push(&run.name);
            }
        }
        let group = |name: &str| runs.iter().filter(|r| r.name == name).collect::<Vec<_>>();
        // Each configuration is compared with the serial run of its own engine: "serial" or "mlx/serial".
        let baseline_of = |name: &str| {
            let serial = match name.split_once('/') {
                Some((engine, _)) => format!("{engine}/serial"),
                None => "serial".to_string(),
            };
            let runs = group(&serial);
            (!runs.is_empty()).then(|| Spread::of(&runs.iter().map(|r| r.output_tokens_per_s()).collect::<Vec<_>>()).median)
        };
        let summaries: Vec<_> = names.iter().map(|n| ScenarioSummary::of(&group(n), baseline_of(n), &slo)).collect();
        let kernels = distinct_kernels(runs.iter().flat_map(|r| r.cpu_kernels.iter().map(String::as_str)));
        let machine = Machine::this().with_worker_kernels(&kernels);
        let recommendation = recommend(&summaries, slo.is_set(), machine.memory_available_bytes);
        Self {
            tool: tool.into(),
            machine,
            model,
            model_sha256: None,
            version: env!("CARGO_PKG_VERSION").into(),
            worker_binary_sha256: None,
            max_tokens,
            summaries,
            skipped: Vec::new(),
            slo,
            recommendation,
            roofline: None,
            runs,
        }
    }

    /// Adds the roofline: the model's traffic per token from its GGUF, the bandwidth measured now, and
    /// each configuration's median output tokens/s against its ceiling.
    pub fn attach_roofline(&mut self, model: &std::path::Path) -> Result<(), model_input::gguf::GgufError> {
        self.model_sha256 = model_input::model_cache::sha256_file(model).ok();
        let traffic = ModelTraffic::from_gguf(model)?;
        let bandwidth = measure_bandwidth(self.machine.cores.max(1), 256);
        let ok: Vec<&RequestRecord> = self.runs.iter().flat_map(|r| &r.records).filter(|r| r.ok).collect();
        let context =
            ok.iter().map(|r| u64::from(r.prompt_tokens) + u64::from(r.completion_tokens) / 2).sum::<u64>() / ok.len().max(1) as u64;
        let configs: Vec<_> =
            self.summaries.iter().map(|s| (s.name.clone(), s.workers, s.slots_per_worker, s.output_tokens_per_s.median)).collect();
        self.roofline = Some(Roofline::new(traffic, bandwidth, context, &configs));
        Ok(())
    }

    /// Prints the table (after every output, if asked) and writes the JSON report if a path is given.
    pub fn print(&self, show_outputs: bool, json: Option<&std::path::Path>, out_dir: Option<&std::path::Path>) -> std::io::Result<()> {
        if show_outputs {
            println!("{}", self.outputs());
        }
        println!("{}", self.table());
        if let Some(path) = json {
            std::fs::write(path, serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?)?;
            println!("JSON report written to {}", path.display());
        }
        if let Some(dir) = out_dir {
            self.write_dir(dir)?;
            println!("report.json, report.csv and report.html written to {}", dir.display());
        }
        Ok(())
    }

    /// Writes report.json, report.csv and report.html into `dir` (created if missing).
    pub fn write_dir(&self, dir: &std::path::Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("report.json"), serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?)?;
        std::fs::write(dir.join("report.csv"), self.csv())?;
        std::fs::write(dir.join("report.html"), html::render(self))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::PoolMemory;

    #[test]
    fn kernels_are_listed_once_in_the_order_first_seen() {
        assert_eq!(distinct_kernels(["zen4 (probed)", "", "haswell", "zen4 (probed)"]), ["zen4 (probed)", "haswell"]);
        assert!(distinct_kernels([""]).is_empty());
    }

    fn run(name: &str, repeat: usize, workers: usize, wall_s: f64, tokens: &[u32]) -> ScenarioRun {
        ScenarioRun {
            cpu_kernels: Vec::new(),
            name: name.into(),
            engine: "llama".into(),
            repeat,
            workers,
            slots_per_worker: 1,
            threads_per_worker: 1,
            concurrency: workers,
            wall_s,
            records: tokens
                .iter()
                .enumerate()
                .map(|(index, &completion_tokens)| RequestRecord {
                    index,
                    ok: completion_tokens > 0,
                    completion_tokens,
                    e2e_ms: 100.0,
                    ..Default::default()
                })
                .collect(),
            memory: PoolMemory::default(),
            stopped: None,
        }
    }

    #[test]
    fn a_configuration_that_lost_prompts_prints_its_first_error() {
        let mut lossy = run("serial", 0, 1, 1.0, &[0, 50, 0]);
        lossy.records[0].error = Some("UNAUTHENTICATED: missing or wrong pool token".into());
        lossy.records[2].error = Some("later error".into());
        let report = Report::new("test", "m".into(), 8, Slo::default(), vec![lossy, run("replicas-2", 0, 2, 1.0, &[50, 50])]);
        let table = report.table();
        assert!(table.contains("failed: serial lost 2/3 prompts; first error: UNAUTHENTICATED: missing or wrong pool token"), "{table}");
        assert!(!table.contains("failed: replicas-2"), "{table}");
    }

    #[test]
    fn speedup_and_efficiency_are_against_the_median_serial_throughput() {
        let report = Report::new(
            "test",
            "m".into(),
            8,
            Slo::default(),
            vec![
                run("serial", 0, 1, 10.0, &[50, 50]),
                run("replicas-2", 0, 2, 4.0, &[50, 50]),
                run("serial", 1, 1, 5.0, &[50, 50]),
                run("replicas-2", 1, 2, 5.0, &[50, 50]),
                run("serial", 2, 1, 20.0, &[50, 50]),
                run("replicas-2", 2, 2, 2.0, &[50, 0]),
            ],
        );
        let [serial, two] = &report.summaries[..] else { panic!("two configurations") };
        // serial runs: 10, 20 and 5 tok/s; median 10
        assert_eq!(serial.output_tokens_per_s, Spread { median: 10.0, min: 5.0, max: 20.0 });
        assert!(serial.noisy);
        assert_eq!(serial.speedup, Some(1.0));
        // replicas-2 runs: 25, 20, 25 tok/s; median 25
        assert_eq!(two.output_tokens_per_s.median, 25.0);
        assert_eq!(two.speedup, Some(2.5));
        assert_eq!(two.efficiency, Some(1.25));
        assert_eq!((two.repeats, two.prompts, two.ok, two.failed), (3, 6, 5, 1));
        assert_eq!(two.prompts_per_s.min, 0.4, "failed prompts do not count as throughput");
        let table = report.table();
        assert!(table.contains("replicas-2") && table.contains("5-20!"), "{table}");
        // replicas-2 lost a prompt, so the recommendation is the serial baseline
        assert_eq!(report.recommendation.name.as_deref(), Some("serial"), "{:?}", report.recommendation);
    }

    #[test]
    fn the_recommendation_takes_the_fastest_clean_configuration_within_targets() {
        let runs = || {
            vec![
                run("serial", 0, 1, 10.0, &[50, 50]),
                run("serial", 1, 1, 11.0, &[50, 50]),
                run("replicas-2", 0, 2, 5.0, &[50, 50]),
                run("replicas-2", 1, 2, 5.5, &[50, 50]),
            ]
        };
        let report = Report::new("test", "m".into(), 8, Slo::default(), runs());
        assert_eq!(report.recommendation.name.as_deref(), Some("replicas-2"), "{:?}", report.recommendation);
        assert!(report.recommendation.text.contains("2.00x serial"), "says the speed-up: {}", report.recommendation.text);

        // every request took 100 ms: a 50 ms target disqualifies everything
        let strict = Slo { ttft_ms: None, e2e_ms: Some(50.0) };
        let report = Report::new("test", "m".into(), 8, strict, runs());
        assert_eq!(report.recommendation.name, None);
        assert_eq!(report.summaries[0].goodput, 0.0);
        assert!(report.table().contains("goodput (e2e <= 50 ms)"));
        let csv = report.csv();
        assert_eq!(csv.lines().count(), 3, "a header and one line per configuration");
        assert!(csv.lines().nth(2).unwrap().starts_with("replicas-2,2,1,1,2,2,4,4,0,"), "{csv}");
    }
}
