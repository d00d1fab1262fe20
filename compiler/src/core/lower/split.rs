//! ONNX `Split` with static shapes as one `extract_slice` per output: each piece is then a plain slice
//! (a generated kernel on the GPU, where a many-output op would run on the host), the same
//! values on both backends. A split whose sizes are known only at run time stays one `split`.

use super::Lowering;
use crate::error::CompileError;
use ppmoe_frontend::infer::norm_axis;
use ppmoe_frontend::Node;
use ppmoe_runtime::program::Op;

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
        let mut lo = 0usize;
        for (name, size) in node.outputs.iter().zip(sizes) {
            let mut offsets = vec![0; x_shape.len()];
            let mut piece = x_shape.clone();
            (offsets[a], piece[a]) = (lo, size);
            let op = Op::ExtractSlice {
                offsets,
                sizes: piece,
                strides: vec![1; x_shape.len()],
            };
            let out = self.buffer_for_value(name, ppmoe_runtime::program::BufferKind::Temp);
            self.emit(node, op, vec![Some(x)], vec![out]);
            lo += size;
        }
        Ok(true)
    }
}
