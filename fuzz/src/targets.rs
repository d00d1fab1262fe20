//! What each fuzz target runs on one input: a reader and everything after it that an input of
//! that kind reaches without a GPU. An `Err` is a fine outcome (the input was refused); only a
//! panic, an abort or a hang is a finding. The outcome's first words steer the corpus.

use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Target {
    /// A .npy file through the runtime's reader.
    Npy,
    /// A bundle manifest through parsing and program validation.
    Manifest,
    /// An ONNX model through import, type inference, the core stage and the MoE raise.
    Onnx,
    /// A StableHLO module through its reader, the core stage and the MoE raise.
    StableHlo,
    /// ppmoe's own IR (`--emit moe` or `sharded` of a fixture) read back and taken through
    /// the later stages at tp 2.
    Ir,
}

impl Target {
    pub fn parse(s: &str) -> Option<Target> {
        match s {
            "npy" => Some(Target::Npy),
            "manifest" => Some(Target::Manifest),
            "onnx" => Some(Target::Onnx),
            "stablehlo" => Some(Target::StableHlo),
            "ir" => Some(Target::Ir),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Target::Npy => "npy",
            Target::Manifest => "manifest",
            Target::Onnx => "onnx",
            Target::StableHlo => "stablehlo",
            Target::Ir => "ir",
        }
    }

    /// Whether mutations that treat the input as text apply.
    pub fn is_text(self) -> bool {
        matches!(self, Target::Manifest | Target::StableHlo | Target::Ir)
    }

    /// Runs the target on `input`; `work` is a folder for the model file the compiler reads.
    /// Returns a short description of the outcome.
    pub fn run(self, input: &[u8], work: &Path) -> String {
        let outcome = match self {
            Target::Npy => ppmoe_runtime::npy::parse_npy(input).map(|t| format!("{:?}", t.shape)),
            Target::Manifest => ppmoe_runtime::bundle::parse_manifest(input)
                .map(|m| format!("{} programs", m.programs.len()))
                .map_err(|e| match e {
                    ppmoe_runtime::bundle::ManifestError::Version(v) => format!("version {v}"),
                    ppmoe_runtime::bundle::ManifestError::Invalid(r) => r,
                }),
            Target::Onnx | Target::StableHlo => {
                let file = work.join(if self == Target::Onnx {
                    "model.onnx"
                } else {
                    "model.mlir"
                });
                if let Err(e) = std::fs::write(&file, input) {
                    return format!("io {e}");
                }
                let mut c = ppmoe_compiler::pipeline::Compilation::new(&file, &[]);
                // Small limits: a hostile size is an error quickly, not minutes of work.
                c.options.eval_limit = Some(16 << 20);
                ppmoe_compiler::pipeline::run_with(c, "moe")
                    .map(|c| format!("{} layers", c.core.map_or(0, |p| p.moe_layers.len())))
                    .map_err(|e| e.to_string())
            }
            Target::Ir => {
                let file = work.join("ir.mlir");
                if let Err(e) = std::fs::write(&file, input) {
                    return format!("io {e}");
                }
                let mut c = ppmoe_compiler::pipeline::Compilation::new(&file, &[]);
                c.options.grid = Some(ppmoe_compiler::distribute::Grid {
                    dp: 1,
                    pp: 1,
                    tp: 2,
                });
                // To the kernel plan: a kernels module is read back (and checked) there too.
                ppmoe_compiler::pipeline::run_with(c, "kernels")
                    .map(|c| format!("{} ranks", c.ranks.len()))
                    .map_err(|e| e.to_string())
            }
        };
        match outcome {
            Ok(s) => format!("ok {s}"),
            Err(e) => {
                // Numbers and names vary with the input; the first words say which check.
                let words: Vec<&str> = e.split_whitespace().take(6).collect();
                format!("err {}", words.join(" "))
            }
        }
        .chars()
        .map(|c| if c.is_ascii_digit() { '#' } else { c })
        .collect()
    }
}
