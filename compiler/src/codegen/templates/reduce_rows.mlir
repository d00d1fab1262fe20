        %c32 = arith.constant 32 : index
        %row = arith.divui %i, %c32 : index
        %lane = arith.remui %i, %c32 : index
        %cols = arith.constant {{cols}} : index
        %base = arith.muli %row, %cols : index
        %init = arith.constant {{init}} : f32
        %part = scf.for %j = %lane to %cols step %c32 iter_args(%acc = %init) -> (f32) {
          %o = arith.addi %base, %j : index
{{load}}          %na = {{op}} %acc, {{value}} : f32
          scf.yield %na : f32
        }
{{over_warp}}{{mean}}        %c0 = arith.constant 0 : index
        %first = arith.cmpi eq, %lane, %c0 : index
        scf.if %first {
          memref.store {{result}}, {{out}}[%row] : {{out_type}}
        }
