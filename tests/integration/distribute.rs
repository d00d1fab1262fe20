//! Distribution on the CPU backend, ranks as threads: for every fixture and every (tp, pp) in
//! {1, 2, 4} x {1, 2} the model's sizes allow, both MoE strategies give the single-rank output
//! within 1e-5 and PyTorch's within 1e-4; the IR holds the collectives each strategy promises;
//! each rank's weights file holds only its shard; grids that do not fit are clear errors.

use crate::common::{
    assert_clean_failure, fixtures_dir, ppmoe, reference, run_fixture, shape_flags,
};
use std::path::Path;

fn compile(dir: &Path, out: &Path, extra: &[&str]) -> crate::common::Output {
    let mut args = vec![
        "compile".to_string(),
        dir.join("model.onnx").display().to_string(),
        "-o".into(),
        out.display().to_string(),
    ];
    args.extend(shape_flags(dir));
    args.extend(extra.iter().map(|s| s.to_string()));
    ppmoe(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

fn check_grids(name: &str) {
    let dir = fixtures_dir().join(name);
    let work = tempfile::tempdir().unwrap();
    let single_bundle = work.path().join("single");
    assert_eq!(compile(&dir, &single_bundle, &[]).code, 0);
    let single = run_fixture(&dir, &single_bundle, &work.path().join("single_out"));
    let torch = reference(&dir);
    // Pipeline stages hold whole MoE layers: a model with none would take one stage.
    let layers = crate::common::moe_layers(&dir).max(1);
    let mut ran = 0;
    for strategy in ["ppmoe", "alltoall"] {
        for tp in [1usize, 2, 4] {
            for pp in [1usize, 2] {
                if pp > layers {
                    continue;
                }
                let tag = format!("{strategy}_tp{tp}_pp{pp}");
                let bundle = work.path().join(&tag);
                let (tps, pps) = (tp.to_string(), pp.to_string());
                let c = compile(
                    &dir,
                    &bundle,
                    &["--tp", &tps, "--pp", &pps, "--moe-strategy", strategy],
                );
                assert_eq!(c.code, 0, "{name} {tag}: {}", c.stderr);
                let got = run_fixture(&dir, &bundle, &work.path().join(format!("{tag}_out")));
                let e_single =
                    crate::core_numerics::rel_err(got.as_f32().unwrap(), single.as_f32().unwrap());
                let e_torch =
                    crate::core_numerics::rel_err(got.as_f32().unwrap(), torch.as_f32().unwrap());
                let partitioned = crate::common::partitioned_tolerance(&dir);
                assert!(
                    e_single < partitioned,
                    "{name} {tag}: {e_single:e} from the single-rank output"
                );
                let tolerance = crate::common::torch_tolerance(&dir);
                assert!(
                    e_torch < tolerance,
                    "{name} {tag}: {e_torch:e} from PyTorch"
                );
                ran += 1;
            }
        }
    }
    assert!(ran >= 6, "{name}: {ran} grids");
}

macro_rules! grid_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                check_grids(stringify!($name));
            }
        )*
    };
}

mod every_grid_matches_single_rank_and_pytorch {
    use super::check_grids;
    for_each_fixture!(grid_tests);
}

fn inspect(name: &str, args: &[&str]) -> String {
    let dir = fixtures_dir().join(name);
    let mut a = vec![
        "inspect".to_string(),
        dir.join("model.onnx").display().to_string(),
    ];
    a.extend(args.iter().map(|s| s.to_string()));
    let out = ppmoe(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(out.code, 0, "{}", out.stderr);
    out.stdout
}

/// The IR of rank 0 alone.
fn rank0(ir: &str) -> &str {
    let end = ir.find("func.func @rank1").unwrap_or(ir.len());
    &ir[..end]
}

#[test]
fn ppmoe_rewrite_removes_all_to_all_and_leaves_one_all_reduce_per_moe_layer_per_rank() {
    let ir = inspect("mixtral_lm_dynamo", &["--tp", "4", "--emit", "sharded"]);
    assert_eq!(ir.matches("func.func @rank").count(), 4);
    assert_eq!(ir.matches("shard.all_to_all").count(), 0, "{ir}");
    let r0 = rank0(&ir);
    assert_eq!(r0.matches("\"moe.local_slice\"").count(), 2);
    // Each MoE layer's scatter_combine is followed by exactly one all-reduce of its result.
    let lines: Vec<&str> = r0.lines().collect();
    for (i, l) in lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains("\"moe.scatter_combine\""))
    {
        let result = l.trim().split(' ').next().unwrap();
        assert!(
            lines[i + 1].contains("shard.all_reduce")
                && lines[i + 1].contains(&format!("all_reduce {result} ")),
            "{}",
            lines[i + 1]
        );
    }
    // Two MoE layers and two attention blocks (Megatron: one all-reduce each) per rank.
    assert_eq!(r0.matches("shard.all_reduce").count(), 4, "{r0}");
    assert!(
        ir.contains("first_expert = 3 : i64, num_local_experts = 1 : i64"),
        "rank 3 owns expert 3"
    );
}

