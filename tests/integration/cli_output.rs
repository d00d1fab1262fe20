//! The command's output read in part: a reader that stops early (`ppmoe inspect ... | head`, the
//! demo's `awk` after rank 0) leaves the process to end quietly with success, not to panic on
//! the closed pipe (which `println!` does, and which made `examples/demo.sh` fail at random).

use crate::common::fixtures_dir;
use std::process::{Command, Stdio};

#[test]
fn output_whose_reader_has_gone_ends_quietly() {
    let model = fixtures_dir().join("qwen2moe_lm_dynamo/model.onnx");
    for emit in [
        &["--emit", "pipelined", "--tp", "2", "--pp", "2"][..],
        &["--summary"],
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ppmoe"))
            .arg("inspect")
            .arg(&model)
            .args(emit)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ppmoe runs");
        // The reader goes before anything is written: every write meets the closed pipe.
        drop(child.stdout.take());
        let out = child.wait_with_output().expect("ppmoe ends");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{emit:?}: {stderr}");
        assert_eq!(out.status.code(), Some(0), "{emit:?}: {stderr}");
    }
}
