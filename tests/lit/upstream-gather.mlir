// A gather along axis 0 (a token embedding; a routing's gather of one row) prints as
// tensor.gather with gather_dims([0]), its result rank-reduced, of the indices with their index
// axis appended by a tensor.expand_shape (tensor.gather reads each index tuple along the last
// axis; a scalar index becomes a tensor<1x...>). ppmoe also takes an index counted from the
// end, as ONNX does, where tensor.gather leaves one out of range undefined: the same values
// wherever upstream's are defined. The expand_shape reads back as the indices it expands, the
// gather as core's gather along axis 0 (the IR reprints as itself); a gather along another
// axis stays core.gather; one of a bf16 table into f32 (the embedding of a --dtype bf16 build)
// is a linalg.generic that extracts the table's element at the wrapped index and widens it
// (arith.extf), into the other half type rounding it after (arith.truncf). Any other
// expand_shape or gather is refused by name.

// RUN: rm -rf %t && split-file %s %t && sed -i "s|@FIXTURES@|%fixtures|" %t/*.mlir
// RUN: %ppmoe opt %t/core.mlir --pass-pipeline='builtin.module()' > %t/printed.mlir
// RUN: FileCheck %s < %t/printed.mlir
// RUN: %ppmoe opt %t/printed.mlir --pass-pipeline='builtin.module()' > %t/again.mlir
// RUN: diff %t/printed.mlir %t/again.mlir

// CHECK-LABEL: func.func @rank0(
// CHECK: %[[IDS:.*]] = tensor.expand_shape %arg1 {{\[}}[0], [1, 2]] output_shape [2, 3, 1] : tensor<2x3xi64> into tensor<2x3x1xi64>
// CHECK-NEXT: tensor.gather %arg0[%[[IDS]]] gather_dims([0]) : (tensor<8x4xf32>, tensor<2x3x1xi64>) -> tensor<2x3x4xf32>
// CHECK: %[[ONE:.*]] = tensor.expand_shape %arg2 [] output_shape [1] : tensor<i32> into tensor<1xi32>
// CHECK-NEXT: tensor.gather %arg0[%[[ONE]]] gather_dims([0]) : (tensor<8x4xf32>, tensor<1xi32>) -> tensor<4xf32>
// CHECK: "core.gather"(%arg0, %arg1) {axis = 1 : i64} : (tensor<8x4xf32>, tensor<2x3xi64>) -> tensor<8x2x3xf32>

// A bf16 build of an LM: the embedding table held in bf16 is read into f32 and widened.
// RUN: %ppmoe inspect %fixtures/mixtral_lm_sdpa/model.onnx --emit moe | FileCheck %s --check-prefix=EMBED
// RUN: %ppmoe inspect %fixtures/mixtral_lm_sdpa/model.onnx --emit sharded --tp 2 --dtype bf16 | FileCheck %s --check-prefix=HALF
// EMBED: tensor.gather %arg1[%{{.*}}] gather_dims([0]) : (tensor<128x64xf32>, tensor<1x16x1xi64>) -> tensor<1x16x64xf32>
// HALF: linalg.generic {{.*}} ins(%arg0 : tensor<1x16xi64>) outs(%{{.*}} : tensor<1x16x64xf32>)
// HALF: %[[ROW:.*]] = arith.index_cast %{{.*}} : i64 to index
// HALF-NEXT: %[[COL:.*]] = linalg.index 2 : index
// HALF-NEXT: %[[E:.*]] = tensor.extract %arg1[%[[ROW]], %[[COL]]] : tensor<128x64xbf16>
// HALF-NEXT: arith.extf %[[E]] : bf16 to f32
// HALF-NOT: "core.gather"

// The same build of an f16 model: the bf16 table's rows go into f16 activations, widened and
// rounded to f16 (arith.truncf), as the runtime stores them; no core op is left.
// RUN: %ppmoe inspect %fixtures/qwen3moe_lm_fp16_sdpa/model.onnx --emit sharded --tp 2 --dtype bf16 | FileCheck %s --check-prefix=F16
// F16: linalg.generic {{.*}} ins(%arg0 : tensor<1x16xi64>) outs(%{{.*}} : tensor<1x16x64xf16>)
// F16: %[[E:.*]] = tensor.extract %arg1[%{{.*}}, %{{.*}}] : tensor<128x64xbf16>
// F16-NEXT: %[[W:.*]] = arith.extf %[[E]] : bf16 to f32
// F16-NEXT: %[[N:.*]] = arith.truncf %[[W]] : f32 to f16
// F16-NEXT: linalg.yield %[[N]] : f16
// F16-NOT: "core.