#[test]
fn alltoall_strategy_has_two_all_to_all_per_moe_layer() {
    let ir = inspect(
        "mixtral_lm_dynamo",
        &[
            "--tp",
            "2",
            "--moe-strategy",
            "alltoall",
            "--emit",
            "sharded",
        ],
    );
    let r0 = rank0(&ir);
    assert_eq!(r0.matches("shard.all_to_all").count(), 2 * 2, "{r0}");
    assert_eq!(r0.matches("\"moe.dispatch\"").count(), 2);
    assert_eq!(r0.matches("\"moe.combine\"").count(), 2);
    // The MoE layers reduce nothing: the all-reduces left are attention's, one per block.
    assert_eq!(r0.matches("shard.all_reduce").count(), 2, "{r0}");
}

#[test]
fn dense_layers_are_megatron_split_with_one_all_reduce_per_block() {
    // Qwen2-MoE at tp 2: attention (4 heads, 2 KV heads) and the shared expert split, each
    // block closed by one all-reduce; the LM head split by vocabulary and gathered at the end.
    let ir = inspect("qwen2moe_lm_dynamo", &["--tp", "2", "--emit", "sharded"]);
    let r0 = rank0(&ir);
    assert_eq!(
        r0.matches("shard.all_reduce").count(),
        2 + 2 + 2,
        "attention, shared expert, MoE per layer: {r0}"
    );
    assert_eq!(r0.matches("shard.all_gather").count(), 1, "{r0}");
    // The logits [1, 16, vocab / 2] are gathered as NCCL gathers, stacked on the leading axis,
    // and the ranks' halves put side by side by a transpose (nothing left for the host).
    assert_eq!(r0.matches("gather_axis = ").count(), 1, "{r0}");
    assert!(r0.contains("gather_axis = 0 : tensor<1x16x64xf32>"), "{r0}");
    assert!(r0.contains("permutation = [1, 2, 0, 3]"), "{r0}");
    // Rank 0 holds half of each attention projection: q [64, 32] of [64, 64].
    assert!(r0.contains("tensor<64x32xf32> {core.weight = \""), "{r0}");
}

#[test]
fn pipelined_stage_has_one_function_per_rank_with_send_and_recv_at_the_boundary() {
    let ir = inspect(
        "qwen2moe_lm_dynamo",
        &["--tp", "2", "--pp", "2", "--emit", "pipelined"],
    );
    assert!(ir.contains("shard.grid @grid(shape = 1x2x2)"));
    assert_eq!(ir.matches("func.func @rank").count(), 4);
    // Stage 0 (ranks 0, 1) sends the residual stream; stage 1 (ranks 2, 3) receives it.
    assert_eq!(ir.matches("shard.send").count(), 2, "{ir}");
    assert_eq!(ir.matches("shard.recv").count(), 2, "{ir}");
    assert!(ir.contains("ppmoe.coords = array<i64: 0, 1, 1>"));
    // One MoE layer per stage.
    assert_eq!(ir.matches("\"moe.local_slice\"").count(), 4);
}

