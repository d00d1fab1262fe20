// ppmoe-raise-moe on the core IR of each family's fixture: the router's chain becomes one
// moe.route, the experts' chain one moe.experts, with what was read off the source as
// attributes; dense parts (Qwen2-MoE's shared expert) stay core ops.

// RUN: %ppmoe inspect %fixtures/mixtral_block_dynamo/model.onnx --emit core > %t.mixtral.mlir
// RUN: %ppmoe opt %t.mixtral.mlir --pass-pipeline='builtin.module(ppmoe-raise-moe)' | FileCheck %s --check-prefix=MIXTRAL
// MIXTRAL: ppmoe.stage = "moe"
// The router's matmul is upstream's (`linalg.matmul`), the rest moe ops.
// MIXTRAL: linalg.matmul ins(
// MIXTRAL-NEXT: "moe.route"({{.*}}) {{{.*}}order = "softmax_then_topk", renormalize = true, {{.*}}scoring = "softmax", top_k = 2 : i64
// MIXTRAL-NEXT: "moe.experts"({{.*}}) {activation = "swiglu", {{.*}}layout = "linear"
// MIXTRAL-NOT: "core.top_k"

// The pass's own dump (the module as the pass over its ops leaves it): the layer's ops replaced
// in place by the route and experts, the expert stacks new weight arguments after the router's,
// the source's expert weights and the layer's core ops gone.
// RUN: %ppmoe opt %t.mixtral.mlir --pass-pipeline='builtin.module(ppmoe-raise-moe)' --print-ir-after-all 2>&1 | FileCheck %s --check-prefix=DUMP
// DUMP: IR Dump After ppmoe-raise-moe (moe)
// DUMP: func.func @rank0(%arg0: tensor<1x16x64xf32> {core.input = "hidden_states"} loc(unknown), %arg1: tensor<64x4xf32> {core.weight = "inner.gate.weight.const1"} loc(unknown), %arg2: tensor<4x256x64xf32> {core.weight = "view_7.w_in"} loc(unknown), %arg3: tensor<4x64x128xf32> {core.weight = "view_7.w_out"} loc(unknown)) ->
// DUMP-NOT: "core.
// DUMP: %[[LOGITS:[0-9]+]] = linalg.matmul ins(%reshape, %arg1
// DUMP-NEXT: %[[R:[0-9]+]]:2 = "moe.route"(%[[LOGITS]])
// DUMP-NEXT: "moe.experts"(%reshape, %[[R]]#0, %[[R]]#1, %arg2, %arg3)
// DUMP-NOT: "core.
// DUMP: return

// RUN: %ppmoe inspect %fixtures/qwen2moe_block_dynamo/model.onnx --emit core > %t.qwen2.mlir
// RUN: %ppmoe opt %t.qwen2.mlir --pass-pipeline='builtin.module(ppmoe-raise-moe)' | FileCheck %s --check-prefix=QWEN2
// QWEN2: "moe.route"({{.*}}renormalize = false
// QWEN2: "moe.experts"
// The shared expert and its gate stay dense, added to the experts' sum: its SiLU's sigmoid a
// linalg.map of upstream's arith and math ops.
// QWEN2: linalg.map ins(
// QWEN2: arith.negf
// QWEN2-NEXT: math.exp
// QWEN2: linalg.map { arith.addf }

// RUN: %ppmoe inspect %fixtures/deepseekv3_block_dynamo/model.onnx --emit core > %t.deepseek.mlir
// RUN: %ppmoe opt %t.deepseek.mlir --pass-pipeline='builtin.module(ppmoe-raise-moe)' | FileCheck %s --check-prefix=DEEPSEEK
// The score-correction bias is the route's second operand; groups and the scaling factor.
// DEEPSEEK: "moe.route"(%{{[0-9]+}}, %arg{{[0-9]+}}) {capacity = 0 : i64, n_group = 2 : i64, {{.*}}routed_scaling_factor = 2.500000e+00 : f64, scoring = "sigmoid", top_k = 2 : i64, topk_group = 1 : i64}

// RUN: %ppmoe inspect %fixtures/gptoss_block_dynamo/model.onnx --emit core > %t.gptoss.mlir
// RUN: %ppmoe opt %t.gptoss.mlir --pass-pipeline='builtin.module(ppmoe-raise-moe)' | FileCheck %s --check-prefix=GPTOSS
// GPTOSS: "moe.route"({{.*}}order = "topk_then_softmax"
// Biases are the optional operands (segment sizes), the clamp a limit.
// GPTOSS: "moe.experts"({{.*}}) {activation = "swiglu", alpha = 1.7020000219345093 : f64, beta = 1.000000e+00 : f64, layout = "in_out", limit = 7.000000e+00 : f64, operandSegmentSizes = array<i32: 1, 1, 1, 1, 1, 1, 1>}

