    gpu.func @{{name}}(%src: memref<?xvector<4xi32>>, %wt: memref<?xvector<4xi32>>, %ids: memref<?xf32>, %w: memref<?xf32>, %dst: memref<?xbf16>, %first: index) kernel {
      %s = gpu.block_id x
      %nb = gpu.block_id y
      %tid = gpu.thread_id x
      %c32 = arith.constant 32 : index
      %warp = arith.divui %tid, %c32 : index
      %lane = arith.remui %tid, %c32 : index
      %zero = arith.constant 0.0 : f32
      %kneg0 = arith.constant -0.0 : f32
      %ck = arith.constant {{k}} : index
      %tok = arith.divui %s, %ck : index
      %cxw = arith.constant {{x_words}} : index
      %xo = arith.muli %tok, %cxw : index
{{slot_check}}
      scf.if %ok {
        %e = arith.index_cast %loc : i64 to index
        %cN = arith.constant {{n}} : index
        %cF = arith.constant {{f}} : index
        %cW = arith.constant {{words}} : index
        %eN = arith.muli %e, %cN : index
        %cbc = arith.constant {{block_columns}} : index
        %cpw = arith.constant {{warp_columns}} : index
        %b0 = arith.muli %nb, %cbc : index
        %w0 = arith.muli %warp, %cpw : index
        %abase = arith.addi %b0, %w0 : index
        %flast = arith.constant {{flast}} : index
{{rows}}
{{dot}}
        %c0 = arith.constant 0 : index
        %lane0 = arith.cmpi eq, %lane, %c0 : index
        %sF = arith.muli %s, %cF : index
{{columns}}
      }
      gpu.return
    }