#[test]
fn each_ranks_weights_file_holds_only_its_experts() {
    let dir = fixtures_dir().join("mixtral_lm_dynamo");
    let work = tempfile::tempdir().unwrap();
    let sizes = |tp: &str| -> Vec<(String, Vec<usize>)> {
        let b = work.path().join(format!("tp{tp}"));
        assert_eq!(compile(&dir, &b, &["--tp", tp]).code, 0);
        let rank1 = b.join("rank1.safetensors");
        let file = if rank1.exists() {
            rank1
        } else {
            b.join("rank0.safetensors")
        };
        let bytes = std::fs::read(file).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        st.tensors()
            .into_iter()
            .map(|(n, v)| (n, v.shape().to_vec()))
            .collect()
    };
    let one = sizes("1");
    let four = sizes("4");
    let experts = |v: &[(String, Vec<usize>)]| -> usize {
        v.iter()
            .filter(|(n, _)| n.ends_with(".w_in") || n.ends_with(".w_out"))
            .map(|(_, s)| s.iter().product::<usize>())
            .sum()
    };
    assert!(experts(&one) > 0);
    assert_eq!(
        experts(&four) * 4,
        experts(&one),
        "rank 1 of 4 holds a quarter of the expert weights"
    );
    for (n, s) in four.iter().filter(|(n, _)| n.ends_with(".w_in")) {
        assert_eq!(s[0], 1, "{n}: one expert of four per rank");
    }
    // Each file on disk is smaller than the whole model's.
    let whole = std::fs::metadata(work.path().join("tp1/rank0.safetensors"))
        .unwrap()
        .len();
    let part = std::fs::metadata(work.path().join("tp4/rank1.safetensors"))
        .unwrap()
        .len();
    assert!(part < whole, "{part} vs {whole}");
}

#[test]
fn a_grid_that_does_not_fit_names_the_constraint() {
    let work = tempfile::tempdir().unwrap();
    let block = fixtures_dir().join("mixtral_block_dynamo");
    let uneven = compile(&block, &work.path().join("a"), &["--tp", "3"]);
    assert_clean_failure(&uneven, &["4 experts cannot be split evenly over tp = 3"]);
    let stages = compile(&block, &work.path().join("b"), &["--pp", "2"]);
    assert_clean_failure(
        &stages,
        &["2 pipeline stages for a model of 1 MoE layer(s)"],
    );
    // At tp 2 these blocks hold collectives that are not the MoE layer's: the TorchScript
    // block all-gathers its row-split router's logits, Qwen2-MoE's shared expert all-reduces its
    // down projection. Neither ends a layer, so neither makes room for a second stage.
    for (k, fixture) in ["mixtral_block_ts_bmm", "qwen2moe_block_dynamo"]
        .iter()
        .enumerate()
    {
        let out = work.path().join(format!("d{k}"));
        let tp_pp = compile(
            &fixtures_dir().join(fixture),
            &out,
            &["--tp", "2", "--pp", "2"],
        );
        assert_clean_failure(&tp_pp, &["2 pipeline stages for a model of 1 MoE layer(s)"]);
        assert!(!out.exists(), "{fixture}: no bundle is left behind");
    }
    let lm = fixtures_dir().join("mixtral_lm_dynamo");
    let too_many = compile(&lm, &work.path().join("c"), &["--pp", "3"]);
    assert_clean_failure(
        &too_many,
        &["3 pipeline stages for a model of 2 MoE layer(s)"],
    );
    assert!(
        !work.path().join("a").exists() && !work.path().join("b").exists(),
        "no bundle is left behind"
    );
}

