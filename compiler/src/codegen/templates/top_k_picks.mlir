        %picks:2 = scf.for %j = %c0 to %ck step %c1 iter_args(%pv = %zero, %pi = %none) -> (f32, i64) {
          %first = arith.cmpi eq, %pi, %none : i64
          %best:3 = scf.for %c = %c0 to %clen step %c1 iter_args(%bv = %zero, %bi = %none, %found = %no) -> (f32, i64, i1) {
            %cs = arith.muli %c, %cin : index
            %off = arith.addi %base, %cs : index
            %v = memref.load %a0[%off] : memref<{{input}}xf32>
            %c64 = arith.index_cast %c : index to i64
            %past = arith.cmpf {{after}}, %v, %pv : f32
            %same = arith.cmpf oeq, %v, %pv : f32
            %later = arith.cmpi sgt, %c64, %pi : i64
            %tie = arith.andi %same, %later : i1
            %after0 = arith.ori %past, %tie : i1
            %after = arith.ori %first, %after0 : i1
            %over = arith.cmpf {{better}}, %v, %bv : f32
            %unset = arith.xori %found, %yes : i1
            %better = arith.ori %unset, %over : i1
            %take = arith.andi %after, %better : i1
            %nbv = arith.select %take, %v, %bv : f32
            %nbi = arith.select %take, %c64, %bi : i64
            %nf = arith.ori %found, %take : i1
            scf.yield %nbv, %nbi, %nf : f32, i64, i1
          }
          %js = arith.muli %j, %cin : index
          %at = arith.addi %obase, %js : index
          memref.store %best#0, %a1[%at] : memref<{{output}}xf32>
          %bif = arith.sitofp %best#1 : i64 to f32
          memref.store %bif, %a2[%at] : memref<{{output2}}xf32>
          scf.yield %best#0, %best#1 : f32, i64
        }
