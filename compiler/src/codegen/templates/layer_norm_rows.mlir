        %c32 = arith.constant 32 : index
        %row = arith.divui %i, %c32 : index
        %lane = arith.remui %i, %c32 : index
        %cols = arith.constant {{inner}} : index
        %base = arith.muli %row, %cols : index
        %zero = arith.constant 0.0 : f32
        %nf = arith.constant {{count}} : f32
        %psum = scf.for %j = %lane to %cols step %c32 iter_args(%acc = %zero) -> (f32) {
          %o = arith.addi %base, %j : index
          %v = memref.load %a0[%o] : {{x_type}}
          %na = arith.addf %acc, %v : f32
          scf.yield %na : f32
        }
{{sum_over_warp}}        %mean = arith.divf {{sum}}, %nf : f32
        %psq = scf.for %j = %lane to %cols step %c32 iter_args(%acc = %zero) -> (f32) {
          %o = arith.addi %base, %j : index
          %v = memref.load %a0[%o] : {{x_type}}
          %d = arith.subf %v, %mean : f32
          %d2 = arith.mulf %d, %d : f32
          %na = arith.addf %acc, %d2 : f32
          scf.yield %na : f32
        }
{{squares_over_warp}}        %var = arith.divf {{squares}}, %nf : f32
        %eps = arith.constant {{eps}} : f32
        %ve = arith.addf %var, %eps : f32
        %sd = llvm.call_intrinsic "llvm.nvvm.sqrt.rn.f"(%ve) : (f32) -> f32
        %one = arith.constant 1.0 : f32
        %inv = arith.divf %one, %sd : f32
        scf.for %j = %lane to %cols step %c32 {
          %o = arith.addi %base, %j : index
          %v = memref.load %a0[%o] : {{x_type}}
          %d = arith.subf %v, %mean : f32
          %y = arith.mulf %d, %inv : f32
          %sv = memref.load %a1[%j] : {{scale_type}}
          %ys = arith.mulf %y, %sv : f32
{{bias}}          memref.store %r, {{out}}[%o] : {{x_type}}
        }
