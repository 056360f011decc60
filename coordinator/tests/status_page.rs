//! The status page at `/`, loaded in a real headless browser (Chromium, which scripts/setup.sh installs):
//! its script runs without errors, fetches /status.json and lists the live workers.

mod common;

use std::process::Command;

use common::{TestPool, chat, fast_scheduler, http_get};

/// Chromium's binary: `MODELPOOL_CHROMIUM`, else `chromium` on the PATH (Debian's package).
fn chromium() -> String {
    std::env::var("MODELPOOL_CHROMIUM").unwrap_or_else(|_| "chromium".into())
}

/// The page's DOM after its script ran (`--dump-dom`), and what the browser logged.
fn rendered(url: &str) -> (String, String) {
    let output = Command::new("timeout")
        .arg("90")
        .arg(chromium())
        // As root (CI) Chromium runs only without its sandbox.
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"])
        .args(["--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000", "--dump-dom"])
        .arg(url)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} (scripts/setup.sh installs Debian's chromium): {e}", chromium()));
    let dom = String::from_utf8_lossy(&output.stdout).into_owned();
    let log = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "chromium failed ({}):\n{log}", output.status);
    (dom, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_status_page_loads_in_a_headless_browser_and_lists_the_live_workers() {
    let pool = TestPool::start(1, fast_scheduler(), &[]).await;
    let worker_id = pool.list().await[0].worker_id.clone();
    pool.client.clone().predict(chat("Say hi.", 4)).await.unwrap();

    // The data the page draws.
    let (status, body) = http_get(&format!("{}/status.json", pool.http_url())).await;
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["workers"][0]["id"], worker_id.as_str(), "{json}");
    assert_eq!(json["workers"][0]["completed"], 1, "{json}");
    assert!(json["workers"][0]["tokens_generated"].as_u64().unwrap() >= 1, "{json}");
    assert_eq!(json["requests"]["ok"], 1, "{json}");
    assert_eq!(json["queue"]["serving_workers"], 1, "{json}");

    let url = format!("{}/", pool.http_url());
    let (dom, log) = tokio::task::spawn_blocking(move || rendered(&url)).await.unwrap();
    assert!(!dom.contains("data-script-error") && !log.contains("Uncaught"), "the page's script failed:\n{log}\n{dom}");
    assert!(dom.contains("data-state=\"live\""), "the page did not draw a status:\n{log}\n{dom}");
    assert!(dom.contains(&format!("data-worker=\"{worker_id}\"")), "the worker is not listed:\n{dom}");
    assert!(dom.contains("SmolLM2-135M-Instruct.Q4_1.gguf"), "the model is not named:\n{dom}");
    pool.shutdown().await;
}
