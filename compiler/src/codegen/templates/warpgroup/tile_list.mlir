        %cTH = arith.constant {{threads}} : index
        %cCT = arith.constant {{column_tiles}} : index
        %cE = memref.dim %counts, %c0 : memref<?xi32>
        %z32 = arith.constant 0 : i32
        %cPRE = arith.constant {{prefix_offset}} : index
        %pre = arith.addi %bars, %cPRE : index
        scf.for %x = %tid to %cE step %cTH {
          %xc32 = memref.load %counts[%x] : memref<?xi32>
          %xc = arith.index_cast %xc32 : i32 to index
          %xc1 = arith.addi %xc, %cPm1 : index
          %xp = arith.divui %xc1, %cP : index
          %xt = arith.muli %xp, %cCT : index
          %xt32 = arith.index_cast %xt : index to i32
          %x1 = arith.addi %x, %c1 : index
{{tiles_entry}}
          llvm.store %xt32, %xs_p : i32, !llvm.ptr<3>
{{rows}}
        }
        gpu.barrier
        scf.if %t0 {
{{running_sums}}
        }
        gpu.barrier
{{total_entry}}
        %total32 = llvm.load %tt_p : !llvm.ptr<3> -> i32
        %total = arith.index_cast %total32 : i32 to index
