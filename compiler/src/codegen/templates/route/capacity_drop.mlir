        %c0 = arith.constant 0 : index
        %c1 = arith.constant 1 : index
        %k = arith.constant {{k}} : index
        %t = arith.constant {{t}} : index
        %cap = arith.constant {{capacity}} : index
        %zero = arith.constant 0.0 : f32
        %i64 = arith.index_cast %i : index to i64
        %ef = arith.sitofp %i64 : i64 to f32
        %used = scf.for %j = %c0 to %k step %c1 iter_args(%u0 = %c0) -> (index) {
          %uj = scf.for %s = %c0 to %t step %c1 iter_args(%u = %u0) -> (index) {
            %sk = arith.muli %s, %k : index
            %o = arith.addi %sk, %j : index
            %id = memref.load %a1[%o] : {{m_k}}
            %mine = arith.cmpf oeq, %id, %ef : f32
            %full = arith.cmpi uge, %u, %cap : index
            %drop = arith.andi %mine, %full : i1
            scf.if %drop {
              memref.store %zero, %a0[%o] : {{m_k}}
            }
            %u1 = arith.addi %u, %c1 : index
            %nu = arith.select %mine, %u1, %u : index
            scf.yield %nu : index
          }
          scf.yield %uj : index
        }