// A gather in the second pipeline stage of indices the first makes (an arg-max of the
// embedding, added to an LM's moe IR): its expand_shape goes with it to rank 1, which
// receives the indices.
// RUN: %ppmoe inspect %fixtures/mixtral_lm_sdpa/model.onnx --emit moe > %t/lm.mlir
// RUN: sed -e '/tensor.gather %arg1/a\    %am = "core.arg_max"(%gather) {axis = 2 : i64, keepdims = false, max = true} : (tensor<1x16x64xf32>) -> tensor<1x16xi64> loc("am"("node_am"))' \
// RUN:   -e '/^    return /i\    %ex = tensor.expand_shape %am [[0], [1, 2]] output_shape [1, 16, 1] : tensor<1x16xi64> into tensor<1x16x1xi64> loc(unknown)\n    %g2 = tensor.gather %arg1[%ex] gather_dims([0]) : (tensor<128x64xf32>, tensor<1x16x1xi64>) -> tensor<1x16x64xf32> loc("again"("node_again"))' \
// RUN:   -e 's/^\(    return %[0-9]*\) : tensor<1x16x128xf32>/\1, %g2 : tensor<1x16x128xf32>, tensor<1x16x64xf32>/' \
// RUN:   -e 's/-> (tensor<1x16x128xf32> {core.output = "linear_10"})/-> (tensor<1x16x128xf32> {core.output = "linear_10"}, tensor<1x16x64xf32> {core.output = "again"})/' %t/lm.mlir > %t/lm2.mlir
// RUN: %ppmoe inspect %t/lm2.mlir --pp 2 --emit pipelined | FileCheck %s --check-prefix=STAGE
// STAGE-LABEL: func.func @rank0(
// STAGE: shard.send %{{.*}} destination = [1] {{.*}} : (tensor<1x16xi64>)
// STAGE-LABEL: func.func @rank1(
// STAGE: %[[IDS:.*]] = shard.recv %{{.*}} source = [0] {{.*}} -> tensor<1x16xi64>
// STAGE: %[[EX:.*]] = tensor.expand_shape %[[IDS]] {{\[}}[0], [1, 2]] output_shape [1, 16, 1]
// STAGE-NEXT: tensor.gather %arg0[%[[EX]]] gather_dims([0])

// RUN: not %ppmoe opt %t/returned.mlir --pass-pipeline='builtin.module()' 2>&1 | FileCheck %s --check-prefix=RETURNED
// RETURNED: error: {{.*}}returned.mlir: {{.*}}'tensor.expand_shape': ppmoe reads one only as a tensor.gather's indices with a unit axis appended
// Indices no tensor.expand_shape made are index tuples along their last axis: a GatherND.
// RUN: %ppmoe opt %t/bare.mlir --pass-pipeline='builtin.module()' | FileCheck %s --check-prefix=BARE
// BARE: tensor.gather %arg0[%arg1] gather_dims([0]) : (tensor<8x4xf32>, tensor<2x3x1xi64>) -> tensor<2x3x4xf32>
// RUN: not %ppmoe opt %t/kept.mlir --pass-pipeline='builtin.module()' 2>&1 | FileCheck %s --check-prefix=KEPT
// KEPT: error: {{.*}}kept.mlir: {{.*}}'tensor.gather': a result that is not rank-reduced
// RUN: not %ppmoe opt %t/axis.mlir --pass-pipeline='builtin.module()' 2>&1 | FileCheck %s --check-prefix=AXIS
// AXIS: error: {{.*}}axis.mlir: {{.*}}'tensor.gather': gather_dims Some([1]); ppmoe gathers along axis 0 only

// A GatherND without batch axes (the gather-the-weights routing's expert weights, before the
// raise) prints as tensor.gather of its index tuples as they are, gather_dims the data's
// first axes, rank-reduced; it reads back as itself. Other gather_dims of such indices are
// refused by name.
// RUN: %ppmoe inspect %fixtures/mixtral_block_dynamo/model.onnx --input-shape hidden_states=1x16x64 --emit core > %t/nd.mlir
// RUN: FileCheck %s --check-prefix=ND < %t/nd.mlir
// RUN: %ppmoe opt %t/nd.mlir --pass-pipeline='builtin.module()' | diff %t/nd.mlir -
// ND: tensor.gather %arg4[%{{.*}}] gather_dims([0]) : (tensor<4x256x64xf32>, tensor<32x1xi64>) -> tensor<32x256x64xf32>
// ND-NOT: "core.gather_nd"
// RUN: not %ppmoe opt %t/dims.mlir --pass-pipeline='builtin.module()' 2>&1 | FileCheck %s --check-prefix=DIMS
// DIMS: error: {{.*}}dims.mlir: {{.*}}'tensor.gather': gather_dims Some([1]) of indices no tensor.expand_shape made

