//! The one MoE layer `ppmoe bench --moe H,F,E,K` times: written as an ONNX model (a router
//! MatMul and onnxruntime's fused `com.microsoft.MoE` node, weights as external data), so it
//! goes through the same compiler and runtime as any model. The layer is the one the PyTorch
//! peers compute (`shared/bench/peer_moe_bench.py`): softmax router, top-k, renormalised
//! weights, SwiGLU experts (gate | up concatenated: swiglu_fusion = 2), bf16 expert weights
//! in `nn.Linear`'s order (fc1 [E, 2F, H], fc2 [E, H, F]), scaled as the peers scale theirs;
//! x, the router's weight and y are bf16 as the peers' are (the logits so a bf16 GEMM's,
//! rounded to bf16). `--moe-dtype fp32` writes the same layer with every tensor fp32 (the same
//! random values, unrounded), to time fp32 stacks through the same compiler and runtime.

use anyhow::{Context as _, Result};
use ppmoe_frontend::onnx_proto as pb;
use prost::Message;
use std::io::Write;
use std::path::{Path, PathBuf};

/// H, F, E, k of one layer, and the element type of its tensors.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub hidden: usize,
    pub ffn: usize,
    pub experts: usize,
    pub top_k: usize,
    pub dtype: LayerType,
}

/// The element type of the layer's weights, x and y: bf16, as the peers' are, or fp32.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LayerType {
    Bf16,
    Fp32,
}

impl LayerType {
    /// ONNX's `TensorProto.DataType` of it.
    fn onnx(self) -> i32 {
        match self {
            LayerType::Bf16 => 16,
            LayerType::Fp32 => 1,
        }
    }

    /// Bytes an element.
    pub fn bytes(self) -> usize {
        match self {
            LayerType::Bf16 => 2,
            LayerType::Fp32 => 4,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            LayerType::Bf16 => "bf16",
            LayerType::Fp32 => "fp32",
        }
    }

    /// `x` stored as this type (bf16: rounded to nearest even), little-endian.
    fn extend(self, out: &mut Vec<u8>, x: f32) {
        match self {
            LayerType::Bf16 => out.extend_from_slice(&half_bits(x).to_le_bytes()),
            LayerType::Fp32 => out.extend_from_slice(&x.to_le_bytes()),
        }
    }
}

impl Shape {
    pub fn parse(s: &str) -> Result<Shape> {
        let v: Vec<usize> = s
            .split(',')
            .map(|x| x.trim().parse::<usize>())
            .collect::<Result<_, _>>()
            .with_context(|| format!("--moe {s}: expected H,F,E,K (four integers)"))?;
        let [hidden, ffn, experts, top_k] = v[..] else {
            anyhow::bail!("--moe {s}: expected H,F,E,K (four integers)");
        };
        if hidden == 0 || ffn == 0 || experts == 0 || top_k == 0 || top_k > experts {
            anyhow::bail!("--moe {s}: sizes must be positive and K at most E");
        }
        Ok(Shape {
            hidden,
            ffn,
            experts,
            top_k,
            dtype: LayerType::Bf16,
        })
    }

    /// The layer's useful FLOPs at `t` tokens (the peers' count: router and the k experts).
    pub fn flops(&self, t: usize) -> f64 {
        let (h, f, e, k) = (
            self.hidden as f64,
            self.ffn as f64,
            self.experts as f64,
            self.top_k as f64,
        );
        let t = t as f64;
        2.0 * t * k * 3.0 * h * f + 2.0 * t * h * e
    }

    /// The fewest bytes it must move at `t` tokens (the peers' count): the weights of every
    /// expert that can be hit, and the tokens in and out.
    pub fn bytes(&self, t: usize) -> f64 {
        let hit = self.experts.min(t * self.top_k) as f64;
        let elem = self.dtype.bytes() as f64;
        3.0 * hit * (self.hidden * self.ffn) as f64 * elem + 2.0 * (t * self.hidden) as f64 * elem
    }
}

