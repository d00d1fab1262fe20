//! Mutations of an ONNX model's protobuf fields rather than its bytes: most byte mutations of
//! a protobuf fail to decode, so these reach type inference, lowering and the raise with
//! hostile values: dimensions and attribute integers at the edges, element types swapped,
//! nodes removed, operands rewired, op types exchanged.

use crate::mutate::Rng;
use ppmoe_frontend::onnx_proto as pb;
use prost::Message;

const EDGES: &[i64] = &[
    -2,
    -1,
    0,
    1,
    2,
    3,
    1 << 31,
    1 << 32,
    100_000,
    i64::MAX,
    i64::MIN,
];

/// One field mutation of the model in `input`; None when it does not decode.
pub fn mutate(rng: &mut Rng, input: &[u8]) -> Option<Vec<u8>> {
    let mut m = pb::ModelProto::decode(input).ok()?;
    let g = m.graph.as_mut()?;
    let edge = |rng: &mut Rng| EDGES[rng.below(EDGES.len())];
    match rng.below(7) {
        0 if !g.initializer.is_empty() => {
            let t = rng.below(g.initializer.len());
            let dims = &mut g.initializer[t].dims;
            if !dims.is_empty() {
                let d = rng.below(dims.len());
                dims[d] = edge(rng);
            }
        }
        1 if !g.node.is_empty() => {
            let n = rng.below(g.node.len());
            let attrs = &mut g.node[n].attribute;
            if !attrs.is_empty() {
                let k = rng.below(attrs.len());
                let a = &mut attrs[k];
                a.i = edge(rng);
                if !a.ints.is_empty() {
                    let k = rng.below(a.ints.len());
                    a.ints[k] = edge(rng);
                }
            }
        }
        2 if !g.initializer.is_empty() => {
            let t = rng.below(g.initializer.len());
            g.initializer[t].data_type = [0, 1, 2, 6, 7, 9, 10, 11, 16, 99][rng.below(10)];
        }
        3 if !g.node.is_empty() => {
            let n = rng.below(g.node.len());
            g.node.remove(n);
        }
        4 if g.node.len() > 1 => {
            // An operand rewired to another node's result (cycles and type clashes included).
            let (a, b) = (rng.below(g.node.len()), rng.below(g.node.len()));
            let from = g.node[b].output.first().cloned().unwrap_or_default();
            let ins = &mut g.node[a].input;
            if !ins.is_empty() {
                let k = rng.below(ins.len());
                ins[k] = from;
            }
        }
        5 if g.node.len() > 1 => {
            let (a, b) = (rng.below(g.node.len()), rng.below(g.node.len()));
            let op = g.node[b].op_type.clone();
            g.node[a].op_type = op;
        }
        6 if !g.input.is_empty() => {
            use pb::tensor_shape_proto::dimension::Value;
            let i = rng.below(g.input.len());
            if let Some(pb::type_proto::Value::TensorType(t)) =
                g.input[i].r#type.as_mut().and_then(|t| t.value.as_mut())
            {
                if let Some(s) = t.shape.as_mut().filter(|s| !s.dim.is_empty()) {
                    let d = rng.below(s.dim.len());
                    s.dim[d].value = Some(Value::DimValue(edge(rng)));
                }
            }
        }
        _ => {}
    }
    Some(m.encode_to_vec())
}
