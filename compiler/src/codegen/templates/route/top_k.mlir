        scf.for %s = %c0 to %k step %c1 {
          %best:3 = scf.for %j = %c0 to %e step %c1 iter_args(%bv = %ninf, %bi = %c0, %bs = %zero) -> (f32, index, f32) {
            %o = arith.addi %base, %j : index
            %v = memref.load %a0[%o] : {{m_l}}
{{score}}
{{in_group}}            %jf = arith.index_cast %j : index to i64
            %jff = arith.sitofp %jf : i64 to f32
            %taken = scf.for %q = %c0 to %s step %c1 iter_args(%tk = %zero) -> (f32) {
              %qo = arith.addi %obase, %q : index
              %qi = memref.load %a2[%qo] : {{m_k}}
              %eq = arith.cmpf oeq, %qi, %jff : f32
              %nt = arith.select %eq, %one, %tk : f32
              scf.yield %nt : f32
            }
            %free0 = arith.cmpf oeq, %taken, %zero : f32
            %free = arith.andi %free0, %ing : i1
            %better = arith.cmpf ogt, %ch, %bv : f32
            %take = arith.andi %free, %better : i1
            %nbv = arith.select %take, %ch, %bv : f32
            %nbi = arith.select %take, %j, %bi : index
            %nbs = arith.select %take, %sc, %bs : f32
            scf.yield %nbv, %nbi, %nbs : f32, index, f32
          }
          %so = arith.addi %obase, %s : index
          %bi64 = arith.index_cast %best#1 : index to i64
          %bif = arith.sitofp %bi64 : i64 to f32
          memref.store %best#2, %a1[%so] : {{m_k}}
          memref.store %bif, %a2[%so] : {{m_k}}
        }
