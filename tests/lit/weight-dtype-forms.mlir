// ppmoe-weight-dtype's mixed-precision forms, each a single upstream op where ppmoe once kept a
// `core` op: a LayerNorm of bf16 weights over f32 activations (Phi-MoE's norms) is the f64
// normalisation generic that widens its scale and bias (arith.extf, exact) before the f32
// multiply and add; a concatenation of f32 scores and bf16 sink weights (gpt-oss's attention)
// is a generic over the result whose inputs are the operands, each read at its position less
// its offset modulo its extent (always in bounds), the bf16 one widened, the one whose range
// holds the position selected (tensor.concat takes one element type).
// Both read back as the instruction they print: the IR reprints as itself.

// RUN: rm -rf %t && mkdir -p %t
// RUN: %ppmoe inspect %fixtures/phimoe_lm_sdpa/model.onnx --emit sharded --tp 2 --dtype bf16 > %t/phi.mlir
// RUN: FileCheck %s --check-prefix=NORM < %t/phi.mlir
// RUN: %ppmoe opt %t/phi.mlir --pass-pipeline='builtin.module()' > %t/phi-again.mlir
// RUN: diff %t/phi.mlir %t/phi-again.mlir

// NORM-LABEL: func.func @rank0(
// NORM: linalg.generic {{.*}} ins(%{{[0-9]+}}, %{{[0-9]+}}, %{{[0-9]+}}, %[[SCALE:arg[0-9]+]], %[[BIAS:arg[0-9]+]] : tensor<1x16x64xf32>, tensor<1x16x1xf64>, tensor<1x16x1xf64>, tensor<64xbf16>, tensor<64xbf16>)
// NORM-NEXT: ^bb0(%{{.*}}: f32 {{.*}}, %{{.*}}: f64 {{.*}}, %{{.*}}: f64 {{.*}}, %[[S:[a-z_0-9]+]]: bf16 {{.*}}, %[[B:[a-z_0-9]+]]: bf16 {{.*}}, %{{.*}}: f32 {{.*}}):
// NORM: %[[N:[0-9]+]] = arith.truncf %{{[0-9]+}} : f64 to f32
// NORM-NEXT: %[[SW:[0-9]+]] = arith.extf %[[S]] : bf16 to f32
// NORM-NEXT: %[[M:[0-9]+]] = arith.mulf %[[N]], %[[SW]] : f32
// NORM-NEXT: %[[BW:[0-9]+]] = arith.extf %[[B]] : bf16 to f32
// NORM-NEXT: %[[R:[0-9]+]] = arith.addf %[[M]], %[[BW]] : f32
// NORM-NEXT: linalg.yield %[[R]] : f32
// NORM-NOT: "core.layer_norm"

// RUN: %ppmoe inspect %fixtures/gptoss_lm_sdpa/model.onnx --emit sharded --tp 2 --dtype bf16 > %t/gpt.mlir
// RUN: FileCheck %s --check-prefix=JOIN < %t/gpt.mlir
// RUN: %ppmoe opt %t/gpt.mlir --pass-pipeline='builtin.module()' > %t/gpt-again.mlir
// RUN: diff %t/gpt.mlir %t/gpt-again.mlir

// JOIN-DAG: #[[SCORES:map[0-9]*]] = affine_map<(d0, d1, d2, d3) -> (d0, d1, d2, d3 mod 16)>
// JOIN-DAG: #[[SINK:map[0-9]*]] = affine_map<(d0, d1, d2, d3) -> (d0, d1, d2, 0)>
// JOIN-DAG: #[[OUT:map[0-9]*]] = affine_map<(d0, d1, d2, d3) -> (d0, d1, d2, d3)>
// JOIN-LABEL: func.func @rank0(
// JOIN: linalg.generic {indexing_maps = [#[[SCORES]], #[[SINK]], #[[OUT]]], iterator_types = ["parallel", "parallel", "parallel", "parallel"]} ins(%{{[a-z_0-9]+}}, %[[SINKS:arg[0-9]+]] : tensor<1x4x16x16xf32>, tensor<1x4x16x1xbf16>) outs(%{{[0-9]+}} : tensor<1x4x16x17xf32>)
// JOIN-NEXT: ^bb0(%[[S:[a-z_0-9]+]]: f32 {{.*}}, %[[T:[a-z_0-9]+]]: bf16 {{.*}}, %{{.*}}: f32 {{.*}}):
// JOIN-NEXT: %[[W:[0-9]+]] = arith.extf %[[T]] : bf16 to f32
// JOIN-NEXT: %[[K:[0-9]+]] = linalg.index 3 : index
// JOIN-NEXT: %[[OFF:.*]] = arith.constant 16 : index
// JOIN-NEXT: %[[IN:[0-9]+]] = arith.cmpi ult, %[[K]], %[[OFF]] : index
// JOIN-NEXT: %[[R:[0-9]+]] = arith.select %[[IN]], %[[S]], %[[W]] : f32
// JOIN-NEXT: linalg.yield %[[R]] : f32
// JOIN-NOT: "core.concat"

// Upstream's canonicalization changes the module (it hoists constants, folds shapes) but not
// the program it reads as: read back and printed again, it is the IR ppmoe printed.
// RUN: mlir-opt --allow-unregistered-dialect --mlir-print-debuginfo -cse -canonicalize %t/gpt.mlir > %t/gpt-canon.mlir
// RUN: not diff -q %t/gpt.mlir %t/gpt-canon.mlir
// RUN: %ppmoe opt %t/gpt-canon.mlir --pass-pipeline='builtin.module()' > %t/gpt-canon-again.mlir
// RUN: diff %t/gpt.mlir %t/gpt-canon-again.mlir
