        %ts = scf.for %s = %c0 to %k step %c1 iter_args(%a = %zero) -> (f32) {
          %so = arith.addi %obase, %s : index
          %v = memref.load %a1[%so] : {{m_k}}
          %na = arith.addf %a, %v : f32
          scf.yield %na : f32
        }
