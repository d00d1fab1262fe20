        %h = arith.constant {{h}} : index
        %hp = arith.constant {{hp}} : index
        %k = arith.constant {{k}} : index
        %c2 = arith.constant 2 : index
        %t = arith.divui %i, %hp : index
        %cp = arith.remui %i, %hp : index
        %c = arith.muli %cp, %c2 : index
        %c0 = arith.constant 0 : index
        %c1 = arith.constant 1 : index
        %zero = arith.constant 0.0 : f32
        %z32 = arith.constant 0 : i32
        %s16 = arith.constant 16 : i32
        %hmask = arith.constant -65536 : i32
        %hb = arith.cmpi ne, %has_bias, %c0 : index
        %tk = arith.muli %t, %k : index
        %acc:2 = scf.for %j = %c0 to %k step %c1 iter_args(%a0 = %zero, %a1 = %zero) -> (f32, f32) {
          %s = arith.addi %tk, %j : index
          %p32 = memref.load %pos[%s] : memref<?xi32>
          %valid = arith.cmpi sge, %p32, %z32 : i32
          %v:2 = scf.if %valid -> (f32, f32) {
            %p = arith.index_cast %p32 : i32 to index
            %pb = arith.muli %p, %h : index
            %po = arith.addi %pb, %c : index
            %wi = arith.divui %po, %c2 : index
            %word = memref.load %out[%wi] : memref<?xi32>
            %lo = arith.shli %word, %s16 : i32
            %hi = arith.andi %word, %hmask : i32
            %o0 = arith.bitcast %lo : i32 to f32
            %o1 = arith.bitcast %hi : i32 to f32
            %b:2 = scf.if %hb -> (f32, f32) {
              %e32 = memref.load %eid[%s] : memref<?xi32>
              %e = arith.index_cast %e32 : i32 to index
              %ebb = arith.muli %e, %h : index
              %eo = arith.addi %ebb, %c : index
              %eo1 = arith.addi %eo, %c1 : index
              %bv0 = memref.load %bout[%eo] : memref<?xf32>
              %bv1 = memref.load %bout[%eo1] : memref<?xf32>
              scf.yield %bv0, %bv1 : f32, f32
            } else {
              scf.yield %zero, %zero : f32, f32
            }
            %ob0 = arith.addf %o0, %b#0 : f32
            %ob1 = arith.addf %o1, %b#1 : f32
            %wv = memref.load %w[%s] : memref<?xf32>
            %wo0 = arith.mulf %wv, %ob0 : f32
            %wo1 = arith.mulf %wv, %ob1 : f32
            scf.yield %wo0, %wo1 : f32, f32
          } else {
            scf.yield %zero, %zero : f32, f32
          }
          %na0 = arith.addf %a0, %v#0 : f32
          %na1 = arith.addf %a1, %v#1 : f32
          scf.yield %na0, %na1 : f32, f32
        }
        %y0 = arith.muli %i, %c2 : index
        %y1 = arith.addi %y0, %c1 : index
        memref.store %acc#0, %y[%y0] : memref<?xf32>
        memref.store %acc#1, %y[%y1] : memref<?xf32>
