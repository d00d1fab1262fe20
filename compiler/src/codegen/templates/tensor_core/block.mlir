      %e = gpu.block_id y
      %nb = gpu.block_id x
      %tid = gpu.thread_id x
      %c0 = arith.constant 0 : index
      %c4 = arith.constant 4 : index
      %c8 = arith.constant 8 : index
      %c16 = arith.constant 16 : index
      %c32 = arith.constant 32 : index
      %cP = arith.constant {{pass_rows}} : index
      %cKC = arith.constant {{chunk}} : index
      %cRW = arith.constant {{row_words}} : index
      %cK = arith.constant {{din}} : index
      %cN = arith.constant {{dout}} : index
      %cS = arith.constant {{slots}} : index
      %cdiv = arith.constant {{div}} : index
      %crow = arith.constant {{source_row_words}} : index
      %zero = arith.constant 0.0 : f32
      %zv = arith.constant dense<0> : vector<4xi32>
      %warp = arith.divui %tid, %c32 : index
      %lane = arith.remui %tid, %c32 : index
      %lgrp = arith.divui %lane, %c4 : index
      %tig = arith.remui %lane, %c4 : index
      %cnt32 = memref.load %counts[%e] : memref<?xi32>
      %cnt = arith.index_cast %cnt32 : i32 to index
      %any = arith.cmpi ugt, %cnt, %c0 : index
      scf.if %any {
        %lbase = arith.muli %e, %cS : index
{{columns}}
        %srow = arith.divui %tid, %c8 : index
        %sw = arith.remui %tid, %c8 : index
        scf.for %r0 = %c0 to %cnt step %cP {
          %left = arith.subi %cnt, %r0 : index
          %rows = arith.minui %left, %cP : index
{{staged_rows}}
{{passes}}
        }
      }
