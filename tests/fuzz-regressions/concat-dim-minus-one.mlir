module attributes {ppmoe.source = {capacity = "keep", eval_limit = 268435456 : i64, input_shapes = {}, microbatches = 1 : i64, model = "../fixtures/mixtral_block_dynamo/model.onnx"}, ppmoe.stage = "core"} {
  func.func @rank0(%a: tensor<2x3xf32> {core.input = "a"}) -> (tensor<2x6xf32> {core.output = "c"}) {
    %c = tensor.concat dim(-1) %a, %a : (tensor<2x3xf32>, tensor<2x3xf32>) -> tensor<2x6xf32>
    return %c : tensor<2x6xf32>
  }
}