//--- core.mlir
module attributes {ppmoe.stage = "core", ppmoe.source = {model = "@FIXTURES@/mixtral_block_dynamo/model.onnx", input_shapes = {}, microbatches = 1 : i64, eval_limit = 268435456 : i64, capacity = "keep"}} {
  func.func @rank0(%t: tensor<8x4xf32> {core.input = "t"}, %ids: tensor<2x3xi64> {core.input = "ids"}, %k: tensor<i32> {core.input = "k"}) -> (tensor<2x3x4xf32> {core.output = "rows"}, tensor<4xf32> {core.output = "row"}, tensor<8x2x3xf32> {core.output = "cols"}) {
    %0 = "core.gather"(%t, %ids) {axis = 0 : i64} : (tensor<8x4xf32>, tensor<2x3xi64>) -> tensor<2x3x4xf32> loc("rows"("node_rows"))
    %1 = "core.gather"(%t, %k) {axis = -2 : i64} : (tensor<8x4xf32>, tensor<i32>) -> tensor<4xf32> loc("row"("node_row"))
    %2 = "core.gather"(%t, %ids) {axis = 1 : i64} : (tensor<8x4xf32>, tensor<2x3xi64>) -> tensor<8x2x3xf32> loc("cols"("node_cols"))
    func.return %0, %1, %2 : tensor<2x3x4xf32>, tensor<4xf32>, tensor<8x2x3xf32>
  }
}

//--- returned.mlir
module attributes {ppmoe.stage = "core", ppmoe.source = {model = "@FIXTURES@/mixtral_block_dynamo/model.onnx", input_shapes = {}, microbatches = 1 : i64, eval_limit = 268435456 : i64, capacity = "keep"}} {
  func.func @rank0(%ids: tensor<2x3xi64> {core.input = "ids"}) -> (tensor<2x3x1xi64> {core.output = "e"}) {
    %e = tensor.expand_shape %ids [[0], [1, 2]] output_shape [2, 3, 1] : tensor<2x3xi64> into tensor<2x3x1xi64> loc("e"("node_e"))
    func.return %e : tensor<2x3x1xi64>
  }
}

//--- bare.mlir
module attributes {ppmoe.stage = "core", ppmoe.source = {model = "@FIXTURES@/mixtral_block_dynamo/model.onnx", input_shapes = {}, microbatches = 1 : i64, eval_limit = 268435456 : i64, capacity = "keep"}} {
  func.func @rank0(%t: tensor<8x4xf32> {core.input = "t"}, %ids: tensor<2x3x1xi64> {core.input = "ids"}) -> (tensor<2x3x4xf32> {core.output = "rows"}) {
    %0 = tensor.gather %t[%ids] gather_dims([0]) : (tensor<8x4xf32>, tensor<2x3x1xi64>) -> tensor<2x3x4xf32> loc("rows"("node_rows"))
    func.return %0 : tensor<2x3x4xf32>
  }
}

//--- kept.mlir
module attributes {ppmoe.stage = "core", ppmoe.source = {model = "@FIXTURES@/mixtral_block_dynamo/model.onnx", input_shapes = {}, microbatches = 1 : i64, eval_limit = 268435456 : i64, capacity = "keep"}} {
  func.func @rank0(%t: tensor<8x4xf32> {core.input = "t"}, %ids: tensor<2x3xi64> {core.input = "ids"}) -> (tensor<2x3x1x4xf32> {core.output = "rows"}) {
    %e = tensor.expand_shape %ids [[0], [1, 2]] output_shape [2, 3, 1] : tensor<2x3xi64> into tensor<2x3x1xi64> loc(unknown)
    %0 = tensor.gather %t[%e] gather_dims([0]) : (tensor<8x4xf32>, tensor<2x3x1xi64>) -> tensor<2x3x1x4xf32> loc("rows"("node_rows"))
    func.return %0 : tensor<2x3x1x4xf32>
  }
}

//--- axis.mlir
module attributes {ppmoe.stage = "core", ppmoe.source = {model = "@FIXTURES@/mixtral_block_dynamo/model.onnx", input_shapes = {}, microbatches = 1 : i64, eval_limit = 268435456 : i64, capacity = "keep"}} {
  func.func @rank0(%t: tensor<8x4xf32> {core.input = "t"}, %ids: tensor<2x3xi64> {core.input = "ids"}) -> (tensor<2x3x8xf32> {core.output = "rows"}) {
    %e = tensor.expand_shape %ids [[0], [1, 2]] output_shape [2, 3, 1] : tensor<2x3xi64> into tensor<2x3x1xi64> loc(unknown)
    %0 = tensor.gather %t[%e] gather_dims([1]) : (tensor<8x4xf32>, tensor<2x3x1xi64>) -> tensor<2x3x8xf32> loc("rows"("node_rows"))
    func.return %0 : tensor<2x3x8xf32>
  }
}

//--- dims.mlir
module attributes {ppmoe.stage = "core", ppmoe.source = {model = "@FIXTURES@/mixtral_block_dynamo/model.onnx", input_shapes = {}, microbatches = 1 : i64, eval_limit = 268435456 : i64, capacity = "keep"}} {
  func.func @rank0(%t: tensor<4x4xf32> {core.input = "t"}, %ids: tensor<3x1xi64> {core.input = "ids"}) -> (tensor<3x4xf32> {core.output = "cols"}) {
    %0 = tensor.gather %t[%ids] gather_dims([1]) : (tensor<4x4xf32>, tensor<3x1xi64>) -> tensor<3x4xf32> loc("cols"("node_cols"))
    func.return %0 : tensor<3x4xf32>
  }
}