#[test]
fn plan_from_a_mixtral_8x7b_config_alone_on_4_nodes_of_8_gpus() {
    let cfg =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/configs/mixtral-8x7b.json");
    let out = ppmoe(&[
        "plan",
        cfg.to_str().unwrap(),
        "--gpus-per-node",
        "8",
        "--nodes",
        "4",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout
            .contains("32 layers (32 MoE), hidden 4096, 8 experts top-2, expert ffn 14336"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("grid: dp 1 x pp 4 x tp 8"),
        "{}",
        out.stdout
    );
    assert_eq!(
        out.stdout
            .lines()
            .filter(
                |l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()) && l.contains("GiB")
            )
            .count(),
        4,
        "four stages: {}",
        out.stdout
    );
    // 46.7B bf16 parameters over 32 GPUs: about 2.7 GiB of weights each, plus activations.
    let json = ppmoe(&[
        "plan",
        cfg.to_str().unwrap(),
        "--gpus-per-node",
        "8",
        "--nodes",
        "4",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    let mem: f64 = v["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["memory_bytes"].as_f64().unwrap())
        .sum::<f64>()
        / 4.0
        / (1u64 << 30) as f64;
    assert!(mem > 2.5 && mem < 4.5, "{mem} GiB per GPU");
    for l in v["layers"].as_array().unwrap() {
        let times: Vec<f64> = l["times"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t[1].as_f64().unwrap())
            .collect();
        let best = times.iter().cloned().fold(f64::INFINITY, f64::min);
        let chosen = l["times"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t[0] == l["choice"])
            .unwrap()[1]
            .as_f64()
            .unwrap();
        assert_eq!(chosen, best, "the e-graph's choice is the cheapest");
    }
}

#[test]
fn plan_from_an_onnx_model_reads_its_raised_layers() {
    let out = ppmoe(&[
        "plan",
        fixtures_dir()
            .join("olmoe_lm_dynamo/model.onnx")
            .to_str()
            .unwrap(),
        "--gpus-per-node",
        "2",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout
            .contains("2 layers (2 MoE), hidden 64, 4 experts top-2, expert ffn 128; 16 tokens"),
        "{}",
        out.stdout
    );
}

#[test]
fn auto_strategy_picks_per_layer_and_stays_exact() {
    let dir = fixtures_dir().join("olmoe_lm_dynamo");
    let work = tempfile::tempdir().unwrap();
    let b = work.path().join("auto");
    let c = compile(&dir, &b, &["--tp", "2", "--moe-strategy", "auto"]);
    assert_eq!(c.code, 0, "{}", c.stderr);
    let got = run_fixture(&dir, &b, &work.path().join("out"));
    let e = crate::core_numerics::rel_err(got.as_f32().unwrap(), reference(&dir).as_f32().unwrap());
    assert!(e < 1e-4, "{e}");
    // At 16 tokens the all-reduce of PPMoE moves less than the all-to-all form: the cost model
    // picks PPMoE for both layers.
    let ir = inspect(
        "olmoe_lm_dynamo",
        &["--tp", "2", "--moe-strategy", "auto", "--emit", "sharded"],
    );
    assert_eq!(ir.matches("\"moe.local_slice\"").count(), 2 * 2, "{ir}");
}

/// A two-layer MoE model with a dynamic batch, written here with the ONNX protobuf: the fixtures
/// all fix their batch at 1, and microbatches cut the batch.
mod microbatches {
    use crate::common::{assert_clean_failure, ppmoe};
    use ppmoe_frontend::onnx_proto as pb;
    use ppmoe_runtime::npy::{read_npy, write_npy};
    use ppmoe_runtime::Tensor;
    use prost::Message;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.8
            })
            .collect()
    }

    fn init(name: &str, dims: &[i64], seed: u64) -> pb::TensorProto {
        let n: i64 = dims.iter().product();
        let raw = values(n as usize, seed)
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        pb::TensorProto {
            name: name.into(),
            dims: dims.to_vec(),
            data_type: 1,
            raw_data: raw,
            ..Default::default()
        }
    }

    fn vi(name: &str) -> pb::ValueInfoProto {
        use pb::tensor_shape_proto::{dimension::Value, Dimension};
        let dims = vec![
            Dimension {
                value: Some(Value::DimParam("batch".into())),
            },
            Dimension {
                value: Some(Value::DimValue(4)),
            },
            Dimension {
                value: Some(Value::DimValue(8)),
            },
        ];
        pb::ValueInfoProto {
            name: name.into(),
            r#type: Some(pb::TypeProto {
                value: Some(pb::type_proto::Value::TensorType(
                    pb::type_proto::TensorTypeProto {
                        elem_type: 1,
                        shape: Some(pb::TensorShapeProto { dim: dims }),
                    },
                )),
            }),
        }
    }

    fn node(
        op: &str,
        domain: &str,
        inputs: &[&str],
        output: &str,
        attrs: Vec<pb::AttributeProto>,
    ) -> pb::NodeProto {
        pb::NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            name: output.into(),
            op_type: op.into(),
            domain: domain.into(),
            attribute: attrs,
        }
    }

    fn model() -> Vec<u8> {
        let int = |n: &str, v: i64| pb::AttributeProto {
            name: n.into(),
            r#type: pb::attribute_type::INT,
            i: v,
            ..Default::default()
        };
        let string = |n: &str, v: &str| pb::AttributeProto {
            name: n.into(),
            r#type: pb::attribute_type::STRING,
            s: v.as_bytes().to_vec(),
            ..Default::default()
        };
        let moe = |x: &str, l: &str, f1: &str, f2: &str, out: &str| {
            node(
                "MoE",
                "com.microsoft",
                &[x, l, f1, "", f2],
                out,
                vec![
                    int("k", 2),
                    string("activation_type", "silu"),
                    int("normalize_routing_weights", 1),
                ],
            )
        };
        let graph = pb::GraphProto {
            name: "two_layer_moe".into(),
            node: vec![
                node("MatMul", "", &["x", "wr1"], "l1", vec![]),
                moe("x", "l1", "fc1_1", "fc2_1", "m1"),
                node("Add", "", &["x", "m1"], "h", vec![]),
                node("MatMul", "", &["h", "wr2"], "l2", vec![]),
                moe("h", "l2", "fc1_2", "fc2_2", "m2"),
                node("Add", "", &["h", "m2"], "y", vec![]),
            ],
            initializer: vec![
                init("wr1", &[8, 4], 1),
                init("fc1_1", &[4, 16, 8], 2),
                init("fc2_1", &[4, 8, 16], 3),
                init("wr2", &[8, 4], 4),
                init("fc1_2", &[4, 16, 8], 5),
                init("fc2_2", &[4, 8, 16], 6),
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
            producer_name: "ppmoe tests".into(),
            graph: Some(graph),
            ..Default::default()
        }
        .encode_to_vec()
    }

    /// `ppmoe run BUNDLE --input X --output-dir OUT`.
    fn run(
        bundle: &std::path::Path,
        x: &std::path::Path,
        out: &std::path::Path,
    ) -> crate::common::Output {
        ppmoe(&[
            "run",
            bundle.to_str().unwrap(),
            "--input",
            x.to_str().unwrap(),
            "--output-dir",
            out.to_str().unwrap(),
        ])
    }

    /// The model in `dir` compiled for a batch of 4 with `flags` into `dir/tag`.
    fn compile(dir: &std::path::Path, tag: &str, flags: &[&str]) -> std::path::PathBuf {
        let m = dir.join("model.onnx");
        let b = dir.join(tag);
        let mut args = vec![
            "compile",
            m.to_str().unwrap(),
            "-o",
            b.to_str().unwrap(),
            "--input-shape",
            "x=4x4x8",
        ];
        args.extend(flags);
        let c = ppmoe(&args);
        assert_eq!(c.code, 0, "{tag}: {}", c.stderr);
        b
    }

    fn compile_run(dir: &std::path::Path, tag: &str, flags: &[&str]) -> Tensor {
        let b = compile(dir, tag, flags);
        let out = dir.join(format!("{tag}_out"));
        let r = run(&b, &dir.join("x.npy"), &out);
        assert_eq!(r.code, 0, "{tag}: {}", r.stderr);
        read_npy(&out.join("y.npy")).unwrap()
    }

    #[test]
    fn a_batch_that_does_not_cut_into_equal_microbatches_is_refused_by_name() {
        // Compiled for 2 microbatches of a batch of 4; run on a batch of 3.
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("model.onnx"), model()).unwrap();
        let x = d.path().join("x3.npy");
        write_npy(&x, &Tensor::f32(vec![3, 4, 8], values(96, 5))).unwrap();
        let b = compile(d.path(), "b", &["--pp", "2", "--microbatches", "2"]);
        let out = d.path().join("o");
        let r = run(&b, &x, &out);
        assert_clean_failure(&r, &["'x'", "[3, 4, 8]", "2 equal microbatches"]);
        assert!(!out.join("y.npy").exists(), "no output written");
    }

    #[test]
    fn gpipe_microbatches_through_pipeline_stages_give_the_single_rank_output() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("model.onnx"), model()).unwrap();
        write_npy(
            &d.path().join("x.npy"),
            &Tensor::f32(vec![4, 4, 8], values(128, 99)),
        )
        .unwrap();
        let single = compile_run(d.path(), "single", &[]);
        assert_eq!(single.shape, vec![4, 4, 8]);
        for (tag, flags) in [
            ("pp2_mb2", vec!["--pp", "2", "--microbatches", "2"]),
            (
                "pp2_tp2_mb4",
                vec!["--pp", "2", "--tp", "2", "--microbatches", "4"],
            ),
            (
                "alltoall_pp2_mb2",
                vec![
                    "--pp",
                    "2",
                    "--tp",
                    "2",
                    "--microbatches",
                    "2",
                    "--moe-strategy",
                    "alltoall",
                ],
            ),
            ("dp2_pp2_tp2", vec!["--dp", "2", "--pp", "2", "--tp", "2"]),
        ] {
            let got = compile_run(d.path(), tag, &flags);
            assert_eq!(got.shape, single.shape, "{tag}");
            let e = crate::core_numerics::rel_err(got.as_f32().unwrap(), single.as_f32().unwrap());
            assert!(e < 1e-5, "{tag}: {e:e}");
        }
        let ir = ppmoe(&[
            "inspect",
            d.path().join("model.onnx").to_str().unwrap(),
            "--input-shape",
            "x=4x4x8",
            "--pp",
            "2",
            "--microbatches",
            "2",
            "--emit",
            "pipelined",
        ]);
        assert!(
            ir.stdout.contains("ppmoe.microbatches = 2 : i64")
                && ir.stdout.contains("ppmoe.schedule = \"gpipe\""),
            "{}",
            ir.stdout
        );
        assert!(
            ir.stdout.contains("tensor<2x4x8xf32> {core.input = \"x\"}"),
            "each program takes one microbatch"
        );
    }

    #[test]
    fn microbatches_must_divide_the_batch_and_need_a_dynamic_one() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("model.onnx"), model()).unwrap();
        let m = d.path().join("model.onnx");
        let out = ppmoe(&[
            "compile",
            m.to_str().unwrap(),
            "-o",
            d.path().join("b").to_str().unwrap(),
            "--input-shape",
            "x=4x4x8",
            "--microbatches",
            "3",
        ]);
        assert_clean_failure(&out, &["--microbatches 3", "batch of 4"]);
        let fixed = crate::common::fixtures_dir().join("mixtral_lm_dynamo/model.onnx");
        let out = ppmoe(&[
            "compile",
            fixed.to_str().unwrap(),
            "-o",
            d.path().join("c").to_str().unwrap(),
            "--microbatches",
            "2",
        ]);
        assert_clean_failure(&out, &["batch fixed at 1", "dynamic batch"]);
    }
}

