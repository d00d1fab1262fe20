//! The attributes that standard ONNX ops accept (names and kinds, ai.onnx opsets 13 to 23), so
//! that a misspelt or mistyped attribute is an error at import rather than a wrong answer later.
//! Ops not listed here are not checked (their attributes are kept as they are).

/// The allowed attributes of a default-domain op, or `None` when ppmoe has no schema for it.
pub fn attributes(op: &str) -> Option<&'static [(&'static str, &'static str)]> {
    Some(match op {
        "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Sqrt" | "Neg" | "Reciprocal" | "Exp" | "Log"
        | "Sigmoid" | "Tanh" | "Erf" | "Abs" | "Equal" | "Less" | "Greater" | "LessOrEqual"
        | "GreaterOrEqual" | "Not" | "And" | "Or" | "Where" | "MatMul" | "Shape" | "Expand"
        | "Tile" | "Identity" | "Max" | "Min" | "Sin" | "Cos" | "Floor" | "Ceil" | "Relu"
        | "NonZero" | "Sign" | "Xor" | "Size" => match op {
            "Shape" => &[("start", "int"), ("end", "int")],
            _ => &[],
        },
        "Gemm" => &[
            ("alpha", "float"),
            ("beta", "float"),
            ("transA", "int"),
            ("transB", "int"),
        ],
        "Softmax" | "LogSoftmax" => &[("axis", "int")],
        "ReduceSum" | "ReduceMean" | "ReduceMax" | "ReduceMin" | "ReduceProd" | "ReduceL2" => &[
            ("axes", "ints"),
            ("keepdims", "int"),
            ("noop_with_empty_axes", "int"),
        ],
        "Reshape" => &[("allowzero", "int")],
        "Transpose" => &[("perm", "ints")],
        "Squeeze" | "Unsqueeze" => &[("axes", "ints")],
        "Concat" => &[("axis", "int")],
        "Split" => &[("axis", "int"), ("split", "ints"), ("num_outputs", "int")],
        "Slice" => &[("starts", "ints"), ("ends", "ints"), ("axes", "ints")],
        "Gather" | "GatherElements" => &[("axis", "int")],
        "GatherND" => &[("batch_dims", "int")],
        "ScatterND" => &[("reduction", "string")],
        "ScatterElements" => &[("axis", "int"), ("reduction", "string")],
        "Cast" => &[("to", "int"), ("saturate", "int"), ("round_mode", "string")],
        "CastLike" => &[("saturate", "int"), ("round_mode", "string")],
        "Clip" => &[("min", "float"), ("max", "float")],
        "TopK" => &[("axis", "int"), ("largest", "int"), ("sorted", "int")],
        "OneHot" => &[("axis", "int")],
        "Range" => &[],
        "ConstantOfShape" => &[("value", "tensor")],
        "Constant" => &[
            ("value", "tensor"),
            ("value_float", "float"),
            ("value_floats", "floats"),
            ("value_int", "int"),
            ("value_ints", "ints"),
            ("value_string", "string"),
            ("value_strings", "strings"),
            ("sparse_value", "sparse_tensor"),
        ],
        "Trilu" => &[("upper", "int")],
        "CumSum" => &[("exclusive", "int"), ("reverse", "int")],
        "Einsum" => &[("equation", "string")],
        "LayerNormalization" => &[("axis", "int"), ("epsilon", "float"), ("stash_type", "int")],
        "RMSNormalization" => &[("axis", "int"), ("epsilon", "float"), ("stash_type", "int")],
        "Flatten" => &[("axis", "int")],
        "ArgMax" | "ArgMin" => &[
            ("axis", "int"),
            ("keepdims", "int"),
            ("select_last_index", "int"),
        ],
        "Gelu" => &[("approximate", "string")],
        "LeakyRelu" => &[("alpha", "float")],
        "HardSigmoid" => &[("alpha", "float"), ("beta", "float")],
        _ => return None,
    })
}