// RUN: %ppmoe inspect %fixtures/phimoe_lm_sdpa/model.onnx --emit core > %t.phimoe.mlir
// RUN: %ppmoe opt %t.phimoe.mlir --pass-pipeline='builtin.module(ppmoe-raise-moe)' | FileCheck %s --check-prefix=PHIMOE
// PHIMOE-COUNT-2: "moe.route"({{.*}}mask_threshold = 0.019999999552965164 : f64, {{.*}}scoring = "sparsemixer"

// RUN: %ppmoe inspect %fixtures/mixtral_block_ts_eager/model.onnx --emit core > %t.eager.mlir
// RUN: %ppmoe opt %t.eager.mlir --pass-pipeline='builtin.module(ppmoe-raise-moe)' | FileCheck %s --check-prefix=EAGER
// The TorchScript eager export's per-expert loop (NonZero, dynamic sizes) is gone.
// EAGER: "moe.experts"
// EAGER-NOT: "core.non_zero"

// GShard's capacity: kept by default (exact), dropped with capacity=dropless.
// RUN: %ppmoe inspect %fixtures/gshard_top2_dynamo/model.onnx --emit core > %t.gshard.mlir
// RUN: %ppmoe opt %t.gshard.mlir --pass-pipeline='builtin.module(ppmoe-raise-moe)' | FileCheck %s --check-prefix=KEEP
// RUN: %ppmoe opt %t.gshard.mlir --pass-pipeline='builtin.module(ppmoe-raise-moe{capacity=dropless})' | FileCheck %s --check-prefix=DROPLESS
// KEEP: "moe.route"({{.*}}) {capacity = 8 : i64
// KEEP: "moe.experts"({{.*}}) {activation = "gelu"
// DROPLESS: "moe.route"({{.*}}) {capacity = 0 : i64

// A JAX program under shard_map (StableHLO, two all_to_alls) raised to its global meaning.
// RUN: %ppmoe inspect %fixtures/jax_gshard_top2_a2a/model.mlir --weights %fixtures/jax_gshard_top2_a2a/weights.safetensors --emit core > %t.jax.mlir
// RUN: %ppmoe opt %t.jax.mlir --pass-pipeline='builtin.module(ppmoe-raise-moe)' | FileCheck %s --check-prefix=JAX
// JAX: "moe.route"
// JAX: "moe.experts"
// JAX-NOT: all_to_all

// OLMoE: softmax then top-k, not renormalised.
// RUN: %ppmoe inspect %fixtures/olmoe_block_dynamo/model.onnx --emit core > %t.olmoe.mlir
// RUN: %ppmoe opt %t.olmoe.mlir --pass-pipeline='builtin.module(ppmoe-raise-moe)' | FileCheck %s --check-prefix=OLMOE
// OLMOE: "moe.route"({{.*}}order = "softmax_then_topk", renormalize = false, {{.*}}scoring = "softmax", top_k = 2 : i64
// OLMOE-NEXT: "moe.experts"({{.*}}) {activation = "swiglu"

// GraniteMoE: top-k of the logits, then the softmax over the k.
// RUN: %ppmoe inspect %fixtures/granitemoe_block_dynamo/model.onnx --emit core > %t.granite.mlir
// RUN: %ppmoe opt %t.granite.mlir --pass-pipeline='builtin.module(ppmoe-raise-moe)' | FileCheck %s --check-prefix=GRANITE
// GRANITE: "moe.route"({{.*}}order = "topk_then_softmax", renormalize = true, {{.*}}scoring = "softmax"
// GRANITE-NEXT: "moe.experts"

// Qwen3-MoE: softmax then top-k, renormalised (norm_topk_prob).
// RUN: %ppmoe inspect %fixtures/qwen3moe_block_dynamo/model.onnx --emit core > %t.qwen3.mlir
// RUN: %ppmoe opt %t.qwen3.mlir --pass-pipeline='builtin.module(ppmoe-raise-moe)' | FileCheck %s --check-prefix=QWEN3
// QWEN3: "moe.route"({{.*}}order = "softmax_then_topk", renormalize = true, {{.*}}scoring = "softmax", top_k = 2 : i64
// QWEN3-NEXT: "moe.experts"