/// A Cast to the type its operand has is that operand. The TorchScript Mixtral block casts its
/// router's f32 logits to f32; as an op, that cast made dense TP all-gather the logits of its
/// row-split router at tp 2 (in bf16 for a bf16 build, a rounding tp 1 does not make).
#[test]
fn a_cast_to_its_own_type_is_its_operand_and_splits_nothing() {
    let model = fixtures_dir().join("mixtral_block_ts_bmm/model.onnx");
    let model = model.to_str().unwrap();
    let core = ppmoe(&["inspect", model, "--emit", "core"]);
    assert_eq!(core.code, 0, "{}", core.stderr);
    assert!(!core.stdout.contains("core.cast"), "{}", core.stdout);
    let sharded = ppmoe(&[
        "inspect", model, "--tp", "2", "--dtype", "bf16", "--emit", "sharded",
    ]);
    assert_eq!(sharded.code, 0, "{}", sharded.stderr);
    assert_eq!(
        sharded.stdout.matches("shard.all_gather").count(),
        0,
        "{}",
        sharded.stdout
    );
    assert_eq!(
        sharded.stdout.matches("shard.all_reduce").count(),
        2,
        "one per rank"
    );
}

/// A half-precision model's row-split matmuls (attention's output projection) leave their
/// partial sums in f32, all-reduced in f32 and rounded once after, as the one-rank product is
/// rounded once: the bf16 and fp16 Qwen3 LMs at tp 2 give their tp 1 outputs within the fp32
/// bound (rounding each rank's part first left them 6.8e-3 and 8.7e-4 away).
#[test]
fn half_precision_partial_sums_are_all_reduced_in_f32_and_rounded_once() {
    for name in ["qwen3moe_lm_bf16_sdpa", "qwen3moe_lm_fp16_sdpa"] {
        let ir = inspect(name, &["--tp", "2", "--emit", "sharded"]);
        let reduces: Vec<&str> = (rank0(&ir).lines())
            .filter(|l| l.contains("shard.all_reduce"))
            .collect();
        assert!(!reduces.is_empty(), "{name}");
        for line in &reduces {
            assert!(line.contains("xf32> -> tensor<"), "{name}: {line}");
        }
        let narrowed = rank0(&ir)
            .lines()
            .filter(|l| l.contains("arith.truncf %all_reduce") && l.contains("ppmoe.narrows"))
            .count();
        assert!(narrowed >= 1, "{name}: {}", rank0(&ir));
        let dir = fixtures_dir().join(name);
        let work = tempfile::tempdir().unwrap();
        let run = |tag: &str, flags: &[&str]| {
            let bundle = work.path().join(tag);
            let c = compile(&dir, &bundle, flags);
            assert_eq!(c.code, 0, "{name} {tag}: {}", c.stderr);
            run_fixture(&dir, &bundle, &work.path().join(format!("{tag}_out")))
        };
        let single = run("tp1", &[]);
        let split = run("tp2", &["--tp", "2"]);
        let e = crate::core_numerics::rel_err(split.as_f32().unwrap(), single.as_f32().unwrap());
        assert!(e < 1e-5, "{name}: tp 2 {e:e} from tp 1");
    }
}
