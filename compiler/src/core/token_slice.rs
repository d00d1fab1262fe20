//! A token slice (`TokenSlice`: piece `index` of `parts` equal pieces of one axis, a rank's
//! share of the tokens or of the heads) of static shapes, printed as the `tensor.extract_slice`
//! that takes that piece, marked `ppmoe.token_slice = array<i64: axis, parts>`, and read back
//! from it. The slice computes the piece; the mark keeps what the passes and the runtime read
//! (which rank's share it is: `ppmoe-rewrite` matches a layer's own token slices, the GPU
//! runtime the all-to-all form's), which a plain slice of the same bounds does not say.
//!
//! ```text
//! %xs = tensor.extract_slice %x[8, 0] [8, 64] [1, 1] {ppmoe.token_slice = array<i64: 0, 2>}
//!         : tensor<16x64xf32> to tensor<8x64xf32>            (piece 1 of 2 along axis 0)
//! ```

use super::read::i64_list;
use melior::ir::operation::{OperationLike, OperationRef};
use ppmoe_runtime::program::Op;

/// The mark's name.
pub const MARK: &str = "ppmoe.token_slice";

/// A slice's static offsets, sizes and strides.
pub type Bounds = (Vec<usize>, Vec<usize>, Vec<usize>);

/// The bounds of piece `index` of `parts` along `axis` of a tensor of `shape` (static), where
/// the axis holds `parts` equal pieces.
pub fn bounds(op: &Op, shape: &[usize]) -> Option<Bounds> {
    let Op::TokenSlice { axis, index, parts } = *op else {
        return None;
    };
    let d = *shape.get(axis)?;
    if parts == 0 || d % parts != 0 || index >= parts {
        return None;
    }
    let piece = d / parts;
    let mut offsets = vec![0; shape.len()];
    offsets[axis] = index * piece;
    let mut sizes = shape.to_vec();
    sizes[axis] = piece;
    Some((offsets, sizes, vec![1; shape.len()]))
}

/// The mark's text for a token slice along `axis` in `parts`.
pub fn mark(axis: usize, parts: usize) -> String {
    format!("{{{MARK} = array<i64: {axis}, {parts}>}}")
}

/// The token slice a marked `tensor.extract_slice` of `source`'s shape and these bounds reads
/// back as: its bounds must be exactly that piece's.
pub fn read(op: &OperationRef, source: &[usize], bounds: &Bounds) -> Result<Op, String> {
    let refuse = |what: &str| format!("'tensor.extract_slice' marked {MARK}: {what}");
    let marked = (op.attribute(MARK).ok()).and_then(i64_list);
    let Some([axis, parts]) = marked.and_then(|v| <[i64; 2]>::try_from(v).ok()) else {
        return Err(refuse("expected array<i64: axis, parts>"));
    };
    let (axis, parts) = (usize::try_from(axis), usize::try_from(parts));
    let (Ok(axis), Ok(parts)) = (axis, parts) else {
        return Err(refuse("a negative axis or part count"));
    };
    let piece = source.get(axis).and_then(|&d| d.checked_div(parts));
    let index = piece.and_then(|n| bounds.0.get(axis)?.checked_div(n));
    let op = index.map(|index| Op::TokenSlice { axis, index, parts });
    match op.filter(|op| self::bounds(op, source).as_ref() == Some(bounds)) {
        Some(op) => Ok(op),
        None => Err(refuse(&format!(
            "its offsets, sizes and strides are not one of {parts} equal pieces of axis {axis} of a {source:?} tensor"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use crate::core::one_instruction::{program_of, round_trip};
    use ppmoe_runtime::program::Op;
    use ppmoe_runtime::DType;

    fn slice(axis: usize, index: usize) -> Op {
        Op::TokenSlice {
            axis,
            index,
            parts: 2,
        }
    }

    /// Each piece of each axis prints as the marked extract_slice of its bounds, which MLIR
    /// verifies, and reads back as itself, of bf16 tokens into f32 too; a mark its bounds do
    /// not fit is refused by name.
    #[test]
    fn a_token_slice_prints_as_a_marked_extract_slice_and_reads_back_as_itself() {
        for (axis, out) in [(0, [8, 6]), (1, [16, 3])] {
            for index in [0, 1] {
                let inputs = [("x", DType::F32, &[16, 6][..])];
                let p = program_of(slice(axis, index), &inputs, (DType::F32, &out));
                let (text, read) = round_trip(&p);
                let offset = if axis == 0 { index * 8 } else { index * 3 };
                let offsets = if axis == 0 { [offset, 0] } else { [0, offset] };
                let want = format!(
                    "tensor.extract_slice %arg0[{}, {}] [{}, {}] [1, 1] {{ppmoe.token_slice = array<i64: {axis}, 2>}}",
                    offsets[0], offsets[1], out[0], out[1]
                );
                assert!(text.contains(&want), "{want}\n{text}");
                assert!(!text.contains("core.token_slice"), "{text}");
                assert_eq!(read.instructions[0].op, slice(axis, index), "{text}");
            }
        }
        // Half-precision tokens into f32: widened (`ppmoe.widens`), then sliced; read back as
        // the one token slice of the bf16 tokens.
        let inputs = [("x", DType::BF16, &[16, 6][..])];
        let p = program_of(slice(0, 1), &inputs, (DType::F32, &[8, 6]));
        let (text, read) = round_trip(&p);
        let widen =
            "arith.extf %arg0 {ppmoe.widens = true} : tensor<16x6xbf16> to tensor<16x6xf32>";
        assert!(text.contains(widen), "{text}");
        assert_eq!(read.instructions.len(), 1, "{text}");
        assert_eq!(read.instructions[0].op, slice(0, 1), "{text}");
        let x = read.instructions[0].inputs[0].unwrap();
        assert_eq!(read.buffers[x].dtype, DType::BF16, "{text}");
        let inputs = [("x", DType::F32, &[16, 6][..])];
        let p = program_of(slice(0, 1), &inputs, (DType::F32, &[8, 6]));
        let (text, _) = round_trip(&p);
        let odd = text.replace("array<i64: 0, 2>", "array<i64: 0, 4>");
        let context = ppmoe_dialect::context();
        let module = ppmoe_dialect::parse_verified(&context, &odd).unwrap();
        let err = crate::core::read::read_programs(&module.as_operation()).unwrap_err();
        assert!(
            err.contains("not one of 4 equal pieces of axis 0 of a [16, 6] tensor"),
            "{err}"
        );
    }
}
