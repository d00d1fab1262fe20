//! ONNX `Split` with static shapes as one `slice` per output: each piece is then a plain slice
//! (a generated kernel on the GPU, where a many-output op would run on the host), the same
//! values on both backends. A split whose sizes are known only at run time stays one `split`.

use super::Lowering;
use crate::error::CompileError;
use ppmoe_frontend::infer::norm_axis;
use ppmoe_frontend::Node;
use ppmoe_runtime::program::Op;
use ppmoe_runtime::Tensor;

impl Lowering<'_> {
    /// True when the node was lowered as slices; false leaves it to the generic lowering.
    pub(super) fn lower_split_as_slices(&mut self, node: &Node) -> Result<bool, CompileError> {
        let Some(x_shape) = self.static_shape(&node.inputs[0]) else {
            return Ok(false);
        };
        let Some(outs) = node
            .outputs
            .iter()
            .map(|o| (!o.is_empty()).then(|| self.static_shape(o)).flatten())
            .collect::<Option<Vec<Vec<usize>>>>()
        else {
            return Ok(false);
        };
        let axis = super::attr_i(node, "axis", 0);
        let a = norm_axis(axis, x_shape.len()).map_err(|e| self.node_err(node, e))?;
        let sizes: Vec<usize> = outs
            .iter()
            .map(|s| s.get(a).copied().unwrap_or(0))
            .collect();
        if sizes.iter().sum::<usize>() != x_shape[a] {
            return Err(self.node_err(
                node,
                format!(
                    "pieces of {sizes:?} along axis {axis} do not make up the input's {}",
                    x_shape[a]
                ),
            ));
        }
        let x = self.operand(&node.inputs[0]);
        let axes = self.const_operand(&node.outputs[0], Tensor::i64(vec![1], vec![a as i64]));
        let mut lo = 0usize;
        for (name, size) in node.outputs.iter().zip(sizes) {
            let hint = name.clone();
            let starts = self.const_operand(&hint, Tensor::i64(vec![1], vec![lo as i64]));
            let ends = self.const_operand(&hint, Tensor::i64(vec![1], vec![(lo + size) as i64]));
            let out = self.buffer_for_value(name, ppmoe_runtime::program::BufferKind::Temp);
            self.emit(
                node,
                Op::Slice,
                vec![Some(x), Some(starts), Some(ends), Some(axes)],
                vec![out],
            );
            lo += size;
        }
        Ok(true)
    }
}
