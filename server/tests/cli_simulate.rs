//! `metrum simulate` and `metrum profile-step` as a user runs them: the real binary, output on
//! stdout, JSON files on disk.

use serde_json::Value;
use std::path::Path;
use std::process::Command;

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

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).expect("valid JSON")
}

fn simulate(seed: &str, out: &Path) -> (String, Value) {
    let (code, stdout, stderr) = metrum(&[
        "simulate",
        "--num-requests",
        "300",
        "--rate",
        "6",
        "--seed",
        seed,
        "--workload",
        "synthetic:prompt=uniform:32:512,output=uniform:8:64",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    (stdout, json(out))
}

#[test]
fn each_policy_gets_a_row_and_the_same_seed_gives_the_same_output() {
    let dir = tempfile::tempdir().unwrap();
    let (stdout, doc) = simulate("5", &dir.path().join("a.json"));
    let rows: Vec<&str> = stdout.lines().filter(|l| l.starts_with("| ")).collect();
    for policy in ["fcfs", "priority", "deadline"] {
        assert!(
            rows.iter().any(|r| r.starts_with(&format!("| {policy} |"))),
            "no {policy} row in\n{stdout}"
        );
    }
    let reports = doc["reports"].as_array().expect("reports");
    assert_eq!(reports.len(), 3);
    for r in reports {
        assert_eq!(r["num_completed"], 300, "{r}");
        let p99 = r["miss_rate_p99"].as_f64().expect("a P99 miss rate");
        assert!((0.0..=1.0).contains(&p99));
        let fluidity = r["fluidity_p10"].as_f64().expect("a fluidity p10");
        assert!((0.0..=1.0).contains(&fluidity));
        assert!(
            r["sched_delay_p99_ms"].as_f64().unwrap() >= r["sched_delay_p50_ms"].as_f64().unwrap()
        );
    }
    assert_eq!(doc["scheduler"]["max_num_batched_tokens"], 512);
    assert!(
        doc["slo"]["prefill_model"]["b_s_per_token"]
            .as_f64()
            .unwrap()
            > 0.0
    );

    let (again, doc_again) = simulate("5", &dir.path().join("b.json"));
    assert_eq!(stdout, again, "same flags, same output");
    assert_eq!(doc, doc_again);
    let (other, _) = simulate("6", &dir.path().join("c.json"));
    assert_ne!(stdout, other, "another seed, another workload");
}

#[test]
fn the_knee_mode_compares_policies_around_the_fcfs_knee() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("knee.json");
    let (code, stdout, stderr) = metrum(&[
        "simulate",
        "--knee",
        "--num-requests",
        "150",
        "--seeds",
        "1",
        "--policies",
        "fcfs,deadline",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("FCFS knee:"), "{stdout}");
    let doc = json(&out);
    let knee = doc["knee_rate_per_s"].as_f64().unwrap();
    assert!(knee > 0.0);
    let rows = doc["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3 * 2, "three loads × two policies");
    let fcfs_at_knee = rows
        .iter()
        .find(|r| r["policy"] == "fcfs" && r["load"] == "1× knee")
        .expect("an fcfs row at the knee");
    assert!(fcfs_at_knee["miss_rate_p99_max"].as_f64().unwrap() <= 0.1);
}

#[test]
fn bad_flags_fail_with_a_reason() {
    let (code, _, err) = metrum(&["simulate", "--policies", "lifo"]);
    assert_ne!(code, 0);
    assert!(err.contains("lifo"), "{err}");
    let (code, _, err) = metrum(&["simulate", "--cost-file", "/nonexistent/cost.json"]);
    assert_ne!(code, 0);
    assert!(err.contains("cost file"), "{err}");
    let (code, _, err) = metrum(&["simulate", "--max-num-seqs", "600"]);
    assert_ne!(code, 0, "the budget must hold every running decode");
    assert!(err.contains("max-num-batched-tokens"), "{err}");
}

#[test]
fn profile_step_fits_the_real_engine_and_simulate_reads_the_cost_file() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    metrum_engine::model::fixture::write_tiny_llama_fixture(&model, 7).unwrap();
    let cost = dir.path().join("cost.json");
    let (code, stdout, stderr) = metrum(&[
        "profile-step",
        "--model",
        model.to_str().unwrap(),
        "--quick",
        "--reps",
        "2",
        "--threads",
        "1",
        "--out",
        cost.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("| prefill 64 from 0 |"), "{stdout}");
    let doc = json(&cost);
    assert_eq!(doc["format"], 1);
    let points = doc["fit"]["points"].as_array().unwrap();
    assert_eq!(points.len(), 9, "the quick grid");
    assert!(
        points
            .iter()
            .all(|p| p["measured_s"].as_f64().unwrap() > 0.0)
    );
    for key in ["base_s", "per_batched_token_s", "per_kv_token_read_s"] {
        assert!(doc[key].as_f64().unwrap().is_finite(), "{key}");
    }
    assert!(doc["fit"]["max_rel_error"].as_f64().unwrap().is_finite());

    let (code, stdout, stderr) = metrum(&[
        "simulate",
        "--num-requests",
        "50",
        "--rate",
        "0.5",
        "--cost-file",
        cost.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains(cost.to_str().unwrap()), "{stdout}");
}
