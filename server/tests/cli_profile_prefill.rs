//! `metrum profile-prefill` against a real `metrum serve` (the tiny fixture model): the SLO file
//! it writes parses, its fit is sane, and `serve --slo-file` accepts it.

use metrum_bench::serve::ServerProcess;
use metrum_metrics::{SloConfig, SloFile};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn metrum(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_metrum"))
        .args(args)
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8(output.stdout).expect("stdout is UTF-8"),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

async fn serve(model: &Path, extra: &str, logs: &Path) -> ServerProcess {
    let args = format!(
        "--model {} --num-kv-blocks 256 --threads 1 {extra}",
        model.display()
    );
    ServerProcess::start(
        Path::new(env!("CARGO_BIN_EXE_metrum")),
        &args,
        logs,
        Duration::from_secs(120),
        &reqwest::Client::new(),
    )
    .await
    .expect("metrum serve starts")
}

#[tokio::test(flavor = "multi_thread")]
async fn profile_prefill_writes_a_sane_slo_file_that_serve_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    metrum_engine::model::fixture::write_tiny_llama_fixture(&model, 7).unwrap();
    let server = serve(&model, "", &dir.path().join("logs-a")).await;
    let out = dir.path().join("slo.json");
    let url = server.base_url.clone();
    let out_arg = out.to_str().unwrap().to_string();
    let (code, stdout, stderr) = tokio::task::spawn_blocking(move || {
        metrum(&[
            "profile-prefill",
            "--url",
            &url,
            "--repetitions",
            "2",
            "--seed",
            "1",
            "--out",
            &out_arg,
        ])
    })
    .await
    .unwrap();
    server.stop().await.unwrap();
    assert_eq!(code, 0, "{stderr}");

    // The fixture's context is 2048 tokens, so P = 64..1024: five lengths, two runs each.
    let file = SloFile::load(&out).expect("the SLO file parses");
    let fit = file.fit.as_ref().expect("the file carries its fit");
    let lengths: Vec<u32> = fit.points.iter().map(|p| p.prompt_tokens).collect();
    assert_eq!(lengths, vec![64, 128, 256, 512, 1024], "{stderr}");
    assert!(stdout.contains("| 1024 |"), "{stdout}");
    // Sane: finite, error small next to the times fitted, predictions positive, longer
    // prompts not faster than the shortest.
    let m = file.prefill_model;
    assert!(m.a_s.is_finite() && m.b_s_per_token.is_finite() && m.c_s_per_token2.is_finite());
    let longest = fit.points.last().unwrap().min_ttft_s;
    let shortest = fit.points.first().unwrap().min_ttft_s;
    assert!(longest >= shortest, "{fit:?}");
    assert!(fit.rmse_s < 0.5 * longest, "{fit:?}");
    assert!(fit.points.iter().all(|p| p.predicted_s > 0.0), "{fit:?}");
    assert_eq!(
        file.model.as_deref(),
        model.to_str(),
        "the served model name"
    );
    println!("{stdout}");
    let slo = SloConfig::from_secs(0.03, 0.3, Some(&file)).unwrap();
    assert!(slo.prefill_deadline(1024) > slo.prefill_deadline(64));

    // serve --slo-file loads it (and shows its coefficients in slo_info).
    let server = serve(
        &model,
        &format!("--slo-file {}", out.display()),
        &dir.path().join("logs-b"),
    )
    .await;
    let metrics = reqwest::get(format!("{}/metrics", server.base_url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    server.stop().await.unwrap();
    assert!(metrics.contains("metrum_slo_info"), "{metrics}");
}

#[test]
fn profile_prefill_needs_a_reachable_server() {
    let (code, _, err) = metrum(&[
        "profile-prefill",
        "--url",
        "http://127.0.0.1:9",
        "--model",
        "m",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("error"), "{err}");
}
