//! The GPU check's Python helpers (`tools/gpu/`), which run only on lent GPU machines, driven here
//! on files shaped like the binary's JSON: `isolate_families.py` reruns, one process each, the
//! check-kernels families after the first fault (a fake check-kernels stands in for the binary);
//! `candidates.py` lists the candidate variants (held to the engine's own choice names and
//! kernels), narrows them to those named, gates them on their kernels having run and combines
//! those that passed;
//! `summary.py` reports a check that did not run by its error and the L2 columns by the probe;
//! `index_check.py` times, kills and resumes the corpus job (the real binary on the tiny model).
//! All are standard-library Python: `GEMMA_EMBED_PYTHON`, else `python3`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::python;
use gemma_embed::backend::cuda::attention::AttentionKernel;
use gemma_embed::backend::cuda::{mlp::MlpKernel, qkv::QkvKernel, BranchStorage, KernelChoice};

fn tool(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tools/gpu")
        .join(name)
}

fn run(args: &[&str]) -> Output {
    Command::new(python())
        .args(args)
        .output()
        .expect("run python")
}

/// A KernelCheck entry as `gemma-embed check-kernels --json` writes it.
fn check_entry(family: &str, name: &str, error: Option<&str>, timing: &str) -> String {
    let passed = error.is_none();
    let error = error.map_or("null".to_string(), |e| format!("\"{e}\""));
    let (max_abs, rel_l2) = if passed {
        ("0.0", "0.0")
    } else {
        ("null", "null")
    };
    format!(
        r#"{{"family": "{family}", "name": "{name}", "case": "c", "max_abs_err": {max_abs},
            "rel_l2_err": {rel_l2}, "bad_values": 0, "max_abs_tol": 0.01, "rel_l2_tol": 0.01,
            "passed": {passed}, "timing": {timing}, "error": {error}, "mismatch": null}}"#
    )
}

fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gemma-gpu-tools-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// A stand-in for `gemma-embed check-kernels` in `dir`: `--list-families` prints `families`;
/// `--family NAME --json PATH` runs the `case` arms (shell, `$4` the JSON path) on NAME.
fn fake_check_kernels(dir: &Path, families: &[&str], cases: &str) -> PathBuf {
    let fake = dir.join("check-kernels.sh");
    let list = families.join("\\n");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\n[ \"$1\" = --list-families ] && {{ printf '{list}\\n'; exit 0; }}\n\
             case $2 in\n{cases}esac\n"
        ),
    )
    .expect("write fake check-kernels");
    fake
}

/// `isolate_families.py --kernels KERNELS [--timeout T] -- sh FAKE`, as arguments to Python.
fn isolate_args(kernels: &Path, fake: &Path, timeout: Option<&str>) -> Vec<String> {
    let mut args = vec![
        tool("isolate_families.py").display().to_string(),
        "--kernels".into(),
        kernels.display().to_string(),
    ];
    if let Some(t) = timeout {
        args.extend(["--timeout".into(), t.into()]);
    }
    args.extend(["--".into(), "sh".into(), fake.display().to_string()]);
    args
}

