    gpu.func @{{name}}({{params}}) kernel {
      %bid = gpu.block_id x
      %bdim = gpu.block_dim x
      %tid = gpu.thread_id x
      %i0 = arith.muli %bid, %bdim : index
      %i = arith.addi %i0, %tid : index
{{n}}      %in = arith.cmpi ult, %i, %n : index
      scf.if %in {
{{body}}      }
      gpu.return
    }
