        %cg = arith.constant {{groups}} : index
        %r = arith.divui %i, %cg : index
        %g = arith.remui %i, %cg : index
        %p32 = memref.load %perm[%r] : memref<?xi32>
        %p = arith.index_cast %p32 : i32 to index
        %s0 = arith.muli %p, %cg : index
        %s = arith.addi %s0, %g : index
        %v = memref.load %x[%s] : memref<?xvector<4xi32>>
        memref.store %v, %out[%i] : memref<?xvector<4xi32>>
