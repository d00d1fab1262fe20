//! `ppmoe-run` must travel to GPU machines: no MLIR or LLVM in it, and small.
//! (A test binary of the runtime crate: it links no MLIR, so it costs little to keep separate.)

use std::process::Command;

#[test]
fn ppmoe_run_links_no_mlir_or_llvm_and_is_small() {
    let bin = env!("CARGO_BIN_EXE_ppmoe-run");
    let ldd = Command::new("ldd").arg(bin).output().expect("ldd runs");
    let libs = String::from_utf8_lossy(&ldd.stdout).to_lowercase();
    assert!(
        !libs.contains("mlir") && !libs.contains("llvm"),
        "ppmoe-run links: {libs}"
    );
    let size = std::fs::metadata(bin).unwrap().len();
    // Static MLIR alone is hundreds of MB; the runner is a few MB (debug builds included).
    assert!(size < 32 * 1024 * 1024, "ppmoe-run is {size} bytes");
    let bytes = std::fs::read(bin).unwrap();
    assert!(
        !bytes.windows(16).any(|w| w == b"mlirContextCreat"),
        "MLIR's C API is linked in"
    );
}

#[test]
fn ppmoe_run_on_a_missing_bundle_fails_cleanly() {
    let out = Command::new(env!("CARGO_BIN_EXE_ppmoe-run"))
        .args([
            "/nonexistent/bundle",
            "--input",
            "x.npy",
            "--output-dir",
            "/tmp/ppmoe-run-test-out",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("error: /nonexistent/bundle"), "{err}");
    assert!(!err.contains("panicked"));
}
