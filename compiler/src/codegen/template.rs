//! Kernel bodies written as MLIR (`templates/*.mlir`), specialised by the compiler: each
//! `{{name}}` is replaced by the value the generator gives for it. A template reads as the
//! kernel it becomes, where a `format!` literal of doubled braces and `\n` escapes did not.
//!
//!   %h = arith.constant {{h}} : index          (templates/combine.mlir)
//!   specialise(COMBINE, &[("h", &h), ...])     ->  %h = arith.constant 64 : index
//!
//! A placeholder alone on its line, whose value is lines (ends in a newline) or empty, stands
//! for those lines: a part of the kernel made by another template sits in its own line where
//! it goes, and a part a kernel leaves out leaves no blank line.

use std::fmt::{Display, Write};

/// `template` with each `{{name}}` replaced by its value in `values`. A placeholder without a
/// value is left as it is, which MLIR's parser then refuses by line (and the template tests
/// catch first).
pub fn specialise(template: &str, values: &[(&str, &dyn Display)]) -> String {
    let mut out = String::with_capacity(template.len() + 64);
    let mut rest = template;
    while let Some(at) = rest.find("{{") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let Some(end) = after.find("}}") else {
            break;
        };
        let name = &after[..end];
        let placeholder = &rest[at..at + end + 4];
        let alone = out.is_empty() || out.ends_with('\n');
        rest = &after[end + 2..];
        match values.iter().find(|(k, _)| *k == name) {
            Some((_, v)) => {
                let start = out.len();
                let _ = write!(out, "{v}");
                // Lines (or none) in a line of their own: the template's line break is the
                // value's.
                let lines = out.len() == start || out.ends_with('\n');
                if alone && lines {
                    rest = rest.strip_prefix('\n').unwrap_or(rest);
                }
            }
            None => out.push_str(placeholder),
        }
    }
    out.push_str(rest);
    out
}

/// `template` specialised, every line indented by `ind`: a part used at several depths of a
/// kernel is written at none.
pub fn specialise_at(template: &str, ind: &str, values: &[(&str, &dyn Display)]) -> String {
    let text = specialise(template, values);
    let mut out = String::with_capacity(text.len() + 16 * ind.len());
    for line in text.split_inclusive('\n') {
        out.push_str(ind);
        out.push_str(line);
    }
    out
}

/// The placeholders of `text` left unspecialised.
#[cfg(test)]
pub fn unbound(text: &str) -> Vec<&str> {
    text.match_indices("{{")
        .filter_map(|(at, _)| {
            let after = &text[at + 2..];
            after.find("}}").map(|end| &after[..end])
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{specialise, specialise_at, unbound};

    /// Every template specialised as its generator does leaves no placeholder, and the result
    /// parses as the body of a kernel (MLIR's parser would refuse a `{{name}}`).
    #[test]
    fn every_template_is_fully_specialised_by_its_generator() {
        let [norm, mean, softmax] = crate::codegen::kernel_gen::row_bodies_for_test();
        let kernels = [
            crate::codegen::experts_kernels::combine_pairs_for_test(),
            crate::codegen::top_k::row_body_for_test(),
            norm,
            mean,
            softmax,
        ];
        for k in &kernels {
            assert!(unbound(k).is_empty(), "{k}");
            assert!(k.contains("scf.for"), "{k}");
        }
    }

    /// Every form of the tensor-core projections (mma.sync; wgmma with all threads copying,
    /// warp-specialised, persistent, ping-pong, sorted), plain and fused, built from the
    /// templates of `templates/tensor_core/` and `templates/warpgroup/`, leaves no placeholder
    /// and closes every region it opens.
    #[test]
    fn every_projection_form_is_fully_specialised() {
        use crate::codegen::tensor_core_projection::TensorCoreProjection;
        for (warpgroups, producer, persistent, pingpong, sorted) in
            super::super::tensor_core_projection::FORMS
        {
            for act in [
                None,
                Some(crate::codegen::experts_kernels::silu_gated_math()),
            ] {
                let kernel = TensorCoreProjection {
                    name: "t_form".into(),
                    din: 128,
                    dout: 256,
                    div: 2,
                    slots: 64,
                    act,
                    warpgroups,
                    producer,
                    persistent,
                    pingpong,
                    sorted,
                }
                .kernel();
                assert!(unbound(&kernel).is_empty(), "{:?}", unbound(&kernel));
                assert_eq!(kernel.matches('{').count(), kernel.matches('}').count());
            }
        }
    }

    /// Every file under `templates/` is a generator's (its path in an `include_str!` of a
    /// source beside it): a template no generator reads would be a kernel nobody builds.
    #[test]
    fn every_template_file_is_read_by_a_generator() {
        use std::path::{Path, PathBuf};
        fn files(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) {
            for entry in std::fs::read_dir(dir).expect("reads the folder").flatten() {
                let path = entry.path();
                if path.is_dir() {
                    files(&path, ext, out);
                } else if path.extension().is_some_and(|e| e == ext) {
                    out.push(path);
                }
            }
        }
        let codegen = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/codegen");
        let (mut sources, mut templates) = (Vec::new(), Vec::new());
        files(&codegen, "rs", &mut sources);
        files(&codegen.join("templates"), "mlir", &mut templates);
        let text: String = sources
            .iter()
            .map(|f| std::fs::read_to_string(f).expect("reads the source"))
            .collect();
        assert!(templates.len() > 100, "{} templates", templates.len());
        for t in &templates {
            let rel = t.strip_prefix(&codegen).expect("under codegen");
            let named = format!("{}\")", rel.display());
            assert!(
                text.contains(&named),
                "no generator includes {}",
                rel.display()
            );
        }
    }

    #[test]
    fn placeholders_take_their_values_and_the_rest_is_kept() {
        let t = "%h = arith.constant {{h}} : index\n%k = arith.constant {{k}} : index {\n}\n";
        let s = specialise(t, &[("h", &64), ("k", &"2")]);
        assert_eq!(
            s,
            "%h = arith.constant 64 : index\n%k = arith.constant 2 : index {\n}\n"
        );
        let lines = "  %a = x\n{{part}}\n  %b = y\n";
        let part = "  %p = z\n";
        assert_eq!(
            specialise(lines, &[("part", &part)]),
            "  %a = x\n  %p = z\n  %b = y\n"
        );
        // Not alone on its line, or not lines: the template's line break stays.
        assert_eq!(
            specialise("x {{part}}\ny\n", &[("part", &"a\n")]),
            "x a\n\ny\n"
        );
        assert_eq!(specialise("{{v}}\ny\n", &[("v", &"%a")]), "%a\ny\n");
        assert_eq!(
            specialise_at("%a = x\n  %b = y\n", "    ", &[]),
            "    %a = x\n      %b = y\n"
        );
        let partial = specialise(t, &[("h", &64)]);
        assert_eq!(unbound(&partial), ["k"]);
        assert!(unbound(&s).is_empty());
    }
}
