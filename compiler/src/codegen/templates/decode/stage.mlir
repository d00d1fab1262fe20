            gpu.barrier
            %klen0 = arith.subi %cK, %kc : index
            %klen = arith.minui %klen0, %cKC : index
            %cNKC = arith.constant {{pass_floats}} : index
            scf.for %ix = %tid to %cNKC step %c256 {
              %r = arith.divui %ix, %cKC : index
              %kk = arith.remui %ix, %cKC : index
              %rin = arith.cmpi ult, %r, %rows : index
              %kin = arith.cmpi ult, %kk, %klen : index
              %ok = arith.andi %rin, %kin : i1
              %v = scf.if %ok -> (f32) {
                %li0 = arith.addi %lbase, %r0 : index
                %li = arith.addi %li0, %r : index
                %s32 = memref.load %lists[%li] : memref<?xi32>
                %s = arith.index_cast %s32 : i32 to index
                %row = arith.divui %s, %cdiv : index
                %rb = arith.muli %row, %cK : index
                %o1 = arith.addi %rb, %kc : index
                %o = arith.addi %o1, %kk : index
{{load}}
                scf.yield %xv : f32
              } else {
                scf.yield %zero : f32
              }
              memref.store %v, %xs[%ix] : memref<{{staged_floats}}xf32, 3>
            }
            gpu.barrier
