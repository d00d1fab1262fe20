        %h = arith.constant {{row}} : index
        %r = arith.divui %i, %h : index
        %c = arith.remui %i, %h : index
        %p32 = memref.load %ids[%r] : memref<?xi32>
        %p = arith.index_cast %p32 : i32 to index
        %s0 = arith.muli %p, %h : index
        %s = arith.addi %s0, %c : index
        %v = memref.load %table[%s] : memref<?x{{elem}}>
        memref.store %v, %out[%i] : memref<?x{{elem}}>