/// Writes `dir/model.onnx` (+ `model.onnx.data`) for `shape`, the token count dynamic.
pub fn write(dir: &Path, shape: Shape, seed: u64) -> Result<PathBuf> {
    let Shape {
        hidden: h,
        ffn: f,
        experts: e,
        dtype,
        ..
    } = shape;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // The same layer written before into this folder (several benches of one shape share a
    // --work-dir): its stamp, written last, says which; gigabytes are not written again.
    let stamp_path = dir.join("model.stamp");
    // (A layer written before the layer's x, router and y were bf16 has no "bf16" in its
    // stamp: written again.)
    let stamp = format!("{h},{f},{e},{} seed {seed} {}\n", shape.top_k, dtype.name());
    let path = dir.join("model.onnx");
    if std::fs::read_to_string(&stamp_path).is_ok_and(|s| s == stamp) && path.is_file() {
        return Ok(path);
    }
    let _ = std::fs::remove_file(&stamp_path);
    let data_name = "model.onnx.data";
    let data_path = dir.join(data_name);
    let mut data = std::io::BufWriter::new(
        std::fs::File::create(&data_path)
            .with_context(|| format!("creating {}", data_path.display()))?,
    );
    let mut offset = 0u64;
    let mut rng = seed | 1;
    let mut external = |name: &str, dims: Vec<i64>, scale: f32| -> Result<pb::TensorProto> {
        let n: usize = dims.iter().map(|&d| d as usize).product();
        let mut left = n;
        let mut chunk = Vec::with_capacity(1 << 20);
        while left > 0 {
            let m = left.min(1 << 18);
            chunk.clear();
            for _ in 0..m {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                // Uniform with the variance of N(0, 1), times the peers' scale.
                let u = (rng >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
                dtype.extend(&mut chunk, u * 3f32.sqrt() * scale);
            }
            data.write_all(&chunk)?;
            left -= m;
        }
        let length = (dtype.bytes() * n) as u64;
        let entry = |k: &str, v: String| pb::StringStringEntryProto {
            key: k.into(),
            value: v,
        };
        let t = pb::TensorProto {
            name: name.into(),
            dims,
            data_type: dtype.onnx(),
            data_location: 1,
            external_data: vec![
                entry("location", data_name.into()),
                entry("offset", offset.to_string()),
                entry("length", length.to_string()),
            ],
            ..Default::default()
        };
        offset += length;
        Ok(t)
    };
    let (he, fe) = ((h as f32).sqrt().recip(), (f as f32).sqrt().recip());
    let fc1 = external("fc1", vec![e as i64, 2 * f as i64, h as i64], he)?;
    let fc2 = external("fc2", vec![e as i64, h as i64, f as i64], fe)?;
    data.flush()?;
    drop(data);
    // bf16, as the peers' router is (and a bf16 model's: its logits a bf16 GEMM's).
    let mut router = Vec::with_capacity(h * e * dtype.bytes());
    for i in 0..h * e {
        let x = ((i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40) as f32 / (1u64 << 24) as f32;
        dtype.extend(&mut router, (x * 2.0 - 1.0) * 3f32.sqrt() * he);
    }
    let model = model_proto(shape, fc1, fc2, router);
    std::fs::write(&path, model.encode_to_vec())
        .with_context(|| format!("writing {}", path.display()))?;
    std::fs::write(&stamp_path, stamp)
        .with_context(|| format!("writing {}", stamp_path.display()))?;
    Ok(path)
}

/// The layer at `model` as `ppmoe bench --moe` compiles it at `tokens` tokens: for CUDA, the
/// weights kept in the layer's type (one rank; the caller sets a grid).
pub fn cuda_compilation(
    model: &Path,
    shape: Shape,
    tokens: usize,
) -> ppmoe_compiler::pipeline::Compilation {
    let x = vec![tokens as i64, shape.hidden as i64];
    let mut c = ppmoe_compiler::pipeline::Compilation::new(model, &[("x".to_string(), x)]);
    c.options.target_cuda = true;
    c.options.weight_dtype = (shape.dtype == LayerType::Bf16).then_some(ppmoe_runtime::DType::BF16);
    c
}

/// bf16 bits of `x`, rounded to nearest even.
fn half_bits(x: f32) -> u16 {
    let b = x.to_bits();
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

fn model_proto(
    s: Shape,
    fc1: pb::TensorProto,
    fc2: pb::TensorProto,
    router: Vec<u8>,
) -> pb::ModelProto {
    use pb::tensor_shape_proto::{dimension::Value, Dimension};
    let vi = |name: &str| pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(
                pb::type_proto::TensorTypeProto {
                    // bf16 (16): the layer's x and y, as the peers' are; or fp32 (1).
                    elem_type: s.dtype.onnx(),
                    shape: Some(pb::TensorShapeProto {
                        dim: vec![
                            Dimension {
                                value: Some(Value::DimParam("tokens".into())),
                            },
                            Dimension {
                                value: Some(Value::DimValue(s.hidden as i64)),
                            },
                        ],
                    }),
                },
            )),
        }),
    };
    let attr_i = |n: &str, v: i64| pb::AttributeProto {
        name: n.into(),
        r#type: pb::attribute_type::INT,
        i: v,
        ..Default::default()
    };
    let node = |op: &str, domain: &str, inputs: &[&str], out: &str, attribute| pb::NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![out.into()],
        name: out.into(),
        op_type: op.into(),
        domain: domain.into(),
        attribute,
    };
    let graph = pb::GraphProto {
        name: "moe_layer".into(),
        node: vec![
            node("MatMul", "", &["x", "router"], "logits", vec![]),
            node(
                "MoE",
                "com.microsoft",
                &["x", "logits", "fc1", "", "fc2"],
                "y",
                vec![
                    attr_i("k", s.top_k as i64),
                    pb::AttributeProto {
                        name: "activation_type".into(),
                        r#type: pb::attribute_type::STRING,
                        s: b"swiglu".to_vec(),
                        ..Default::default()
                    },
                    attr_i("swiglu_fusion", 2),
                    attr_i("normalize_routing_weights", 1),
                ],
            ),
        ],
        initializer: vec![
            pb::TensorProto {
                name: "router".into(),
                dims: vec![s.hidden as i64, s.experts as i64],
                data_type: s.dtype.onnx(),
                raw_data: router,
                ..Default::default()
            },
            fc1,
            fc2,
        ],
        input: vec![vi("x")],
        output: vec![vi("y")],
        ..Default::default()
    };
    pb::ModelProto {
        ir_version: 8,
        opset_import: vec![
            pb::OperatorSetIdProto {
                domain: "".into(),
                version: 17,
            },
            pb::OperatorSetIdProto {
                domain: "com.microsoft".into(),
                version: 1,
            },
        ],
        producer_name: "ppmoe bench".into(),
        graph: Some(graph),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ppmoe_runtime::Tensor;

    fn bf16(bits: &[u8]) -> Vec<f64> {
        bits.chunks_exact(2)
            .map(|b| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16) as f64)
            .collect()
    }

    /// The values of `bytes`, stored as `dtype`.
    fn values(bytes: &[u8], dtype: LayerType) -> Vec<f64> {
        match dtype {
            LayerType::Bf16 => bf16(bytes),
            LayerType::Fp32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64)
                .collect(),
        }
    }

    /// ‖got − want‖ / ‖want‖, and ‖want‖ > 0.
    fn relative_error(got: &[f32], want: &[f64]) -> f64 {
        let num: f64 = got
            .iter()
            .zip(want)
            .map(|(&a, b)| (a as f64 - b).powi(2))
            .sum();
        let den: f64 = want.iter().map(|b| b * b).sum();
        assert!(den > 0.0, "a zero reference");
        (num / den).sqrt()
    }

    /// The layer's input x [t, h] (bf16, as the layer takes it) of `value(i)` rounded.
    fn bf16_input(t: usize, h: usize, value: impl Fn(usize) -> f32) -> Tensor {
        let v = (0..t * h).map(value).collect();
        Tensor::f32(vec![t, h], v).stored_as(ppmoe_runtime::DType::BF16)
    }

    /// The layer computed here from the written weights (f64): softmax router, top-k,
    /// renormalised, SwiGLU with gate | up in fc1's rows, fc2 [E, H, F].
    fn reference(dir: &Path, s: Shape, x: &[f32]) -> Vec<f64> {
        let (h, f, e, k) = (s.hidden, s.ffn, s.experts, s.top_k);
        let m = pb::ModelProto::decode(&*std::fs::read(dir.join("model.onnx")).unwrap()).unwrap();
        let router = values(&m.graph.unwrap().initializer[0].raw_data, s.dtype);
        let data = std::fs::read(dir.join("model.onnx.data")).unwrap();
        let (fc1, fc2) = data.split_at(e * 2 * f * h * s.dtype.bytes());
        let (fc1, fc2) = (values(fc1, s.dtype), values(fc2, s.dtype));
        let t = x.len() / h;
        let mut y = vec![0f64; t * h];
        for ti in 0..t {
            let xr: Vec<f64> = x[ti * h..(ti + 1) * h].iter().map(|&v| v as f64).collect();
            let logits: Vec<f64> = (0..e)
                .map(|j| (0..h).map(|i| xr[i] * router[i * e + j]).sum())
                .collect();
            let mut order: Vec<usize> = (0..e).collect();
            order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
            let top = &order[..k];
            // Softmax then renormalised over the top k: the softmax's denominator cancels.
            let w: Vec<f64> = top.iter().map(|&j| logits[j].exp()).collect();
            let sum: f64 = w.iter().sum();
            for (&ex, wt) in top.iter().zip(&w) {
                let row = |r: usize| -> f64 {
                    let base = (ex * 2 * f + r) * h;
                    (0..h).map(|i| xr[i] * fc1[base + i]).sum()
                };
                let act: Vec<f64> = (0..f)
                    .map(|q| {
                        let (g, u) = (row(q), row(f + q));
                        g / (1.0 + (-g).exp()) * u
                    })
                    .collect();
                for c in 0..h {
                    let base = (ex * h + c) * f;
                    let o: f64 = (0..f).map(|q| act[q] * fc2[base + q]).sum();
                    y[ti * h + c] += wt / sum * o;
                }
            }
        }
        y
    }

    #[test]
    fn the_written_layer_compiles_to_the_peers_layer() {
        let d = tempfile::tempdir().unwrap();
        let s = Shape::parse("32,16,4,2").unwrap();
        let model = write(d.path(), s, 7).unwrap();
        // Asked again for the same layer, the folder's copy is kept (its data not rewritten);
        // another seed writes anew.
        let data = d.path().join("model.onnx.data");
        let written = std::fs::metadata(&data).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(write(d.path(), s, 7).unwrap(), model);
        assert_eq!(
            std::fs::metadata(&data).unwrap().modified().unwrap(),
            written
        );
        write(d.path(), s, 8).unwrap();
        assert_ne!(
            std::fs::metadata(&data).unwrap().modified().unwrap(),
            written
        );
        write(d.path(), s, 7).unwrap();
        let t = 6;
        let c = ppmoe_compiler::pipeline::Compilation::new(
            &model,
            &[("x".to_string(), vec![t as i64, s.hidden as i64])],
        );
        ppmoe_compiler::compile(c, &d.path().join("b")).unwrap();
        let bundle = ppmoe_runtime::bundle::read_bundle(&d.path().join("b")).unwrap();
        let value = |i: usize| ((i * 37 % 101) as f32 / 50.0 - 1.0) * 2.0;
        let x = bf16_input(t, s.hidden, value);
        let got =
            ppmoe_runtime::cpu::run_bundle(&bundle, std::slice::from_ref(&x)).unwrap()[0].to_f32();
        // numpy has no bfloat16: x given as an f32 .npy (unrounded) is rounded to the bf16
        // input, to the same bits.
        let npy = d.path().join("x.npy");
        let unrounded: Vec<f32> = (0..t * s.hidden).map(value).collect();
        ppmoe_runtime::npy::write_npy(&npy, &Tensor::f32(vec![t, s.hidden], unrounded)).unwrap();
        let arg = ppmoe_runtime::runner::InputArg::parse(&format!("x={}", npy.display()));
        let bound = ppmoe_runtime::runner::bind_inputs(&bundle, &[arg]).unwrap();
        let fed = bound[0].as_ref().unwrap();
        assert_eq!(fed.dtype, ppmoe_runtime::DType::BF16);
        assert_eq!(fed.to_f32(), x.to_f32());
        let x = x.to_f32();
        let rel = relative_error(&got, &reference(d.path(), s, &x));
        // bf16 weights: the CPU backend rounds the activations fed to them to bf16, as the GPU's
        // bf16 GEMMs do; the reference does not, so they agree to bf16's precision.
        assert!(rel < 1e-2, "relative error {rel}");
        assert!(s.flops(t) > 0.0 && s.bytes(t) > 0.0);
        assert!(Shape::parse("4,4,2,3").is_err(), "k above E");
        assert!(Shape::parse("4,4,2").is_err(), "three sizes");
    }

    /// `--moe-dtype fp32`: the layer written with fp32 x, y and weights, in place of the bf16
    /// one in the same folder, compiled as the bench compiles it (its weights kept fp32), and
    /// run on the CPU backend, computes the reference to fp32's precision.
    #[test]
    fn the_fp32_layer_computes_the_reference_in_fp32() {
        use ppmoe_runtime::program::BufferKind;
        let d = tempfile::tempdir().unwrap();
        let bf16_shape = Shape::parse("32,16,4,2").unwrap();
        let s = Shape {
            dtype: LayerType::Fp32,
            ..bf16_shape
        };
        write(d.path(), bf16_shape, 7).unwrap();
        let model = write(d.path(), s, 7).unwrap();
        let data = std::fs::metadata(d.path().join("model.onnx.data")).unwrap();
        assert_eq!(data.len() as usize, 3 * 4 * 32 * 16 * 4, "fp32 weights");
        let t = 5;
        ppmoe_compiler::compile(cuda_compilation(&model, s, t), &d.path().join("b")).unwrap();
        let bundle = ppmoe_runtime::bundle::read_bundle(&d.path().join("b")).unwrap();
        let rank = &bundle.manifest.programs[0];
        let input = &rank.buffers[rank.inputs[0]];
        assert_eq!(input.dtype, ppmoe_runtime::DType::F32, "x stays fp32");
        let mut weights = rank.buffers.iter().filter(|b| b.kind == BufferKind::Weight);
        assert!(
            weights.clone().count() >= 3,
            "the router and the two stacks"
        );
        assert!(
            weights.all(|b| b.dtype == ppmoe_runtime::DType::F32),
            "weights stay fp32"
        );
        let v: Vec<f32> = (0..t * s.hidden)
            .map(|i| ((i * 41 % 89) as f32 / 44.0 - 1.0) * 2.0)
            .collect();
        let x = Tensor::f32(vec![t, s.hidden], v.clone());
        let got =
            ppmoe_runtime::cpu::run_bundle(&bundle, std::slice::from_ref(&x)).unwrap()[0].to_f32();
        let rel = relative_error(&got, &reference(d.path(), s, &v));
        assert!(rel < 1e-5, "relative error {rel}");
        assert_eq!(
            s.bytes(t),
            2.0 * bf16_shape.bytes(t),
            "fp32 moves twice the bytes"
        );
    }

    /// An fp32 step is grouped on the device (no routing read back) while its first matrix is
    /// at most `SMALL_MATRIX` (16 MiB: H 2048, F 1024 gated) and on the host past it (F 1032,
    /// 16.1 MiB), where the device grouping's tiles would re-read the matrices from memory;
    /// `--emit kernels` says which.
    #[test]
    fn fp32_stacks_group_on_the_device_up_to_a_small_matrix() {
        let d = tempfile::tempdir().unwrap();
        for (ffn, grouping) in [(1024, "device"), (1032, "host")] {
            let s = Shape {
                dtype: LayerType::Fp32,
                ..Shape::parse(&format!("2048,{ffn},2,1")).unwrap()
            };
            let model = write(d.path(), s, 7).unwrap();
            let c = cuda_compilation(&model, s, 64);
            let (kernels, _) = ppmoe_compiler::pipeline::emit(c, "kernels").unwrap();
            let step = kernels
                .lines()
                .find(|l| l.contains("grouping = "))
                .expect("an experts step");
            let want = format!("grouping = \"{grouping}\",");
            assert!(step.contains(&want), "F {ffn}: {step}");
            assert_eq!(
                kernels.contains("_tgroup("),
                grouping == "device",
                "F {ffn}"
            );
        }
    }

    /// The CUDA route of many experts (128, as Qwen3-30B-A3B's; the fixtures have 4 to 8)
    /// reads and scores each lane's four experts once, before its eight passes (each in a
    /// region of its own); the values are checked against the CPU backend on the GPU machine
    /// (`scripts/moe-check`).
    #[test]
    fn a_route_of_128_experts_scores_each_lanes_experts_once() {
        let d = tempfile::tempdir().unwrap();
        let s = Shape::parse("64,32,128,8").unwrap();
        let model = write(d.path(), s, 7).unwrap();
        let c = cuda_compilation(&model, s, 16);
        let (kernels, _) = ppmoe_compiler::pipeline::emit(c, "kernels").unwrap();
        let start = kernels.find("_route(").expect("a route kernel");
        let route = &kernels[start..];
        let route = &route[..route.find("gpu.func").unwrap_or(route.len())];
        assert_eq!(route.matches("scf.execute_region").count(), 128 / 32);
        // The logits are bf16 (a bf16 GEMM's, held as its bits): read so, each widened.
        let params = &route[..route.find('{').unwrap_or(0)];
        assert!(params.contains("(%arg0: memref<2048xbf16>"), "{params}");
        let loads = route.matches("memref.load %arg0[").count();
        assert!(loads > 0);
        assert_eq!(route.matches(": memref<2048xbf16>").count(), loads + 1);
        assert_eq!(route.matches("arith.extf").count(), loads);
    }

    /// While the tokens' slots are at most one per expert (here up to 4 tokens: 16 experts, 4
    /// slots a token) the layer's experts are the two token kernels (beside the listed path's,
    /// the runtime's fallback; up to 4096 columns): x read as its bf16 bits or as f32, the
    /// stacks and x a 16-byte word at a time; at 5 tokens there are none. Their values are
    /// checked against the CPU backend on the GPU machine (`scripts/moe-check` at 1 to 16
    /// tokens of Qwen3-30B-A3B's layer).
    #[test]
    fn a_few_tokens_experts_are_two_kernels_reading_whole_words() {
        use ppmoe_runtime::program::TOKEN_KERNELS;
        let d = tempfile::tempdir().unwrap();
        // Hidden 320: more words than lanes, and a remainder; the inner dimensions whole
        // chunks of the tensor-core projections (the listed path at more than one token).
        let s = Shape::parse("320,128,16,4").unwrap();
        let model = write(d.path(), s, 7).unwrap();
        for t in [1, 4, 5] {
            let (ptx, _) =
                ppmoe_compiler::pipeline::emit(cuda_compilation(&model, s, t), "ptx").unwrap();
            for name in TOKEN_KERNELS {
                let entry = format!(".entry k2_experts_{name}(");
                assert_eq!(ptx.contains(&entry), t <= 4, "{name} at {t} tokens");
            }
            if t <= 4 {
                let body = |name: &str| {
                    let at = ptx.find(&format!(".entry k2_experts_{name}(")).unwrap();
                    let rest = &ptx[at..];
                    &rest[..rest[1..].find(".entry").map_or(rest.len(), |e| e + 1)]
                };
                for name in TOKEN_KERNELS {
                    let b = body(name);
                    assert!(
                        b.contains("ld.global.v4.u32") || b.contains("ld.global.v4.b32"),
                        "{name}: {b}"
                    );
                    assert!(
                        !b.contains("ld.global.u16") && !b.contains("ld.global.b16"),
                        "{name}"
                    );
                }
            }
        }
        // Past 4096 columns the listed kernels (measured faster there: `token_kernels_take`).
        let wide = Shape::parse("4352,64,4,2").unwrap();
        let model = write(&d.path().join("wide"), wide, 7).unwrap();
        let (ptx, _) =
            ppmoe_compiler::pipeline::emit(cuda_compilation(&model, wide, 1), "ptx").unwrap();
        assert!(!ptx.contains("_dtok_") && ptx.contains("_dproj_in_bf16("));
    }

    /// The persistent projections take the ping-pong geometry (`qproj`: a 64-row tile per
    /// warpgroup) up to 32 rows per expert and the cooperative one (`pproj`) past it: here 4
    /// experts, 2 slots a token, so 64 tokens are 32 rows each and 66 are 33. Their values
    /// are checked against the CPU backend on the GPU machine (`scripts/moe-check`, and
    /// gpu-test's fixtures compiled with either geometry forced by `PPMOE_PPROJ`).
    #[test]
    fn few_rows_per_expert_take_the_pingpong_projections() {
        use ppmoe_runtime::program::{PP_KERNELS, QP_KERNELS};
        let d = tempfile::tempdir().unwrap();
        let s = Shape::parse("128,128,4,2").unwrap();
        let model = write(d.path(), s, 7).unwrap();
        for (t, pingpong) in [(64, true), (66, false)] {
            let (ptx, _) =
                ppmoe_compiler::pipeline::emit(cuda_compilation(&model, s, t), "ptx").unwrap();
            let has = |names: [&str; 3]| {
                [names[0], names[2]]
                    .iter()
                    .all(|n| ptx.contains(&format!("_{n}(")))
            };
            assert_eq!(has(QP_KERNELS), pingpong, "ping-pong at {t} tokens");
            assert_eq!(has(PP_KERNELS), !pingpong, "cooperative at {t} tokens");
        }
    }

    /// The router's logits are a bf16 GEMM's result that only the route reads: the CUDA
    /// backend rounds it to bf16 (as PyTorch's `x @ wr` and the CPU backend do), so the GPU
    /// chooses the experts from the same logits; x, read by the GEMM and the experts, is not
    /// such a buffer.
    #[test]
    fn the_routers_logits_are_read_only_by_the_route() {
        use ppmoe_runtime::program::Op;
        let d = tempfile::tempdir().unwrap();
        let s = Shape::parse("32,16,4,2").unwrap();
        let model = write(d.path(), s, 7).unwrap();
        ppmoe_compiler::compile(cuda_compilation(&model, s, 4), &d.path().join("b")).unwrap();
        let bundle = ppmoe_runtime::bundle::read_bundle(&d.path().join("b")).unwrap();
        let p = &bundle.manifest.programs[0];
        let gemm = p.instructions.iter().find(|i| i.op == Op::MatMul).unwrap();
        let logits = gemm.outputs[0];
        assert_eq!(p.buffers[logits].dtype, ppmoe_runtime::DType::BF16);
        assert!(p.reads_as_bits(logits));
        assert!(!p.reads_as_bits(gemm.inputs[0].unwrap()));
    }

    /// At tp 2 the layer's experts are one GPU step per rank with either strategy, and the
    /// partitioned layer computes the single-rank one: at 8 tokens, and at 3 and 1, which do not
    /// divide over the two ranks (the all-to-all form pads the tokens, PPMoE's rewrite of it
    /// reads the padded rows; a decode step of one token at tp 2).
    #[test]
    fn the_written_layer_at_tp_2_runs_its_experts_as_one_gpu_step_per_strategy() {
        for t in [8, 3, 1] {
            layer_at_tp_2_matches_tp_1(t);
        }
    }

    /// At tp 2 with all-to-all, the bf16 layer gathers its f32 combine into its bf16 output:
    /// the sharded IR says so with the gather in f32 and a cast marked `ppmoe.narrows` (the
    /// `shard` ops take one element type, and every stage's IR is verified), and reads back as
    /// itself.
    #[test]
    fn a_narrowing_gather_prints_as_a_marked_cast_and_reads_back() {
        use ppmoe_compiler::distribute::{Grid, Strategy};
        let d = tempfile::tempdir().unwrap();
        let s = Shape::parse("32,16,4,2").unwrap();
        let model = write(d.path(), s, 11).unwrap();
        let mut c = cuda_compilation(&model, s, 8);
        c.options.grid = Some(Grid {
            dp: 1,
            pp: 1,
            tp: 2,
        });
        c.options.strategy = Some(Strategy::AllToAll);
        let (ir, _) = ppmoe_compiler::pipeline::emit(c, "sharded").unwrap();
        assert!(
            ir.contains("shard.all_gather") && ir.contains("ppmoe.narrows = true"),
            "{ir}"
        );
        let file = d.path().join("sharded.mlir");
        std::fs::write(&file, &ir).unwrap();
        let c = ppmoe_compiler::pipeline::Compilation::new(&file, &[]);
        let (again, _) = ppmoe_compiler::pipeline::emit(c, "sharded").unwrap();
        assert_eq!(again, ir);
    }

    fn layer_at_tp_2_matches_tp_1(t: usize) {
        use ppmoe_compiler::distribute::{Grid, Strategy};
        use ppmoe_runtime::program::GpuOp;
        let d = tempfile::tempdir().unwrap();
        let s = Shape::parse("32,16,4,2").unwrap();
        let model = write(d.path(), s, 11).unwrap();
        let x = bf16_input(t, s.hidden, |i| ((i * 53 % 97) as f32 / 48.0 - 1.0) * 2.0);
        let run = |tp: usize, strategy: Strategy, name: &str| {
            let mut c = cuda_compilation(&model, s, t);
            c.options.grid = Some(Grid { dp: 1, pp: 1, tp });
            c.options.strategy = Some(strategy);
            ppmoe_compiler::compile(c, &d.path().join(name)).unwrap();
            let b = ppmoe_runtime::bundle::read_bundle(&d.path().join(name)).unwrap();
            let y =
                ppmoe_runtime::cpu::run_bundle(&b, std::slice::from_ref(&x)).unwrap()[0].to_f32();
            (b, y)
        };
        let (_, single) = run(1, Strategy::Ppmoe, "tp1");
        let steps = |b: &ppmoe_runtime::bundle::Bundle, want: fn(&GpuOp) -> bool| {
            b.manifest
                .programs
                .iter()
                .map(|p| p.gpu.iter().filter(|g| want(g)).count())
                .collect::<Vec<_>>()
        };
        let (b, ppmoe) = run(2, Strategy::Ppmoe, "ppmoe");
        assert_eq!(
            steps(&b, |g| matches!(g, GpuOp::LocalExperts { .. })),
            [1, 1],
            "{t} tokens"
        );
        // Tokens that do not divide over the ranks are padded (the routing ids' padding too, a
        // generated kernel): no host work either way.
        assert_eq!(steps(&b, |g| *g == GpuOp::Host), [0, 0], "{t} tokens");
        let (b, alltoall) = run(2, Strategy::AllToAll, "alltoall");
        assert_eq!(
            steps(&b, |g| matches!(g, GpuOp::AllToAllExperts { .. })),
            [1, 1],
            "{t} tokens"
        );
        assert_eq!(steps(&b, |g| *g == GpuOp::Host), [0, 0], "{t} tokens");
        // The partitioned layers compute the single-rank one (the CPU backend runs the ops
        // themselves: this checks the programs the GPU steps stand for).
        for (name, y) in [("ppmoe", ppmoe), ("alltoall", alltoall)] {
            let num: f64 = y
                .iter()
                .zip(&single)
                .map(|(a, b)| ((a - b) as f64).powi(2))
                .sum();
            let den: f64 = single.iter().map(|b| (*b as f64).powi(2)).sum();
            assert!(
                den > 0.0 && (num / den).sqrt() < 1e-5,
                "{name} at {t} tokens: {}",
                (num / den).sqrt()
            );
        }
    }
}
