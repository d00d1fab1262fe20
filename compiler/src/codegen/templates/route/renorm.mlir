        %c0 = arith.constant 0 : index
        %c1 = arith.constant 1 : index
        %k = arith.constant {{k}} : index
        %zero = arith.constant 0.0 : f32
        %one = arith.constant 1.0 : f32
        %eps = arith.constant {{eps}} : f32
        %scale = arith.constant {{factor}} : f32
        %base = arith.muli %i, %k : index
        %sum = scf.for %s = %c0 to %k step %c1 iter_args(%a = %zero) -> (f32) {
          %o = arith.addi %base, %s : index
          %v = memref.load %a0[%o] : {{m_k}}
          %na = arith.addf %a, %v : f32
          scf.yield %na : f32
        }
        {{div}}
        scf.for %s = %c0 to %k step %c1 {
          %o = arith.addi %base, %s : index
          %v = memref.load %a0[%o] : {{m_k}}
          %q = arith.divf %v, %den : f32
          %r = arith.mulf %q, %scale : f32
          memref.store %r, %a0[%o] : {{m_k}}
        }
