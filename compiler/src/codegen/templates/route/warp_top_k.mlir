        %wz64 = arith.constant 0 : i64
        %wo64 = arith.constant 1 : i64
        %wlane0 = arith.cmpi eq, %lane, %c0 : index
        %taken = scf.for %s = %c0 to %k step %c1 iter_args(%mask = %wz64) -> (i64) {
          %best:3 = scf.for %j = %lane to %e step %c32 iter_args(%bv = %ninf, %bi = %c0, %bs = %zero) -> (f32, index, f32) {
            %o = arith.addi %base, %j : index
            %v = memref.load %a0[%o] : {{m_l}}
{{score}}
            %m = arith.divui %j, %c32 : index
            %m64 = arith.index_cast %m : index to i64
            %sh = arith.shrui %mask, %m64 : i64
            %bit = arith.andi %sh, %wo64 : i64
            %free = arith.cmpi eq, %bit, %wz64 : i64
            %better = arith.cmpf ogt, %ch, %bv : f32
            %take = arith.andi %free, %better : i1
            %nbv = arith.select %take, %ch, %bv : f32
            %nbi = arith.select %take, %j, %bi : index
            %nbs = arith.select %take, %sc, %bs : f32
            scf.yield %nbv, %nbi, %nbs : f32, index, f32
          }
          %bi32 = arith.index_cast %best#1 : index to i32
          %ww = arith.constant 32 : i32
