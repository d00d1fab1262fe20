        %h = arith.constant {{h}} : index
        %r = arith.divui %i, %h : index
        %c = arith.remui %i, %h : index
        %p32 = memref.load %perm[%r] : memref<?xi32>
        %p = arith.index_cast %p32 : i32 to index
        %s0 = arith.muli %p, %h : index
        %s = arith.addi %s0, %c : index
        %v = memref.load %x[%s] : memref<?xf32>
{{store}}