//! Kernel bodies written as MLIR (`templates/*.mlir`), specialised by the compiler: each
//! `{{name}}` is replaced by the value the generator gives for it. A template reads as the
//! kernel it becomes, where a `format!` literal of doubled braces and `\n` escapes did not.
//!
//!   %h = arith.constant {{h}} : index          (templates/combine.mlir)
//!   specialise(COMBINE, &[("h", &h), ...])     ->  %h = arith.constant 64 : index

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
        match values.iter().find(|(k, _)| *k == name) {
            Some((_, v)) => {
                let _ = write!(out, "{v}");
            }
            None => out.push_str(&rest[at..at + end + 4]),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
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
    use super::{specialise, unbound};

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

    #[test]
    fn placeholders_take_their_values_and_the_rest_is_kept() {
        let t = "%h = arith.constant {{h}} : index\n%k = arith.constant {{k}} : index {\n}\n";
        let s = specialise(t, &[("h", &64), ("k", &"2")]);
        assert_eq!(
            s,
            "%h = arith.constant 64 : index\n%k = arith.constant 2 : index {\n}\n"
        );
        let partial = specialise(t, &[("h", &64)]);
        assert_eq!(unbound(&partial), ["k"]);
        assert!(unbound(&s).is_empty());
    }
}
