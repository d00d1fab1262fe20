{{tile_order}}
          %cBS = arith.constant {{steps}} : index
          %cE1 = arith.subi %cE, %c1 : index
          %e, %ehi = scf.for %i = %c0 to %cBS step %c1 iter_args(%lo = %c0, %hi = %cE1) -> (index, index) {
            %mid0 = arith.addi %lo, %hi : index
            %mid = arith.divui %mid0, %c2 : index
            %mid1 = arith.addi %mid, %c1 : index
{{mid_entry}}
            %iv32 = llvm.load %is_p : !llvm.ptr<3> -> i32
            %iv = arith.index_cast %iv32 : i32 to index
            %beyond = arith.cmpi ugt, %iv, %t : index
            %lo2 = arith.select %beyond, %lo, %mid1 : index
            %hi2 = arith.select %beyond, %mid, %hi : index
            scf.yield %lo2, %hi2 : index, index
          }
{{base_entry}}
          %base32 = llvm.load %eb_p : !llvm.ptr<3> -> i32
          %base = arith.index_cast %base32 : i32 to index
          %cnt32 = memref.load %counts[%e] : memref<?xi32>
          %cnt = arith.index_cast %cnt32 : i32 to index
          %lbase = arith.muli %e, %cS : index
          %first32 = memref.load %lists[%lbase] : memref<?xi32>
          %firsts = arith.index_cast %first32 : i32 to index
          %eN = arith.muli %e, %cN : index
          %local = arith.subi %t, %base : index
          %tcup = arith.addi %cnt, %cPm1 : index
          %tpasses = arith.divui %tcup, %cP : index
          %ct = arith.divui %local, %tpasses : index
          %pq = arith.remui %local, %tpasses : index
          %r0 = arith.muli %pq, %cP : index
          %nb0 = arith.muli %ct, %cB : index
{{row_base}}
