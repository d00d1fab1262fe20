module attributes {ppmoe.source = {capacity = "keep", eval_limit = 268435456 : i64, input_shapes = {}, microbatches = 1 : i64, model = "../fixtures/mixtral_block_dynamo/model.onnx"}, ppmoe.stage = "core"} {
  func.func @rank0(%a: tensor<2x3xf32> {core.input = "a"}) -> (tensor<3x2xf32> {core.output = "t"}) {
    %d = tensor.empty() : tensor<3x2xf32>
    %t = linalg.transpose ins(%a : tensor<2x3xf32>) outs(%d : tensor<3x2xf32>) permutation = [18446744073709551615, 0]
    return %t : tensor<3x2xf32>
  }
}
