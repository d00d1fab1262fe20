          %{{tag}}st{{j}} = arith.constant {{stride}} : i64
          %{{tag}}of{{j}} = arith.muli {{step}}, %{{tag}}st{{j}} : i64
          %{{tag}}pt{{j}} = arith.addi {{base}}, %{{tag}}of{{j}} : i64
          %{{tag}}cj{{j}} = arith.constant {{j}} : index
          %{{tag}}ib{{j}} = arith.muli %{{tag}}cj{{j}}, %bound : index
          %{{tag}}ix{{j}} = arith.addi %{{tag}}ib{{j}}, {{t}} : index
          memref.store %{{tag}}pt{{j}}, %ptrs[%{{tag}}ix{{j}}] : memref<?xi64>
