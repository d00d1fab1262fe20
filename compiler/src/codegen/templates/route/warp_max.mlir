        %pmx = scf.for %j = %lane to %e step %c32 iter_args(%a = %ninf) -> (f32) {
          %o = arith.addi %base, %j : index
          %v = memref.load %a0[%o] : {{m_l}}
          %nm = arith.maximumf %a, %v : f32
          scf.yield %nm : f32
        }
