        %scale = arith.constant {{factor}} : f32
        scf.for %s = %c0 to %k step %c1 {
          %so = arith.addi %obase, %s : index
          %v = memref.load %a1[%so] : {{m_k}}
          %q = arith.divf %v, {{div}} : f32
          %r = arith.mulf %q, %scale : f32
          memref.store %r, %a1[%so] : {{m_k}}
        }