/// Run isolate_families.py to its end; its stdout.
fn isolate(kernels: &Path, fake: &Path, timeout: Option<&str>) -> String {
    let args = isolate_args(kernels, fake, timeout);
    let out = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The entries of a kernels.json.
fn entries(kernels: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(kernels).expect("read kernels.json");
    match serde_json::from_str(&text).expect("parse kernels.json") {
        serde_json::Value::Array(entries) => entries,
        other => panic!("kernels.json is not a list: {other}"),
    }
}

#[test]
fn families_after_a_fault_rerun_one_process_each() {
    let dir = scratch("isolate");
    // Families a..d: in the full run b faulted, so b and c report the fault and d never ran. On
    // its own, b faults again, c passes, and d hangs.
    let passing_c = check_entry("c", "ck", None, "null");
    let faulting_b = check_entry("b", "bk", Some("illegal address"), "null");
    let fake = fake_check_kernels(
        &dir,
        &["a", "b", "c", "d"],
        &format!(
            "b) echo '[{faulting_b}]' > \"$4\"; exit 1 ;;\n\
             c) echo '[{passing_c}]' > \"$4\" ;;\n\
             d) exec sleep 20 ;;\n"
        ),
    );
    let kernels = dir.join("kernels.json");
    let full_run = [
        check_entry("a", "ak", None, "null"),
        check_entry("b", "bk", Some("illegal address"), "null"),
        check_entry("c", "ck", Some("illegal address"), "null"),
    ];
    std::fs::write(&kernels, format!("[{}]", full_run.join(","))).expect("write kernels.json");

    let stdout = isolate(&kernels, &fake, Some("5"));
    assert!(stdout.contains("rerunning b, c, d"), "{stdout}");
    assert!(
        stdout.contains("families with errors after the reruns: b, d"),
        "{stdout}"
    );
    let entries: Vec<(String, bool, String)> = entries(&kernels)
        .iter()
        .map(|c| {
            (
                c["family"].as_str().unwrap().to_string(),
                c["passed"].as_bool().unwrap(),
                c["error"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(entries.len(), 4, "{entries:?}");
    assert_eq!(entries[0], ("a".into(), true, String::new()));
    assert_eq!(entries[1], ("b".into(), false, "illegal address".into()));
    assert_eq!(entries[2], ("c".into(), true, String::new()));
    assert_eq!((entries[3].0.as_str(), entries[3].1), ("d", false));
    assert!(entries[3].2.contains("within 5s"), "{entries:?}");

    // With every family run and no error, nothing is rerun.
    std::fs::write(&kernels, format!("[{}]", full_run[0])).expect("write kernels.json");
    let fake = fake_check_kernels(&dir, &["a"], "");
    let stdout = isolate(&kernels, &fake, None);
    assert!(stdout.contains("nothing to rerun"), "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_family_that_checks_nothing_on_the_card_counts_as_run() {
    // Family w checks nothing here (attention_flash_wgmma off sm_90): `[]` on its own, no
    // entries in the full run.
    let dir = scratch("empty-family");
    let passing_c = check_entry("c", "ck", None, "null");
    let fake = fake_check_kernels(
        &dir,
        &["a", "w", "c"],
        &format!(
            "w) echo '[]' > \"$4\" ;;\n\
             c) echo '[{passing_c}]' > \"$4\" ;;\n"
        ),
    );
    let kernels = dir.join("kernels.json");
    let a = check_entry("a", "ak", None, "null");

    // Every family ran: w's missing entries are not a hang.
    std::fs::write(&kernels, format!("[{a},{passing_c}]")).expect("write kernels.json");
    let stdout = isolate(&kernels, &fake, Some("5"));
    assert!(stdout.contains("nothing to rerun"), "{stdout}");

    // A hang after a: w and c rerun, and w's empty result is not an error.
    std::fs::write(&kernels, format!("[{a}]")).expect("write kernels.json");
    let stdout = isolate(&kernels, &fake, Some("5"));
    assert!(stdout.contains("rerunning w, c"), "{stdout}");
    assert!(
        stdout.contains("families with errors after the reruns: none"),
        "{stdout}"
    );
    let families: Vec<String> = entries(&kernels)
        .iter()
        .map(|c| c["family"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(families, ["a", "c"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn reruns_done_before_the_stage_limit_are_kept() {
    // a faulted in the full run; on its own it passes, then b hangs past the stage's own time
    // limit (`timeout 8` around the script: Python's start and a's rerun fit well within it),
    // which kills the script mid-run.
    let dir = scratch("stage-limit");
    let passing_a = check_entry("a", "ak", None, "null");
    let fake = fake_check_kernels(
        &dir,
        &["a", "b"],
        &format!(
            "a) echo '[{passing_a}]' > \"$4\" ;;\n\
             b) exec sleep 30 ;;\n"
        ),
    );
    let kernels = dir.join("kernels.json");
    let faulted_a = check_entry("a", "ak", Some("illegal address"), "null");
    std::fs::write(&kernels, format!("[{faulted_a}]")).expect("write kernels.json");
    let out = Command::new("timeout")
        .args(["8", &python()])
        .args(isolate_args(&kernels, &fake, Some("20")))
        .output()
        .expect("run timeout");
    assert_eq!(out.status.code(), Some(124), "{out:?}");
    let entries = entries(&kernels);
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0]["family"], "a");
    assert_eq!(entries[0]["passed"], true, "{entries:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `summary.py` over the result files in `dir`, with these stage lines (name, status, ms).
fn summary(dir: &Path, stages: &str) -> Output {
    let stages_file = dir.join("stages.tsv");
    std::fs::write(&stages_file, stages).expect("write stages.tsv");
    run(&[
        tool("summary.py").to_str().unwrap(),
        "--stages",
        stages_file.to_str().unwrap(),
        "--out",
        dir.to_str().unwrap(),
    ])
}

#[test]
fn summary_reports_errors_and_operand_loads_against_the_l2_probe() {
    let dir = scratch("summary");
    let probe_timing = r#"{"case": "25 MB x 16 passes", "median_us": 80.0, "gbytes_per_s": 5000.0,
                           "tflops": 0.0}"#;
    let gemm_timing = r#"{"case": "m=16384", "median_us": 100.0, "gbytes_per_s": 1000.0,
                          "tflops": 577.5, "l2_gbytes_per_s": 4000.0}"#;
    let checks = [
        check_entry("l2_read_probe", "l2_read_probe", None, probe_timing),
        check_entry(
            "gate_up_geglu",
            "gate_up_geglu_wgmma_wide",
            None,
            gemm_timing,
        ),
        check_entry("qkv_proj", "qkv_proj_wgmma", Some("launch failed"), "null"),
    ];
    std::fs::write(dir.join("kernels.json"), format!("[{}]", checks.join(","))).unwrap();
    std::fs::write(
        dir.join("ceilings.json"),
        r#"{"copy_gb_per_s": 3000.0, "matmul_bf16_tflop_per_s": 770.0}"#,
    )
    .unwrap();
    let out = summary(&dir, "check-kernels\tok\t1000\n");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a failed check fails the run: {out:?}"
    );
    assert!(stdout.contains("kernels: 2/3 pass"), "{stdout}");
    assert!(
        stdout.contains("FAIL qkv_proj_wgmma [c]: launch failed"),
        "{stdout}"
    );
    assert!(stdout.contains("L2 read 5,000 GB/s"), "{stdout}");
    let gemm_row = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("gate_up_geglu_wgmma_wide"))
        .expect("the GEMM's timing row");
    // 577.5 of 770 TFLOP/s is 75 %; 4000 of 5000 GB/s from L2 is 80 %.
    assert!(
        gemm_row.contains(" 75%") && gemm_row.contains(" 4000") && gemm_row.ends_with(" 80%"),
        "{gemm_row}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn summary_tabulates_the_batch_budgets_next_to_the_bench_stages() {
    let dir = scratch("budgets");
    let report = |rows: &[(&str, usize, f64)]| {
        let rows: Vec<String> = rows
            .iter()
            .map(|(name, budget, rate)| {
                format!(
                    r#"{{"name": "{name}", "max_batch_tokens": {budget}, "tokens_per_s": {rate},
                        "tflops_per_s": 1.0}}"#
                )
            })
            .collect();
        format!(
            r#"{{"backend": "cuda", "dtype": "bf16", "machine": {{"gpu": "test card"}},
                "workloads": [{}]}}"#,
            rows.join(",")
        )
    };
    std::fs::write(
        dir.join("bench.json"),
        report(&[("fixed-128", 65536, 9.0), ("fixed-512", 65536, 1000.0)]),
    )
    .unwrap();
    std::fs::write(
        dir.join("bench_budgets.json"),
        report(&[("fixed-512", 8192, 1200.0), ("fixed-512", 16384, 1100.0)]),
    )
    .unwrap();
    let out = summary(&dir, "bench\tok\t1000\nbench-budgets\tok\t1000\n");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let table: Vec<&str> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("batch budget"))
        .take_while(|l| !l.is_empty())
        .collect();
    assert_eq!(table.len(), 2, "a header and the fixed-512 row: {stdout}");
    let sizes: Vec<&str> = table[0].split_whitespace().skip(3).collect();
    assert_eq!(sizes, ["8192", "16384", "65536"], "{}", table[0]);
    let cells: Vec<&str> = table[1].split_whitespace().collect();
    assert_eq!(
        cells,
        ["fixed-512", "1,200", "1,100", "1,000"],
        "{}",
        table[1]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_variant_runs_only_when_its_kernels_ran_in_check_kernels() {
    let dir = scratch("kernels-ran");
    let kernels = dir.join("kernels.json");
    let checks = [
        check_entry("qkv_proj", "qkv_proj_wgmma/q", None, "null"),
        check_entry("qkv_proj", "qkv_proj_wgmma/k", None, "null"),
        // Wrong numbers: ran, so its variant runs and its parity shows the cost.
        r#"{"family": "gate_up_geglu", "name": "gate_up_geglu_wgmma_wide", "case": "c",
            "max_abs_err": 3.0, "rel_l2_err": 0.5, "bad_values": 0, "max_abs_tol": 0.01,
            "rel_l2_tol": 0.01, "passed": false, "timing": null, "error": null,
            "mismatch": null}"#
            .to_string(),
        check_entry(
            "proj_residual_norm",
            "proj_residual_norm_wgmma",
            Some("hang or crash"),
            "null",
        ),
    ];
    std::fs::write(&kernels, format!("[{}]", checks.join(","))).unwrap();
    let ran = |names: &[&str]| {
        let mut args = vec![
            tool("candidates.py").display().to_string(),
            "ran".into(),
            "--kernels".into(),
            kernels.display().to_string(),
        ];
        args.extend(names.iter().map(|n| n.to_string()));
        let out = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    assert_eq!(ran(&["qkv_proj_wgmma"]).0, Some(0));
    assert_eq!(
        ran(&["qkv_proj_wgmma", "gate_up_geglu_wgmma_wide"]).0,
        Some(0)
    );
    let (code, stdout) = ran(&["qkv_proj_wgmma", "proj_residual_norm_wgmma"]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.contains("proj_residual_norm_wgmma (hang or crash)"),
        "{stdout}"
    );
    // The narrow kernel's name is a prefix of the wide one's, not one of its parts.
    let (code, stdout) = ran(&["gate_up_geglu_wgmma"]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.contains("gate_up_geglu_wgmma (no check of it)"),
        "{stdout}"
    );
    // No kernel checks at all: nothing to go by, the variant runs.
    std::fs::remove_file(&kernels).unwrap();
    assert_eq!(ran(&["proj_residual_norm_wgmma"]).0, Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_candidates_that_passed_are_combined_most_promising_first() {
    let dir = scratch("passing");
    let kernels = dir.join("kernels.json");
    let wrong = |name: &str| {
        format!(
            r#"{{"family": "f", "name": "{name}", "case": "c", "max_abs_err": 3.0,
                "rel_l2_err": 0.5, "bad_values": 0, "max_abs_tol": 0.01, "rel_l2_tol": 0.01,
                "passed": false, "timing": null, "error": null, "mismatch": null}}"#
        )
    };
    let passing = |checks: &[String], sm90: bool| {
        std::fs::write(&kernels, format!("[{}]", checks.join(","))).unwrap();
        let mut args = vec![
            tool("candidates.py").display().to_string(),
            "passing".into(),
            "--kernels".into(),
            kernels.display().to_string(),
        ];
        if sm90 {
            args.push("--sm90".into());
        }
        let out = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).trim_end().to_string()
    };
    let ok = |name: &str| check_entry("f", name, None, "null");
    let faulted = |name: &str, error: &str| check_entry("f", name, Some(error), "null");
    let every = [
        ok("gate_up_geglu"),
        ok("residual_norm_bf16_branch/residual"),
        ok("gate_up_geglu_wgmma"),
        ok("gate_up_geglu_wgmma_wide"),
        ok("attention_flash_wgmma"),
        ok("qkv_proj_wgmma/q"),
        ok("qkv_proj_wgmma/k"),
        ok("proj_residual_norm_wgmma/residual"),
        // sm_90's former defaults pass, but are never combined.
        ok("attention_flash"),
        ok("residual_norm/residual"),
        ok("gate_up_geglu_tma"),
        ok("attention_flash_tma"),
        ok("attention_flash_tma_free"),
        ok("proj_residual_norm_tma/residual"),
    ];
    assert_eq!(
        passing(&every, true),
        "wgmma-qkv+tma-mlp+tma-branch+tma-free-attention\t\
         GEMMA_EMBED_QKV=wgmma GEMMA_EMBED_MLP=tma GEMMA_EMBED_BRANCH=tma \
         GEMMA_EMBED_ATTENTION=flash-tma-free\t\
         qkv_proj_wgmma gate_up_geglu_tma proj_residual_norm_tma attention_flash_tma_free"
    );
    // Without the free-running attention kernel and the TMA branch, the attention with turns
    // and no branch candidate (the fused one is never combined).
    assert_eq!(
        passing(&every[..12], true),
        "wgmma-qkv+tma-mlp+tma-attention\t\
         GEMMA_EMBED_QKV=wgmma GEMMA_EMBED_MLP=tma GEMMA_EMBED_ATTENTION=flash-tma\t\
         qkv_proj_wgmma gate_up_geglu_tma attention_flash_tma"
    );
    // Off sm_90 only the portable candidates count.
    assert_eq!(
        passing(&every, false),
        "fused-mlp+bf16-branch\tGEMMA_EMBED_MLP=fused GEMMA_EMBED_BRANCH=bf16\t\
         gate_up_geglu residual_norm_bf16_branch"
    );
    // The TMA and wide kernels compute wrong numbers and one part of the QKV kernel fails; both
    // fused branches faulted: the next option of each variable, or none (the former default
    // attention is never combined).
    let mut some = every.to_vec();
    some[10] = wrong("gate_up_geglu_tma");
    some[11] = wrong("attention_flash_tma");
    some[12] = wrong("attention_flash_tma_free");
    some[13] = faulted("proj_residual_norm_tma", "unspecified launch failure");
    some[3] = wrong("gate_up_geglu_wgmma_wide");
    some[6] = wrong("qkv_proj_wgmma/k");
    some[7] = faulted("proj_residual_norm_wgmma", "illegal address");
    assert_eq!(
        passing(&some, true),
        "wgmma-mlp\tGEMMA_EMBED_MLP=wgmma\tgate_up_geglu_wgmma"
    );
    // No candidate passed: no variant.
    assert_eq!(passing(&[wrong("gate_up_geglu")], true), "");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn variants_narrow_the_candidates_to_those_named() {
    let candidates = tool("candidates.py");
    let candidates = candidates.to_str().unwrap();
    let names = |args: &[&str]| {
        let out = run(&[&[candidates][..], args].concat());
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|line| line.split('\t').next().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(&[
            "list",
            "--sm90",
            "--variants",
            "tma-branch,tma-mlp,combined"
        ]),
        ["tma-mlp", "tma-branch"],
        "in the table's order"
    );
    assert!(names(&["list", "--sm90", "--variants", ""]).is_empty());
    assert!(names(&["list", "--sm90"]).len() > 2);
    let unknown = run(&[candidates, "list", "--variants", "tma-mlp"]);
    assert_eq!(
        unknown.status.code(),
        Some(2),
        "sm_90-only off sm_90: {unknown:?}"
    );
    let why = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        why.contains("no candidate tma-mlp")
            && why.contains("fused-mlp")
            && why.contains("combined"),
        "{why}"
    );

    // The combined variant only when named.
    let dir = scratch("variants");
    let kernels = dir.join("kernels.json");
    std::fs::write(
        &kernels,
        format!("[{}]", check_entry("f", "gate_up_geglu_tma", None, "null")),
    )
    .unwrap();
    let kernels = kernels.to_str().unwrap();
    let passing = |variants: &str| {
        names(&[
            "passing",
            "--kernels",
            kernels,
            "--sm90",
            "--variants",
            variants,
        ])
    };
    assert_eq!(passing("tma-mlp,combined"), ["tma-mlp"]);
    assert!(passing("tma-mlp").is_empty());
    assert_eq!(
        names(&["passing", "--kernels", kernels, "--sm90"]),
        ["tma-mlp"]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// One option of a kernel choice on a card, as the engine defines it.
#[derive(Clone)]
struct EngineOption {
    /// `VARIABLE=option`.
    env: String,
    /// The kernel it selects, as check-kernels names it.
    kernel: &'static str,
    runs: bool,
    default: bool,
}

/// Every option of every kernel choice on a card of compute capability `cc`.
fn every_option(cc: (i32, i32)) -> Vec<EngineOption> {
    fn of<K: KernelChoice>(cc: (i32, i32), kernel: fn(K) -> &'static str) -> Vec<EngineOption> {
        K::CHOICES
            .iter()
            .map(|&(name, k)| EngineOption {
                env: format!("{}={name}", K::VAR),
                kernel: kernel(k),
                runs: k.runs_on(cc),
                default: k == K::default_on(cc),
            })
            .collect()
    }
    [
        of(cc, QkvKernel::name),
        of(cc, AttentionKernel::name),
        of(cc, MlpKernel::name),
        of(cc, BranchStorage::residual_norm_kernel),
    ]
    .concat()
}

#[test]
fn the_candidate_list_is_what_the_card_runs() {
    let list = |sm90: bool| {
        let mut args = vec![tool("candidates.py").display().to_string(), "list".into()];
        if sm90 {
            args.push("--sm90".into());
        }
        let out = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.split('\t').map(str::to_string).collect::<Vec<_>>())
            .collect::<Vec<_>>()
    };
    let portable = list(false);
    assert_eq!(
        portable,
        [
            ["fused-mlp", "GEMMA_EMBED_MLP=fused", "gate_up_geglu"],
            [
                "bf16-branch",
                "GEMMA_EMBED_BRANCH=bf16",
                "residual_norm_bf16_branch"
            ],
        ]
    );
    let hopper = list(true);
    let names: Vec<&str> = hopper.iter().map(|c| c[0].as_str()).collect();
    assert_eq!(
        names,
        [
            "tma-qkv",
            "wgmma-qkv",
            "tma-mlp",
            "wgmma-wide-mlp",
            "wgmma-mlp",
            "fused-mlp",
            "tma-branch",
            "fused-branch",
            "tma-free-attention",
            "tma-attention",
            "flash-attention",
            "f32-branch"
        ]
    );
    // A card's candidates are every option it runs but its default (and the one-warp-per-row
    // fallback attention), each environment selecting, in the engine, the kernel it names.
    for (cc, listed) in [((8, 0), &portable), ((9, 0), &hopper)] {
        let options = every_option(cc);
        let mut expected: Vec<&str> = options
            .iter()
            .filter(|o| o.runs && !o.default && o.env != "GEMMA_EMBED_ATTENTION=reference")
            .map(|o| o.env.as_str())
            .collect();
        let mut envs: Vec<&str> = listed.iter().map(|c| c[1].as_str()).collect();
        expected.sort();
        envs.sort();
        assert_eq!(envs, expected, "candidates on {cc:?}");
        for c in listed {
            let option = options
                .iter()
                .find(|o| o.env == c[1])
                .unwrap_or_else(|| panic!("{c:?} is no option of the engine"));
            assert_eq!(c[2], option.kernel, "{c:?}");
        }
    }
}

#[test]
fn the_corpus_job_check_times_kills_resumes_and_compares() {
    let dir = scratch("index");
    let model = common::tiny_model_dir();
    let json = dir.join("index.json");
    let out = run(&[
        tool("index_check.py").to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--backend",
        "cpu",
        "--chars",
        "4000000",
        "--work",
        dir.join("work").to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
        "--",
        env!("CARGO_BIN_EXE_gemma-embed"),
        "--",
        "--docs-per-request",
        "4",
        "--checkpoint-interval-ms",
        "0",
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let docs = report["corpus_docs"].as_u64().unwrap();
    assert!(docs > 100, "{report}");
    assert_eq!(report["full"]["docs"], docs, "{report}");
    assert!(report["full"]["tokens_per_s"].as_f64().unwrap() > 0.0);
    assert!(report["full"]["forward_share"].as_f64().unwrap() > 0.0);
    // Killed after its first checkpoint: the rerun starts at least there and does the rest.
    let killed_at = report["killed_at_rows"].as_u64().unwrap();
    let resumed = report["resumed"]["resumed_rows"].as_u64().unwrap();
    assert!(
        killed_at > 0 && resumed >= killed_at && resumed < docs,
        "{report}"
    );
    assert_eq!(report["resumed"]["docs"].as_u64().unwrap(), docs - resumed);
    assert_eq!(report["agreement"]["resumed_file_rows"], docs, "{report}");
    assert!(report["agreement"]["min_cosine"].as_f64().unwrap() >= 0.9999);

    let summary_out = summary(&dir, "index\tok\t1000\n");
    let stdout = String::from_utf8_lossy(&summary_out.stdout);
    assert_eq!(summary_out.status.code(), Some(0), "{summary_out:?}");
    assert!(
        stdout.contains(&format!(
            "killed at {killed_at} rows, resumed {resumed} rows"
        )),
        "{stdout}"
    );
    let mut failed = report;
    failed["passed"] = false.into();
    failed["problem"] = "the rerun did not continue from the checkpoint".into();
    std::fs::write(&json, failed.to_string()).unwrap();
    let summary_out = summary(&dir, "index\tFAIL(rc=1)\t1000\n");
    let stdout = String::from_utf8_lossy(&summary_out.stdout);
    assert_eq!(summary_out.status.code(), Some(1), "{summary_out:?}");
    assert!(
        stdout.contains("FAILED: the rerun did not continue from the checkpoint"),
        "{stdout}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
