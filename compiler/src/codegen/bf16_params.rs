//! bf16 activations in the generated kernels: a kernel's parameter whose buffer is bf16 in the
//! model is made a bf16 memref, each load of it widened (exactly) to the f32 the kernel
//! computes in, each store to it rounded to bf16 (to nearest even, as PyTorch's bf16 ops round
//! their results and the CPU backend's bf16 buffers hold them). The kernel's arithmetic stays
//! f32; its bytes in and out are halved. A parameter is narrowed only where every use of it in
//! the kernel is a plain element load or store (`memref.load %aK[..]`, `memref.store v,
//! %aK[..]`); any other use leaves it f32. The GPU plan lists the narrowed parameters
//! (`GpuOp::Kernel::bf16`, `GpuOp::Pointwise::bf16`) for the runtime, which passes bf16 bits
//! for them (narrowing an f32 value where it holds one) and keeps such results as bits.

use super::kernel_gen::Lowered;
use ppmoe_runtime::program::Program;
use ppmoe_runtime::DType;

/// Narrows the bf16 parameters of every generated `Kernel` and `Pointwise` step of `p`: their
/// text in `funcs`, their lists in `lowered`.
pub(super) fn narrow(p: &Program, lowered: &mut [Lowered], funcs: &mut String) {
    for (i, step) in lowered.iter_mut().enumerate() {
        let name = match step {
            Lowered::Kernel { name, .. } | Lowered::Pointwise { name, .. } => name.clone(),
            _ => continue,
        };
        let Some(params) = p.generated_params(i, step) else {
            continue;
        };
        let Some((start, end)) = kernel_span(funcs, &name) else {
            continue;
        };
        let mut text = funcs[start..end].to_string();
        let mut done = Vec::new();
        for (k, &b) in params.iter().enumerate() {
            if p.buffers[b].dtype != DType::BF16 {
                continue;
            }
            if let Some(t) = narrow_param(&text, k) {
                text = t;
                done.push(k);
            }
        }
        // Added to those a kernel takes as bits by its own making (attention's words).
        if let (false, Lowered::Kernel { bf16, .. } | Lowered::Pointwise { bf16, .. }) =
            (done.is_empty(), step)
        {
            funcs.replace_range(start..end, &text);
            bf16.extend(done);
            bf16.sort_unstable();
            bf16.dedup();
        }
    }
}

/// Where kernel `name`'s `gpu.func` stands in `funcs`: from its line to the next kernel's.
fn kernel_span(funcs: &str, name: &str) -> Option<(usize, usize)> {
    let start = funcs.find(&format!("    gpu.func @{name}("))?;
    let end = funcs[start + 1..]
        .find("    gpu.func @")
        .map_or(funcs.len(), |e| start + 1 + e);
    Some((start, end))
}

/// Whether `text` names `param` (`%a3`, not `%a31`).
fn names(text: &str, param: &str) -> bool {
    text.match_indices(param).any(|(at, _)| {
        !text[at + param.len()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

/// Kernel `text` (one `gpu.func` of `%aN` parameters) with parameter `k` narrowed to bf16, or
/// None where it is not an f32 memref or is used otherwise than by element loads and stores.
pub(super) fn narrow_param(text: &str, k: usize) -> Option<String> {
    let param = format!("%a{k}");
    let (head, body) = text.split_once('\n')?;
    let decl = format!("{param}: memref<");
    let at = head.find(&decl)? + decl.len();
    let shape_end = at + head[at..].find('>')?;
    let shape = head[at..shape_end].strip_suffix("xf32")?;
    let (f32_type, bf16_type) = (
        format!("memref<{shape}xf32>"),
        format!("memref<{shape}xbf16>"),
    );
    let head = format!(
        "{}{bf16_type}{}",
        &head[..at - "memref<".len()],
        &head[shape_end + 1..]
    );
    let mut out = head;
    out.push('\n');
    for (n, line) in body.split_inclusive('\n').enumerate() {
        if !names(line, &param) {
            out.push_str(line);
            continue;
        }
        let t = line.trim_start();
        let indent = &line[..line.len() - t.len()];
        let t = t.trim_end();
        let typed = format!(" : {f32_type}");
        let access = t.strip_suffix(&typed)?;
        let index = format!("{param}[");
        if let Some((value, load)) = access.split_once(" = memref.load ") {
            let rest = load.strip_prefix(&index)?;
            if names(rest, &param) || names(value, &param) {
                return None;
            }
            let bits = format!("{value}_bf{n}");
            out.push_str(&format!(
                "{indent}{bits} = memref.load {index}{rest} : {bf16_type}\n{indent}{value} = arith.extf {bits} : bf16 to f32\n"
            ));
        } else if let Some(store) = access.strip_prefix("memref.store ") {
            let (value, rest) = store.split_once(&format!(", {index}"))?;
            if names(rest, &param) || names(value, &param) {
                return None;
            }
            let bits = format!("%st_bf{n}");
            out.push_str(&format!(
                "{indent}{bits} = arith.truncf {value} : f32 to bf16\n{indent}memref.store {bits}, {index}{rest} : {bf16_type}\n"
            ));
        } else {
            return None;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KERNEL: &str = "    gpu.func @k3_add(%a0: memref<8xf32>, %a1: memref<8xf32>, %a10: memref<8xf32>) kernel {\n        %x = memref.load %a0[%i] : memref<8xf32>\n        %y = memref.load %a1[%i] : memref<8xf32>\n        %z = arith.addf %x, %y : f32\n        memref.store %z, %a10[%i] : memref<8xf32>\n      gpu.return\n    }\n";

    #[test]
    fn a_parameters_loads_are_widened_and_its_stores_rounded() {
        let t = narrow_param(KERNEL, 0).unwrap();
        assert!(t.contains("%a0: memref<8xbf16>, %a1: memref<8xf32>"), "{t}");
        assert!(t.contains("%x_bf0 = memref.load %a0[%i] : memref<8xbf16>\n        %x = arith.extf %x_bf0 : bf16 to f32\n"), "{t}");
        assert!(
            t.contains("%y = memref.load %a1[%i] : memref<8xf32>"),
            "{t}"
        );
        let t = narrow_param(&t, 10).unwrap();
        assert!(t.contains("%a10: memref<8xbf16>) kernel"), "{t}");
        assert!(t.contains("%st_bf4 = arith.truncf %z : f32 to bf16\n        memref.store %st_bf4, %a10[%i] : memref<8xbf16>\n"), "{t}");
        // %a1 is not %a10.
        assert!(t.contains("%a1: memref<8xf32>"));
    }

    #[test]
    fn a_parameter_used_otherwise_stays_f32() {
        let other = KERNEL.replace(
            "        %z = arith.addf",
            "        %d = memref.dim %a0, %c0 : memref<8xf32>\n        %z = arith.addf",
        );
        assert!(narrow_param(&other, 0).is_none());
        assert!(narrow_param(&other, 1).is_some());
        let i32s = KERNEL.replace("%a0: memref<8xf32>", "%a0: memref<8xi32>");
        assert!(narrow_param(&i32s, 0).is_none());
    }
}
