        %h = arith.constant {{h}} : index
        %k = arith.constant {{k}} : index
        %t = arith.divui %i, %h : index
        %c = arith.remui %i, %h : index
        %c0 = arith.constant 0 : index
        %c1 = arith.constant 1 : index
        %zero = arith.constant 0.0 : f32
        %z32 = arith.constant 0 : i32
        %hb = arith.cmpi ne, %has_bias, %c0 : index
        %tk = arith.muli %t, %k : index
        %acc = scf.for %j = %c0 to %k step %c1 iter_args(%a = %zero) -> (f32) {
          %s = arith.addi %tk, %j : index
          %p32 = memref.load %pos[%s] : memref<?xi32>
          %valid = arith.cmpi sge, %p32, %z32 : i32
          %v = scf.if %valid -> (f32) {
            %p = arith.index_cast %p32 : i32 to index
            %pb = arith.muli %p, %h : index
            %po = arith.addi %pb, %c : index
{{load_o}}            %b = scf.if %hb -> (f32) {
              %e32 = memref.load %eid[%s] : memref<?xi32>
              %e = arith.index_cast %e32 : i32 to index
              %ebb = arith.muli %e, %h : index
              %eo = arith.addi %ebb, %c : index
              %bv = memref.load %bout[%eo] : memref<?xf32>
              scf.yield %bv : f32
            } else {
              scf.yield %zero : f32
            }
            %ob = arith.addf %o, %b : f32
            %wv = memref.load %w[%s] : memref<?xf32>
            %wo = arith.mulf %wv, %ob : f32
            scf.yield %wo : f32
          } else {
            scf.yield %zero : f32
          }
          %na = arith.addf %a, %v : f32
          scf.yield %na : f32
        }
        memref.store %acc, %y[%i] : memref<?xf32>
