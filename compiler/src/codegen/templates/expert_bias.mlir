        %h = arith.constant {{h}} : index
        %r = arith.divui %i, %h : index
        %c = arith.remui %i, %h : index
        %e32 = memref.load %rexp[%r] : memref<?xi32>
        %e = arith.index_cast %e32 : i32 to index
        %eb = arith.muli %e, %h : index
        %bo = arith.addi %eb, %c : index
        %b = memref.load %bias[%bo] : memref<?xf32>
{{load}}        %s = arith.addf %v, %b : f32
{{store}}